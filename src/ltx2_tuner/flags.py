"""Command-line flags as data: one `Flag` holds a flag's type, default, help, choices and bounds.

The trainer's flag table (training/config.py, which also drives --config_file) and the caching commands
(cli/_common.py) build their parsers from these objects, so a flag they share is defined once, below.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# A bound returns what is wrong with a value ("must be > 0"), or None when it is fine.
Bound = Callable[[Any], "str | None"]


def above(low: float) -> Bound:
    return lambda value: None if value > low else f"must be > {low}"


def at_least(low: float) -> Bound:
    return lambda value: None if value >= low else f"must be >= {low}"


def between(low: float, high: float, include_high: bool = True) -> Bound:
    """low <= value <= high (or < high)."""
    closing = "]" if include_high else ")"

    def check(value):
        inside = low <= value <= high if include_high else low <= value < high
        return None if inside else f"must be in [{low}, {high}{closing}"

    return check


@dataclass(frozen=True)
class Flag:
    name: str
    type: Any
    default: Any
    help: str
    choices: tuple | None = None
    action: str | None = None  # "store_true", or "boolean" for --flag / --no-flag
    nargs: str | None = None
    bound: Bound | None = None  # checked on the parsed value unless it is None

    def problem(self, value) -> str | None:
        """One line naming the flag, its value and the rule it breaks; None when the value is fine."""
        if value is None or self.bound is None:
            return None
        if isinstance(value, float) and math.isnan(value):
            return f"--{self.name} nan: must be a number"
        issue = self.bound(value)
        return None if issue is None else f"--{self.name} {value}: {issue}"


def add_flag(parser, flag: Flag, required: bool = False) -> None:
    """Add `flag` to an argparse parser or argument group."""
    help_text = flag.help
    if flag.default not in (None, False):
        help_text += f" (default: {flag.default})"
    if flag.action == "store_true":
        parser.add_argument(f"--{flag.name}", action="store_true", default=flag.default, help=help_text)
    elif flag.action == "boolean":
        parser.add_argument(
            f"--{flag.name}", action=argparse.BooleanOptionalAction, default=flag.default, help=help_text
        )
    else:
        parser.add_argument(
            f"--{flag.name}",
            type=flag.type,
            default=flag.default,
            choices=flag.choices,
            nargs=flag.nargs,
            required=required,
            help=help_text,
        )


def with_help(flag: Flag, suffix: str) -> Flag:
    """`flag` with a command's own note after the shared help text."""
    return replace(flag, help=flag.help + suffix)


# Flags that several commands share.
DATASET_CONFIG = Flag("dataset_config", Path, None, "dataset TOML (every key: docs/dataset_config.md)")
LTX2_CHECKPOINT = Flag(
    "ltx2_checkpoint",
    Path,
    None,
    "official LTX-2 / LTX-2.3 / LTX 2.5 checkpoint (.safetensors): the unified file, or a split pack's "
    "diffusion_models/*-transformer-*.safetensors",
)
VIDEO_VAE = Flag(
    "video_vae",
    Path,
    None,
    "file with the video VAE (default: the unified checkpoint, or the split pack's vae/*video-vae*; pass the "
    "-conv- file for LTX 2.5's conv decoder)",
)
AUDIO_VAE = Flag(
    "audio_vae",
    Path,
    None,
    "file with the audio VAE and vocoder (default: the unified checkpoint, or the split pack's vae/*audio-vae*)",
)
TEXT_ENCODER = Flag(
    "text_encoder",
    Path,
    None,
    "Gemma text encoder: a Gemma 3 directory (LTX-2/2.3), or LTX 2.5's Gemma 4 as the packed file "
    "(text_encoders/gemma4-*-with-proj-*.safetensors) or a directory (default: the split pack's own)",
)
LTX_MODE = Flag(
    "ltx_mode", str, "video", "video, av (audio and video) or audio (audio only)", choices=("video", "av", "audio")
)
FROZEN_MODALITY = Flag(
    "frozen_modality",
    str,
    None,
    "with --ltx_mode av: keep this modality clean (timestep 0, no loss) as the condition of the other; "
    "audio = audio-to-video (A2V), video = video-to-audio (V2A, Foley)",
    choices=("video", "audio"),
)
