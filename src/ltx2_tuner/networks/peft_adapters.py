"""The PEFT side of our adapters: which PEFT config makes each algorithm, and copying one adapted layer to and from
its file form (`adapter_layers`), scales folded.

PEFT keeps each scale apart (LoRA/DoRA: alpha / r on B @ A; LoKr: alpha / r on kron(w1, w2); LoHa: alpha / r on
the Hadamard product); a file keeps it folded into one factor (B, w1 or w1_a, hada_w1_a), so a file layer has scale 1
whatever rank and alpha it was trained with, and loading divides by the network's own scale again.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig
from peft.config import PeftConfig
from torch import nn

from ltx2_tuner.networks.adapter_layers import AdapterLayer, DoraLayer, LohaLayer, LokrLayer, LoraLayer

ADAPTER = "default"
ALGOS = ("lora", "dora", "lokr", "loha")
# Parameter-name markers of the trainable adapter tensors PEFT adds (LoRA/DoRA, LoKr, LoHa).
PARAMETER_MARKERS = (".lora_", ".lokr_", ".hada_")


def peft_config(spec) -> PeftConfig:
    """The PEFT config for a `lora_ltx2.LoraSpec`; the init makes the adapter start as a no-op."""
    targets = list(spec.targets)
    if spec.algo in ("lora", "dora"):
        return LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=targets,
            init_lora_weights=True,  # B = 0: training starts from the base model
            use_dora=spec.algo == "dora",
        )
    common = {
        "r": spec.rank,
        "alpha": spec.alpha,
        "rank_dropout": spec.rank_dropout,
        "module_dropout": spec.module_dropout,
        "target_modules": targets,
        "init_weights": True,  # LoKr: w1 = 0; LoHa: w2_b = 0
    }
    if spec.algo == "lokr":
        return LoKrConfig(decompose_both=spec.decompose_both, decompose_factor=spec.factor, **common)
    return LoHaConfig(**common)


def module_algo(module: nn.Module) -> str | None:
    """The algorithm of a PEFT-adapted layer, None for any other module."""
    if ADAPTER in getattr(module, "lora_A", {}):
        return "dora" if module.use_dora.get(ADAPTER, False) else "lora"
    if ADAPTER in getattr(module, "hada_w1_a", {}):
        return "loha"
    if ADAPTER in getattr(module, "lokr_w1", {}) or ADAPTER in getattr(module, "lokr_w1_a", {}):
        return "lokr"
    return None


def adapted_layers(backbone: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(diffusers module name, PEFT layer, algo) of every adapted layer."""
    for name, module in backbone.named_modules():
        algo = module_algo(module)
        if algo is not None:
            yield name, module, algo


def base_weight(module: nn.Module) -> torch.Tensor:
    return module.get_base_layer().weight


def _factor(module: nn.Module, name: str):
    """LoKr: the full `name` parameter, or its (`name`_a, `name`_b) pair."""
    if ADAPTER in getattr(module, name):
        return getattr(module, name)[ADAPTER]
    return getattr(module, f"{name}_a")[ADAPTER], getattr(module, f"{name}_b")[ADAPTER]


def export_layer(module: nn.Module, dtype: torch.dtype = torch.float32) -> AdapterLayer:
    """The layer as a file holds it: tensors in `dtype`, the scale folded into one factor (DoRA keeps PEFT's
    magnitude; the file writer turns it into ComfyUI's dora_scale with the base weight)."""
    algo, scale = module_algo(module), module.scaling[ADAPTER]

    def cast(tensor: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        return (tensor.detach().float() * factor).to(dtype).contiguous()

    if algo in ("lora", "dora"):
        down, up = cast(module.lora_A[ADAPTER].weight), cast(module.lora_B[ADAPTER].weight, scale)
        if algo == "lora":
            return LoraLayer(down, up, 1.0)
        return DoraLayer(down, up, 1.0, magnitude=cast(module.lora_magnitude_vector[ADAPTER].weight))
    if algo == "loha":
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        w1_a, w1_b, w2_a, w2_b = (getattr(module, name)[ADAPTER] for name in names)
        return LohaLayer(cast(w1_a, scale), cast(w1_b), cast(w2_a), cast(w2_b), 1.0)
    w1, w2 = _factor(module, "lokr_w1"), _factor(module, "lokr_w2")
    w1 = (cast(w1[0], scale), cast(w1[1])) if isinstance(w1, tuple) else cast(w1, scale)
    w2 = (cast(w2[0]), cast(w2[1])) if isinstance(w2, tuple) else cast(w2)
    return LokrLayer(w1, w2, 1.0)


def structure_problem(layer: AdapterLayer, module: nn.Module) -> str | None:
    """Why a file layer cannot be copied into a LoKr/LoHa network layer one to one (None: it can). LoRA/DoRA are
    checked by `lora_ltx2`, which also takes a lower rank."""
    algo = module_algo(module)
    if algo == "loha":
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        ours = [tuple(getattr(module, name)[ADAPTER].shape) for name in names]
        theirs = [tuple(t.shape) for t in (layer.w1_a, layer.w1_b, layer.w2_a, layer.w2_b)]
        return None if ours == theirs else f"hada factors {theirs} in the file, {ours} in the network"
    for name, factor in (("lokr_w1", layer.w1), ("lokr_w2", layer.w2)):
        ours = _factor(module, name)
        shapes = [tuple(t.shape) for t in (ours if isinstance(ours, tuple) else (ours,))]
        theirs = [tuple(t.shape) for t in (factor if isinstance(factor, tuple) else (factor,))]
        full_from_pair = not isinstance(ours, tuple) and LokrLayer._shape(factor) == shapes[0]
        if shapes != theirs and not full_from_pair:  # a factored file factor multiplies out into a full one
            return f"{name} {theirs} in the file, {shapes} in the network"
    return None


def import_layer(layer: AdapterLayer, module: nn.Module) -> None:
    """Copy a checked LoKr/LoHa file layer into the PEFT layer (inside torch.no_grad)."""
    rescale = layer.scale / module.scaling[ADAPTER]  # the file's scale, less the one PEFT applies itself
    if isinstance(layer, LohaLayer):
        for name, tensor, factor in (
            ("hada_w1_a", layer.w1_a, rescale),
            ("hada_w1_b", layer.w1_b, 1.0),
            ("hada_w2_a", layer.w2_a, 1.0),
            ("hada_w2_b", layer.w2_b, 1.0),
        ):
            getattr(module, name)[ADAPTER].copy_(tensor.float() * factor)
        return
    for name, factor, scale in (("lokr_w1", layer.w1, rescale), ("lokr_w2", layer.w2, 1.0)):
        ours = _factor(module, name)
        if isinstance(ours, tuple):
            ours[0].copy_(factor[0].float() * scale)
            ours[1].copy_(factor[1].float())
        else:
            ours.copy_(LokrLayer._matrix(factor, ours.device) * scale)
