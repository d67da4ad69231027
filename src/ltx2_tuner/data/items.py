"""The media of a dataset: files in a directory or lines of a JSONL file (`{kind}_path`, `caption`), with their
captions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.data.config import MEDIA_EXTENSIONS, DatasetConfig
from ltx2_tuner.data.text_files import read_text_file
from ltx2_tuner.errors import DatasetError


@dataclass(frozen=True)
class MediaItem:
    """One image, video or audio file of a dataset; `caption` is set for JSONL datasets, read from a sidecar file otherwise."""

    dataset: DatasetConfig
    path: Path
    caption: str | None = None

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def caption_path(self) -> Path:
        return self.path.with_suffix(self.dataset.caption_extension)


def list_media(dataset: DatasetConfig) -> list[MediaItem]:
    """Every media file of `dataset`, sorted, each stem once (cache files are named by stem)."""
    items = _from_jsonl(dataset) if dataset.source_is_jsonl else _from_directory(dataset)
    seen: dict[str, Path] = {}
    for item in items:
        other = seen.setdefault(item.stem, item.path)
        if other != item.path:
            raise DatasetError(
                f"{dataset.name}: {other} and {item.path} share the name {item.stem!r}, so their cache files would "
                "collide; rename one of them"
            )
    if not items:
        kinds = MEDIA_EXTENSIONS[dataset.kind]
        raise DatasetError(f"{dataset.source}: no {dataset.kind} files ({' '.join(kinds)}) in {dataset.name}")
    return items


def _from_directory(dataset: DatasetConfig) -> list[MediaItem]:
    extensions = MEDIA_EXTENSIONS[dataset.kind]
    files = sorted(p for p in dataset.source.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    return [MediaItem(dataset, path) for path in files]


def _from_jsonl(dataset: DatasetConfig) -> list[MediaItem]:
    path_key = f"{dataset.kind}_path"
    items = []
    for number, line in enumerate(read_text_file(dataset.source).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{dataset.source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}: not valid JSON ({error.msg}); one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get(path_key), str):
            raise DatasetError(f'{where}: needs a "{path_key}" string (and a "caption")')
        media = Path(record[path_key]).expanduser()
        media = media if media.is_absolute() else dataset.source.parent / media
        if not media.is_file():
            raise DatasetError(f"{where}: {media} does not exist; fix the path")
        caption = record.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise DatasetError(f'{where}: "caption" must be a string')
        items.append(MediaItem(dataset, media, caption))
    return items


def read_caption(item: MediaItem, allow_empty: bool = False) -> str:
    """The caption of `item`, stripped; DatasetError if it is missing or empty (unless `allow_empty`)."""
    if item.caption is not None:
        caption, where = item.caption, f"{item.dataset.source} ({item.path.name})"
    else:
        where = str(item.caption_path)
        if not item.caption_path.is_file():
            raise DatasetError(
                f"{item.caption_path}: caption file missing for {item.path.name}; write one "
                f"(caption_extension = {item.dataset.caption_extension!r})"
            )
        caption = read_text_file(item.caption_path)
    caption = caption.strip()
    if not caption and not allow_empty:
        raise DatasetError(f"{where}: caption is empty; write one, or allow empty captions explicitly")
    return caption


def caption_problems(datasets: list[DatasetConfig], allow_empty: bool = False) -> list[str]:
    """One line per media item whose caption is missing, unreadable or (unless `allow_empty`) empty."""
    problems = []
    for dataset in datasets:
        for item in list_media(dataset):
            try:
                read_caption(item, allow_empty=allow_empty)
            except DatasetError as error:
                problems.append(str(error))
    return problems


def raise_caption_problems(problems: list[str], limit: int = 50) -> None:
    """One DatasetError listing every caption problem (the first `limit`, then a count)."""
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DatasetError(f"{len(problems)} caption problems:\n  " + "\n  ".join(problems[:limit]) + more)
