"""Every flag of every command is documented in docs/ (commands.md, training.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltx2_tuner.cli import cache_latents, cache_text_encoder_outputs, demo, inspect_checkpoint, train_network
from ltx2_tuner.networks import convert_lora
from ltx2_tuner.testing import make_tiny

DOCS = "\n".join(path.read_text() for path in (Path(__file__).parents[2] / "docs").glob("*.md"))


@pytest.mark.parametrize(
    "command",
    [cache_latents, cache_text_encoder_outputs, convert_lora, demo, inspect_checkpoint, make_tiny, train_network],
)
def test_every_flag_is_documented(command):
    parser = command.build_parser()
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--") and s != "--help"]
    assert flags
    missing = [flag for flag in flags if f"`{flag}" not in DOCS]
    assert not missing, f"{command.__name__}: undocumented flags {missing}"
