"""A sample request's conditioning tokens, per modality: the clean tokens that stay fixed (first frame, prefix,
suffix, mask, outpainting crop: any per-token mask) and the reference clip placed beside the target (IC-LoRA).

As the official validation runner applies them (reference ltx-2.5-and-conditioning-modes.md §C1 and B2): clean
tokens start equal to the conditioning latents, get timestep 0 and are reset in the guided x0 after every step (the
denoise mask, `_post_process_latent`), so they never move. Reference tokens are clean with timestep 0, never stepped,
and left out of the output; their RoPE positions use the reference's own frame rate, shifted and scaled by the
temporal and spatial factors the LoRA was trained with. The tokens and positions come from `conditioning.tokens`,
the functions training uses, so a LoRA sees at sampling time what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ltx2_tuner.conditioning.tokens import (
    TokenGrid,
    audio_reference_positions,
    reference_positions,
    reference_scale_factors,
)
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import patchify_audio, patchify_video

LATENT_CHANNELS = 128
AUDIO_CHANNELS, AUDIO_MEL_BINS = 8, 16


@dataclass(frozen=True)
class CleanTokens:
    """Tokens [1, N, 128] (float32) and the mask [N] bool of those that stay clean."""

    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class ReferenceTokens:
    """Reference tokens [1, M, 128] (float32) and their positions [1, 3, M, 2] (video) or [1, 1, M, 2] (audio)."""

    tokens: torch.Tensor
    positions: torch.Tensor


def video_clean_tokens(request, grid: tuple[int, int, int]) -> CleanTokens | None:
    """The video's clean tokens: `video_clean_latents` where `video_clean_mask` is set, and the first latent frame
    from `first_frame_latent` (I2V; it wins over the clean latents on frame 0)."""
    frames, height, width = grid
    count = frames * height * width
    found = None
    if request.video_clean_latents is not None or request.video_clean_mask is not None:
        latents = _require_pair(request.video_clean_latents, request.video_clean_mask, "video")
        expected = (1, LATENT_CHANNELS, frames, height, width)
        if latents.ndim != 5 or tuple(latents.shape) != expected:
            raise ConfigError(
                f"video clean latents of shape {list(latents.shape)} for a {request.width}x{request.height}x"
                f"{request.num_frames} sample: expected {list(expected)} (encode the condition at the sample's size)"
            )
        found = CleanTokens(patchify_video(latents.float()), _mask(request.video_clean_mask, count, "video"))
    image = request.first_frame_latent
    if image is None:
        return found
    image = image[0] if image.ndim == 5 and image.shape[0] == 1 else image
    if tuple(image.shape) != (LATENT_CHANNELS, 1, height, width):
        raise ConfigError(
            f"first-frame latent of shape {list(image.shape)} for a {request.width}x{request.height} sample: "
            f"expected [{LATENT_CHANNELS}, 1, {height}, {width}] (encode the image at the sample's size)"
        )
    # The first latent frame's tokens come first (frame-major layout).
    first = height * width
    tokens = torch.zeros(1, count, LATENT_CHANNELS) if found is None else found.tokens.clone()
    mask = torch.zeros(count, dtype=torch.bool) if found is None else found.mask.clone()
    tokens[:, :first] = patchify_video(image[None].float())
    mask[:first] = True
    return CleanTokens(tokens, mask)


def audio_clean_tokens(request, count: int) -> CleanTokens | None:
    """The generated audio's clean tokens (`audio_clean_latents` where `audio_clean_mask` is set), or None."""
    if request.audio_clean_latents is None and request.audio_clean_mask is None:
        return None
    latents = _require_pair(request.audio_clean_latents, request.audio_clean_mask, "audio")
    expected = (1, AUDIO_CHANNELS, count, AUDIO_MEL_BINS)
    if latents.ndim != 4 or tuple(latents.shape) != expected:
        raise ConfigError(
            f"audio clean latents of shape {list(latents.shape)}: expected {list(expected)} (as many latents as the "
            "generated audio, 25 per second)"
        )
    return CleanTokens(patchify_audio(latents.float()), _mask(request.audio_clean_mask, count, "audio"))


def video_reference_tokens(request, grid: tuple[int, int, int], device) -> ReferenceTokens | None:
    """The video reference's tokens and positions (`conditioning.tokens.reference_positions`), checking that its
    latent shape is the target's divided by the spatial and temporal factors."""
    latents = request.video_reference_latents
    if latents is None:
        return None
    frames, height, width = grid
    spatial, temporal = request.reference_spatial_factor, request.reference_temporal_factor
    if spatial < 1 or temporal < 1:
        raise ConfigError(f"reference factors {spatial} (spatial), {temporal} (temporal): must be at least 1")
    if latents.ndim != 5 or latents.shape[:2] != (1, LATENT_CHANNELS):
        raise ConfigError(f"video reference latents of shape {list(latents.shape)}: expected [1, 128, F, H, W]")
    ref_grid = TokenGrid(*latents.shape[2:])
    where = "video reference latents"
    found = reference_scale_factors(TokenGrid(frames, height, width), ref_grid, where)
    # one latent frame on either side carries no temporal factor (the official reads it as 1)
    if found[0] != spatial or (found[1] != temporal and min(frames, ref_grid.frames) > 1):
        raise ConfigError(
            f"{where} of {ref_grid.frames}x{ref_grid.height}x{ref_grid.width} (frames x rows x columns) for a "
            f"{frames}x{height}x{width} target: factors {found[0]} (spatial), {found[1]} (temporal), not the "
            f"{spatial}, {temporal} asked for; read the reference at the output size / spatial factor, its frames "
            "subsampled by the temporal factor"
        )
    fps = request.reference_fps or request.frame_rate / temporal
    positions = reference_positions(ref_grid, fps, request.frame_rate, spatial, temporal, batch_size=1, device=device)
    return ReferenceTokens(patchify_video(latents.float()), positions)


def audio_reference_tokens(request, device) -> ReferenceTokens | None:
    """The audio reference's tokens and positions (from 0, like the target's: official flexible.py)."""
    latents = request.audio_reference_latents
    if latents is None:
        return None
    if latents.ndim != 4 or latents.shape[0] != 1 or tuple(latents.shape[1::2]) != (AUDIO_CHANNELS, AUDIO_MEL_BINS):
        raise ConfigError(f"audio reference latents of shape {list(latents.shape)}: expected [1, 8, T, 16]")
    tokens = patchify_audio(latents.float())
    return ReferenceTokens(tokens, audio_reference_positions(tokens.shape[1], batch_size=1, device=device))


def _require_pair(latents, mask, modality: str) -> torch.Tensor:
    if latents is None or mask is None:
        raise ConfigError(f"{modality}_clean_latents and {modality}_clean_mask go together: give both or neither")
    return latents


def _mask(mask: torch.Tensor, count: int, modality: str) -> torch.Tensor:
    mask = torch.as_tensor(mask).reshape(-1).cpu()
    if mask.dtype != torch.bool or mask.numel() != count:
        raise ConfigError(
            f"{modality} clean mask of {mask.numel()} {mask.dtype} values: expected {count} bool values, one per "
            f"{modality} token (True = clean)"
        )
    return mask
