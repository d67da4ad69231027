"""What a killed process leaves is cleaned up by the next write of the same file: temporary files of dead writers go
(those of live ones stay), and a state folder caught between the two renames of a re-save is put back."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.sampling.media_writers import write_wav
from ltx2_tuner.training import checkpoints as ckpt


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_the_next_save_removes_the_temporary_files_of_killed_writers_only(tmp_path):
    dead, alive = tmp_path / f".lora.safetensors.tmp{_dead_pid()}", tmp_path / f".lora.safetensors.tmp{os.getppid()}"
    other = tmp_path / f".other.safetensors.tmp{_dead_pid()}"  # another file's: not this save's business
    for leftover in (dead, alive, other):
        leftover.write_bytes(b"half a file")
    save_atomically({"w": torch.ones(2)}, tmp_path / "lora.safetensors", {})
    assert torch.equal(load_file(tmp_path / "lora.safetensors")["w"], torch.ones(2))
    assert not dead.exists() and alive.exists() and other.exists()


def test_the_next_media_write_removes_a_killed_writers_temporary_file(tmp_path):
    dead = tmp_path / f".tone.{_dead_pid()}.tmp.wav"
    dead.write_bytes(b"RIFF")
    write_wav(tmp_path / "tone.wav", torch.zeros(2, 800), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.wav"]


def test_a_state_caught_between_the_renames_of_a_re_save_is_put_back(tmp_path):
    # publish_state_folder re-saving step 4: state-step000004 -> .state-step000004.replaced, then the new one into
    # place. Killed in between, the complete old state is the only one: the next save restores it.
    replaced = tmp_path / ".state-step000004.replaced"
    replaced.mkdir()
    (replaced / ckpt.STATE_FILE).write_text("{}")
    (tmp_path / ".state-step000004.partial").mkdir()
    stale = tmp_path / ".state-step000002.replaced"  # its state-step000002 is there: a finished re-save's leftover
    stale.mkdir()
    (tmp_path / "state-step000002").mkdir()
    ckpt.start_state_folder(tmp_path, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".state-step000006.partial", "state-step000002",
                                                          "state-step000004"]  # fmt: skip
    assert (tmp_path / "state-step000004" / ckpt.STATE_FILE).is_file()
