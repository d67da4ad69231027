"""The README's main command: the demo runs end to end and shows every component working."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_tuner.cli.demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for component in ("transformer", "text_connectors", "video_vae", "audio_vae", "vocoder"):
        assert f"check {component}" in result.stdout
    assert "latents [1, 128, 2, 2, 2]" in result.stdout  # 9 frames of 64x64 -> 2 latent frames of 2x2
    assert "$ python -m ltx2_tuner.testing.make_tiny" in result.stdout
    assert "Traceback" not in result.stderr
