"""`lora_ltx2`: LoRA for the LTX-2 transformer (PEFT underneath), saved in the official / ComfyUI format.

Targets are chosen by a preset and optional regexes (`--network_args preset=full include=... exclude=...`):

| preset | targets (q/k/v/out projections unless noted) |
|---|---|
| `video_attn` (default, T2V) | video self-attention `attn1`, video text cross-attention `attn2` |
| `av_attn` (default, T2AV) | those + `audio_attn1`, `audio_attn2`, `audio_to_video_attn`, `video_to_audio_attn` |
| `audio` (default, T2A) | `audio_attn1`, `audio_attn2` and the audio feed-forward `audio_ff` (the official T2A list) |
| `audio_attn` | `audio_attn1`, `audio_attn2` only (a lighter audio LoRA) |
| `a2v` (default, A2V) | `attn1`, `attn2`, `audio_to_video_attn` (Q video, K/V audio): the generated side only |
| `v2a` (default, V2A) | `audio` + `video_to_audio_attn` (Q audio, K/V video), the official V2A (Foley) list |
| `full` | every attention the build has (and its `to_gate_logits` gate on LTX-2.3), plus `ff`, `audio_ff` |

The default is the mode's (`roles.ModalityRoles.default_preset`, which says why for each).

The LoRA weights stay in float32 whatever the base dtype. The saved file uses the official module names:
`diffusion_model.<official path>.lora_A.weight` / `.lora_B.weight`, with alpha / rank folded into `lora_B` and no
`.alpha` tensors, which ComfyUI, diffusers' `LTX2LoraLoaderMixin` and Lightricks' pipelines all load as is.
`load_lora_weights` reads that format and musubi's (`lora_files.py` says which files are refused).
Facts: ../shared/reference/official-ltx-trainer.md §1.3, §1.12; diffusers-ltx2-and-peers.md §3.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.networks.lora_files import OFFICIAL_PREFIX, LoraFileError, LoraLayer, read_lora_file
from ltx2_tuner.roles import ModalityRoles, roles_for

_PROJECTIONS = r"(to_q|to_k|to_v|to_out\.0)"
_FEED_FORWARD = r"(ff|audio_ff)\.net\.(0\.proj|2)"
PRESETS = {
    "video_attn": rf"transformer_blocks\.\d+\.(attn1|attn2)\.{_PROJECTIONS}",
    "av_attn": rf"transformer_blocks\.\d+\.(attn1|attn2|audio_attn1|audio_attn2|audio_to_video_attn|"
    rf"video_to_audio_attn)\.{_PROJECTIONS}",
    "audio_attn": rf"transformer_blocks\.\d+\.(audio_attn1|audio_attn2)\.{_PROJECTIONS}",
    "audio": rf"transformer_blocks\.\d+\.((audio_attn1|audio_attn2)\.{_PROJECTIONS}|audio_ff\.net\.(0\.proj|2))",
    "a2v": rf"transformer_blocks\.\d+\.(attn1|attn2|audio_to_video_attn)\.{_PROJECTIONS}",
    "v2a": rf"transformer_blocks\.\d+\.((audio_attn1|audio_attn2|video_to_audio_attn)\.{_PROJECTIONS}|"
    rf"audio_ff\.net\.(0\.proj|2))",
    # LTX-2.3's per-head attention gate `to_gate_logits` too, as musubi's `full`, so its full LoRAs load.
    "full": rf"transformer_blocks\.\d+\.([a-z_0-9]*attn[a-z_0-9]*\.({_PROJECTIONS}|to_gate_logits)|{_FEED_FORWARD})",
}
ADAPTER = "default"


class LoraLoadWarning(UserWarning):
    """A LoRA file loaded, but not one to one into the network (partial coverage, lower rank)."""


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


def select_targets(
    backbone: nn.Module, roles: ModalityRoles | str, network_args: list[str] | None = None
) -> tuple[str, ...]:
    """Names of the Linear modules of `backbone` that get a LoRA, per preset (default: the mode's)/include/exclude.
    `roles` may be an --ltx_mode string (video, av, audio: T2V, T2AV, T2A)."""
    args = parse_network_args(network_args)
    roles = roles_for(roles) if isinstance(roles, str) else roles
    pattern = re.compile(PRESETS[args.get("preset", roles.default_preset)])
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
        raise ConfigError(f"--network_args {network_args}: no layer of the {roles.build} transformer matches")
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


def load_lora_weights(path: Path, backbone: nn.Module) -> int:
    """Copy a LoRA file (official or musubi format) into the injected LoRA layers; return how many were loaded.

    All or nothing: a refused file (see `read_lora_file`), a layer whose features differ, a rank above the
    network's, or a file of which no layer is targeted raises LoraFileError before anything is copied. A file that
    covers only part of the targets, or has layers this run does not target, loads what matches and warns.
    """
    lora_file = read_lora_file(path)
    modules = {
        TRANSFORMER_KEYS.to_official(name, prefix=OFFICIAL_PREFIX): module for name, module in _lora_layers(backbone)
    }
    matched = sorted(set(lora_file.layers) & set(modules))
    if not matched:
        raise LoraFileError(
            f"{path}: none of its {len(lora_file.layers)} LoRA layers is targeted by this run (file: "
            f"{_examples(lora_file.layers)}; run: {_examples(modules)}); use the --ltx_mode and --network_args the "
            "file was trained with"
        )
    _check_fits(path, {name: (lora_file.layers[name], modules[name]) for name in matched})
    with torch.no_grad():
        for name in matched:
            _copy_layer(lora_file.layers[name], modules[name])
    _warn_partial_coverage(path, set(lora_file.layers), set(modules), matched)
    return len(matched)


def _examples(names, count: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(name.removeprefix(OFFICIAL_PREFIX) for name in names[:count])
    return shown + (", ..." if len(names) > count else "")


def _check_fits(path: Path, pairs: dict[str, tuple[LoraLayer, nn.Module]]) -> None:
    """Features must match; a higher rank than the network's is an error, a lower one loads (and warns)."""
    largest_rank = max(layer.rank for layer, _ in pairs.values())
    lower_rank = []
    for name, (layer, module) in pairs.items():
        rank, in_features = module.lora_A[ADAPTER].weight.shape
        out_features = module.lora_B[ADAPTER].weight.shape[0]
        if (layer.down.shape[1], layer.up.shape[0]) != (in_features, out_features):
            raise LoraFileError(
                f"{path}: layer {name} maps {layer.down.shape[1]} -> {layer.up.shape[0]} features in the file but "
                f"{in_features} -> {out_features} in the model; the file is for another model (LTX-2 vs LTX-2.3?)"
            )
        if layer.rank > rank:
            raise LoraFileError(
                f"{path}: layer {name} has rank {layer.rank} but the network has rank {rank}; pass "
                f"--network_dim {largest_rank} (the file's largest rank)"
            )
        if layer.rank < rank:
            lower_rank.append(f"{name.removeprefix(OFFICIAL_PREFIX)} has rank {layer.rank}, the network {rank}")
    if lower_rank:
        warnings.warn(
            f"{path}: {len(lower_rank)} layers have a lower rank than the network (e.g. {lower_rank[0]}); they load "
            "exactly and the extra ranks start from zero (pass the file's --network_dim to match it)",
            LoraLoadWarning,
            stacklevel=3,
        )


def _copy_layer(layer: LoraLayer, module: nn.Module) -> None:
    a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
    rank = layer.rank
    a[:rank].copy_(layer.down)
    # Extra ranks (a file of lower rank) keep A's fresh init and B = 0: the output is the file's, and they can learn.
    b.zero_()
    b[:, :rank].copy_(layer.folded_up() / module.scaling[ADAPTER])  # the file's B carries the scale; PEFT adds it


def _warn_partial_coverage(path: Path, in_file: set[str], targeted: set[str], matched: list[str]) -> None:
    ignored, untrained = in_file - targeted, targeted - in_file
    if not ignored and not untrained:
        return
    parts = [f"{len(matched)} of {len(targeted)} targeted layers loaded from {path}"]
    if ignored:
        parts.append(f"{len(ignored)} layers in the file are not targeted by this run (e.g. {_examples(ignored)})")
    if untrained:
        parts.append(f"{len(untrained)} targeted layers are not in the file and start untrained")
    parts.append("pass the --ltx_mode / --network_args the file was trained with to load it one to one")
    warnings.warn("; ".join(parts), LoraLoadWarning, stacklevel=3)
