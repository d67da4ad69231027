"""The loss of a base model, or base + LoRA file, on every cached batch with fixed (seeded) noise and sigmas: how the
training tests measure what a LoRA learned."""

from __future__ import annotations

import torch

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.models import load_transformer
from ltx2_tuner.networks import lora_ltx2
from ltx2_tuner.roles import ModalityRoles, roles_for
from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs


def fixed_batch_loss(
    checkpoint,
    config,
    roles: ModalityRoles | str,
    lora_file=None,
    network_args=None,
    rank: int = 4,
    rounds: int = 4,
    conditions=(),
) -> float:
    """Mean over `rounds` passes of every batch of the summed loss of the generated modalities (uniform sigmas, no
    first-frame conditioning, the given conditions); the LoRA is built with `network_args` (default: the mode's
    preset)."""
    roles = roles_for(roles) if isinstance(roles, str) else roles
    model = load_transformer(checkpoint, mode=roles.build)
    if lora_file is not None:
        targets = lora_ltx2.select_targets(model.backbone, roles, list(network_args or ()))
        lora_ltx2.add_lora(model.backbone, lora_ltx2.LoraSpec(rank, float(rank), 0.0, targets))
        lora_ltx2.load_lora_weights(lora_file, model.backbone)
    batches = CachedBatches(load_dataset_config(config), roles)
    generator = torch.Generator().manual_seed(1234)
    flow = FlowSettings(sampler="uniform", first_frame_p=0.0, conditions=tuple(conditions))
    losses = []
    with torch.no_grad():
        for _ in range(rounds):
            for index in range(len(batches)):
                inputs = prepare_inputs(batches[index], roles, flow, generator, torch.device("cpu"), torch.float32)
                _, parts = compute_loss(model(inputs.video, inputs.audio), inputs, flow)
                assert set(parts) <= set(roles.generated_modalities)
                losses.append(sum(part.mean().item() for part in parts.values()))
    return sum(losses) / len(losses)
