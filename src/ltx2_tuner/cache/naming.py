"""Cache file names and tensor keys, as the spec fixes them (musubi-tuner's LTX-2 layout).

    cache_directory/
      000001_00000-049_1024x0576_ltx2.safetensors   video latents of frames 0..48 of 000001.mp4 (1024x576 source)
      000001_00000-049_ltx2_audio.safetensors       its audio latents (AV)
      000001_ltx2_te.safetensors                    text encoder outputs, shared by all windows of 000001
      photo_0768x1024_ltx2.safetensors              an image: no window in the name
      000001_00000-049_ltx2_ref.safetensors         its reference clip's latents (IC-LoRA), same frame window
      000001_00000-049_ltx2_mask.safetensors        its inpainting mask on the target's latent grid
      voice_ltx2_ref_audio.safetensors              an audio item's reference audio latents
      voice_ltx2_audio_mask.safetensors             an audio item's mask on its audio latent steps
      ltx2_empty_prompt_te.safetensors              the empty prompt's text encoder outputs (caption dropout)

Tensor keys: `latents_{F}x{H}x{W}_{dtype}` ([128, F, H, W] latent dims), `audio_latents_{T}x{mel}x{C}_{dtype}`
([C=8, T, mel=16]) and `audio_lengths_int32`, `video_prompt_embeds_{dtype}`, `audio_prompt_embeds_{dtype}`,
`prompt_attention_mask`, `text_{dtype}`, `text_mask`. dtype is torch's name (`bfloat16`, `float32`).
Partner files: the reference holds `latents_{F}x{H}x{W}_{dtype}` ([128, F, H, W]), the reference audio
`audio_latents_{T}x{mel}x{C}_{dtype}` and `audio_lengths_int32`, the masks `mask_{F}x{H}x{W}` and `audio_mask_{T}`
(float32, 1 = kept clean as conditioning, 0 = generated).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

LATENT_SUFFIX = "_ltx2.safetensors"
AUDIO_SUFFIX = "_ltx2_audio.safetensors"
TEXT_SUFFIX = "_ltx2_te.safetensors"
REFERENCE_SUFFIX = "_ltx2_ref.safetensors"
MASK_SUFFIX = "_ltx2_mask.safetensors"
REFERENCE_AUDIO_SUFFIX = "_ltx2_ref_audio.safetensors"
AUDIO_MASK_SUFFIX = "_ltx2_audio_mask.safetensors"
# Not `{stem}` + a suffix above, so no media file's cache can have this name and no scan takes it for an item.
EMPTY_PROMPT_NAME = "ltx2_empty_prompt_te.safetensors"
# The cache file of each partner kind (data.items.PARTNER_KINDS).
PARTNER_SUFFIXES = {"reference": REFERENCE_SUFFIX, "mask": MASK_SUFFIX, "reference_audio": REFERENCE_AUDIO_SUFFIX,
                    "audio_mask": AUDIO_MASK_SUFFIX}  # fmt: skip
_LATENT_NAME = re.compile(r"^(?P<key>.+)_(?P<width>\d{4,})x(?P<height>\d{4,})_ltx2\.safetensors$")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def item_key(stem: str, window_start: int | None = None, window_frames: int | None = None) -> str:
    """`stem` for images, `stem_{start:05d}-{frames:03d}` for a video window."""
    return stem if window_start is None else f"{stem}_{window_start:05d}-{window_frames:03d}"


def latent_cache_path(cache_directory: Path, key: str, source_width: int, source_height: int) -> Path:
    """The video/image latent file; the size in the name is the source's (displayed) size, not the bucket."""
    return cache_directory / f"{key}_{source_width:04d}x{source_height:04d}{LATENT_SUFFIX}"


def audio_cache_path(cache_directory: Path, key: str) -> Path:
    return cache_directory / f"{key}{AUDIO_SUFFIX}"


def partner_cache_path(cache_directory: Path, key: str, kind: str) -> Path:
    """The cache file of an item's `kind` partner (reference, mask, reference_audio, audio_mask)."""
    return cache_directory / f"{key}{PARTNER_SUFFIXES[kind]}"


def text_cache_path(cache_directory: Path, stem: str) -> Path:
    return cache_directory / f"{stem}{TEXT_SUFFIX}"


def empty_prompt_cache_path(cache_directory: Path) -> Path:
    """The empty prompt's text cache of a dataset (what a sample with a dropped caption trains on)."""
    return cache_directory / EMPTY_PROMPT_NAME


def parse_latent_name(path: Path) -> tuple[str, int, int] | None:
    """(item key, source width, source height) of a latent cache file name, or None for other files."""
    match = _LATENT_NAME.match(path.name)
    return (match["key"], int(match["width"]), int(match["height"])) if match else None


def latents_key(latents: torch.Tensor) -> str:
    frames, height, width = latents.shape[-3:]
    return f"latents_{frames}x{height}x{width}_{dtype_name(latents.dtype)}"


def audio_latents_key(latents: torch.Tensor) -> str:
    channels, length, mel_bins = latents.shape
    return f"audio_latents_{length}x{mel_bins}x{channels}_{dtype_name(latents.dtype)}"


def mask_key(mask: torch.Tensor) -> str:
    """`mask_{F}x{H}x{W}` for a video mask, `audio_mask_{T}` for an audio one."""
    return ("mask_" if mask.dim() == 3 else "audio_mask_") + "x".join(str(n) for n in mask.shape)
