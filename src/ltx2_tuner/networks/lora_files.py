"""Reading LoRA files: the official/ComfyUI layout and musubi-tuner's, and a one-line refusal of anything else.

A file we read is plain LoRA pairs, one per Linear layer:

- official/ComfyUI: `diffusion_model.<official path>.lora_A.weight` / `.lora_B.weight` (or `.lora_down` /
  `.lora_up`), with or without `.alpha` (without: alpha is folded into B, the portable convention);
- musubi: `lora_unet_model_<official path, dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`.

DoRA magnitudes, LoKr/LoHa factors, full-weight diffs, diffusers/PEFT names, or any tensor that is not part of a
pair are refused with the file and what was found: loading "what we understood" would silently train from an
untrained LoRA. Facts: ../shared/reference/musubi-ltx2-fork.md §3.3; diffusers-ltx2-and-peers.md §3.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ltx2_tuner.errors import Ltx2TunerError
from ltx2_tuner.networks.musubi_names import MUSUBI_PREFIX, OFFICIAL_PREFIX, musubi_to_official

# Official names outside `diffusion_model.` that a ComfyUI-style LoRA may carry (musubi's 2.3 text projection).
_OTHER_OFFICIAL_PREFIXES = ("text_embedding_projection.",)
_ROLES = {  # tensor name suffix -> its role in a LoRA pair
    ".lora_A.weight": "down",
    ".lora_down.weight": "down",
    ".lora_B.weight": "up",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
}
_ROLE_NAMES = {"down": "lora_A/lora_down", "up": "lora_B/lora_up"}
_PLAIN_LORA_FIX = "train or convert a plain LoRA (lora_A/lora_B or lora_down/lora_up pairs)"
_NOT_PLAIN = "is not supported, only plain LoRA is"
# Adapters that are not plain LoRA, recognised by a tensor name: (what, pattern, problem, fix). First match wins.
_OTHER_LAYOUTS = (
    (
        "DoRA (magnitude vectors)",
        re.compile(r"\.(lora_magnitude_vector|dora_scale)(\.|$)"),
        "is not supported yet",
        "train or convert a plain LoRA without DoRA",
    ),
    ("LoKr (lokr_w1/lokr_w2 factors)", re.compile(r"\.lokr_(w1|w2|t2)"), _NOT_PLAIN, _PLAIN_LORA_FIX),
    ("LoHa (hada_w1/hada_w2 factors)", re.compile(r"\.hada_(w1|w2|t1|t2)"), _NOT_PLAIN, _PLAIN_LORA_FIX),
    ("OFT (orthogonal blocks)", re.compile(r"\.(oft_blocks|oft_diag)"), _NOT_PLAIN, _PLAIN_LORA_FIX),
    ("(IA)^3 (on_input vectors)", re.compile(r"\.on_input$"), _NOT_PLAIN, _PLAIN_LORA_FIX),
    ("LyCORIS full (.diff/.diff_b weight differences)", re.compile(r"\.diff(_b)?$"), _NOT_PLAIN, _PLAIN_LORA_FIX),
    (
        "diffusers/PEFT naming (transformer.* keys)",
        re.compile(r"^(transformer|base_model\.model)\."),
        "is not read",
        "save the LoRA in the official/ComfyUI format (diffusion_model.* keys) or musubi's (lora_unet_*)",
    ),
)


class LoraFileError(Ltx2TunerError):
    """A LoRA file cannot be read or does not fit the model."""


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor  # lora_A, [rank, in_features], as stored
    up: torch.Tensor  # lora_B, [out_features, rank], as stored (without `scale`)
    scale: float  # alpha / rank; 1.0 when the file has no alpha (it is folded into `up` already)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def folded_up(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """B with the scale folded in: the layer adds `folded_up @ down @ x`."""
        return (self.up.float() * self.scale).to(dtype)


@dataclass(frozen=True)
class LoraFile:
    path: Path
    layers: dict[str, LoraLayer]  # official module name with its prefix: `diffusion_model.transformer_blocks...`


def read_lora_file(path: Path) -> LoraFile:
    """The LoRA pairs of an official/ComfyUI or musubi file; any other layout is a LoraFileError."""
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
    for stem, parts in _group_pairs(path, tensors).items():
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


def _group_pairs(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{stem: {"down": A, "up": B, "alpha": a}}; a tensor with no role in a pair is an error."""
    stems: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        suffix = next((suffix for suffix in _ROLES if key.endswith(suffix)), None)
        if suffix is None:
            raise LoraFileError(
                f"{path}: unrecognised tensor {key} (not a lora_A/lora_B, lora_down/lora_up or alpha tensor); "
                f"not a LoRA layout ltx2-tuner reads, {_PLAIN_LORA_FIX}"
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


def _layer(path: Path, stem: str, parts: dict[str, torch.Tensor]) -> LoraLayer:
    for role, partner in (("down", "up"), ("up", "down")):
        if role not in parts:
            have = _ROLE_NAMES[partner] if partner in parts else "only an alpha"
            raise LoraFileError(
                f"{path}: layer {stem} has {have} but no {_ROLE_NAMES[role]} tensor; the file is incomplete, "
                "export or download it again"
            )
    down, up = parts["down"], parts["up"]
    if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
        raise LoraFileError(
            f"{path}: layer {stem} has lora_A/down {list(down.shape)} and lora_B/up {list(up.shape)}, not "
            "[rank, in] and [out, rank]; the file is damaged or not a LoRA of Linear layers"
        )
    alpha = parts.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise LoraFileError(f"{path}: {stem}.alpha has {alpha.numel()} values, not one; the file is damaged")
    scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
    return LoraLayer(down, up, scale)


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
