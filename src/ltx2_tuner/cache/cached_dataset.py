"""Training batches from the cache files: video latents, audio sidecars and text encoder outputs, merged.

    batches = CachedBatches(load_dataset_config("dataset.toml"), roles_for("av"), seed=42)
    batches.set_epoch(0)
    batch = batches[0]
    batch["latents"]        {"latents": [B, 128, F, H, W], "num_frames", "height", "width", "fps": [B]} (video present)
    batch["audio_latents"]  {"latents": [B, 8, T, 16], "lengths": [B]}                      (audio present)
    batch["conditions"]     {"video_prompt_embeds": [B, L, Dv], "audio_prompt_embeds": [B, L, Da] (of the present
                             modalities), "prompt_attention_mask": [B, L]}
    batch["items"]          cache keys of the batch, for messages
    batch["reference_latents"]        {"latents": [B, 128, F_r, H_r, W_r], "fps": [B]}  (datasets with references)
    batch["reference_audio_latents"]  {"latents": [B, 8, T_r, 16], "lengths": [B]}
    batch["video_mask"]     [B, F, H, W] float32, 1 = a conditioning (clean) token, 0 = generated (datasets with masks)
    batch["audio_mask"]     [B, T] float32, same meaning
    batch["caption_dropped"]  [B] bool, True = this sample's conditions are the empty prompt's (only when the
                              batch's dataset drops captions)

Which modalities are present comes from the modality roles (roles.py); T2A batches have no "latents".
A batch never mixes datasets or shapes (latent frames x height x width, audio length when audio is present, the
reference's shape when there is one). The order of
items and batches is shuffled per epoch from (seed, epoch). Every cache file is checked when the dataset is built
(`cached_items.scan_cached_items`), so loading a batch cannot meet a missing key or a truncated file made before the
run. Facts: ../shared/spec/000_bbc565df5d3dfba0.txt "How caches are merged into a batch".

Caption dropout: each sample of a dataset whose rate (its `caption_dropout_rate`, else the `caption_dropout_rate`
argument) is above 0 trains on the empty prompt's embeddings (cache.empty_prompt) with that probability. The draw
depends on (seed, epoch, batch index) only, never on the trainer's generator or a global RNG, so it is the same in
every DataLoader worker and after a resume; at rate 0 nothing is drawn. Validation datasets never drop captions.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset

from ltx2_tuner.cache.cached_items import CachedItem, plain_name, scan_cached_items
from ltx2_tuner.cache.empty_prompt import check_empty_prompt_caches
from ltx2_tuner.cache.naming import empty_prompt_cache_path
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.errors import CacheError
from ltx2_tuner.roles import ModalityRoles, roles_for

_DROPOUT_STREAM = 0xD0C  # tells the dropout draw's seed apart from the shuffle's


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {plain_name(key): f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, SafetensorError) as error:  # changed on disk after the scan
        raise CacheError(f"{path}: cannot read this cache file any more ({error}); cache it again") from None
    # Checked here, on tensors already in memory: at scan time it would mean reading every cache before step 1.
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise CacheError(
            f"{path}: holds NaN or Inf values (nothing was trained on it); delete it and cache it again "
            "(ltx2_cache_latents.py / ltx2_cache_text_encoder_outputs.py --skip_existing)"
        )
    return tensors


def _conditions(text: dict[str, torch.Tensor], roles: ModalityRoles, video_context_dim: int | None) -> dict:
    """The spec's condition keys of the present modalities; caches with only the compatibility keys `text`/`text_mask`
    (video, or cat([video, audio], -1) from an AV cache) are split."""
    if "video_prompt_embeds" in text or "audio_prompt_embeds" in text:
        conditions = {f"{m}_prompt_embeds": text[f"{m}_prompt_embeds"] for m in roles.present_modalities}
        mask = text.get("prompt_attention_mask")
    else:
        joined = text["text"]
        if roles.present("audio"):
            split = video_context_dim or joined.shape[-1] // 2
            conditions = {"video_prompt_embeds": joined[..., :split], "audio_prompt_embeds": joined[..., split:]}
            conditions = {key: conditions[key] for key in (f"{m}_prompt_embeds" for m in roles.present_modalities)}
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
        roles: ModalityRoles | str,
        seed: int = 0,
        dataset_config: Path | None = None,
        model_version: str | None = None,
        video_context_dim: int | None = None,
        caption_dropout_rate: float = 0.0,
    ):
        if not 0 <= caption_dropout_rate <= 1:
            raise ValueError(f"caption_dropout_rate must be in [0, 1], not {caption_dropout_rate}")
        self.roles = roles_for(roles) if isinstance(roles, str) else roles
        self.seed, self.video_context_dim = seed, video_context_dim
        self.caption_dropout_rate = caption_dropout_rate
        self.items = scan_cached_items(datasets, self.roles, dataset_config, model_version, video_context_dim)
        dropping = {d: rate for d in datasets if (rate := self.dropout_rate(d)) > 0}
        check_empty_prompt_caches(dropping, self.items, self.roles, dataset_config, video_context_dim)
        self._empty_conditions: dict[Path, dict] = {}  # per cache folder, loaded at its first dropped caption
        self.set_epoch(0)

    def dropout_rate(self, dataset: DatasetConfig) -> float:
        """The probability that a sample of `dataset` trains on the empty prompt: the dataset's own rate, else the
        argument's (validation datasets hold 0)."""
        own = dataset.caption_dropout_rate
        return self.caption_dropout_rate if own is None else own

    def set_epoch(self, epoch: int) -> None:
        """Shuffle items within each (dataset, shape) group and the order of batches, from (seed, epoch)."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[tuple, list[CachedItem]] = defaultdict(list)
        for item in self.items:
            dataset = item.dataset  # training and validation datasets are numbered apart
            groups[(dataset.is_validation, dataset.index, item.shape)].extend([item] * dataset.num_repeats)
        batches = []
        for _, members in sorted(groups.items(), key=lambda kv: kv[0]):
            order = rng.permutation(len(members))
            size = members[0].dataset.batch_size
            shuffled = [members[i] for i in order]
            batches.extend(shuffled[start : start + size] for start in range(0, len(shuffled), size))
        self.epoch_batches = [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        return len(self.epoch_batches)

    def __getitem__(self, index: int) -> dict:
        items = self.epoch_batches[index]
        return self.collate(items, self.dropped_captions(index, items))

    def dropped_captions(self, index: int, items: list[CachedItem]) -> np.ndarray | None:
        """[B] bool: which samples of batch `index` of this epoch train on the empty prompt; None when its dataset
        drops no captions (nothing is drawn). A function of (seed, epoch, index) alone."""
        rate = self.dropout_rate(items[0].dataset)  # a batch never mixes datasets
        if rate == 0:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index, _DROPOUT_STREAM])
        return rng.random(len(items)) < rate

    def collate(self, items: list[CachedItem], dropped: np.ndarray | None = None) -> dict:
        """The batch of `items`; `dropped` ([B] bool) marks the samples that get the empty prompt's conditions."""
        flags = [False] * len(items) if dropped is None else dropped.tolist()
        texts = [
            self._empty_prompt(item) if drop else self._caption(item) for item, drop in zip(items, flags, strict=True)
        ]
        batch = {
            "conditions": {key: torch.stack([text[key] for text in texts]) for key in texts[0]},
            "items": [item.key for item in items],
        }
        if dropped is not None:
            batch["caption_dropped"] = torch.tensor(flags, dtype=torch.bool)
        if items[0].latent_path is not None:  # video present
            latents = torch.stack([_load(item.latent_path)["latents"] for item in items])
            batch["latents"] = {
                "latents": latents,
                "num_frames": latents.shape[2],
                "height": latents.shape[3],
                "width": latents.shape[4],
                "fps": torch.tensor([item.fps for item in items], dtype=torch.float32),
            }
        if items[0].audio_path is not None:  # audio present (image batches have none)
            audio = [_load(item.audio_path) for item in items]
            batch["audio_latents"] = {
                "latents": torch.stack([a["audio_latents"] for a in audio]),
                "lengths": torch.cat([a["audio_lengths_int32"].reshape(1) for a in audio]).long(),
            }
        return batch | _partner_entries(items)

    def _caption(self, item: CachedItem) -> dict[str, torch.Tensor]:
        return _conditions(_load(item.text_path), self.roles, self.video_context_dim)

    def _empty_prompt(self, item: CachedItem) -> dict[str, torch.Tensor]:
        folder = item.dataset.cache_directory
        if folder not in self._empty_conditions:
            text = _load(empty_prompt_cache_path(folder))
            self._empty_conditions[folder] = _conditions(text, self.roles, self.video_context_dim)
        return self._empty_conditions[folder]


def _partner_entries(items: list[CachedItem]) -> dict:
    """The batch keys of the items' references and masks (a dataset has them for all its items or none)."""
    entries = {}
    if items[0].reference_path is not None:
        entries["reference_latents"] = {
            "latents": torch.stack([_load(item.reference_path)["latents"] for item in items]),
            "fps": torch.tensor([item.reference_fps for item in items], dtype=torch.float32),
        }
    if items[0].reference_audio_path is not None:
        audio = [_load(item.reference_audio_path) for item in items]
        entries["reference_audio_latents"] = {
            "latents": torch.stack([a["audio_latents"] for a in audio]),
            "lengths": torch.cat([a["audio_lengths_int32"].reshape(1) for a in audio]).long(),
        }
    if items[0].mask_path is not None:
        entries["video_mask"] = torch.stack([_load(item.mask_path)["mask"] for item in items])
    if items[0].audio_mask_path is not None:
        entries["audio_mask"] = torch.stack([_load(item.audio_mask_path)["audio_mask"] for item in items])
    return entries
