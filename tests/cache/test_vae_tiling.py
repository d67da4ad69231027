"""Tiled VAE encoding (`--vae_tile_size`, `--vae_tile_frames`) gives the untiled latents, up to seams (fp32, CPU).

Two checks. (1) With the encoder's convolutions made local (each latent then depends on its own 32 x 32 pixel,
8-frame block only), tiling changes nothing if LatentEncoder's tiles, strides and blending line up with the latent
grid: that tests our tiling settings exactly, where a tiny random VAE cannot. (2) The tiny VAE as it is: its
receptive field (8 random 3x3x3 convolutions down to 1/32 scale, about +-100 px) is wider than a 64-px tile, so
tiles lose most of the context a latent sees untiled; the bounds there are measured regressions, compared with the
difference between two unrelated inputs so that they are not vacuous.
"""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
from ltx2_tuner.models import read_checkpoint_info

# 4 x 3 x 4 latents: more than one 64-px tile each way, and two 16-frame temporal chunks (frames 0-16 and 8-24).
FRAMES, HEIGHT, WIDTH = 25, 96, 128


@pytest.fixture(scope="module")
def info(tiny_checkpoints):
    return read_checkpoint_info(tiny_checkpoints["2.3"].path)


@pytest.fixture(scope="module")
def frames():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, FRAMES, HEIGHT, WIDTH, generator=generator) * 2 - 1 for _ in range(2)]


@torch.no_grad()
def _localize(encoder: LatentEncoder) -> LatentEncoder:
    """Keep only the spatial centre and the current frame (the last tap of the causal kernels) of every encoder
    convolution, scaled by sqrt(taps) to keep the activations' size."""
    for module in encoder.video_vae.encoder.modules():
        if isinstance(module, torch.nn.Conv3d):
            kt, kh, kw = module.weight.shape[2:]
            keep = torch.zeros_like(module.weight)
            keep[:, :, kt - 1, kh // 2, kw // 2] = (kt * kh * kw) ** 0.5
            module.weight.mul_(keep)
    return encoder


def _encoder(info, tiling: VaeTiling, local: bool = False) -> LatentEncoder:
    encoder = LatentEncoder(info, None, torch.device("cpu"), torch.float32, tiling)
    return _localize(encoder) if local else encoder


def test_tiling_changes_nothing_when_each_latent_sees_only_its_own_pixels(info, frames):
    clip, other = frames
    plain_encoder = _encoder(info, VaeTiling(), local=True)
    plain = plain_encoder.encode_video(clip)
    assert plain.shape == (1, 128, 4, 3, 4)
    # The local encoder still tells inputs and positions apart (measured: mean |difference| 0.54 for an unrelated
    # input and for the latents moved by one column, as a tile grid off by one latent would move them).
    assert (plain_encoder.encode_video(other) - plain).abs().mean() > 0.1
    assert (plain.roll(1, dims=4) - plain).abs().mean() > 0.1
    for tiling in (VaeTiling(spatial_tile_px=64), VaeTiling(temporal_tile_frames=16), VaeTiling(64, 16)):
        tiled = _encoder(info, tiling, local=True).encode_video(clip)
        # Measured: at most 2e-6 (float32 rounding of convolutions on smaller inputs).
        assert (tiled - plain).abs().max() < 1e-5, tiling


def test_tiny_vae_tiling_is_close_to_untiled(info, frames):
    clip, other = frames
    encoder = _encoder(info, VaeTiling())
    plain = encoder.encode_video(clip)
    unrelated = (encoder.encode_video(other) - plain).norm()

    # Temporal chunks: the encoder is causal, so latent frames 0-2 (made from frames 0-16, which the first chunk
    # holds whole) are the untiled ones (measured: 3e-6); latent frame 3 (frames 17-24) comes from the second chunk
    # (frames 8-24), without frames 0-7, and differs (measured: up to 1.85).
    tiled = _encoder(info, VaeTiling(temporal_tile_frames=16)).encode_video(clip)
    assert tiled.shape == plain.shape
    assert (tiled[:, :, :3] - plain[:, :, :3]).abs().max() < 1e-5
    assert (tiled[:, :, 3] - plain[:, :, 3]).abs().max() > 0.1  # the chunking really happened

    # Spatial tiles. Measured ||tiled - plain|| / ||unrelated input - plain||: 0.63 (64-px tiles), 0.39 (96-px tiles),
    # 0.71 with 16-frame chunks too (the local test covers that combination). Latents off by one column give
    # 1.12, so the bound 0.8 also catches a misaligned tile grid; bigger tiles see more context and come closer.
    relative = {}
    for tiling in (VaeTiling(spatial_tile_px=64), VaeTiling(spatial_tile_px=96)):
        tiled = _encoder(info, tiling).encode_video(clip)
        assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
        relative[tiling] = ((tiled - plain).norm() / unrelated).item()
    assert max(relative.values()) < 0.8, relative
    assert relative[VaeTiling(spatial_tile_px=96)] < relative[VaeTiling(spatial_tile_px=64)], relative
    assert (plain.roll(1, dims=4) - plain).norm() / unrelated > 1.0  # the misaligned-grid figure quoted above
