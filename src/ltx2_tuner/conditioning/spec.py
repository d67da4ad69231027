"""Conditions: what a conditioned LoRA trains to take besides the text, read from the dataset TOML.

    [[conditions]]
    type = "prefix"            # first_frame, prefix, suffix, reference, mask, spatial_crop
    modality = "video"         # or "audio"; default "video"
    temporal_boundary = 8      # prefix/suffix: latent frames (video) or latent steps (audio)
    probability = 1.0          # chance per sample (per batch for reference); default 1.0

The types, their keys and defaults are the official trainer's flexible strategy (`training_strategies/flexible.py`
L33-121, L174-185; reference ltx-2.5-and-conditioning-modes.md B1-B2). The official names per-condition data folders
(`latents_dir`, `mask_dir`) here; ours come from the dataset tables, so a condition has no folder key, and the
official `spatial_region` is our `region`. Unlike the official, which skips intrinsic conditions on a frozen modality
in silence, `check_conditions` refuses every condition that is not on a generated modality. User guide:
docs/conditions.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.data.config import read_dataset_document
from ltx2_tuner.errors import DatasetError
from ltx2_tuner.roles import MODALITIES, ModalityRoles

CONDITION_TYPES = ("first_frame", "prefix", "suffix", "reference", "mask", "spatial_crop")
TEMPORAL_TYPES = ("prefix", "suffix")  # the types that need temporal_boundary
VIDEO_ONLY_TYPES = ("first_frame", "spatial_crop")  # official validate_audio_intrinsic_regions
_KEYS = ("type", "modality", "probability", "temporal_boundary", "region")


@dataclass(frozen=True)
class Condition:
    type: str  # one of CONDITION_TYPES
    modality: str = "video"  # "video" or "audio"
    probability: float = 1.0  # per sample (Bernoulli) for intrinsic conditions; batch-wide for "reference"
    temporal_boundary: int = 0  # prefix/suffix: latent frames (video) or latent steps (audio), >= 1
    region: tuple[int, int, int, int] | None = None  # spatial_crop: [y1, x1, y2, x2] in pixels

    def __post_init__(self) -> None:
        if self.type not in CONDITION_TYPES or self.modality not in MODALITIES:
            raise ValueError(f"no condition type {self.type!r} on modality {self.modality!r}")

    @property
    def label(self) -> str:
        """ "video:prefix": how the LoRA metadata `trained_conditions` names it."""
        return f"{self.modality}:{self.type}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key_problems(table: dict) -> list[str]:
    """Problems of one table's keys taken alone: unknown keys, wrong types, values out of range."""
    problems = []
    for key, value in table.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(key, (*_KEYS, "spatial_region"), n=1)
            if close == ["spatial_region"]:  # the official name of `region`
                close = ["region"]
            hint = f' (did you mean "{close[0]}"?)' if close else f" (keys: {', '.join(_KEYS)})"
            problems.append(f'unknown key "{key}"{hint}')
        elif key == "type" and value not in CONDITION_TYPES:
            close = difflib.get_close_matches(str(value), CONDITION_TYPES, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.append(f'type "{value}" is unknown{hint}; choose one of {", ".join(CONDITION_TYPES)}')
        elif key == "modality" and value not in MODALITIES:
            problems.append(f'modality {value!r} must be "video" or "audio"')
        elif key == "probability" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"probability must be a number from 0 to 1, not {type(value).__name__} {value!r}")
        elif key == "probability" and not 0 <= value <= 1:
            problems.append(f"probability {value} is out of range; give a number from 0 to 1")
        elif key == "temporal_boundary" and not (_is_int(value) and value >= 1):
            problems.append(f"temporal_boundary must be a whole number >= 1, not {value!r}")
        elif key == "region" and not (isinstance(value, list) and len(value) == 4 and all(map(_is_int, value))):
            problems.append(f"region must be 4 integers [y1, x1, y2, x2] in pixels, not {value!r}")
        elif key == "region" and not (0 <= value[0] < value[2] and 0 <= value[1] < value[3]):
            problems.append(f"region {value} must have 0 <= y1 < y2 and 0 <= x1 < x2 ([y1, x1, y2, x2] in pixels)")
    return problems


def _type_problems(table: dict) -> list[str]:
    """Problems of the keys a table's type needs or forbids (a known type or none)."""
    kind = table.get("type")
    if kind is None:
        return [f'key "type" is missing; set one of {", ".join(CONDITION_TYPES)}']
    problems = []
    if kind in TEMPORAL_TYPES and "temporal_boundary" not in table:
        problems.append(f"{kind} needs temporal_boundary (latent frames for video, latent steps for audio; >= 1)")
    if kind not in TEMPORAL_TYPES and "temporal_boundary" in table:
        problems.append(f"temporal_boundary applies to prefix and suffix only; remove it from this {kind} condition")
    if kind == "spatial_crop" and "region" not in table:
        problems.append("spatial_crop needs region = [y1, x1, y2, x2] (the clean box, in pixels)")
    if kind != "spatial_crop" and "region" in table:
        problems.append(f"region applies to spatial_crop only; remove it from this {kind} condition")
    if kind in VIDEO_ONLY_TYPES and table.get("modality") == "audio":
        problems.append(f"{kind} is video only; audio takes prefix, suffix, mask or reference")
    return problems


def load_conditions(dataset_config: str | Path) -> tuple[Condition, ...]:
    """The top-level `[[conditions]]` tables of a dataset TOML (none: an empty tuple).

    Raises DatasetError listing every mistake, one per line: the file, the table, the key and the fix. The rest of
    the file is data/config.py's to check.
    """
    path = Path(dataset_config)
    document = read_dataset_document(path)
    tables = document.get("conditions", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise DatasetError(
            f'{path}: "conditions" must be [[conditions]] tables (an array of tables); see docs/conditions.md'
        )
    problems, conditions = [], []
    for index, table in enumerate(tables, start=1):
        found = _key_problems(table)
        if table.get("type", CONDITION_TYPES[0]) in CONDITION_TYPES:  # an unknown type has been reported
            found += _type_problems(table)
        problems += [f"{path} [[conditions]] #{index}: {text}" for text in found]
        if not found:
            region = table.get("region")
            conditions.append(
                Condition(
                    type=table["type"],
                    modality=table.get("modality", "video"),
                    probability=float(table.get("probability", 1.0)),
                    temporal_boundary=table.get("temporal_boundary", 0),
                    region=tuple(region) if region is not None else None,
                )
            )
    if problems:
        raise DatasetError("\n".join(problems))
    return tuple(conditions)


def check_conditions(conditions: tuple[Condition, ...] | list[Condition], roles: ModalityRoles) -> list[str]:
    """One line per condition the run's modality roles cannot train (empty: all fine)."""
    problems, references = [], set()
    for index, condition in enumerate(conditions, start=1):
        where = f"[[conditions]] #{index} ({condition.label})"
        role = roles.role(condition.modality)
        if not roles.generated(condition.modality):
            problems.append(
                f"{where}: {condition.modality} is {role} in {roles.name.upper()}; conditions apply to a generated "
                f"modality ({', '.join(roles.generated_modalities)}): set modality or remove the condition"
            )
        if condition.modality == "audio" and condition.type in VIDEO_ONLY_TYPES:
            problems.append(f"{where}: {condition.type} is video only; audio takes prefix, suffix, mask or reference")
        if condition.type == "reference" and condition.modality in references:
            problems.append(f"{where}: a second {condition.modality} reference; keep one reference per modality")
        if condition.type == "reference":
            references.add(condition.modality)
    return problems
