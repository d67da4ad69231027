"""`lora_ltx2`: LoRA, DoRA, LoKr or LoHa for the LTX-2 transformer (PEFT underneath), saved in the official /
ComfyUI format.

The algorithm is `--network_args algo=lora|dora|lokr|loha` (default lora), with its options (docs/adapters.md):

| key | algos | meaning |
|---|---|---|
| `factor=N` | lokr | Kronecker factor of each dimension (-1, default: as square as the dimension allows) |
| `decompose_both=true` | lokr | factor w1 into a rank-r pair too (w2 is factored when the rank is small enough) |
| `rank_dropout=P`, `module_dropout=P` | lokr, loha | LyCORIS dropouts (they replace --network_dropout) |

--network_dim / --network_alpha are the rank and alpha of each (scale alpha / rank); --network_dropout is LoRA's and
DoRA's input dropout.

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

The adapter weights stay in float32 whatever the base dtype. The saved file uses the official module names:
`diffusion_model.<official path>.lora_A.weight` / `.lora_B.weight` for LoRA, with alpha / rank folded into `lora_B`
and no `.alpha` tensors, which ComfyUI, diffusers' `LTX2LoraLoaderMixin` and Lightricks' pipelines all load as is;
DoRA adds ComfyUI's `.dora_scale`, LoKr and LoHa use LyCORIS's tensor names (`convert_lora.layer_tensors`).
`load_lora_weights` reads those and musubi's (`lora_files.py` says which files are refused).
Facts: ../shared/reference/official-ltx-trainer.md §1.3, §1.12; diffusers-ltx2-and-peers.md §3.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import inject_adapter_in_model
from torch import nn

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models.fp8 import Fp8Linear
from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.networks import peft_adapters
from ltx2_tuner.networks.adapter_layers import DoraLayer, LoraLayer
from ltx2_tuner.networks.convert_lora import layer_tensors
from ltx2_tuner.networks.lora_files import OFFICIAL_PREFIX, LoraFileError, read_lora_file
from ltx2_tuner.networks.peft_adapters import ADAPTER, ALGOS, adapted_layers
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
ALGO_METADATA_KEY = "ltx2_network_algo"
# --network_args keys: target choice (every algo) and the algorithm with its options.
_TARGET_KEYS = ("preset", "include", "exclude")
_ALGO_KEYS = {"factor": ("lokr",), "decompose_both": ("lokr",), "rank_dropout": ("lokr", "loha")}
_ALGO_KEYS["module_dropout"] = ("lokr", "loha")
NETWORK_ARG_KEYS = (*_TARGET_KEYS, "algo", *_ALGO_KEYS)


class LoraLoadWarning(UserWarning):
    """A LoRA file loaded, but not one to one into the network (partial coverage, lower rank)."""


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    dropout: float  # LoRA/DoRA input dropout
    targets: tuple[str, ...]  # diffusers module names, sorted
    algo: str = "lora"  # one of ALGOS
    factor: int = -1  # LoKr: Kronecker factor (-1: as square as possible)
    decompose_both: bool = False  # LoKr: factor w1 too
    rank_dropout: float = 0.0  # LoKr/LoHa
    module_dropout: float = 0.0  # LoKr/LoHa

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def parse_network_args(args: list[str] | None) -> dict[str, str]:
    """`["preset=full", "algo=lokr", "factor=8"]` -> {"preset": "full", ...}; unknown keys, bad values and an
    option of another algo than the chosen one are ConfigErrors."""
    parsed = {}
    for arg in args or []:
        key, sep, value = arg.partition("=")
        if not sep or key not in NETWORK_ARG_KEYS:
            raise ConfigError(
                f"--network_args {arg!r}: expected preset=NAME, include=REGEX, exclude=REGEX, algo={'|'.join(ALGOS)} "
                "or an algo option (factor=N, decompose_both=true|false, rank_dropout=P, module_dropout=P)"
            )
        parsed[key] = value
    if "preset" in parsed and parsed["preset"] not in PRESETS:
        raise ConfigError(f"--network_args preset={parsed['preset']}: choose one of {', '.join(PRESETS)}")
    algo = parsed.get("algo", "lora")
    if algo not in ALGOS:
        raise ConfigError(f"--network_args algo={algo}: choose one of {', '.join(ALGOS)}")
    for key, algos in _ALGO_KEYS.items():
        if key in parsed and algo not in algos:
            raise ConfigError(
                f"--network_args {key}={parsed[key]}: an option of algo={'/'.join(algos)}, not of algo={algo}; "
                f"drop it or pass algo={algos[0]}"
            )
    return parsed


def spec_from_args(
    rank: int, alpha: float, dropout: float, targets: tuple[str, ...], network_args: list[str] | None
) -> LoraSpec:
    """The LoraSpec of --network_dim/--network_alpha/--network_dropout and the algo options of --network_args."""
    args = parse_network_args(network_args)
    algo = args.get("algo", "lora")
    if dropout and algo in ("lokr", "loha"):
        raise ConfigError(
            f"--network_dropout {dropout}: {algo} has no input dropout; pass --network_args rank_dropout={dropout} "
            f"or module_dropout={dropout} instead (LyCORIS's dropouts)"
        )
    return LoraSpec(
        rank,
        alpha,
        dropout,
        targets,
        algo=algo,
        factor=_int_arg(args, "factor", -1),
        decompose_both=_bool_arg(args, "decompose_both"),
        rank_dropout=_probability_arg(args, "rank_dropout"),
        module_dropout=_probability_arg(args, "module_dropout"),
    )


def _int_arg(args: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(args.get(key, default))
    except ValueError:
        value = 0
    if value == 0 or value < -1:
        raise ConfigError(f"--network_args {key}={args[key]}: expected a whole number >= 1 (or -1 for automatic)")
    return value


def _bool_arg(args: dict[str, str], key: str) -> bool:
    text = args.get(key, "false").lower()
    if text not in ("true", "false"):
        raise ConfigError(f"--network_args {key}={args[key]}: expected true or false")
    return text == "true"


def _probability_arg(args: dict[str, str], key: str) -> float:
    try:
        value = float(args.get(key, 0.0))
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"--network_args {key}={args[key]}: expected a probability in [0, 1)")
    return value


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
    """Inject the spec's adapter (LoRA, DoRA, LoKr or LoHa) into `backbone` in place; return its trainable
    parameters (float32). DoRA on an fp8 base layer is a ConfigError: its norm needs the full-precision weight."""
    modules = dict(backbone.named_modules())
    if spec.algo == "dora" and any(isinstance(modules.get(name), Fp8Linear) for name in spec.targets):
        raise ConfigError(
            "--network_args algo=dora cannot train on --fp8_base layers (DoRA normalises the base weight, which fp8 "
            "stores rounded and scaled); drop --fp8_base or use algo=lora, lokr or loha"
        )
    inject_adapter_in_model(peft_adapters.peft_config(spec), backbone, adapter_name=ADAPTER)
    parameters = []
    for name, param in backbone.named_parameters():
        if any(marker in name for marker in peft_adapters.PARAMETER_MARKERS):
            param.data = param.data.float()  # small; fp32 keeps updates of tiny magnitude
            param.requires_grad_(True)
            parameters.append(param)
        else:
            param.requires_grad_(False)
    return parameters


def network_algo(backbone: nn.Module) -> str | None:
    """The algorithm of the adapter injected into `backbone` (None: none is)."""
    return next((algo for _, _, algo in adapted_layers(backbone)), None)


def lora_state_dict(backbone: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The official-format tensors of the injected adapter, `diffusion_model.<official path>.<tensor>`, every scale
    folded into a factor (LoRA: `lora_A/B.weight`; see `convert_lora.layer_tensors` for the others), in `dtype`
    except DoRA's `dora_scale` (float32)."""
    tensors = {}
    for name, module, _ in adapted_layers(backbone):
        official = TRANSFORMER_KEYS.to_official(name, prefix=OFFICIAL_PREFIX)
        layer = peft_adapters.export_layer(module, torch.float32)
        weight = peft_adapters.base_weight(module) if isinstance(layer, DoraLayer) else None
        for key, tensor in layer_tensors(official, layer, "official", weight).items():
            # dora_scale multiplies whole weight rows: bf16 would move every weight by up to 0.4%; it is tiny
            tensors[key] = tensor.to(torch.float32 if key.endswith(".dora_scale") else dtype).contiguous()
    return tensors


def save_lora(path: Path, backbone: nn.Module, spec: LoraSpec, metadata: dict, dtype=torch.bfloat16) -> None:
    """Write the adapter atomically in the official format; `metadata` (JSON-able) goes into the file's header."""
    header = {
        "format": "ltx2-tuner-lora-1",
        ALGO_METADATA_KEY: spec.algo,
        "lora_rank": str(spec.rank),
        "lora_alpha": str(spec.alpha),
        "lora_scale_folded_into_B": "true",  # LoKr: into lokr_w1 (or _a), LoHa: into hada_w1_a
        "lora_targets": json.dumps(spec.targets),
        **({"lokr_factor": str(spec.factor), "lokr_decompose_both": str(spec.decompose_both).lower()}
           if spec.algo == "lokr" else {}),
        **{key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()},
    }  # fmt: skip
    save_atomically(lora_state_dict(backbone, dtype), path, header)


def load_lora_weights(path: Path, backbone: nn.Module) -> int:
    """Copy an adapter file (official or musubi format) into the injected adapter; return how many layers loaded.

    All or nothing: a refused file (see `read_lora_file`), a file of another algorithm than the network's, a layer
    whose features or factor shapes differ, a LoRA/DoRA rank above the network's, or a file of which no layer is
    targeted raises LoraFileError before anything is copied. A file that covers only part of the targets, or has
    layers this run does not target, loads what matches and warns.
    """
    lora_file = read_lora_file(path)
    modules = {
        TRANSFORMER_KEYS.to_official(name, prefix=OFFICIAL_PREFIX): module
        for name, module, _ in adapted_layers(backbone)
    }
    algo = network_algo(backbone)
    if len(lora_file.algos) > 1:
        raise LoraFileError(
            f"{path}: mixes {' and '.join(sorted(lora_file.algos))} layers; a network trains one algorithm, so "
            "--network_weights cannot continue it (generation merges it fine)"
        )
    if lora_file.algos != {algo}:
        (found,) = lora_file.algos
        raise LoraFileError(
            f"{path}: is a {found} file but this run trains algo={algo}; pass --network_args algo={found} (and the "
            "options it was trained with) to continue it"
        )
    matched = sorted(set(lora_file.layers) & set(modules))
    if not matched:
        raise LoraFileError(
            f"{path}: none of its {len(lora_file.layers)} LoRA layers is targeted by this run (file: "
            f"{_examples(lora_file.layers)}; run: {_examples(modules)}); use the --ltx_mode and --network_args the "
            "file was trained with"
        )
    pairs = {name: (lora_file.layers[name], modules[name]) for name in matched}
    if algo in ("lora", "dora"):
        _check_fits(path, pairs)
    else:
        _check_structure(path, pairs)
    with torch.no_grad():
        for layer, module in pairs.values():
            if algo in ("lora", "dora"):
                _copy_layer(layer, module)
            else:
                peft_adapters.import_layer(layer, module)
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
    if isinstance(layer, DoraLayer):  # after A and B: ComfyUI's dora_scale converts with the adapted weight's norm
        magnitude = module.lora_magnitude_vector[ADAPTER].weight
        magnitude.copy_(layer.peft_magnitude(peft_adapters.base_weight(module).to(magnitude.device)))


def _check_structure(path: Path, pairs: dict) -> None:
    for name, (layer, module) in pairs.items():
        problem = peft_adapters.structure_problem(layer, module)
        if problem is not None:
            raise LoraFileError(
                f"{path}: layer {name.removeprefix(OFFICIAL_PREFIX)} has {problem}; pass the --network_dim and "
                "--network_args (factor=, decompose_both=) the file was trained with"
            )


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
