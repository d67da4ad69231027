"""Reading adapter files: LoRA, DoRA, LoKr and LoHa in the official/ComfyUI layout and in musubi-tuner's, and a
one-line refusal of anything else.

One Linear layer per stem; the stem is `diffusion_model.<official path>` (official/ComfyUI) or
`lora_unet_model_<official path, dots as underscores>` (musubi), followed by the tensors of one algorithm:

| algo | tensors after the stem |
|---|---|
| LoRA | `.lora_A.weight` / `.lora_B.weight` (or `.lora_down.weight` / `.lora_up.weight`), optional `.alpha` |
| DoRA | the LoRA pair and `.dora_scale` [out, 1] (ComfyUI) or `.lora_magnitude_vector.weight` [out] (musubi) |
| LoKr | `.lokr_w1` or `.lokr_w1_a` + `.lokr_w1_b`; `.lokr_w2` or `.lokr_w2_a` + `.lokr_w2_b`; optional `.alpha` |
| LoHa | `.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`, optional `.alpha` |

Without `.alpha` the scale is 1 (it is folded into a factor, the portable convention). With it: alpha / rank, the
rank being the inner size of the factorised part (ComfyUI's rule; LoKr with two full factors ignores alpha; musubi
LoKr files with a full w2 do too). The formulas are in `adapter_layers.py`. OFT, (IA)^3, Tucker factors, full-weight
diffs, diffusers/PEFT names, input-axis DoRA, or any tensor that fits no layout are refused with the file and what
was found: loading "what we understood" would silently train or generate from something else.
Facts: ../shared/reference/musubi-ltx2-fork.md §3.3; diffusers-ltx2-and-peers.md §3.1; docs/adapters.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ltx2_tuner.errors import Ltx2TunerError
from ltx2_tuner.networks.adapter_layers import AdapterLayer, DoraLayer, LohaLayer, LokrLayer, LoraLayer
from ltx2_tuner.networks.musubi_names import MUSUBI_PREFIX, OFFICIAL_PREFIX, musubi_to_official

__all__ = ["LoraFile", "LoraFileError", "LoraLayer", "read_lora_file"]

# Official names outside `diffusion_model.` that a ComfyUI-style LoRA may carry (musubi's 2.3 text projection).
_OTHER_OFFICIAL_PREFIXES = ("text_embedding_projection.",)
_LOKR_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_ROLES = {  # tensor name suffix -> its role in a layer (longest suffixes first where one ends another)
    ".lora_A.weight": "down",
    ".lora_down.weight": "down",
    ".lora_B.weight": "up",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
    ".dora_scale": "dora_scale",
    ".lora_magnitude_vector.weight": "magnitude",
    ".lora_magnitude_vector": "magnitude",  # PEFT's state-dict name
    **{f".{role}": role for role in _LOKR_ROLES + _LOHA_ROLES},
}
_ROLE_NAMES = {"down": "lora_A/lora_down", "up": "lora_B/lora_up"}
_SUPPORTED_FIX = "train or convert a LoRA, DoRA, LoKr or LoHa of Linear layers"
_NOT_SUPPORTED = "is not supported (LoRA, DoRA, LoKr and LoHa are)"
# Layouts we do not read, recognised by a tensor name: (what, pattern, problem, fix). First match wins.
_OTHER_LAYOUTS = (
    (
        "Tucker-decomposed LoKr/LoHa (lokr_t2, hada_t1/t2: convolution layers)",
        re.compile(r"\.(lokr_t2|hada_t1|hada_t2)$"),
        _NOT_SUPPORTED,
        "train the LoKr/LoHa without use_tucker",
    ),
    ("OFT (orthogonal blocks)", re.compile(r"\.(oft_blocks|oft_diag|oft_R)"), _NOT_SUPPORTED, _SUPPORTED_FIX),
    ("(IA)^3 (on_input vectors)", re.compile(r"\.on_input$"), _NOT_SUPPORTED, _SUPPORTED_FIX),
    ("LyCORIS full (.diff/.diff_b weight differences)", re.compile(r"\.diff(_b)?$"), _NOT_SUPPORTED, _SUPPORTED_FIX),
    (
        "diffusers/PEFT naming (transformer.* keys)",
        re.compile(r"^(transformer|base_model\.model)\."),
        "is not read",
        "save the adapter in the official/ComfyUI format (diffusion_model.* keys) or musubi's (lora_unet_*)",
    ),
)


class LoraFileError(Ltx2TunerError):
    """A LoRA file cannot be read or does not fit the model."""


@dataclass(frozen=True)
class LoraFile:
    path: Path
    layers: dict[str, AdapterLayer]  # official module name with its prefix: `diffusion_model.transformer_blocks...`

    @property
    def algos(self) -> set[str]:
        """The algorithms of its layers ("lora", "dora", "lokr", "loha"); one for every file we write."""
        return {layer.algo for layer in self.layers.values()}


def read_lora_file(path: Path) -> LoraFile:
    """The adapter layers of an official/ComfyUI or musubi file; any other layout is a LoraFileError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise LoraFileError(f"{path}: not a readable LoRA safetensors file ({error})") from None
    if not tensors:
        raise LoraFileError(f"{path}: the file holds no tensors; not a LoRA")
    _refuse_other_layouts(path, tensors)
    layers = {}
    for stem, parts in _group_layers(path, tensors).items():
        name = _official_name(path, stem)
        if name in layers:
            raise LoraFileError(f"{path}: layer {name} appears twice (as {stem} too); keep one of the two")
        layers[name] = _layer(path, stem, parts)
    return LoraFile(path, layers)


def _refuse_other_layouts(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    for layout, pattern, problem, fix in _OTHER_LAYOUTS:
        key = next((key for key in tensors if pattern.search(key)), None)
        if key is not None:
            raise LoraFileError(f"{path}: {layout} {problem} (found {key}); {fix}")


def _group_layers(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{stem: {role: tensor}}; a tensor with no role in a layer is an error."""
    stems: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        suffix = next((suffix for suffix in _ROLES if key.endswith(suffix)), None)
        if suffix is None:
            raise LoraFileError(
                f"{path}: unrecognised tensor {key} (not part of a LoRA, DoRA, LoKr or LoHa layer); not an adapter "
                f"layout ltx2-tuner reads, {_SUPPORTED_FIX}"
            )
        parts = stems.setdefault(key[: -len(suffix)], {})
        if _ROLES[suffix] in parts:
            raise LoraFileError(f"{path}: {key} duplicates another {_ROLES[suffix]} tensor of the same layer")
        parts[_ROLES[suffix]] = tensor
    return stems


def _official_name(path: Path, stem: str) -> str:
    if stem.startswith(MUSUBI_PREFIX):
        name = musubi_to_official(stem)
        if name is None:
            raise LoraFileError(
                f"{path}: musubi layer {stem} is not an LTX-2 transformer module ltx2-tuner knows (attention, "
                "feed-forward and projection layers); remove that layer from the file"
            )
        return name
    if stem.startswith((OFFICIAL_PREFIX, *_OTHER_OFFICIAL_PREFIXES)):
        return stem
    raise LoraFileError(
        f"{path}: layer {stem} has neither official/ComfyUI (diffusion_model.*) nor musubi (lora_unet_*) naming; "
        "not an LTX-2 LoRA layout ltx2-tuner reads"
    )


def _layer(path: Path, stem: str, parts: dict[str, torch.Tensor]) -> AdapterLayer:
    kinds = {
        "LoKr": any(role in parts for role in _LOKR_ROLES),
        "LoHa": any(role in parts for role in _LOHA_ROLES),
        "LoRA/DoRA": any(role in parts for role in ("down", "up", "dora_scale", "magnitude")),
    }
    found = [kind for kind, present in kinds.items() if present] or ["LoRA/DoRA"]  # only an alpha: LoRA says what lacks
    if len(found) != 1:
        raise LoraFileError(
            f"{path}: layer {stem} has {' and '.join(found)} tensors; the file is damaged, export it again"
        )
    build = {"LoKr": _lokr_layer, "LoHa": _loha_layer, "LoRA/DoRA": _lora_layer}[found[0]]
    return build(path, stem, parts)


def _alpha(path: Path, stem: str, parts: dict[str, torch.Tensor]) -> float | None:
    """The layer's alpha, checked after its other tensors (a missing one is the clearer message)."""
    alpha = parts.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise LoraFileError(f"{path}: {stem}.alpha has {alpha.numel()} values, not one; the file is damaged")
    return None if alpha is None else float(alpha)


def _damaged(path: Path, stem: str, what: str) -> LoraFileError:
    return LoraFileError(f"{path}: layer {stem} {what}; the file is damaged or not an adapter of Linear layers")


def _lora_layer(path: Path, stem: str, parts: dict[str, torch.Tensor]) -> LoraLayer:
    for role, partner in (("down", "up"), ("up", "down")):
        if role not in parts:
            magnitude = "dora_scale" in parts or "magnitude" in parts
            have = _ROLE_NAMES[partner] if partner in parts else "a DoRA magnitude" if magnitude else "only an alpha"
            raise LoraFileError(
                f"{path}: layer {stem} has {have} but no {_ROLE_NAMES[role]} tensor; the file is incomplete, "
                "export or download it again"
            )
    down, up = parts["down"], parts["up"]
    if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
        raise _damaged(
            path,
            stem,
            f"has lora_A/down {list(down.shape)} and lora_B/up {list(up.shape)}, not [rank, in] and [out, rank]",
        )
    alpha = _alpha(path, stem, parts)
    scale = 1.0 if alpha is None else alpha / down.shape[0]
    if "dora_scale" in parts and "magnitude" in parts:
        raise _damaged(path, stem, "has both a dora_scale and a lora_magnitude_vector")
    if "dora_scale" in parts:
        dora_scale = parts["dora_scale"]
        if dora_scale.numel() != up.shape[0] or dora_scale.shape[0] != up.shape[0]:
            raise LoraFileError(
                f"{path}: layer {stem} has dora_scale {list(dora_scale.shape)}, not [{up.shape[0]}, 1]: input-axis "
                "DoRA (an old LyCORIS layout) is not supported; train the DoRA with the magnitude on the output axis"
            )
        return DoraLayer(down, up, scale, dora_scale=dora_scale.reshape(-1, 1))
    if "magnitude" in parts:
        magnitude = parts["magnitude"]
        if magnitude.numel() != up.shape[0]:
            raise _damaged(path, stem, f"has a magnitude of {magnitude.numel()} values for {up.shape[0]} outputs")
        return DoraLayer(down, up, scale, magnitude=magnitude.reshape(-1))
    return LoraLayer(down, up, scale)


def _kron_factor(path: Path, stem: str, parts: dict[str, torch.Tensor], name: str):
    """`lokr_w1` -> the full matrix or the (a, b) pair."""
    if name in parts:
        if parts[name].ndim != 2:
            raise _damaged(path, stem, f"has {name} {list(parts[name].shape)}, not a matrix")
        return parts[name]
    a, b = parts.get(f"{name}_a"), parts.get(f"{name}_b")
    if a is None or b is None:
        raise LoraFileError(
            f"{path}: layer {stem} has neither {name} nor both {name}_a and {name}_b; the file is incomplete, "
            "export or download it again"
        )
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise _damaged(path, stem, f"has {name}_a {list(a.shape)} and {name}_b {list(b.shape)}, not [m, r] and [r, n]")
    return a, b


def _lokr_layer(path: Path, stem: str, parts: dict[str, torch.Tensor]) -> LokrLayer:
    w1, w2 = _kron_factor(path, stem, parts, "lokr_w1"), _kron_factor(path, stem, parts, "lokr_w2")
    alpha = _alpha(path, stem, parts)
    rank = None  # ComfyUI: alpha / inner size of the factorised part, w2's when both are; none factorised: scale 1
    if isinstance(w1, tuple) and not stem.startswith(MUSUBI_PREFIX):  # musubi: a full w2 means scale 1
        rank = w1[1].shape[0]
    if isinstance(w2, tuple):
        rank = w2[1].shape[0]
    scale = alpha / rank if alpha is not None and rank is not None else 1.0
    return LokrLayer(w1, w2, scale)


def _loha_layer(path: Path, stem: str, parts: dict[str, torch.Tensor]) -> LohaLayer:
    missing = [role for role in _LOHA_ROLES if role not in parts]
    if missing:
        raise LoraFileError(
            f"{path}: layer {stem} has no {', '.join(missing)}; the file is incomplete, export or download it again"
        )
    w1_a, w1_b, w2_a, w2_b = (parts[role] for role in _LOHA_ROLES)
    if any(t.ndim != 2 for t in (w1_a, w1_b, w2_a, w2_b)) or not (
        w1_a.shape[1] == w1_b.shape[0] and w2_a.shape[1] == w2_b.shape[0]
        and (w1_a.shape[0], w1_b.shape[1]) == (w2_a.shape[0], w2_b.shape[1])
    ):  # fmt: skip
        raise _damaged(path, stem, "has hada factors whose shapes do not pair up")
    alpha = _alpha(path, stem, parts)
    scale = 1.0 if alpha is None else alpha / w1_b.shape[0]
    return LohaLayer(w1_a, w1_b, w2_a, w2_b, scale)


# Which model families a LoRA carries over to without a word: LTX 2.5 continues the 2.3 lineage (same layers and
# shapes; it adds a keyframe embedding and drops the video FFN bias, neither a LoRA target).
_CARRIES_OVER = {("2.3", "2.5")}
VERSION_KEY = "ltx_version"  # metadata of the LoRAs we write: the model family they were trained on


def lora_version_warning(path: Path, model_version: str) -> str | None:
    """A warning when the LoRA at `path` says it was trained on another model family than `model_version`, except
    2.3 -> 2.5; None when it fits or does not say. (ltx-core fuses any LoRA whose names match, silently.)"""
    try:
        with safe_open(str(path), framework="pt") as f:
            trained_on = (f.metadata() or {}).get(VERSION_KEY)
    except (SafetensorError, OSError):
        return None  # read_lora_file reports unreadable files with the fix
    if trained_on is None or trained_on == model_version or (trained_on, model_version) in _CARRIES_OVER:
        return None
    return (
        f"{path}: was trained on LTX-{trained_on} and is applied to LTX-{model_version}; its layers fit, but the "
        f"base weights differ, so expect a weaker or different effect (train it on LTX-{model_version} to be sure)"
    )


# IC-LoRA reference scale factors in the metadata, official naming (reference ltx-2.5-and-conditioning-modes.md B4;
# flexible.py L308-318): written only when != 1; the pipelines read the legacy `reference_downscale_factor`,
# `reference_spatial_scale_factor` holds the same value.
REFERENCE_SPATIAL_KEYS = ("reference_downscale_factor", "reference_spatial_scale_factor")
REFERENCE_TEMPORAL_KEY = "reference_temporal_scale_factor"


@dataclass(frozen=True)
class ReferenceFactors:
    spatial: int = 1  # the reference is read at the output size / spatial
    temporal: int = 1  # and keeps frame 0, then every temporal-th frame
    source: str | None = None  # the LoRA file that set them (None: no LoRA says; 1 and 1)


def reference_factors(paths) -> ReferenceFactors:
    """The reference factors the LoRAs at `paths` were trained with (1 where none says). Two LoRAs that disagree,
    or one whose keys disagree or are not whole numbers >= 1, are a LoraFileError (ltx-pipelines' ICLoraPipeline
    refuses conflicting values too)."""
    found: dict[str, tuple[int, Path]] = {}
    for path in paths:
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError):
            continue  # read_lora_file reports unreadable files with the fix
        for axis, keys in (("spatial", REFERENCE_SPATIAL_KEYS), ("temporal", (REFERENCE_TEMPORAL_KEY,))):
            values = {_factor(path, key, metadata[key]) for key in keys if key in metadata}
            if len(values) > 1:
                raise LoraFileError(f"{path}: metadata {' and '.join(keys)} disagree ({sorted(values)}); fix the file")
            if not values:
                continue
            value = values.pop()
            if axis in found and found[axis][0] != value:
                other = found[axis][1]
                raise LoraFileError(
                    f"{path}: trained with {axis} reference factor {value}, {other} with {found[axis][0]}; one "
                    "reference cannot serve both, apply them separately"
                )
            found.setdefault(axis, (value, path))  # the first LoRA that says is named
    spatial, temporal = found.get("spatial", (1, None)), found.get("temporal", (1, None))
    source = spatial[1] or temporal[1]
    return ReferenceFactors(spatial[0], temporal[0], str(source) if source else None)


def _factor(path: Path, key: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1 or value != int(value):
        raise LoraFileError(f"{path}: metadata {key} = {text!r} is not a whole number >= 1; fix the file")
    return int(value)
