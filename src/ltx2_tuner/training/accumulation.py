"""Gradient accumulation within an epoch, counted as accelerate counts it over a DataLoader it prepared.

Batches of an epoch form groups of `accumulation`; the last group may be smaller and still makes an optimizer step
(accelerate syncs at the end of the dataloader), so no batch is dropped and no group spans two epochs:

    5 batches, accumulation 2: [0 1] [2 3] [4] -> 3 optimizer steps per epoch
"""

from __future__ import annotations


def steps_per_epoch(batches: int, accumulation: int) -> int:
    """Optimizer steps in an epoch of `batches` batches (per process)."""
    return -(-batches // accumulation)


def group_size(index: int, batches: int, accumulation: int) -> int:
    """How many batches the group of batch `index` (0-based within the epoch) holds."""
    return min(accumulation, batches - (index - index % accumulation))


def ends_group(index: int, batches: int, accumulation: int) -> bool:
    """Whether batch `index` is the last of its group, i.e. an optimizer step follows it."""
    return (index + 1) % accumulation == 0 or index + 1 == batches
