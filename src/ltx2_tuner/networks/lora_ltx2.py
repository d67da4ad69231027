"""`lora_ltx2`: LoRA for the LTX-2 transformer (PEFT underneath), saved in the official / ComfyUI format.

Targets are chosen by a preset and optional regexes (`--network_args preset=full include=... exclude=...`):

| preset | targets (q/k/v/out projections unless noted) |
|---|---|
| `video_attn` (default, video mode) | video self-attention `attn1`, video text cross-attention `attn2` |
| `av_attn` (default, AV mode) | those + `audio_attn1`, `audio_attn2`, `audio_to_video_attn`, `video_to_audio_attn` |
| `audio_attn` (default, audio mode) | `audio_attn1`, `audio_attn2` |
| `full` | every attention the build has, plus the feed-forward layers (`ff`, `audio_ff`) |

The LoRA weights stay in float32 whatever the base dtype. The saved file uses the official module names:
`diffusion_model.<official path>.lora_A.weight` / `.lora_B.weight`, with alpha / rank folded into `lora_B` and no
`.alpha` tensors, which ComfyUI, diffusers' `LTX2LoraLoaderMixin` and Lightricks' pipelines all load as is.
Facts: ../shared/reference/official-ltx-trainer.md §1.3, §1.12; diffusers-ltx2-and-peers.md §3.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors import SafetensorError, safe_open
from torch import nn

from ltx2_tuner.errors import ConfigError, Ltx2TunerError
from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.models.safetensors_io import save_atomically

OFFICIAL_PREFIX = "diffusion_model."
_PROJECTIONS = r"(to_q|to_k|to_v|to_out\.0)"
_FEED_FORWARD = r"(ff|audio_ff)\.net\.(0\.proj|2)"
PRESETS = {
    "video_attn": rf"transformer_blocks\.\d+\.(attn1|attn2)\.{_PROJECTIONS}",
    "av_attn": rf"transformer_blocks\.\d+\.(attn1|attn2|audio_attn1|audio_attn2|audio_to_video_attn|"
    rf"video_to_audio_attn)\.{_PROJECTIONS}",
    "audio_attn": rf"transformer_blocks\.\d+\.(audio_attn1|audio_attn2)\.{_PROJECTIONS}",
    "full": rf"transformer_blocks\.\d+\.([a-z_0-9]*attn[a-z_0-9]*\.{_PROJECTIONS}|{_FEED_FORWARD})",
}
DEFAULT_PRESET = {"video": "video_attn", "av": "av_attn", "audio": "audio_attn"}
ADAPTER = "default"


class LoraFileError(Ltx2TunerError):
    """A LoRA file cannot be read or does not fit the model."""


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # diffusers module names, sorted

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def parse_network_args(args: list[str] | None) -> dict[str, str]:
    """`["preset=full", "exclude=ff"]` -> {"preset": "full", "exclude": "ff"}; unknown keys are errors."""
    parsed = {}
    for arg in args or []:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("preset", "include", "exclude"):
            raise ConfigError(f"--network_args {arg!r}: expected preset=NAME, include=REGEX or exclude=REGEX")
        parsed[key] = value
    if "preset" in parsed and parsed["preset"] not in PRESETS:
        raise ConfigError(f"--network_args preset={parsed['preset']}: choose one of {', '.join(PRESETS)}")
    return parsed


def select_targets(backbone: nn.Module, mode: str, network_args: list[str] | None = None) -> tuple[str, ...]:
    """Names of the Linear modules of `backbone` that get a LoRA, per preset/include/exclude."""
    args = parse_network_args(network_args)
    pattern = re.compile(PRESETS[args.get("preset", DEFAULT_PRESET[mode])])
    include = re.compile(args["include"]) if "include" in args else None
    exclude = re.compile(args["exclude"]) if "exclude" in args else None
    targets = []
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        chosen = pattern.fullmatch(name) or (include is not None and include.search(name))
        if chosen and not (exclude is not None and exclude.search(name)):
            targets.append(name)
    if not targets:
        raise ConfigError(f"--network_args {network_args}: no layer of the {mode} transformer matches")
    return tuple(sorted(targets))


def add_lora(backbone: nn.Module, spec: LoraSpec) -> list[nn.Parameter]:
    """Inject LoRA layers into `backbone` in place; return the trainable LoRA parameters (float32)."""
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.targets),
        init_lora_weights=True,  # B = 0: training starts from the base model
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
    parameters = []
    for name, param in backbone.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()  # small; fp32 keeps updates of tiny magnitude
            param.requires_grad_(True)
            parameters.append(param)
        else:
            param.requires_grad_(False)
    return parameters


def _lora_layers(backbone: nn.Module):
    for name, module in backbone.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            yield name, module


def lora_state_dict(backbone: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The official-format tensors: `diffusion_model.<official path>.lora_A/B.weight`, scale folded into B."""
    tensors = {}
    for name, module in _lora_layers(backbone):
        official = TRANSFORMER_KEYS.to_official(name, prefix=OFFICIAL_PREFIX)
        scale = module.scaling[ADAPTER]
        tensors[f"{official}.lora_A.weight"] = module.lora_A[ADAPTER].weight.detach().to(dtype).contiguous()
        tensors[f"{official}.lora_B.weight"] = (module.lora_B[ADAPTER].weight.detach().float() * scale).to(dtype)
    return tensors


def save_lora(path: Path, backbone: nn.Module, spec: LoraSpec, metadata: dict, dtype=torch.bfloat16) -> None:
    """Write the LoRA atomically in the official format; `metadata` (JSON-able) goes into the file's header."""
    header = {
        "format": "ltx2-tuner-lora-1",
        "lora_rank": str(spec.rank),
        "lora_alpha": str(spec.alpha),
        "lora_scale_folded_into_B": "true",
        "lora_targets": json.dumps(spec.targets),
        **{key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()},
    }
    save_atomically(lora_state_dict(backbone, dtype), path, header)


def read_lora_file(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{diffusers module name: (A [r, in], B [out, r] with the scale folded in)} from an official-format or a
    musubi-format (`lora_unet_*.lora_down/lora_up/alpha`) file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise LoraFileError(f"{path}: not a readable LoRA safetensors file ({error})") from None
    if any(key.startswith(OFFICIAL_PREFIX) for key in tensors):
        return _from_official(path, tensors)
    if any(key.startswith("lora_unet_") for key in tensors):
        return _from_musubi(path, tensors)
    raise LoraFileError(
        f"{path}: no `diffusion_model.*` (official/ComfyUI) or `lora_unet_*` (musubi) LoRA keys; not an LTX-2 LoRA"
    )


def _from_official(path: Path, tensors: dict) -> dict:
    layers = {}
    for key, tensor in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")]
        up = tensors.get(f"{stem}.lora_B.weight")
        if up is None:
            raise LoraFileError(f"{path}: {stem}.lora_B.weight is missing")
        scale = 1.0
        if f"{stem}.alpha" in tensors:  # other tools keep alpha apart; fold it as we do
            scale = float(tensors[f"{stem}.alpha"]) / tensor.shape[0]
        name = TRANSFORMER_KEYS.to_diffusers(stem.removeprefix(OFFICIAL_PREFIX))
        layers[name] = (tensor.float(), up.float() * scale)
    return layers


def _from_musubi(path: Path, tensors: dict) -> dict:
    layers = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        up = tensors[f"{stem}.lora_up.weight"]
        alpha = float(tensors.get(f"{stem}.alpha", torch.tensor(down.shape[0])))
        flat = stem.removeprefix("lora_unet_").removeprefix("model_")
        layers[flat] = (down.float(), up.float() * (alpha / down.shape[0]))
    return {"__flat__": layers}  # resolved against the model's module names by `load_lora_weights`


def load_lora_weights(path: Path, backbone: nn.Module) -> int:
    """Copy a LoRA file into the injected LoRA layers (same rank and targets); return how many layers loaded."""
    layers = read_lora_file(path)
    modules = dict(_lora_layers(backbone))
    if "__flat__" in layers:  # musubi names are official paths with dots turned into underscores
        by_flat = {TRANSFORMER_KEYS.to_official(name, prefix="").replace(".", "_"): name for name in modules}
        unknown = [flat for flat in layers["__flat__"] if flat not in by_flat]
        if unknown:
            raise LoraFileError(f"{path}: LoRA layer {unknown[0]} is not a target of this network")
        layers = {by_flat[flat]: weights for flat, weights in layers["__flat__"].items()}
    missing = sorted(set(layers) - set(modules))
    if missing:
        raise LoraFileError(
            f"{path}: LoRA layer {missing[0]} (and {len(missing) - 1} more) is not a target of this network; train "
            "with the same --network_args / mode, or use a matching file"
        )
    with torch.no_grad():
        for name, (down, up) in layers.items():
            module = modules[name]
            a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
            if a.shape != down.shape or b.shape != up.shape:
                raise LoraFileError(
                    f"{path}: {name} has rank {down.shape[0]} but the network has rank {a.shape[0]}; "
                    "pass the file's --network_dim"
                )
            a.copy_(down)
            b.copy_(up / module.scaling[ADAPTER])  # the file's B carries the scale; PEFT applies it again
    return len(layers)
