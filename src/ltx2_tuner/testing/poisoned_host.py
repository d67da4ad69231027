"""A stand-in for the GPU in streaming tests: host copies full of NaN, real values only in "device" copies.

Block swap (and Gemma's layer streaming, which is block swap with every layer swapped) keeps one host copy of each
streamed tensor and copies it to the device before use. Here `host_copy` returns a NaN tensor and remembers the
real values, and `device_copy` returns the real values: any computation that reads a streamed weight outside its
turn (forward, backward or recompute) produces NaN. The device copies' storages are watched, so a test can count
how many are alive at once.
"""

from __future__ import annotations

import math

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from ltx2_tuner.models import block_swap


class PoisonedHost:
    """Installs itself in `models.block_swap` through pytest's `monkeypatch`; see the module docstring."""

    def __init__(self, monkeypatch):
        self.real: dict[int, torch.Tensor] = {}  # poisoned host copy's data_ptr -> the real values
        self.copies: list[tuple[object, StorageWeakRef]] = []  # (label of the copy, its storage)
        monkeypatch.setattr(block_swap, "host_copy", self.host_copy)
        monkeypatch.setattr(block_swap, "device_copy", self.device_copy)

    def host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        poisoned = torch.full_like(tensor, math.nan)
        self.real[poisoned.data_ptr()] = tensor.detach().clone()
        return poisoned

    def device_copy(self, host: torch.Tensor, device, non_blocking: bool) -> torch.Tensor:
        self.before_copy()
        result = self.real[host.data_ptr()].to(device, copy=True)
        self.copies.append((self.label(host), StorageWeakRef(result.untyped_storage())))
        return result

    def alive(self) -> list:
        """The labels of the device copies that anything (a parameter, a saved tensor) still holds."""
        return [label for label, ref in self.copies if not ref.expired()]

    def label(self, host: torch.Tensor) -> object:
        """What a device copy of `host` is recorded as (subclasses: the block it belongs to)."""
        return None

    def before_copy(self) -> None:
        """Called before every device copy (subclasses check their bounds here)."""
