"""Helpers of the bad-input corpus (docs/bad-input.md): a dataset folder, and the checks every case makes (one line
naming the file, no traceback, no half-written cache file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one `error: ...` line a stopped command printed (exactly one, and no traceback)."""
        lines = [line for line in self.err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, self.err
        assert "Traceback" not in self.err, self.err
        return lines[0]


def write_dataset(root: Path, tables: str, general: str = "resolution = [64, 64]") -> Path:
    """`root/dataset.toml` with a `[general]` table and `tables` ([[datasets]] ...); media go in `root/clips`."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    config = root / "dataset.toml"
    config.write_text(f"[general]\n{general}\n{tables}", encoding="utf-8")
    return config


VIDEO_TABLE = '[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\ntarget_frames = [9]\n'


def caption_everything(folder: Path, caption: str = "a caption") -> None:
    """A caption file next to every media file of `folder` that has none."""
    for media in [p for p in folder.iterdir() if p.suffix != ".txt"]:
        if not media.with_suffix(".txt").exists():
            media.with_suffix(".txt").write_text(caption, encoding="utf-8")


def cache_names(folder: Path) -> list[str]:
    """The files in a cache folder, sorted; also checks that no temporary or half-written file is left."""
    if not folder.is_dir():
        return []
    names = sorted(path.name for path in folder.iterdir())
    assert not [name for name in names if name.startswith(".") or ".tmp" in name], names
    return names
