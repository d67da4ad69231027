"""Read a cached item's latents back as tensors, for decoding them (`inspect_cache --decode`)."""

from __future__ import annotations

import torch

from ltx2_tuner.cache.cached_items import CachedItem, plain_name
from ltx2_tuner.models.safetensors_io import read_header, read_tensors


def read_item_latents(item: CachedItem) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(video latents [1, 128, F, H, W] or None, audio latents [1, 8, T, 16] or None) of a scanned item, in float32
    and in the cache's normalized space; the audio is cut to its valid steps (the padding of a short soundtrack
    is not sound)."""
    video = audio = None
    if item.latent_path is not None:
        video = _named(item.latent_path, "latents").unsqueeze(0)
    if item.audio_path is not None:
        audio = _named(item.audio_path, "audio_latents").unsqueeze(0)
        valid = int(_named(item.audio_path, "audio_lengths_int32").reshape(-1)[0])
        if 0 < valid < audio.shape[2]:
            audio = audio[:, :, :valid]
    return video, audio


def _named(path, name: str) -> torch.Tensor:
    """The tensor of `path` whose key is `name` once its shape and dtype suffixes are taken off (plain_name)."""
    header = read_header(path)
    (key,) = [key for key in header.tensors if plain_name(key) == name]
    ((_, tensor),) = read_tensors(header, [key])
    return tensor.float() if tensor.is_floating_point() else tensor
