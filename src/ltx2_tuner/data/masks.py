"""Inpainting masks on the latent grid: video masks [F', H', W'] and audio masks [T], float32 in {0, 1}.

Convention (the official trainer's, `docs/training-modes.md` "Video Inpainting"): 1 = a conditioning token, kept
clean (timestep 0, no loss); 0 = a token the model generates. In a mask picture white (grey > 0.5) is kept and
black is regenerated.

Video masks follow the official preprocessing (reference ltx-2.5-and-conditioning-modes.md B3,
`scripts/process_videos.py` compute_video_masks): grey = mean of RGB in [0, 1] at the target's pixel size
(H'·32 x W'·32, here fitted to the bucket exactly as the clip is: scaled to cover, centre-cropped, so the mask lines
up with the frames), average-pooled 32x32, max-pooled over time, thresholded > 0.5. One deliberate difference: the
time pooling follows the VAE's causal frame groups (latent frame 0 = pixel frame 0 alone, latent k = frames
8k-7..8k), where the official code pools frames 8k..8k+7 into latent k, 7 frames off the latents they mark.
Audio masks: a tensor file or an audio file whose amplitude envelope (|sample| averaged over channels) is the mask,
nearest-resampled to the T latent steps of the target, thresholded > 0.5 (official compute_audio_masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ltx2_tuner.data.config import IMAGE_EXTENSIONS
from ltx2_tuner.errors import MediaError

SPATIAL_FACTOR = 32  # video VAE: pixels per latent, each side
TEMPORAL_FACTOR = 8  # video VAE: frames per latent frame after the first
THRESHOLD = 0.5  # > THRESHOLD marks a conditioning (clean) token
# Changes whenever the pooling rules change, so cached masks made with older rules are made again.
VIDEO_MASK_RULES = "grey-mean/avg32/causal-max8/gt0.5"
AUDIO_MASK_RULES = "envelope-or-tensor/nearest/gt0.5"


def pool_video_mask(grey: torch.Tensor) -> torch.Tensor:
    """[F, H, W] grey levels in [0, 1] (F = 8k+1, H and W multiples of 32) -> [1 + k, H/32, W/32] float32 {0, 1}."""
    frames, height, width = grey.shape
    if (frames - 1) % TEMPORAL_FACTOR or height % SPATIAL_FACTOR or width % SPATIAL_FACTOR:
        raise ValueError(f"mask pixels must be [8k+1, 32a, 32b], got {list(grey.shape)}")
    spatial = torch.nn.functional.avg_pool2d(grey.float()[:, None], SPATIAL_FACTOR)[:, 0]  # [F, H', W']
    later = spatial[1:].reshape(-1, TEMPORAL_FACTOR, *spatial.shape[1:]).amax(dim=1)
    return (torch.cat([spatial[:1], later]) > THRESHOLD).float()


def load_video_mask(path: Path, times_s: Sequence[float], size: tuple[int, int]) -> torch.Tensor:
    """The latent mask of a clip window: `path` is a mask video (read at the window's frame times `times_s`) or an
    image (applied to every frame); `size` = the target's (width, height) bucket. -> [F', H', W'] float32."""
    from ltx2_tuner.data.images import load_image
    from ltx2_tuner.data.video import read_video_frames

    if path.suffix.lower() in IMAGE_EXTENSIONS:
        pixels = np.broadcast_to(load_image(path, size=size)[None], (len(times_s), size[1], size[0], 3))
    else:
        pixels = read_video_frames(path, times_s, size=size)
    grey = torch.from_numpy(np.ascontiguousarray(pixels)).float().mean(dim=-1) / 255.0  # [F, H, W]
    return pool_video_mask(grey)


def read_audio_mask_signal(path: Path) -> torch.Tensor:
    """The raw mask signal [L] of an audio mask file: a tensor (.pt: a tensor or a dict with "mask"; .npy;
    .safetensors: "mask" or its only tensor), flattened; or an audio file's envelope |x| averaged over channels at
    its own sample rate."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt":
            raw = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(raw, dict):
                raw = raw.get("mask", next(iter(raw.values()), None))
        elif suffix == ".npy":
            raw = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            raw = tensors.get("mask", next(iter(tensors.values())) if len(tensors) == 1 else None)
        else:
            return _audio_envelope(path)
    except (OSError, ValueError, RuntimeError, StopIteration) as error:
        raise MediaError(
            f"{path}: cannot read the audio mask ({error}); save a 1-D tensor as .pt, .npy or .safetensors"
        ) from None
    if not isinstance(raw, torch.Tensor) or raw.numel() == 0:
        raise MediaError(f'{path}: no mask tensor in the file; save one 1-D tensor (or a "mask" entry)')
    return raw.float().flatten()


def _audio_envelope(path: Path) -> torch.Tensor:
    from ltx2_tuner.data.audio import load_audio_clip, probe_audio

    info = probe_audio(path)
    clip = load_audio_clip(path, 0.0, info.duration_s, info.sample_rate, warn_padding=False)
    return clip.waveform[:, : clip.valid_samples].abs().mean(dim=0)


def resample_audio_mask(signal: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[L] mask signal -> [num_steps] float32 {0, 1}: nearest resampling over the whole signal, then > 0.5."""
    resampled = torch.nn.functional.interpolate(signal.float()[None, None], size=num_steps, mode="nearest")[0, 0]
    return (resampled > THRESHOLD).float()
