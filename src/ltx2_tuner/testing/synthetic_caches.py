"""Cache files written directly (no VAE, no Gemma), for trainer tests and benchmarks.

They have exactly the layout and fingerprints `ltx2_cache_latents.py` and the text cacher write, filled with seeded
random values, so training code can be tested in isolation and fast. Like real latents, each clip's latents have
structure (a clip-wide mean per channel plus smaller token-level detail), which a LoRA can learn from the caption.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.cache.store import source_stamp, write_cache
from ltx2_tuner.data.config import load_all_datasets, load_dataset_config
from ltx2_tuner.models.model_files import latent_space


def _structured(shape: tuple[int, ...], generator: torch.Generator, channel_dims=(0,)) -> torch.Tensor:
    """A clip-wide mean per channel (std 1.5) plus token-level detail (std 0.3)."""
    mean_shape = [size if dim in channel_dims else 1 for dim, size in enumerate(shape)]
    return 1.5 * torch.randn(mean_shape, generator=generator) + 0.3 * torch.randn(shape, generator=generator)


def write_synthetic_dataset(
    root: Path,
    stems: tuple[str, ...] = ("a", "b"),
    frames: int = 17,
    latent_size: tuple[int, int] = (2, 2),
    fps: float = 24.0,
    context_dims: tuple[int, int] = (32, 16),
    text_tokens: int = 128,
    with_audio: bool = True,
    version: str = "2.3",
    seed: int = 0,
    batch_size: int = 1,
) -> Path:
    """Write `root/dataset.toml`, placeholder media in `root/clips` and their caches; return the config path."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    config = root / "dataset.toml"
    config.write_text(
        f'[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\nbatch_size = {batch_size}\n'
        f"target_frames = [{frames}]\n"
    )
    for stem in stems:
        (root / "clips" / f"{stem}.mp4").write_bytes(stem.encode())
        (root / "clips" / f"{stem}.txt").write_text(f"clip {stem}", encoding="utf-8")
    (dataset,) = load_dataset_config(config)
    generator = torch.Generator().manual_seed(seed)
    latent_frames = 1 + (frames - 1) // 8
    audio_length = round(frames / fps * 25) + 1
    for stem in stems:
        key = naming.item_key(stem, 0, frames)
        fingerprint = {
            "source": source_stamp(root / "clips" / f"{stem}.mp4"),
            "checkpoint": {"version": latent_space(version)},
            "dataset": dataset_digest(dataset),
            "bucket": [latent_size[1] * 32, latent_size[0] * 32],
            "window": [0, frames],
            "fps": fps,
        }
        latents = _structured((128, latent_frames, *latent_size), generator)
        path = naming.latent_cache_path(dataset.cache_directory, key, 640, 360)
        write_cache(path, {naming.latents_key(latents): latents}, fingerprint)
        if with_audio:
            audio = _structured((8, audio_length, 16), generator, channel_dims=(0, 2))
            lengths = torch.tensor([audio_length], dtype=torch.int32)
            audio_fingerprint = {
                **fingerprint,
                "audio_checkpoint": None,
                "audio": "synthetic",
                "audio_preprocessing": "synthetic",
            }
            tensors = {naming.audio_latents_key(audio): audio, "audio_lengths_int32": lengths}
            write_cache(naming.audio_cache_path(dataset.cache_directory, key), tensors, audio_fingerprint)
        text = {
            "video_prompt_embeds_float32": torch.randn(text_tokens, context_dims[0], generator=generator),
            "audio_prompt_embeds_float32": torch.randn(text_tokens, context_dims[1], generator=generator),
            "prompt_attention_mask": torch.ones(text_tokens, dtype=torch.int64),
        }
        text_fingerprint = {
            "caption_sha256": hashlib.sha256(f"clip {stem}".encode()).hexdigest(),
            "mode": "av" if with_audio else "video",
            "connectors": {"version": version},
        }
        write_cache(naming.text_cache_path(dataset.cache_directory, stem), text, text_fingerprint)
    mode = "av" if with_audio else "video"
    _write_empty_prompt(dataset.cache_directory, mode, context_dims, text_tokens, version, seed)
    return config


def write_synthetic_text_caches(
    config: Path,
    mode: str = "audio",
    context_dims: tuple[int, int] = (32, 16),
    text_tokens: int = 128,
    version: str = "2.3",
    seed: int = 0,
) -> None:
    """Text caches for every media item of the datasets in `config` (validation datasets too), as the text cacher
    writes them in `mode` (video, av or audio: which embeddings), from each item's real caption, with seeded random
    embeddings per caption; and the empty prompt's cache of each training dataset (caption dropout)."""
    from ltx2_tuner.data.items import list_media, read_caption

    for dataset in load_all_datasets(config):
        for media in list_media(dataset):
            text, fingerprint = _text_cache(read_caption(media), mode, context_dims, text_tokens, version, seed)
            write_cache(naming.text_cache_path(dataset.cache_directory, media.stem), text, fingerprint)
        if not dataset.is_validation:
            _write_empty_prompt(dataset.cache_directory, mode, context_dims, text_tokens, version, seed)


def _text_cache(
    caption: str, mode: str, context_dims: tuple[int, int], text_tokens: int, version: str, seed: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, fingerprint) of a caption's text cache; the embeddings are seeded by `seed` and the caption."""
    generator = torch.Generator().manual_seed(seed + int(hashlib.sha256(caption.encode()).hexdigest()[:8], 16))
    text = {"prompt_attention_mask": torch.ones(text_tokens, dtype=torch.int64)}
    for modality, width in zip(("video", "audio"), context_dims, strict=True):
        if mode in (modality, "av"):
            text[f"{modality}_prompt_embeds_float32"] = torch.randn(text_tokens, width, generator=generator)
    fingerprint = {
        "caption_sha256": hashlib.sha256(caption.encode("utf-8")).hexdigest(),
        "mode": mode,
        "connectors": {"version": version},
    }
    return text, fingerprint


def _write_empty_prompt(
    cache_directory: Path, mode: str, context_dims: tuple[int, int], text_tokens: int, version: str, seed: int
) -> None:
    """The empty prompt's cache (cache.empty_prompt), from its own generator: the others' values do not change."""
    text, fingerprint = _text_cache("", mode, context_dims, text_tokens, version, seed)
    write_cache(naming.empty_prompt_cache_path(cache_directory), text, fingerprint)
