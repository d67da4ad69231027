"""Decoders on the tiny official-format checkpoints: shapes, rates, the normalization inverse, tiling, device moves."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.models import read_checkpoint_info
from ltx2_tuner.sampling import decode
from ltx2_tuner.sampling.decode import (
    OFFICIAL_TILES,
    Decoders,
    TileLayout,
    denormalize_audio_latents,
    denormalize_video_latents,
    tiled_decode,
)

RATES = {"2.0": 24000, "2.3": 48000}


@pytest.fixture(scope="module")
def decoders(tiny_checkpoints) -> dict[str, Decoders]:
    return {v: Decoders.load(read_checkpoint_info(c.path), with_audio=True) for v, c in tiny_checkpoints.items()}


def _latents(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_decode_video_is_the_vae_on_denormalized_latents(decoders, version):
    dec = decoders[version]
    latents = _latents(1, 128, 3, 2, 2)
    frames = dec.decode_video(latents)
    assert frames.dtype == torch.uint8 and frames.shape == (17, 64, 64, 3)
    vae = dec.video_vae
    with torch.no_grad():
        raw = latents * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
        pixels = vae.decode(raw).sample[0]  # the released decoders (and these) are not timestep-conditioned
    expected = (((pixels + 1) / 2).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 3, 0)
    assert torch.equal(frames, expected)
    assert frames.float().std() > 10  # not a flat image


@pytest.mark.parametrize("version", ["2.0", "2.3"])
@pytest.mark.parametrize("num_latents", [1, 6])
def test_decode_audio_length_and_rate(decoders, version, num_latents):
    dec = decoders[version]
    assert dec.audio_sample_rate == RATES[version]
    waveform, rate = dec.decode_audio(_latents(1, 8, num_latents, 16))
    # T latents -> 4T - 3 mel frames of 10 ms -> rate / 100 samples each (so the 18 latents of 17 frames at 24 fps
    # give 0.69 s of sound for 0.708 s of video).
    assert rate == RATES[version]
    assert waveform.dtype == torch.float32 and waveform.shape == (2, (4 * num_latents - 3) * rate // 100)
    assert torch.isfinite(waveform).all() and waveform.abs().max() <= 1.0 and waveform.abs().max() > 0.01


def test_denormalization_inverts_the_cache_normalization(tiny_checkpoints, decoders):
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling

    info = read_checkpoint_info(tiny_checkpoints["2.3"].path)
    encoder = LatentEncoder(info, info, torch.device("cpu"), torch.float32, VaeTiling())
    dec = decoders["2.3"]
    # Not the identity: the tiny checkpoints carry random statistics.
    assert dec.video_vae.latents_std.sub(1).abs().max() > 0.1 and dec.audio_vae.latents_mean.abs().max() > 0.1

    frames = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        raw = encoder.video_vae.encode(frames).latent_dist.mode()
    restored = denormalize_video_latents(encoder.encode_video(frames), dec.video_vae)
    torch.testing.assert_close(restored, raw, rtol=1e-5, atol=1e-5)

    log_mel = torch.randn(2, 33, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = encoder.audio_vae.encode(log_mel[None]).latent_dist.mode()
    restored = denormalize_audio_latents(encoder.encode_audio(log_mel)[None], dec.audio_vae)
    torch.testing.assert_close(restored, raw, rtol=1e-5, atol=1e-5)


def test_video_only_decoders_never_read_audio(tiny_checkpoints, monkeypatch):
    import ltx2_tuner.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a video-only load read the audio VAE or the vocoder")

    monkeypatch.setattr(models, "load_audio_vae", refuse)
    monkeypatch.setattr(models, "load_vocoder", refuse)
    dec = Decoders.load(read_checkpoint_info(tiny_checkpoints["2.0"].path), with_audio=False)
    assert dec.audio_vae is None and dec.vocoder is None and dec.audio_sample_rate is None
    assert dec.video_vae.encoder is None  # the decoder half only
    with pytest.raises(ValueError, match="with_audio=True"):
        dec.decode_audio(_latents(1, 8, 4, 16))


def test_on_moves_there_and_back_even_on_error(decoders, monkeypatch):
    dec = decoders["2.0"]
    modules = [dec.video_vae, dec.audio_vae, dec.vocoder]
    moves = []
    for index, module in enumerate(modules):
        real_to = module.to
        monkeypatch.setattr(
            module, "to", lambda device, _i=index, _to=real_to: moves.append((_i, str(device))) or _to(device)
        )
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

    with dec.on("cpu") as inside:
        assert inside is dec
        assert moves == [(0, "cpu"), (1, "cpu"), (2, "cpu")]
    assert moves[3:] == [(0, "cpu"), (1, "cpu"), (2, "cpu")]
    with pytest.raises(RuntimeError, match="boom"), dec.on(torch.device("cpu")):
        raise RuntimeError("boom")
    assert len(moves) == 12  # moved back after the error too
    assert emptied == []  # the CUDA cache is emptied only after a CUDA visit
    assert all(p.device.type == "cpu" for module in modules for p in module.parameters())


# Tiling -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temporal", [False, True])
def test_official_tile_layout_covers_every_pixel_with_weights_summing_to_one(temporal):
    scale = 8 if temporal else 32
    size, overlap = (6, 3) if temporal else (12, 6)
    for length in range(1, 60):
        tiles = decode._axis_tiles(length, size, overlap, scale, temporal)
        pixels = (length - 1) * scale + 1 if temporal else length * scale
        total = torch.zeros(pixels)
        for latents, where, mask in tiles:
            span = latents.stop - latents.start
            assert where.stop - where.start == ((span - 1) * scale + 1 if temporal else span * scale) == len(mask)
            assert span <= size + temporal  # 384 px; 48 frames + the causal lead-in latent
            total[where] += mask
        assert where.stop == pixels  # the last tile ends at the edge
        torch.testing.assert_close(total, torch.ones(pixels), atol=1e-6, rtol=0)


def test_official_tiles_of_a_65_frame_416_px_clip():
    # 9 latent frames: latents 0-5 -> frames 0-40 and latents 2-8 -> frames 16-64 (its frame 16 alone, weight 0),
    # blended over frames 16-40. 13 latents across: 0-11 -> px 0-383 and 6-12 -> px 192-415.
    frames = decode._axis_tiles(9, 6, 3, 8, temporal=True)
    assert [t[:2] for t in frames] == [(slice(0, 6), slice(0, 41)), (slice(2, 9), slice(16, 65))]
    assert frames[1][2][0] == 0 and frames[0][2][16] == 1
    columns = decode._axis_tiles(13, 12, 6, 32, temporal=False)
    assert [t[:2] for t in columns] == [(slice(0, 12), slice(0, 384)), (slice(6, 13), slice(192, 416))]


def _localize(vae) -> None:
    """Keep only the centre tap of every decoder convolution (scaled by sqrt(taps)): each latent then decodes to
    its own 8-frame x 32 x 32 block alone, so a correct tiling must reproduce the untiled decode."""
    with torch.no_grad():
        for module in vae.decoder.modules():
            if isinstance(module, torch.nn.Conv3d):
                kt, kh, kw = module.weight.shape[2:]
                keep = torch.zeros_like(module.weight)
                keep[:, :, kt // 2, kh // 2, kw // 2] = (kt * kh * kw) ** 0.5
                module.weight.mul_(keep)


SMALL_TILES = TileLayout(size=2, overlap=1, frames=3, frames_overlap=1)  # several tiles on small latents


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_tiling_is_exact_when_each_latent_decodes_alone(tiny_checkpoints, version):
    vae = Decoders.load(read_checkpoint_info(tiny_checkpoints[version].path), with_audio=False).video_vae
    _localize(vae)
    latents, other = _latents(1, 128, 5, 4, 4, seed=3), _latents(1, 128, 5, 4, 4, seed=4)
    with torch.no_grad():
        plain, unrelated = vae.decode(latents).sample, vae.decode(other).sample
        tiled = tiled_decode(vae, latents, None, SMALL_TILES)  # 2 x 3 x 3 tiles
    assert tiled.shape == plain.shape == (1, 3, 33, 128, 128)
    # The local decoder still tells inputs and positions apart (measured mean |difference| ~0.4-0.5 for an unrelated
    # input, for the output moved by one latent column and by one latent frame, as a misplaced tile would be).
    assert (unrelated - plain).abs().mean() > 0.1
    assert (plain.roll(32, dims=4) - plain).abs().mean() > 0.1 and (plain.roll(8, dims=2) - plain).abs().mean() > 0.1
    # Measured: at most 3e-5 (float32 rounding of the blend).
    assert (tiled - plain).abs().max() < 1e-4


def test_tiny_vae_tiled_decode_is_close_to_untiled(decoders, monkeypatch):
    dec = decoders["2.3"]
    latents, other = _latents(1, 128, 5, 4, 4, seed=5), _latents(1, 128, 5, 4, 4, seed=6)
    plain, unrelated = dec.decode_video(latents).float(), dec.decode_video(other).float()
    # Latents that fit in one official tile (up to 6 latent frames, 12 x 12 latents) decode whole.
    assert torch.equal(dec.decode_video(latents, tiled=True).float(), plain)
    monkeypatch.setattr(decode, "OFFICIAL_TILES", SMALL_TILES)
    tiled = dec.decode_video(latents, tiled=True).float()
    assert tiled.shape == plain.shape == (33, 128, 128, 3)
    # The tiny VAE's receptive field (random 3x3x3 convolutions at every scale) is far wider than a 2-latent tile,
    # so tiles lose most of their context; the bound is a measured regression, compared with the distance between
    # unrelated inputs. Measured ||tiled - plain|| / ||unrelated - plain||: 0.75 (0.71 on 2.0; 0.43 when tiling
    # in time only). The output moved by one latent column, as a misplaced tile grid would move it: 1.03.
    distance = (unrelated - plain).norm()
    relative = ((tiled - plain).norm() / distance).item()
    assert 0.0 < relative < 0.85, relative
    assert (plain.roll(32, dims=2) - plain).norm() / distance > 0.95
    assert TileLayout(12, 6, 6, 3) == OFFICIAL_TILES  # 384 px / 192 overlap, 48 frames / 24 overlap


def test_timestep_conditioned_decoder_gets_the_official_noise_and_timestep():
    from ltx2_tuner.models.loading import construct_module
    from ltx2_tuner.testing.tiny_configs import official_config

    torch.manual_seed(0)
    shapes = {"decoder.last_time_embedder.linear_1.weight": (1,)}  # marks the decoder as timestep-conditioned
    vae = construct_module("video_vae", official_config("2.0")["vae"], shapes, empty=False)
    vae.encoder = None
    vae.latents_mean.normal_()
    vae.latents_std.uniform_(0.5, 2.0)
    assert vae.config.timestep_conditioning
    dec = Decoders(vae)
    latents = _latents(1, 128, 2, 2, 2)
    frames = dec.decode_video(latents, seed=7)
    assert torch.equal(frames, dec.decode_video(latents, seed=7))
    assert not torch.equal(frames, dec.decode_video(latents, seed=8))
    # ltx-core: 2.5% noise mixed into the normalized latents, then decoded at timestep 0.05.
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7))
    mixed = denormalize_video_latents(0.025 * noise + 0.975 * latents, vae)
    with torch.no_grad():
        pixels = vae.decode(mixed, torch.tensor([0.05])).sample
    assert torch.equal(frames, decode.to_uint8_frames(pixels))
