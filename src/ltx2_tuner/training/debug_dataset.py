"""`ltx2_train_network.py --debug_dataset`: what the trainer would train on, then exit without loading the model.

Prints the bucket plan (per dataset: items, shape groups with their item and batch counts), the batches per epoch and
optimizer steps per epoch this run would make, and the first batch's tensor shapes. The caches are scanned and
checked exactly as training checks them (every problem stops here, with the same lines), so a clean report means
training can start; only the transformer's config is read from the checkpoint, not its weights.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import torch

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.data.config import load_dataset_config, load_validation_datasets
from ltx2_tuner.models import context_dims
from ltx2_tuner.models.checkpoint import CONFIG_SECTION
from ltx2_tuner.models.configs import transformer_config
from ltx2_tuner.models.model_files import model_files
from ltx2_tuner.roles import roles_for
from ltx2_tuner.training import accumulation as acc


def debug_dataset(args) -> list[str]:
    """The report's lines (also printed); raises the trainer's errors for caches it could not train on."""
    roles = roles_for(args.ltx_mode, args.frozen_modality)
    info = model_files(args.ltx2_checkpoint).transformer
    config = SimpleNamespace(**transformer_config(info.configs[CONFIG_SECTION["transformer"]]))
    video_width = context_dims(config)[0]
    lines = [f"{args.dataset_config}: LTX-{info.version}, mode {roles.name} ({', '.join(roles.present_modalities)})"]
    datasets = load_dataset_config(args.dataset_config)
    batches = CachedBatches(datasets, roles, args.seed, args.dataset_config, info.version, video_width,
                            caption_dropout_rate=args.caption_dropout_rate)  # fmt: skip
    lines += _plan(batches, datasets)
    steps = acc.steps_per_epoch(len(batches), args.gradient_accumulation_steps)
    lines.append(
        f"per epoch (one process): {len(batches)} batches, {steps} optimizer steps with gradient accumulation "
        f"{args.gradient_accumulation_steps}"
    )
    validation = load_validation_datasets(args.dataset_config)
    if validation:
        held_out = CachedBatches(validation, roles, 0, args.dataset_config, info.version, video_width)
        lines.append("validation datasets:")
        lines += _plan(held_out, validation)
    lines.append("first batch (epoch 0):")
    lines += [f"  {name}: {shape}" for name, shape in _shapes(batches[0])]
    for line in lines:
        print(line)
    return lines


def _plan(batches: CachedBatches, datasets) -> list[str]:
    lines = []
    batch_counts = Counter((batch[0].dataset.name, batch[0].shape) for batch in batches.epoch_batches)
    for dataset in datasets:
        items = [item for item in batches.items if item.dataset is dataset]
        groups = Counter(item.shape for item in items)
        rate = batches.dropout_rate(dataset)
        dropout = f", caption dropout {rate:g}" if rate else ""
        lines.append(f"  {dataset.name}: {len(items)} cached items x {dataset.num_repeats} repeats, batch size "
                     f"{dataset.batch_size}{dropout}")  # fmt: skip
        for shape, count in sorted(groups.items()):
            batch_count = batch_counts[(dataset.name, shape)]  # as the epoch is batched (repeats included)
            lines.append(f"    shape {_describe(shape, batches.roles)}: {count} items, {batch_count} batches")
    return lines


def _describe(shape: tuple[int, ...], roles) -> str:
    """`(F, H, W[, T][, reference...])` in words: latent frames x height x width, audio latent steps."""
    parts = []
    rest = list(shape)
    if roles.present("video") and len(rest) >= 3:
        frames, height, width = rest[:3]
        parts.append(f"{frames}x{height}x{width} latents ({(frames - 1) * 8 + 1} frames, {width * 32}x{height * 32})")
        rest = rest[3:]
    if roles.present("audio") and rest:
        parts.append(f"{rest[0]} audio latent steps ({rest[0] / 25:.2f} s)")
        rest = rest[1:]
    if rest:
        parts.append(f"reference {'x'.join(map(str, rest))}")
    return ", ".join(parts) or "image"


def _shapes(batch: dict, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for key, value in batch.items():
        if isinstance(value, dict):
            found += _shapes(value, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor):
            found.append((f"{prefix}{key}", f"{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"))
        elif key == "items":
            found.append((f"{prefix}{key}", ", ".join(value)))
        else:
            found.append((f"{prefix}{key}", repr(value)))
    return found
