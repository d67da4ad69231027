"""Fixtures of the bad-input corpus: the tiny checkpoint and the caching command, run in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _corpus import Outcome

from ltx2_tuner.cli._common import run


@pytest.fixture
def checkpoint(tiny_checkpoints) -> Path:
    return tiny_checkpoints["2.3"].path


@pytest.fixture
def cache_latents(checkpoint, capsys) -> Callable[..., Outcome]:
    """Run `ltx2_cache_latents.py --dataset_config CONFIG --ltx2_checkpoint (tiny 2.3) --device cpu FLAGS`."""
    from ltx2_tuner.cli.cache_latents import main

    def call(config: Path, *flags: str) -> Outcome:
        capsys.readouterr()
        code = run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint),
                          "--device", "cpu", *flags])  # fmt: skip
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call
