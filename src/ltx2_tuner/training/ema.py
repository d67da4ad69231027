"""An exponential moving average of the trainable (LoRA) weights, `--ema_decay`.

After every optimizer step t (1-based): ema <- d_t * ema + (1 - d_t) * weights, with the warm-up
d_t = min(decay, (1 + t) / (10 + t)) that diffusers' EMAModel and the musubi fork use, so the first steps are not
dominated by the untrained start. Decay 0 makes the EMA the weights themselves, bit for bit.

The average lives in float32 beside each parameter (on its device, and sharded like it under FSDP). `applied()`
swaps it into the parameters for code that reads the weights from the module (saving the LoRA, previews, the
validation loss) and swaps the trained weights back afterwards, exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def warmed_up_decay(decay: float, step: int) -> float:
    """The decay used after optimizer step `step` (1-based)."""
    return min(decay, (1 + step) / (10 + step))


class WeightEma:
    """The moving average of `params` (the network's trainable parameters), by parameter name for saving."""

    def __init__(self, named_params: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.params = named_params
        self.average = {name: param.detach().float().clone() for name, param in named_params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in, after optimizer step `step` (1-based)."""
        keep = warmed_up_decay(self.decay, step)
        for name, param in self.params.items():
            # mul/add rather than lerp: at decay 0 the result is the weight exactly (0 * avg + 1 * w).
            self.average[name].mul_(keep).add_(param.detach().float(), alpha=1.0 - keep)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Within: the parameters hold the EMA weights (in their own dtype); afterwards the trained ones again."""
        trained = {name: param.detach().clone() for name, param in self.params.items()}
        try:
            for name, param in self.params.items():
                param.copy_(self.average[name])
            yield
        finally:
            for name, param in self.params.items():
                param.copy_(trained[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.average)

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore a saved average (its names and shapes are checked by the caller against the parameters)."""
        for name, average in self.average.items():
            average.copy_(tensors[name])
