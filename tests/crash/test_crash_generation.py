"""SIGKILL while generation writes its mp4: no file under the output name, only a hidden temporary one, which the
rerun removes when it writes the same output."""

from __future__ import annotations

import pytest
from _crash import assert_all_readable, hidden, run_killed

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.generate_video import main


@pytest.mark.slow
def test_generation_killed_while_writing_the_mp4_leaves_no_unreadable_video(tiny_checkpoints, tiny_gemma_dir, tmp_path):
    output = tmp_path / "out" / "fox.mp4"
    argv = ["--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--gemma_root", str(tiny_gemma_dir), "--width",
            "64", "--height", "64", "--frames", "9", "--steps", "2", "--device", "cpu", "--mixed_precision", "no",
            "--prompt", "a red fox runs through snow", "--output", str(output)]  # fmt: skip
    run_killed("ltx2_tuner.cli.generate_video", argv, "mp4_audio", 3)  # frames and some audio are muxed
    assert not output.exists()
    leftovers = hidden(output.parent)
    assert len(leftovers) == 1 and leftovers[0].startswith(".fox.") and leftovers[0].endswith(".tmp.mp4")
    assert (output.parent / leftovers[0]).stat().st_size > 0  # killed mid-write, not before it

    assert run(main, argv) == 0
    assert output.is_file() and hidden(output.parent) == []
    assert_all_readable(output.parent)
