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

Which modalities are present comes from the modality roles (roles.py); T2A batches have no "latents".
A batch never mixes datasets or shapes (latent frames x height x width, audio length when audio is present, the
reference's shape when there is one). The order of
items and batches is shuffled per epoch from (seed, epoch). Every cache file is checked when the dataset is built
(`cached_items.scan_cached_items`), so loading a batch cannot meet a missing key or a truncated file made before the
run. Facts: ../shared/spec/000_bbc565df5d3dfba0.txt "How caches are merged into a batch".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset

from ltx2_tuner.cache.cached_items import CachedItem, plain_name, scan_cached_items
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.errors import CacheError
from ltx2_tuner.roles import ModalityRoles, roles_for


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {plain_name(key): f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, SafetensorError) as error:  # changed on disk after the scan
        raise CacheError(f"{path}: cannot read this cache file any more ({error}); cache it again") from None


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
    ):
        self.roles = roles_for(roles) if isinstance(roles, str) else roles
        self.seed, self.video_context_dim = seed, video_context_dim
        self.items = scan_cached_items(datasets, self.roles, dataset_config, model_version, video_context_dim)
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
        texts = [_conditions(_load(item.text_path), self.roles, self.video_context_dim) for item in items]
        batch = {
            "conditions": {key: torch.stack([text[key] for text in texts]) for key in texts[0]},
            "items": [item.key for item in items],
        }
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
