"""Merging an adapter file into the transformer's base weights, for generation: `W += strength * scale * B @ A`
for LoRA, and ComfyUI's formulas for DoRA, LoKr and LoHa (`adapter_layers.py`; strength s on DoRA is
`W + s * (W_dora - W)`, as ComfyUI does).

Merged weights cost nothing per step (no adapter layers run), and several LoRAs merge one after another. Files in
the official/ComfyUI and musubi formats are read by `lora_files.read_lora_file`; module names map to the diffusers
backbone with the same `TRANSFORMER_KEYS.to_official` as `lora_ltx2`'s loader, so a file that loads for training
merges here. Training never merges: it keeps the LoRA as separate float32 layers (`lora_ltx2.add_lora`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.networks.adapter_layers import AdapterLayer
from ltx2_tuner.networks.lora_files import OFFICIAL_PREFIX, LoraFileError, read_lora_file
from ltx2_tuner.networks.lora_ltx2 import LoraLoadWarning


def merge_lora(backbone: nn.Module, path: Path, strength: float) -> int:
    """Add `strength` x the LoRA in `path` into `backbone`'s Linear weights; return the number of layers merged.

    The product is computed in float32 on the weight's device and cast back to the weight's dtype; biases are
    untouched. The file is always read and checked (so a wrong file fails at any strength), but strength 0 changes
    no weight (bit-identical base) and returns 0. LoraFileError, before any weight changes, for a file of which no
    layer is in `backbone` (a LoRA for another model) or a layer whose shape differs. Layers of the file that this
    build lacks (audio layers in a video-only build) are skipped with a LoraLoadWarning giving the counts.
    """
    path = Path(path)
    lora_file = read_lora_file(path)
    linears = {
        TRANSFORMER_KEYS.to_official(name, prefix=OFFICIAL_PREFIX): module
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear)
    }
    matched = sorted(set(lora_file.layers) & set(linears))
    if not matched:
        raise LoraFileError(
            f"{path}: none of its {len(lora_file.layers)} LoRA layers is a layer of this transformer (file: "
            f"{_examples(lora_file.layers)}); a LoRA for another model? Use a LoRA trained on this checkpoint's "
            "model family (LTX-2 or LTX-2.3)"
        )
    for name in matched:
        _check_shape(path, name, lora_file.layers[name], linears[name])
    skipped = set(lora_file.layers) - set(linears)
    if skipped:
        audio_layers = [name for name in skipped if "audio" in name]
        hint = ""
        if audio_layers:
            hint = "; audio layers need --ltx_mode av (or audio)"
        if len(audio_layers) < len(skipped):
            hint += "; video layers need --ltx_mode av (or video)"
        warnings.warn(
            f"{path}: {len(matched)} of {len(lora_file.layers)} LoRA layers merged; {len(skipped)} are not in this "
            f"transformer build and are skipped (e.g. {_examples(skipped)}){hint}",
            LoraLoadWarning,
            stacklevel=2,
        )
    if strength == 0:
        return 0
    with torch.no_grad():
        for name in matched:
            _merge_layer(lora_file.layers[name], linears[name].weight, strength)
    return len(matched)


def _check_shape(path: Path, name: str, layer: AdapterLayer, module: nn.Linear) -> None:
    in_file = layer.features
    if in_file != tuple(module.weight.shape):
        raise LoraFileError(
            f"{path}: layer {name.removeprefix(OFFICIAL_PREFIX)} maps {in_file[1]} -> {in_file[0]} features in the "
            f"file but {module.in_features} -> {module.out_features} in the model; the file is for another model "
            "(LTX-2 vs LTX-2.3?)"
        )


def _merge_layer(layer: AdapterLayer, weight: torch.Tensor, strength: float) -> None:
    # float32 sum: a bf16 delta loses the small adapter change's low bits before it meets the weight.
    weight.copy_(layer.merged(weight, strength).to(weight.dtype))


def _examples(names, count: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(name.removeprefix(OFFICIAL_PREFIX) for name in names[:count])
    return shown + (", ..." if len(names) > count else "")
