"""Normalized latents -> pixels and sound: the video VAE decoder, the audio VAE decoder and the vocoder.

The decoders wait on the CPU and visit the device for one decode (`Decoders.on`), as Lightricks' validation runner
does, so previews during training leave GPU memory as they found it. Latents come in the cache's normalized space
(`cache/latent_cacher.py`); the inverse of that normalization is applied here, before the diffusers decoders.

Facts (read from ltx-core / ltx-trainer / diffusers' LTX2Pipeline, see the sampling docs):
- The released 2.0 and 2.3 video decoders are not timestep-conditioned (no `last_time_embedder` weights), so they
  decode the latents as they are. A conditioned decoder gets what ltx-core's decoder does by default: the
  normalized latents mixed with 2.5% Gaussian noise, then decoded at timestep 0.05.
- LTX 2.5's diffusion decoder (the default `vae/ltx-2.5-video-vae-bf16` file) is a small diffusion model: it decodes
  with the steps, output type and timestep multiplier of its file's metadata, from noise drawn with a generator
  seeded by `seed` (`models/diffusion_decoder.py`).
- Pixels: (x + 1) / 2 clamped to [0, 1], times 255, truncated to uint8 (ltx-trainer `video_utils`).
- Tiled decode: the official conv-decoder layout, 384-px tiles overlapping by 192 px and 48-frame chunks
  overlapping by 24, cut on the latent grid and blended with linear ramps (ltx-core `tiling.py`).
- Audio: de-normalize per packed channel, audio VAE decoder -> log-mel [1, 2, 4T - 3, 64] (10 ms per mel frame),
  vocoder -> stereo waveform at its output rate (2.0: 240 samples per mel frame at 24 kHz; 2.3 with bandwidth
  extension: 480 at 48 kHz), already in [-1, 1] (tanh or clamp inside the vocoder). The vocoder runs in float32
  as ltx-core's does; the audio decoders are small, so both stay in float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ltx2_tuner.models.diffusion_decoder import decode_latents, is_diffusion_decoder
from ltx2_tuner.models.latent_layout import patchify_audio, unpatchify_audio

DECODE_TIMESTEP = 0.05  # ltx-core ConvVideoDecoder.decode_timestep (timestep-conditioned decoders only)
DECODE_NOISE_SCALE = 0.025  # ltx-core ConvVideoDecoder.decode_noise_scale


@dataclass(frozen=True)
class TileLayout:
    """Decode tiles in latent units (pixels / 32 spatially, frames / 8 in time)."""

    size: int = 12  # 384 px
    overlap: int = 6  # 192 px
    frames: int = 6  # 48 frames
    frames_overlap: int = 3  # 24 frames


OFFICIAL_TILES = TileLayout()


@dataclass(frozen=True)
class _Span:
    """One tile along one axis: latents [start, end) and its ramps, in latents."""

    start: int
    end: int
    left_ramp: int
    right_ramp: int


class Decoders:
    """The decoders of one model: the video VAE decoder (None for audio-only output: T2A, V2A), and the audio VAE
    decoder and the vocoder (None for silent output: T2V, A2V)."""

    def __init__(
        self, video_vae: nn.Module | None, audio_vae: nn.Module | None = None, vocoder: nn.Module | None = None
    ):
        self.video_vae, self.audio_vae, self.vocoder = video_vae, audio_vae, vocoder
        for module in self._modules():
            module.eval().requires_grad_(False)

    @classmethod
    def load(
        cls, info, with_audio: bool, dtype: torch.dtype = torch.float32, audio_info=None, with_video: bool = True
    ) -> Decoders:
        """Load from a checkpoint (path or CheckpointInfo) onto the CPU: with video, the video VAE decoder half in
        `dtype`; with audio, the audio VAE decoder half and the vocoder in float32, from `audio_info` (a split pack's
        audio VAE file) or else `info`. Nothing else is read (`info` may be None when only `audio_info` is read)."""
        from ltx2_tuner.models import load_audio_vae, load_video_vae, load_vocoder

        video_vae = load_video_vae(info, part="decoder", dtype=dtype, device="cpu") if with_video else None
        if not with_audio:
            return cls(video_vae)
        audio_info = info if audio_info is None else audio_info
        audio_vae = load_audio_vae(audio_info, part="decoder", dtype=torch.float32, device="cpu")
        return cls(video_vae, audio_vae, load_vocoder(audio_info, dtype=torch.float32, device="cpu"))

    @property
    def audio_sample_rate(self) -> int | None:
        """The vocoder's output rate in Hz (24000 on LTX-2.0, 48000 on 2.3); None without audio decoders."""
        return None if self.vocoder is None else int(self.vocoder.config.output_sampling_rate)

    def _modules(self) -> list[nn.Module]:
        return [m for m in (self.video_vae, self.audio_vae, self.vocoder) if m is not None]

    @contextmanager
    def on(self, device: torch.device | str) -> Iterator[Decoders]:
        """Move the decoders to `device` for the block, then back to the CPU (and empty the CUDA cache), even when
        the block raises."""
        device = torch.device(device)
        try:
            for module in self._modules():
                module.to(device)
            yield self
        finally:
            for module in self._modules():
                module.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # Video ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, tiled: bool = False, *, seed: int = 0) -> torch.Tensor:
        """Normalized latents [1, 128, F, H, W] -> uint8 frames [8(F-1)+1, 32H, 32W, 3] on the CPU.

        `tiled` decodes in the official overlapping tiles (less memory, seams blended). `seed` draws the decode
        noise of timestep-conditioned decoders (none of the released conv ones) and of the diffusion decoder (LTX 2.5,
        tiled in diffusers' stage-4/5 tiles), so decoding is deterministic.
        """
        vae = self.video_vae
        if vae is None:
            raise ValueError("these decoders were loaded without video (Decoders.load(..., with_video=True))")
        if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[1] != vae.config.latent_channels:
            raise ValueError(f"expected video latents [1, {vae.config.latent_channels}, F, H, W], got {latents.shape}")
        device, dtype = _where(vae)
        latents = latents.to(device, torch.float32)
        if is_diffusion_decoder(vae):
            denormalized = denormalize_video_latents(latents, vae).to(dtype)
            generator = torch.Generator().manual_seed(seed)  # CPU noise: the same decode on every device
            return to_uint8_frames(decode_latents(vae, denormalized, generator, tiled=tiled))
        timestep = None
        if vae.config.timestep_conditioning:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(device)
            latents = DECODE_NOISE_SCALE * noise + (1 - DECODE_NOISE_SCALE) * latents
            timestep = torch.tensor([DECODE_TIMESTEP], device=device, dtype=dtype)
        latents = denormalize_video_latents(latents, vae).to(dtype)
        decode = tiled_decode if tiled else _whole_decode
        return to_uint8_frames(decode(vae, latents, timestep, OFFICIAL_TILES))

    # Audio ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_audio(self, latents: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Normalized latents [1, 8, T, 16] -> (float32 waveform [2, S] on the CPU in [-1, 1], sample rate).

        S = (4T - 3) * rate / 100: each latent is 4 mel frames of 10 ms, less the 3 before the causal first one.
        """
        if self.audio_vae is None or self.vocoder is None:
            raise ValueError("these decoders were loaded without audio (Decoders.load(..., with_audio=True))")
        if latents.ndim != 4 or latents.shape[0] != 1:
            raise ValueError(f"expected audio latents [1, 8, T, 16], got {tuple(latents.shape)}")
        device, _ = _where(self.audio_vae)
        latents = denormalize_audio_latents(latents.to(device, torch.float32), self.audio_vae)
        mel = self.audio_vae.decode(latents).sample  # [1, 2, 4T - 3, 64]
        waveform = self.vocoder(mel.to(_where(self.vocoder)[0]))
        return waveform[0].float().cpu(), self.audio_sample_rate


def _whole_decode(vae: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | None, _layout) -> torch.Tensor:
    return vae.decode(latents, timestep).sample


def _where(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


# Normalization inverses ---------------------------------------------------------------------------------------------
def denormalize_video_latents(latents: torch.Tensor, vae: nn.Module) -> torch.Tensor:
    """Inverse of LatentEncoder.encode_video's (x - mean) * scaling_factor / std, per channel of [B, C, F, H, W]."""
    shape = (1, -1, 1, 1, 1)
    mean = vae.latents_mean.view(shape).to(latents)
    std = vae.latents_std.view(shape).to(latents)
    return latents * std / vae.config.scaling_factor + mean


def denormalize_audio_latents(latents: torch.Tensor, audio_vae: nn.Module) -> torch.Tensor:
    """Inverse of LatentEncoder.encode_audio: the statistics are per packed channel (8 channels x 16 bins)."""
    tokens = patchify_audio(latents) * audio_vae.latents_std.to(latents) + audio_vae.latents_mean.to(latents)
    return unpatchify_audio(tokens, latents.shape[1], latents.shape[3])


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Decoder output [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] on the CPU; truncated, as ltx-trainer."""
    scaled = ((pixels[0].float() + 1) / 2).clamp(0, 1) * 255
    return scaled.to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()


# Tiling -------------------------------------------------------------------------------------------------------------
def _spans(length: int, size: int, overlap: int, causal: bool) -> list[_Span]:
    """Overlapping tiles covering `length` latents (the last one may be shorter). `causal`: every tile after the
    first starts one latent earlier with a ramp one longer, since its first latent decodes to a single frame."""
    if length <= size:
        return [_Span(0, length, 0, 0)]
    stride = size - overlap
    count = (length - overlap - 1) // stride + 1
    spans = [_Span(i * stride, min(i * stride + size, length), overlap, overlap) for i in range(count)]
    spans[0] = _Span(0, spans[0].end, 0, overlap)
    spans[-1] = _Span(spans[-1].start, length, overlap, 0)
    if causal:
        spans[1:] = [_Span(s.start - 1, s.end, s.left_ramp + 1, s.right_ramp) for s in spans[1:]]
    return spans


def _ramp_mask(length: int, left: int, right: int, left_from_zero: bool) -> torch.Tensor:
    """1-D blend weights: linear fade-in over `left` samples, fade-out over `right`. Fade-ins of one tile and
    fade-outs of the previous one sum to 1 over an overlap of the same length."""
    mask = torch.ones(length)
    if left:
        fade_in = torch.linspace(0, 1, left + 1)[:-1] if left_from_zero else torch.linspace(0, 1, left + 2)[1:-1]
        mask[:left] = fade_in
    if right:
        mask[length - right :] *= torch.linspace(1, 0, right + 2)[1:-1]
    return mask


def _axis_tiles(length: int, size: int, overlap: int, scale: int, temporal: bool) -> list[tuple]:
    """(latent slice, pixel slice, blend weights) of each tile along one axis. In time, latent k > 0 decodes to
    frames 8k-7 .. 8k, so a tile of latents [s, e) yields frames 8s .. 8(e-1): its first frame (the end of latent
    s) stands alone and gets weight 0."""
    tiles = []
    for span in _spans(length, size, overlap, causal=temporal):
        if temporal:
            start, stop = span.start * scale, (span.end - 1) * scale + 1
            left = 0 if span.left_ramp == 0 else (span.left_ramp - 1) * scale + 1
        else:
            start, stop, left = span.start * scale, span.end * scale, span.left_ramp * scale
        mask = _ramp_mask(stop - start, left, span.right_ramp * scale, left_from_zero=temporal)
        tiles.append((slice(span.start, span.end), slice(start, stop), mask))
    return tiles


def tiled_decode(vae: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | None, layout: TileLayout):
    """Decode [1, C, F, H, W] tile by tile into a float32 buffer on the CPU (the device holds one tile at a time),
    each tile weighted by its ramps; returns the blend [1, 3, 8(F-1)+1, 32H, 32W]."""
    t_scale, s_scale = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    _, _, frames, height, width = latents.shape
    out_shape = ((frames - 1) * t_scale + 1, height * s_scale, width * s_scale)
    axes = [
        _axis_tiles(frames, layout.frames, layout.frames_overlap, t_scale, temporal=True),
        _axis_tiles(height, layout.size, layout.overlap, s_scale, temporal=False),
        _axis_tiles(width, layout.size, layout.overlap, s_scale, temporal=False),
    ]
    out = torch.zeros(1, vae.config.out_channels, *out_shape)
    for (t_in, t_out, t_mask), (h_in, h_out, h_mask), (w_in, w_out, w_mask) in itertools.product(*axes):
        pixels = vae.decode(latents[:, :, t_in, h_in, w_in], timestep).sample.float().cpu()
        out[:, :, t_out, h_out, w_out] += pixels * _outer(t_mask, h_mask, w_mask)
    # The tiles form a grid and the weights are separable, so the summed weight is the outer product of 1-D sums
    # (1 everywhere for the official layout, whose ramps are complementary).
    totals = []
    for axis, size in zip(axes, out_shape, strict=True):
        total = torch.zeros(size)
        for _, where, mask in axis:
            total[where] += mask
        totals.append(total)
    return out / _outer(*totals).clamp(min=1e-8)


def _outer(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1) * h.view(1, -1, 1) * w.view(1, 1, -1)
