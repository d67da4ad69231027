"""Test support: training where each item's sigma, noise and first-frame draw depend on the item alone.

The trainer draws a batch's noise from its process's generator (seed + rank), so runs that split the same samples
differently (one batch of 2, two accumulated batches of 1, two processes with a batch of 1 each) see different
noise. With `prepare_inputs_per_item` patched in, every item's inputs come from a generator seeded by its cache key,
whatever batch, step or process it lands in, so those runs optimize the same loss and must reach the same LoRA.

As a script (what `accelerate launch` runs): `python _per_item_noise.py TRAIN_FLAGS...` trains with the patch.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib

import torch

from ltx2_tuner.training import step
from ltx2_tuner.training.step import StepInputs

CALLS = {"items": 0}


def _item(batch: dict, index: int) -> dict:
    """Batch `batch` cut down to its item `index` (tensors and lists along their first dimension)."""

    def cut(value):
        if isinstance(value, dict):
            return {key: cut(v) for key, v in value.items()}
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value[index : index + 1]
        if isinstance(value, list):
            return value[index : index + 1]
        return value  # sizes: num_frames, height, width

    return cut(batch)


def _join(values: list):
    """Items' StepInputs (or their fields) joined into one batch. Where some items have a mask and others None
    (nothing masked), the None ones become all-ones masks."""
    first = next((value for value in values if value is not None), None)
    if first is None:
        return None
    if dataclasses.is_dataclass(first):
        return type(first)(**{f.name: _join([getattr(v, f.name) for v in values]) for f in dataclasses.fields(first)})
    return torch.cat([torch.ones_like(first) if value is None else value for value in values])


def prepare_inputs_per_item(batch, mode, flow, generator, device, dtype) -> StepInputs:
    """`step.prepare_inputs` on each item alone, drawing from a generator seeded by the item's key (not from
    `generator`), joined into one batch."""
    parts = []
    for index, key in enumerate(batch["items"]):
        item_generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        parts.append(step.prepare_inputs(_item(batch, index), mode, flow, item_generator, device, dtype))
        CALLS["items"] += 1
    return _join(parts)


def patch_trainer(monkeypatch=None) -> None:
    """Make the trainer use `prepare_inputs_per_item` (with pytest's monkeypatch when given)."""
    from ltx2_tuner.training import trainer

    assert trainer.prepare_inputs is step.prepare_inputs, "the trainer no longer calls step.prepare_inputs by name"
    if monkeypatch is not None:
        monkeypatch.setattr(trainer, "prepare_inputs", prepare_inputs_per_item)
    else:
        trainer.prepare_inputs = prepare_inputs_per_item


if __name__ == "__main__":
    from ltx2_tuner.cli._common import run
    from ltx2_tuner.cli.train_network import main

    patch_trainer()
    code = run(main, sys.argv[1:])
    print(f"per-item inputs prepared: {CALLS['items']}")
    sys.exit(code)
