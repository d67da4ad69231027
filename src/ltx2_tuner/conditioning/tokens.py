"""Token construction for conditions, shared by training and generation so a LoRA meets the tokens it trained on.

Facts (official `training_strategies/flexible.py`; reference ltx-2.5-and-conditioning-modes.md B1-B2):
- an intrinsic condition marks tokens clean: latent = clean, timestep 0, out of the loss (L464-521). first_frame is
  latent frame 0, prefix/suffix the first/last `temporal_boundary` latent frames or audio steps (L523-541),
  spatial_crop a pixel box floor-divided by the VAE factor, clamped, tiled over all frames (L543-573), mask the
  stored mask > 0.5 (L505-508);
- a reference is prepended: its clean tokens (timestep 0, out of the loss) with their own positions, then the target
  (L597-673). Video reference positions are at the reference's own fps; a temporally subsampled reference (factor S)
  is shifted by -(S-1)/target_fps and clamped at 0, a spatially downscaled one (factor N) has height and width times N
  (L642-658). Audio reference positions start at 0 like the target's (L635-640);
- the scale factors are spatial H_t // H_r (uniform) and temporal (F_t - 1) / (F_r - 1) (L689-721).

Pure functions without randomness: callers draw the probabilities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ltx2_tuner.conditioning.spec import Condition
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models.latent_layout import VIDEO_SCALE_FACTORS, audio_positions, video_positions
from ltx2_tuner.models.transformer import ModalityInput

MASK_THRESHOLD = 0.5  # stored masks are binarised as inference does (official flexible.py L506-508)


@dataclass(frozen=True)
class TokenGrid:
    """One modality's latent layout, tokens in (frame, row, column) order."""

    frames: int  # latent frames (video) or latent steps (audio)
    height: int = 1  # latent rows (1 for audio)
    width: int = 1

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width


def condition_token_mask(
    condition: Condition,
    grid: TokenGrid,
    stored_mask: torch.Tensor | None = None,
    pixel_scale: int = VIDEO_SCALE_FACTORS[1],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[N] bool on `device` (a mask condition's: on the stored mask's), True on the tokens `condition` keeps clean.

    For "mask", `stored_mask` is [N], [F, H, W] (video) or [T] (audio), in [0, 1] with 1 = condition; extra leading
    dims (a batch) are kept: [B, F, H, W] -> [B, N]. `pixel_scale` is the VAE's spatial factor (spatial_crop).
    A prefix or suffix longer than the grid covers all of it.
    """
    n, per_frame = grid.num_tokens, grid.tokens_per_frame
    if condition.type == "mask":
        return _stored_token_mask(stored_mask, grid)
    clean = torch.zeros(n, dtype=torch.bool, device=device)
    if condition.type == "first_frame":
        clean[:per_frame] = True
    elif condition.type == "prefix":
        clean[: condition.temporal_boundary * per_frame] = True
    elif condition.type == "suffix":
        clean[max(n - condition.temporal_boundary * per_frame, 0) :] = True
    elif condition.type == "spatial_crop":
        y1, x1, y2, x2 = condition.region
        rows, columns = _latent_span(y1, y2, pixel_scale, grid.height), _latent_span(x1, x2, pixel_scale, grid.width)
        box = torch.zeros(grid.height, grid.width, dtype=torch.bool, device=device)
        box[rows, columns] = True
        clean = box.flatten().repeat(grid.frames)
    else:
        raise ValueError(f"{condition.type} is not an intrinsic condition: it has no token mask")
    return clean


def _latent_span(start: int, end: int, pixel_scale: int, size: int) -> slice:
    """Pixel bounds -> latent bounds, both floor-divided and clamped to [0, size] (official flexible.py L559-566)."""
    return slice(max(0, min(start // pixel_scale, size)), max(0, min(end // pixel_scale, size)))


def _stored_token_mask(stored_mask: torch.Tensor | None, grid: TokenGrid) -> torch.Tensor:
    if stored_mask is None:
        raise ValueError("a mask condition needs the sample's stored mask")
    shape = tuple(stored_mask.shape)
    if shape[-3:] == (grid.frames, grid.height, grid.width):
        leading = shape[:-3]
    elif shape[-1:] == (grid.num_tokens,):
        leading = shape[:-1]
    else:
        raise ValueError(f"stored mask of shape {list(shape)} does not fit the latent grid {grid}")
    return stored_mask.reshape(*leading, grid.num_tokens) > MASK_THRESHOLD


def reference_positions(
    ref_grid: TokenGrid,
    ref_fps: float | torch.Tensor,
    target_fps: float | torch.Tensor,
    spatial_factor: int = 1,
    temporal_factor: int = 1,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[B, 3, M, 2] positions of a video reference in the target's frame.

    `ref_fps` is the reference's own frame rate (the target's divided by `temporal_factor` when subsampled); fps may be
    floats or [B] tensors. Bounds are those of `video_positions`, then rescaled as the official does.
    """
    positions = video_positions(batch_size, ref_grid.frames, ref_grid.height, ref_grid.width, ref_fps, device)
    if temporal_factor != 1:
        # One target frame lasts 1/target_fps: the shift lines the reference's last frame up with the target's.
        target_fps = torch.as_tensor(target_fps, dtype=torch.float32, device=device).reshape(-1, 1, 1)
        positions[:, 0] = (positions[:, 0] - (temporal_factor - 1) / target_fps).clamp(min=0)
    if spatial_factor != 1:
        positions[:, 1:] *= spatial_factor
    return positions


def audio_reference_positions(num_steps: int, batch_size: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, 1, M, 2] positions of an audio reference: from 0, exactly as a target of the same length."""
    return audio_positions(batch_size, num_steps, device)


def prepend_reference(inputs: ModalityInput, ref_tokens: torch.Tensor, ref_positions: torch.Tensor) -> ModalityInput:
    """`inputs` with the reference tokens [B, M, C] first (clean, timestep 0), then the target's.

    The keyframes mask (if any) is extended with False: reference tokens are not keyframes. The loss keeps the last
    N (target) predictions, so no loss mask travels here.
    """
    batch, length, _ = ref_tokens.shape
    if ref_tokens.shape[0] != inputs.latent.shape[0] or ref_tokens.shape[2] != inputs.latent.shape[2]:
        raise ValueError(
            f"reference tokens {list(ref_tokens.shape)} do not match the target's {list(inputs.latent.shape)}"
        )
    if ref_positions.shape[:3] != (batch, inputs.positions.shape[1], length):
        raise ValueError(f"reference positions {list(ref_positions.shape)} do not fit tokens {list(ref_tokens.shape)}")
    keyframes = inputs.keyframes_mask
    if keyframes is not None:
        keyframes = torch.cat([keyframes.new_zeros((batch, length, *keyframes.shape[2:])), keyframes], dim=1)
    return dataclasses.replace(
        inputs,
        latent=torch.cat([ref_tokens.to(inputs.latent.dtype), inputs.latent], dim=1),
        timesteps=torch.cat([inputs.timesteps.new_zeros(batch, length), inputs.timesteps], dim=1),
        positions=torch.cat([ref_positions.to(inputs.positions.dtype), inputs.positions], dim=2),
        keyframes_mask=keyframes,
    )


def reference_scale_factors(target_grid: TokenGrid, ref_grid: TokenGrid, where: str) -> tuple[int, int]:
    """(spatial, temporal): how many times the target's latent grid is the reference's.

    Spatial must be one whole factor for height and width; temporal counts the frame groups after the causal first
    frame, (F_t - 1) / (F_r - 1), and must be whole (1 when either clip has one latent frame, as the official).
    Otherwise a ConfigError naming `where`.
    """
    target = f"{target_grid.frames}x{target_grid.height}x{target_grid.width}"
    ref = f"{ref_grid.frames}x{ref_grid.height}x{ref_grid.width}"
    fix = "cache references at the target's size or at the target's divided by one whole factor"
    spatial = target_grid.height // ref_grid.height if ref_grid.height else 0
    if (ref_grid.height * spatial, ref_grid.width * spatial) != (target_grid.height, target_grid.width) or not spatial:
        raise ConfigError(
            f"{where}: the reference latents ({ref} frames x rows x columns) do not scale uniformly to the target's "
            f"({target}); {fix}"
        )
    target_groups, ref_groups = target_grid.frames - 1, ref_grid.frames - 1
    if target_groups <= 0 or ref_groups <= 0:
        return spatial, 1
    if target_groups % ref_groups:
        raise ConfigError(
            f"{where}: the reference's {ref_grid.frames} latent frames do not subsample the target's "
            f"{target_grid.frames} by a whole factor ((F_t - 1) / (F_r - 1) = {target_groups}/{ref_groups}); {fix}"
        )
    return spatial, target_groups // ref_groups
