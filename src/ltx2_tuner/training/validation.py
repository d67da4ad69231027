"""The validation loss: the training loss on held-out `[[validation_datasets]]`, made comparable between steps and runs.

Every validation batch is evaluated once at the middle sigma of each of the official per-sigma loss buckets
(0.125, 0.375, 0.625, 0.875), with noise (and first-frame / condition draws) from a generator seeded by the batch
and the sigma alone: the same weights give the same value at any step of any run. Nothing here touches the
training's random streams (its generator, the global RNGs) or its data order, and the model runs in eval mode
(no LoRA dropout) without gradients, so a run with validation trains the same LoRA as one without.

Logged like the training loss: `val_loss`, `val_loss_video`, `val_loss_audio`, `val_loss_sigma_<bucket>`.
Processes split the batches; under FSDP every process runs the same number of forwards (a process without a batch
of its own repeats one with weight 0), as the sharded forward needs every process.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import torch

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.roles import ModalityRoles
from ltx2_tuner.training.metrics import SIGMA_BUCKETS, sigma_bucket
from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs

VALIDATION_SIGMAS = tuple((low + high) / 2 for low, high in itertools.pairwise(SIGMA_BUCKETS))
_SEED = 20_251_204  # fixed: the noise does not depend on --seed, so runs with different seeds compare


def _generator(batch_index: int, sigma_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(_SEED + batch_index * len(VALIDATION_SIGMAS) + sigma_index)


class ValidationLoss:
    """Evaluates the validation batches (epoch 0's order, no caption dropout) on demand."""

    def __init__(self, batches: CachedBatches, roles: ModalityRoles, flow: FlowSettings):
        self.batches, self.roles, self.flow = batches, roles, flow
        self.keys = ["val_loss", *(f"val_loss_{m}" for m in roles.generated_modalities)]
        self.keys += [f"val_loss_sigma_{sigma_bucket(sigma)}" for sigma in VALIDATION_SIGMAS]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, accelerator, dtype: torch.dtype) -> dict[str, float]:
        """{metric: mean over samples} of the current weights (all processes call this together)."""
        rank, world = accelerator.process_index, accelerator.num_processes
        sums = torch.zeros(2 * len(self.keys), dtype=torch.float64)  # per key: sum of losses, number of samples
        was_training = model.training
        model.eval()
        try:
            for turn in range(math.ceil(len(self.batches) / world)):
                index = turn * world + rank
                weight = 1.0 if index < len(self.batches) else 0.0  # a repeat that keeps FSDP's forwards paired
                batch = self.batches[index % len(self.batches)]
                for sigma_index, sigma in enumerate(VALIDATION_SIGMAS):
                    flow = replace(self.flow, fixed_sigma=sigma)
                    inputs = prepare_inputs(batch, self.roles, flow, _generator(index, sigma_index),
                                            accelerator.device, dtype)  # fmt: skip
                    with accelerator.autocast():
                        predictions = model(inputs.video, inputs.audio)
                        _, parts = compute_loss(predictions, inputs, flow)
                    self._add(sums, sigma, parts, weight)
        finally:
            model.train(was_training)
        totals = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        return {key: (totals[2 * i] / totals[2 * i + 1]).item()
                for i, key in enumerate(self.keys) if totals[2 * i + 1] > 0}  # fmt: skip

    def _add(self, sums: torch.Tensor, sigma: float, parts: dict[str, torch.Tensor], weight: float) -> None:
        weights = {"video": self.flow.video_loss_weight, "audio": self.flow.audio_loss_weight}
        per_sample = sum(weights[m] * loss.double().cpu() for m, loss in parts.items())
        found = {"val_loss": per_sample, f"val_loss_sigma_{sigma_bucket(sigma)}": per_sample}
        found |= {f"val_loss_{m}": loss.double().cpu() for m, loss in parts.items()}
        for i, key in enumerate(self.keys):
            if key in found:
                sums[2 * i] += weight * found[key].sum()
                sums[2 * i + 1] += weight * found[key].numel()
