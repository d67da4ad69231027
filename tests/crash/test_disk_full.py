"""A full disk (ENOSPC from the write) during a LoRA save, a state save and a cache write: one error line naming the
file, the problem and the fix, a non-zero exit, the earlier files still load, and no temporary file is left (a hidden
state folder aside, which the next run removes)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from _crash import TRAIN_FLAGS, assert_all_readable, hidden

from ltx2_tuner.cli import cache_latents, train_network
from ltx2_tuner.cli._common import run
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.testing.synthetic_media import write_video


class _FullDiskFile:
    """A file opened for writing on a disk that fills up: the first write gets half its bytes in, then ENOSPC."""

    def __init__(self, file, path: Path):
        self._file, self._path = file, path

    def write(self, data) -> int:
        self._file.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._path))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


@pytest.fixture
def fill_disk(monkeypatch):
    """fill_disk(part): writes to files whose path contains `part` run out of space."""

    def fill(part: str) -> None:
        real_open = Path.open

        def open_(path, mode="r", *args, **kwargs):
            file = real_open(path, mode, *args, **kwargs)
            return _FullDiskFile(file, path) if "w" in mode and part in str(path) else file

        monkeypatch.setattr(Path, "open", open_)

    return fill


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def train_argv(tiny_checkpoints, tmp_path):
    config = write_synthetic_dataset(tmp_path / "data")
    return ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), *TRAIN_FLAGS,
            "--output_dir", str(tmp_path / "out")]  # fmt: skip


def test_a_full_disk_during_a_lora_save_stops_with_one_line_and_keeps_the_earlier_checkpoint(
    train_argv, tmp_path, fill_disk, capsys
):
    output = tmp_path / "out"
    fill_disk("ltx2_lora-step000004.safetensors")
    assert run(train_network.main, train_argv) == 2
    assert _error_line(capsys) == (
        f"error: {output / 'ltx2_lora-step000004.safetensors'}: not written, the disk is full; free space on that "
        "drive and run again (the file that was there before is unchanged)"
    )
    assert sorted(p.name for p in output.iterdir()) == ["logs", "ltx2_lora-step000002.safetensors", "state-step000002"]
    assert_all_readable(output)  # the LoRA of step 2 loads and its state resumes
    assert hidden(output) == []  # the half-written temporary file is gone


def test_a_full_disk_during_a_state_save_stops_with_one_line_and_the_next_run_cleans_up(
    train_argv, tmp_path, fill_disk, monkeypatch, capsys
):
    output = tmp_path / "out"
    fill_disk(".state-step000004.partial/.optimizer.pt")
    assert run(train_network.main, train_argv) == 2
    monkeypatch.undo()  # space again
    partial = output / ".state-step000004.partial"
    assert _error_line(capsys) == (
        f"error: {partial / 'optimizer.pt'}: not written, the disk is full; free space on that drive, then --resume "
        "the newest state-step folder (earlier saves are intact)"
    )
    assert_all_readable(output)  # state-step000002 resumes; the LoRA files of steps 2 and 4 load
    assert not (output / "state-step000004").exists()
    assert hidden(output) == [partial.name]
    assert [p.name for p in partial.iterdir()] == ["trainable.pt"]  # the temporary optimizer.pt is gone

    assert run(train_network.main, [*train_argv, "--resume", str(output / "state-step000002")]) == 0
    assert hidden(output) == [] and (output / "state-step000004").is_dir()


def test_a_full_disk_during_a_cache_write_stops_with_one_line_and_keeps_the_written_caches(
    tiny_checkpoints, tmp_path, fill_disk, capsys
):
    (tmp_path / "clips").mkdir()
    for stem in ("clip_a", "clip_b"):
        write_video(tmp_path / "clips" / f"{stem}.mp4", num_frames=9, fps=24.0, width=64, height=32)
        (tmp_path / "clips" / f"{stem}.txt").write_text("a caption")
    config = tmp_path / "dataset.toml"
    config.write_text('[general]\nresolution = [64, 32]\n[[datasets]]\nvideo_directory = "clips"\n'
                      'cache_directory = "cache"\ntarget_frames = [9]\n')  # fmt: skip
    cache = tmp_path / "cache"
    fill_disk("clip_b_")
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--device", "cpu"]
    assert run(cache_latents.main, argv) == 2
    target = cache / "clip_b_00000-009_0064x0032_ltx2.safetensors"
    assert _error_line(capsys) == (
        f"error: {target}: not written, the disk is full; free space on that drive, then rerun with --skip_existing "
        "to cache only what is missing"
    )
    assert [p.name for p in cache.iterdir()] == ["clip_a_00000-009_0064x0032_ltx2.safetensors"]
    assert_all_readable(cache)


def test_a_full_disk_while_writing_media_is_a_media_error_and_leaves_nothing(tmp_path, monkeypatch):
    from ltx2_tuner.errors import MediaError
    from ltx2_tuner.sampling import media_writers

    def full_disk(tmp, *args):  # PyAV raises av.error.OSError, an OSError carrying the errno
        tmp.write_bytes(b"RIFF")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(media_writers, "_write_wav", full_disk)
    with pytest.raises(MediaError, match=r"tone\.wav: not written, the disk is full; free space on that drive"):
        media_writers.write_wav(tmp_path / "tone.wav", torch.zeros(2, 800), 16000)
    assert list(tmp_path.iterdir()) == []
