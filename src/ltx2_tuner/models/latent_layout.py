"""Token layout of LTX-2 latents: patchify / unpatchify and RoPE positions in the official `[start, end)` format.

Video latents [B, 128, F, H, W] become [B, F*H*W, 128] tokens in (frame, row, column) order; audio latents
[B, 8, T, 16] become [B, T, 128] tokens, channel-major (`c f`). Positions are per-token bounds: video
[B, 3, N, 2] with time in seconds (causal first frame) and height/width in pixels; audio [B, 1, N, 2] in seconds.
Facts: ../shared/reference/official-ltx-trainer.md §3.8, §5.1-5.2.
"""

from __future__ import annotations

import torch

VIDEO_SCALE_FACTORS = (8, 32, 32)  # pixels per latent step along (time, height, width)
AUDIO_LATENT_DOWNSAMPLE = 4  # mel frames per audio latent
AUDIO_HOP_LENGTH = 160
AUDIO_SAMPLE_RATE_HZ = 16000
AUDIO_LATENTS_PER_SECOND = AUDIO_SAMPLE_RATE_HZ / AUDIO_HOP_LENGTH / AUDIO_LATENT_DOWNSAMPLE  # 25
_CAUSAL_OFFSET = 1  # the first latent frame/mel frame covers one input frame only


def patchify_video(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, F*H*W, C]."""
    return latents.flatten(2).transpose(1, 2)


def unpatchify_video(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """[B, F*H*W, C] -> [B, C, F, H, W] (latent frames, latent height, latent width)."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, num_frames, height, width)


def patchify_audio(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, T, M] -> [B, T, C*M] (channel-major)."""
    return latents.permute(0, 2, 1, 3).flatten(2)


def unpatchify_audio(tokens: torch.Tensor, channels: int = 8, mel_bins: int = 16) -> torch.Tensor:
    """[B, T, C*M] -> [B, C, T, M]."""
    batch, length, _ = tokens.shape
    return tokens.reshape(batch, length, channels, mel_bins).permute(0, 2, 1, 3)


def video_positions(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    fps: float | torch.Tensor,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[B, 3, F*H*W, 2] float32 bounds for a latent grid of F x H x W at `fps` (a float or a [B] tensor).

    Time: latent frame f spans pixel frames [8f - 7, 8f + 1) clamped at 0 (frame 0 is [0, 1)), divided by fps.
    Height and width: latent index times 32, in pixels.
    """
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in (num_frames, height, width)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # [3, N]
    bounds = torch.stack([grid, grid + 1], dim=-1)  # [3, N, 2] in latent units
    scale = torch.tensor(VIDEO_SCALE_FACTORS, dtype=torch.float32, device=device).view(3, 1, 1)
    pixels = (bounds * scale).unsqueeze(0).repeat(batch_size, 1, 1, 1)
    time = (pixels[:, 0] + _CAUSAL_OFFSET - VIDEO_SCALE_FACTORS[0]).clamp(min=0)
    fps = torch.as_tensor(fps, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    pixels[:, 0] = time / fps
    return pixels


def audio_positions(batch_size: int, num_latents: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, 1, T, 2] float32 bounds in seconds: latent k spans mel frames [4k - 3, 4k + 1) clamped at 0."""
    index = torch.arange(num_latents, dtype=torch.float32, device=device)
    bounds = torch.stack([index, index + 1], dim=-1) * AUDIO_LATENT_DOWNSAMPLE
    mel = (bounds + _CAUSAL_OFFSET - AUDIO_LATENT_DOWNSAMPLE).clamp(min=0)
    seconds = mel * AUDIO_HOP_LENGTH / AUDIO_SAMPLE_RATE_HZ
    return seconds.expand(batch_size, -1, -1).unsqueeze(1)


def audio_latent_count(num_frames: int, fps: float) -> int:
    """Audio latents covering `num_frames` video frames at `fps` (25 per second, as LTX2Pipeline rounds it)."""
    return round(num_frames / fps * AUDIO_LATENTS_PER_SECOND)
