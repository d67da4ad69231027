"""Write adapter layers as file tensors, and convert LTX-2 adapter files between the official/ComfyUI format and
musubi-tuner's.

official: `diffusion_model.<official module path>.<tensor>`, every scale folded into a factor, no `.alpha`:
          LoRA `lora_A.weight` / `lora_B.weight`; DoRA the same + `dora_scale` [out, 1] (ComfyUI's form);
          LoKr `lokr_w1` (or `lokr_w1_a` / `lokr_w1_b`) and `lokr_w2` (or `_a` / `_b`); LoHa `hada_w{1,2}_{a,b}`.
musubi:   `lora_unet_model_<official path, dots as underscores>.<tensor>`, `.alpha` written so the scale is 1:
          LoRA `lora_down.weight` / `lora_up.weight`; DoRA the same + `lora_magnitude_vector.weight` [out] (PEFT's
          magnitude); LoKr and LoHa with the same tensor names as official.

DoRA's two magnitudes differ by the base weight's row norms (`adapter_layers`), so converting a DoRA file needs
the base checkpoint (`base_weights`). The command line is `python -m ltx2_tuner.cli.convert_lora` (docs/commands.md,
docs/adapters.md); this module is the library part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ltx2_tuner.models.checkpoint import read_checkpoint_info
from ltx2_tuner.models.fp8 import FP8_DTYPE, SCALE_SUFFIX, dequantize
from ltx2_tuner.models.safetensors_io import read_tensors, save_atomically
from ltx2_tuner.networks.adapter_layers import AdapterLayer, DoraLayer, LohaLayer, LokrLayer
from ltx2_tuner.networks.lora_files import LoraFile, LoraFileError, read_lora_file
from ltx2_tuner.networks.musubi_names import official_to_musubi

BaseWeights = Callable[[str], torch.Tensor]  # official layer name -> its base weight [out, in]
_CHECKPOINT_PREFIX = "model."  # official checkpoints hold `model.diffusion_model.<path>.weight`


def _fold(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    return tensor if scale == 1.0 else (tensor.float() * scale).to(tensor.dtype)


def _factor_tensors(stem: str, name: str, factor, scale: float) -> dict[str, torch.Tensor]:
    if isinstance(factor, tuple):
        return {f"{stem}.{name}_a": _fold(factor[0], scale), f"{stem}.{name}_b": factor[1]}
    return {f"{stem}.{name}": _fold(factor, scale)}


def layer_tensors(
    name: str, layer: AdapterLayer, to: str, base_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of one layer in format `to` ("official" or "musubi"), in the layer's dtypes, scale folded.
    `base_weight` [out, in] is needed for a DoRA layer whose magnitude is in the other format's form."""
    musubi = to == "musubi"
    stem = official_to_musubi(name) if musubi else name
    if stem is None:
        raise LoraFileError(
            f"layer {name} has no musubi name (musubi covers the transformer's attention, feed-forward and "
            "projection layers); keep this file in the official format"
        )
    if isinstance(layer, LokrLayer):
        tensors = _factor_tensors(stem, "lokr_w1", layer.w1, layer.scale) | _factor_tensors(
            stem, "lokr_w2", layer.w2, 1.0
        )
        if musubi:  # musubi applies alpha / rank of the factored part (scale 1 when w2 is full): make it 1
            inner = layer.w2 if isinstance(layer.w2, tuple) else layer.w1
            tensors[f"{stem}.alpha"] = torch.tensor(float(inner[1].shape[0]) if isinstance(inner, tuple) else 1.0)
        return tensors
    if isinstance(layer, LohaLayer):
        tensors = {
            f"{stem}.hada_w1_a": _fold(layer.w1_a, layer.scale),
            f"{stem}.hada_w1_b": layer.w1_b,
            f"{stem}.hada_w2_a": layer.w2_a,
            f"{stem}.hada_w2_b": layer.w2_b,
        }
        if musubi:
            tensors[f"{stem}.alpha"] = torch.tensor(float(layer.rank))
        return tensors
    up = layer.folded_up(layer.up.dtype)
    if musubi:
        tensors = {f"{stem}.lora_down.weight": layer.down, f"{stem}.lora_up.weight": up}
        tensors[f"{stem}.alpha"] = torch.tensor(float(layer.rank))  # alpha = rank: B is unchanged
    else:
        tensors = {f"{stem}.lora_A.weight": layer.down, f"{stem}.lora_B.weight": up}
    if isinstance(layer, DoraLayer):
        tensors |= _dora_tensors(name, stem, layer, musubi, base_weight)
    return tensors


def _dora_tensors(name: str, stem: str, layer: DoraLayer, musubi: bool, base_weight) -> dict[str, torch.Tensor]:
    dtype = layer.up.dtype
    if musubi and layer.magnitude is not None:
        return {f"{stem}.lora_magnitude_vector.weight": layer.magnitude.reshape(-1)}
    if not musubi and layer.dora_scale is not None:
        return {f"{stem}.dora_scale": layer.dora_scale.reshape(-1, 1)}
    if base_weight is None:
        raise LoraFileError(
            f"layer {name}: converting a DoRA magnitude between musubi's and ComfyUI's form needs the base weights; "
            "pass the base model checkpoint (--base)"
        )
    weight = base_weight.float()
    if musubi:
        return {f"{stem}.lora_magnitude_vector.weight": layer.peft_magnitude(weight).to(dtype)}
    return {f"{stem}.dora_scale": layer.comfy_dora_scale(weight).to(dtype)}


def base_weights(checkpoint: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The float32 base weights of the official layers `names` from an official checkpoint (fp8 ones dequantized)."""
    info = read_checkpoint_info(checkpoint)
    keys = {name: f"{_CHECKPOINT_PREFIX}{name}.weight" for name in names}
    missing = [key for key in keys.values() if key not in info.header.tensors]
    if missing:
        raise LoraFileError(
            f"{checkpoint}: has no {missing[0]} (and {len(missing) - 1} more); pass the checkpoint the adapter was "
            "trained on"
        )
    scales = {key + SCALE_SUFFIX for key in keys.values() if key + SCALE_SUFFIX in info.header.tensors}
    tensors = dict(read_tensors(info.header, [*keys.values(), *scales]))
    weights = {}
    for name, key in keys.items():
        weight = tensors[key]
        if weight.dtype == FP8_DTYPE:
            weight = dequantize(weight, tensors.get(key + SCALE_SUFFIX), torch.float32)
        weights[name] = weight.float()
    return weights


def convert_tensors(lora: LoraFile, to: str, base: BaseWeights | None = None) -> dict[str, torch.Tensor]:
    """All tensors of `lora` in format `to`; `base` gives base weights for DoRA layers (see `layer_tensors`)."""
    tensors = {}
    for name, layer in lora.layers.items():
        weight = base(name) if base is not None and isinstance(layer, DoraLayer) else None
        try:
            tensors |= layer_tensors(name, layer, to, weight)
        except LoraFileError as error:
            raise LoraFileError(f"{lora.path}: {error}") from None
    return tensors


def to_official(lora: LoraFile, base: BaseWeights | None = None) -> dict[str, torch.Tensor]:
    """Official tensors, every scale folded, in the file's own dtypes."""
    return convert_tensors(lora, "official", base)


def to_musubi(lora: LoraFile, base: BaseWeights | None = None) -> dict[str, torch.Tensor]:
    """musubi tensors with alpha = rank, so the folded scale stays in the factors."""
    return convert_tensors(lora, "musubi", base)


CONVERTERS = {"official": to_official, "musubi": to_musubi}


def convert_lora_file(source: Path, target: Path, to: str, base_checkpoint: Path | None = None) -> int:
    """Read `source` (either format), write `target` in the format `to` atomically; return its tensor count.
    `base_checkpoint`: the model the adapter was trained on, needed for DoRA files only."""
    lora = read_lora_file(source)
    base = None
    if base_checkpoint is not None:
        dora = [name for name, layer in lora.layers.items() if isinstance(layer, DoraLayer)]
        weights = base_weights(base_checkpoint, dora) if dora else {}
        base = weights.__getitem__
    tensors = CONVERTERS[to](lora, base)
    algos = ",".join(sorted(lora.algos))
    metadata = {"format": f"ltx2-lora-{to}", "converted_from": Path(source).name, "ltx2_network_algo": algos}
    save_atomically(tensors, target, metadata)
    return len(tensors)
