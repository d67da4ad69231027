"""Every flag of every command is documented in docs/ (commands.md, training.md), by its whole name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ltx2_tuner.cli import (
    cache_latents,
    cache_text_encoder_outputs,
    convert_lora,
    demo,
    generate_video,
    inspect_cache,
    inspect_checkpoint,
    train_network,
)
from ltx2_tuner.testing import make_tiny

DOCS = "\n".join(path.read_text() for path in (Path(__file__).parents[2] / "docs").glob("*.md"))


def documented(flag: str, text: str) -> bool:
    """Whether `text` names `flag` in a code span (`--flag`, `--flag VALUE`, `--flag=VALUE`), as a whole name:
    `--vae` is not satisfied by `--vae_dtype` or `--vae-tiling`, nor by `--vae` inside another flag's name."""
    return re.search(r"`" + re.escape(flag) + r"(?![\w-])", text) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("| `--vae` | none | ignored |", True),
        ("use `--vae DIR`", True),
        ("use `--vae=DIR`", True),
        ("`--vae`, `--dit`", True),
        ("| `--vae_dtype` | bf16 |", False),  # a longer flag with an underscore continuation
        ("`--vae-tiling`", False),  # a longer flag with a dash continuation
        ("`--vae2`", False),
        ("--vae", False),  # not in a code span
        ("`--no-vae`", False),  # another flag that ends with the name
    ],
)
def test_the_matcher_takes_whole_flag_names_only(text, expected):
    assert documented("--vae", text) is expected


def test_the_matcher_escapes_the_flag():
    assert documented("--no-independent_audio_timestep", "`--no-independent_audio_timestep`;")
    assert not documented("--a.b", "`--axb`")  # "." is literal, not a regex wildcard


@pytest.mark.parametrize(
    "command",
    [
        cache_latents,
        cache_text_encoder_outputs,
        convert_lora,
        demo,
        generate_video,
        inspect_cache,
        inspect_checkpoint,
        make_tiny,
        train_network,
    ],
)
def test_every_flag_is_documented(command):
    parser = command.build_parser()
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--") and s != "--help"]
    assert flags
    missing = [flag for flag in flags if not documented(flag, DOCS)]
    assert not missing, f"{command.__name__}: undocumented flags {missing}"
