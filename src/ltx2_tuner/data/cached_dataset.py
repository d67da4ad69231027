"""Training batches from the cache files: video latents, audio sidecars and text encoder outputs, merged.

    batches = CachedBatches(load_dataset_config("dataset.toml"), mode="av", seed=42)
    batches.set_epoch(0)
    batch = batches[0]
    batch["latents"]        {"latents": [B, 128, F, H, W], "num_frames", "height", "width", "fps": [B]}
    batch["audio_latents"]  {"latents": [B, 8, T, 16], "lengths": [B]}                      (AV only)
    batch["conditions"]     {"video_prompt_embeds": [B, L, Dv], "audio_prompt_embeds": [B, L, Da] (AV),
                             "prompt_attention_mask": [B, L]}
    batch["items"]          cache keys of the batch, for messages

A batch never mixes datasets or shapes (latent frames x height x width, and audio length in AV mode). The order of
items and batches is shuffled per epoch from (seed, epoch). Every problem is found when the dataset is built: a
media file without caches, a stale cache, a missing audio sidecar or text cache, each naming the item and the command
to run. Facts: ../shared/spec/000_bbc565df5d3dfba0.txt "How caches are merged into a batch".
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.cache.store import read_fingerprint, source_stamp
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.items import list_media, read_caption
from ltx2_tuner.errors import CacheError

_WINDOW_KEY = re.compile(r"^(?P<stem>.+)_\d{5}-\d{3}$")
_DTYPE_SUFFIX = re.compile(r"_(bfloat16|float16|float32|float64|float8_e4m3fn|float8_e5m2)$")
_SHAPED_KEY = re.compile(r"^(?P<name>latents|audio_latents)_(?P<shape>\d+(x\d+)*)$")


@dataclass(frozen=True)
class CachedItem:
    key: str
    dataset: DatasetConfig
    latent_path: Path
    audio_path: Path | None
    text_path: Path
    fps: float
    shape: tuple[int, ...]  # latent (F, H, W), plus the audio length in AV mode: items of one shape batch together


def _plain_name(key: str) -> str:
    """Tensor key without its dtype suffix and shape: `latents_3x4x5_bfloat16` -> `latents`."""
    key = _DTYPE_SUFFIX.sub("", key)
    match = _SHAPED_KEY.match(key)
    return match["name"] if match else key


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _shape_from_keys(keys: list[str], name: str) -> tuple[int, ...]:
    for key in keys:
        match = _SHAPED_KEY.match(_DTYPE_SUFFIX.sub("", key))
        if match and match["name"] == name:
            return tuple(int(n) for n in match["shape"].split("x"))
    raise KeyError(name)


def _rerun(dataset_config: Path | None, tool: str, mode: str) -> str:
    config = f" --dataset_config {dataset_config}" if dataset_config else ""
    extra = " --ltx_mode av" if mode == "av" else ""
    return f"run `python {tool}{config} --ltx2_checkpoint ...{extra} --skip_existing`"


def scan_cached_items(
    datasets: list[DatasetConfig],
    mode: str,
    dataset_config: Path | None = None,
    model_version: str | None = None,
) -> list[CachedItem]:
    """The cached items of `datasets` for training in `mode`, after checking every cache is present and current."""
    latents_cmd = _rerun(dataset_config, "ltx2_cache_latents.py", mode)
    text_cmd = _rerun(dataset_config, "ltx2_cache_text_encoder_outputs.py", mode)
    items, dropped = [], []
    for dataset in datasets:
        digest = dataset_digest(dataset)
        by_stem = {media.stem: media for media in list_media(dataset)}
        found: dict[str, list[Path]] = defaultdict(list)
        ignored = 0
        for path in sorted(dataset.cache_directory.glob(f"*{naming.LATENT_SUFFIX}")):
            parsed = naming.parse_latent_name(path)
            if parsed is None:
                continue
            key = parsed[0]
            match = _WINDOW_KEY.match(key)
            stem = match["stem"] if match and match["stem"] in by_stem else key
            fingerprint = read_fingerprint(path)
            if stem not in by_stem or fingerprint is None or fingerprint.get("dataset") != digest:
                ignored += 1  # another dataset setting's or a removed file's cache
                continue
            media = by_stem[stem]
            if fingerprint.get("source") != source_stamp(media.path):
                raise CacheError(f"{path}: stale cache, {media.path} changed since it was cached; {latents_cmd}")
            cached_version = (fingerprint.get("checkpoint") or {}).get("version")
            if model_version and cached_version and cached_version != model_version:
                raise CacheError(
                    f"{path}: cached with an LTX-{cached_version} VAE but training uses LTX-{model_version}; "
                    f"{latents_cmd} with the training checkpoint"
                )
            if not found[stem]:
                _check_text_cache(naming.text_cache_path(dataset.cache_directory, stem), media, mode, model_version,
                                  text_cmd)  # fmt: skip
            found[stem].append(path)
            item = _cached_item(dataset, media, key, path, fingerprint, mode, latents_cmd)
            if item is None:
                dropped.append(key)
            else:
                items.append(item)
        missing = [str(by_stem[stem].path) for stem in by_stem if stem not in found]
        if missing:
            raise CacheError(
                f"{missing[0]}: no latent cache in {dataset.cache_directory}"
                + (f" (and {len(missing) - 1} more media files)" if len(missing) > 1 else "")
                + f"; {latents_cmd}"
            )
        if ignored:
            warnings.warn(
                f"{dataset.name}: ignored {ignored} cache file(s) made with other dataset settings or for removed "
                "media (ltx2_cache_latents.py --prune_cache deletes them)",
                stacklevel=2,
            )
    if dropped:
        warnings.warn(
            f"{len(dropped)} video window(s) have no audio and are left out of AV training: {', '.join(dropped[:10])}"
            + (" ..." if len(dropped) > 10 else ""),
            stacklevel=2,
        )
    if not items:
        raise CacheError(f"no cached items to train on; {latents_cmd}")
    return items


def _check_text_cache(text_path: Path, media, mode: str, model_version: str | None, text_cmd: str) -> None:
    """The text cache exists, fits the mode and model, and was made from the current caption."""
    if not text_path.is_file():
        raise CacheError(f"{text_path}: text encoder cache missing for {media.path.name}; {text_cmd}")
    fingerprint = read_fingerprint(text_path) or {}
    if mode == "av" and fingerprint.get("mode") == "video":
        raise CacheError(
            f"{text_path}: made with --ltx_mode video (no audio embeddings) but training is AV; {text_cmd}"
        )
    version = (fingerprint.get("connectors") or {}).get("version")
    if model_version and version and version != model_version:
        raise CacheError(
            f"{text_path}: made with LTX-{version} connectors but training uses LTX-{model_version}; {text_cmd}"
        )
    if "caption_sha256" in fingerprint:
        caption = read_caption(media, allow_empty=True)
        if hashlib.sha256(caption.encode("utf-8")).hexdigest() != fingerprint["caption_sha256"]:
            raise CacheError(f"{text_path}: stale, the caption of {media.path.name} changed; {text_cmd}")


def _cached_item(dataset, media, key, path, fingerprint, mode, latents_cmd) -> CachedItem | None:
    text_path = naming.text_cache_path(dataset.cache_directory, media.stem)
    shape = _shape_from_keys(_keys(path), "latents")
    audio_path = None
    if mode == "av" and dataset.kind == "video":
        audio_path = naming.audio_cache_path(dataset.cache_directory, key)
        audio_fingerprint = read_fingerprint(audio_path)
        if audio_fingerprint is None:
            raise CacheError(f"{audio_path}: audio latent cache missing for {key}; {latents_cmd}")
        if any(audio_fingerprint.get(k) != v for k, v in fingerprint.items()):
            raise CacheError(f"{audio_path}: stale audio cache (its video cache was made again); {latents_cmd}")
        with safe_open(str(audio_path), framework="pt") as f:
            length = int(f.get_tensor("audio_lengths_int32").reshape(-1)[0])
            audio_shape = _shape_from_keys(list(f.keys()), "audio_latents")
        if length == 0:
            return None  # the source has no audio (cached with --missing_audio skip)
        shape = (*shape, audio_shape[0])
    return CachedItem(key, dataset, path, audio_path, text_path, float(fingerprint["fps"]), shape)


def _load(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {_plain_name(key): f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)


def _conditions(text: dict[str, torch.Tensor], mode: str, video_context_dim: int | None) -> dict[str, torch.Tensor]:
    """The spec's condition keys; caches with only the compatibility keys `text`/`text_mask` are split."""
    if "video_prompt_embeds" in text:
        conditions = {"video_prompt_embeds": text["video_prompt_embeds"]}
        if mode == "av":
            conditions["audio_prompt_embeds"] = text["audio_prompt_embeds"]
        mask = text.get("prompt_attention_mask")
    else:
        joined = text["text"]
        if mode == "av":  # text = cat([video, audio], -1)
            split = video_context_dim or joined.shape[-1] // 2
            conditions = {"video_prompt_embeds": joined[..., :split], "audio_prompt_embeds": joined[..., split:]}
        else:
            conditions = {"video_prompt_embeds": joined}
        mask = text.get("text_mask")
    if mask is not None:
        conditions["prompt_attention_mask"] = mask
    return conditions


class CachedBatches(Dataset):
    """Batches of cached items for one epoch at a time (`set_epoch`); use with DataLoader(batch_size=None)."""

    def __init__(
        self,
        datasets: list[DatasetConfig],
        mode: str,
        seed: int = 0,
        dataset_config: Path | None = None,
        model_version: str | None = None,
        video_context_dim: int | None = None,
    ):
        if mode not in ("video", "av", "audio"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.seed, self.video_context_dim = mode, seed, video_context_dim
        self.items = scan_cached_items(datasets, mode, dataset_config, model_version)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle items within each (dataset, shape) group and the order of batches, from (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[tuple, list[CachedItem]] = defaultdict(list)
        for item in self.items:
            groups[(item.dataset.index, item.shape)].extend([item] * item.dataset.num_repeats)
        batches = []
        for (_, _), members in sorted(groups.items(), key=lambda kv: kv[0]):
            order = rng.permutation(len(members))
            size = members[0].dataset.batch_size
            shuffled = [members[i] for i in order]
            batches.extend(shuffled[start : start + size] for start in range(0, len(shuffled), size))
        self.epoch_batches = [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        return len(self.epoch_batches)

    def __getitem__(self, index: int) -> dict:
        return self.collate(self.epoch_batches[index])

    def collate(self, items: list[CachedItem]) -> dict:
        latents = torch.stack([_load(item.latent_path)["latents"] for item in items])
        texts = [_conditions(_load(item.text_path), self.mode, self.video_context_dim) for item in items]
        batch = {
            "latents": {
                "latents": latents,
                "num_frames": latents.shape[2],
                "height": latents.shape[3],
                "width": latents.shape[4],
                "fps": torch.tensor([item.fps for item in items], dtype=torch.float32),
            },
            "conditions": {key: torch.stack([text[key] for text in texts]) for key in texts[0]},
            "items": [item.key for item in items],
        }
        if items[0].audio_path is not None:  # AV mode, video items (image batches have no audio)
            audio = [_load(item.audio_path) for item in items]
            batch["audio_latents"] = {
                "latents": torch.stack([a["audio_latents"] for a in audio]),
                "lengths": torch.cat([a["audio_lengths_int32"].reshape(1) for a in audio]).long(),
            }
        return batch
