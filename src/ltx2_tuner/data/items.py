"""The media of a dataset: files in a directory or lines of a JSONL file (`{kind}_path`, `caption`), with their
captions, and their partner files (a reference clip, a mask: `reference_directory` & co. by stem, or a JSONL line's
`reference_path` & co.; docs/dataset-config.md "References and masks")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.data.config import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, MEDIA_EXTENSIONS, VIDEO_EXTENSIONS, DatasetConfig
from ltx2_tuner.data.text_files import read_text_file
from ltx2_tuner.errors import DatasetError


@dataclass(frozen=True)
class MediaItem:
    """One image, video or audio file of a dataset; `caption` is set for JSONL datasets, read from a sidecar file otherwise."""

    dataset: DatasetConfig
    path: Path
    caption: str | None = None
    partners: tuple[tuple[str, Path], ...] = ()  # JSONL datasets: (kind, file) named on the item's line

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
        items.append(MediaItem(dataset, media, caption, _jsonl_partners(record, where, dataset.source.parent)))
    return items


# Partner kinds, the JSONL keys that name them (musubi-tuner's `control_path` = `reference_path`) and the files
# a partner folder is searched for (any extension of these, same stem as the media).
PARTNER_KINDS = ("reference", "mask", "reference_audio", "audio_mask")
_JSONL_KEYS = {"reference": ("reference_path", "control_path"), "mask": ("mask_path",),
               "reference_audio": ("reference_audio_path",), "audio_mask": ("audio_mask_path",)}  # fmt: skip
MASK_TENSOR_EXTENSIONS = (".pt", ".npy", ".safetensors")
PARTNER_EXTENSIONS = {
    "reference": VIDEO_EXTENSIONS + IMAGE_EXTENSIONS,
    "mask": VIDEO_EXTENSIONS + IMAGE_EXTENSIONS,
    "reference_audio": AUDIO_EXTENSIONS + VIDEO_EXTENSIONS,
    "audio_mask": MASK_TENSOR_EXTENSIONS + AUDIO_EXTENSIONS,
}


def _jsonl_partners(record: dict, where: str, base: Path) -> tuple[tuple[str, Path], ...]:
    partners = []
    for kind, keys in _JSONL_KEYS.items():
        given = [key for key in keys if record.get(key) is not None]
        if len(given) > 1:
            raise DatasetError(f"{where}: {' and '.join(given)} mean the same; keep one")
        if not given:
            continue
        if not isinstance(record[given[0]], str):
            raise DatasetError(f'{where}: "{given[0]}" must be a path string')
        path = Path(record[given[0]]).expanduser()
        partners.append((kind, path if path.is_absolute() else base / path))
    return tuple(partners)


def declared_partners(dataset: DatasetConfig, items: list[MediaItem]) -> tuple[str, ...]:
    """The partner kinds `dataset` has: its `*_directory` keys, or (JSONL) the kinds any line names; every item
    then needs one of each."""
    if dataset.source_is_jsonl:
        named = {kind for item in items for kind, _ in item.partners}
        return tuple(kind for kind in PARTNER_KINDS if kind in named)
    return tuple(kind for kind in PARTNER_KINDS if getattr(dataset, f"{kind}_directory") is not None)


def find_partner(item: MediaItem, kind: str) -> Path:
    """The `kind` partner file of `item`; DatasetError (one line) when it is missing or ambiguous."""
    dataset = item.dataset
    if dataset.source_is_jsonl:
        named = dict(item.partners).get(kind)
        if named is None:
            raise DatasetError(f'{dataset.source} ({item.path.name}): no "{_JSONL_KEYS[kind][0]}" on its line, '
                               f"but other lines have one; add it")  # fmt: skip
        if not named.is_file():
            raise DatasetError(
                f"{named}: {kind.replace('_', ' ')} file of {item.path.name} does not exist; fix the path"
            )
        return named
    directory = getattr(dataset, f"{kind}_directory")
    found = [path for path in sorted(directory.glob(f"{_glob_escape(item.stem)}.*"))
             if path.stem == item.stem and path.suffix.lower() in PARTNER_EXTENSIONS[kind] and path.is_file()]  # fmt: skip
    if not found:
        raise DatasetError(f"{directory}: no {kind.replace('_', ' ')} file for {item.path.name} "
                           f"(looked for {item.stem}.*); add one with the same name")  # fmt: skip
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise DatasetError(
            f"{directory}: several {kind.replace('_', ' ')} files for {item.path.name} ({names}); keep one"
        )
    return found[0]


def soundtrack_reference(dataset: DatasetConfig, kinds: tuple[str, ...]) -> bool:
    """Whether `dataset` takes each reference clip's own soundtrack as its reference audio: a video dataset with
    references and no reference audio of its own (docs/dataset-config.md "References and masks")."""
    return dataset.kind == "video" and "reference" in kinds and "reference_audio" not in kinds


def reference_soundtrack(item: MediaItem) -> Path | None:
    """The reference clip of `item` when it is a video with an audio stream (its soundtrack is then the item's
    reference audio), else None; DatasetError/MediaError when the reference is missing or unreadable."""
    from ltx2_tuner.data.audio import has_audio_stream

    reference = find_partner(item, "reference")
    if reference.suffix.lower() not in VIDEO_EXTENSIONS or not has_audio_stream(reference):
        return None
    return reference


def _glob_escape(stem: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in stem)


def partner_problems(datasets: list[DatasetConfig]) -> list[str]:
    """One line per missing or ambiguous partner file, over every item of every dataset."""
    problems = []
    for dataset in datasets:
        items = list_media(dataset)
        for kind in declared_partners(dataset, items):
            for item in items:
                try:
                    find_partner(item, kind)
                except DatasetError as error:
                    problems.append(str(error))
    return problems


def raise_partner_problems(problems: list[str], limit: int = 50) -> None:
    """One DatasetError listing every partner-file problem (the first `limit`, then a count)."""
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DatasetError(f"{len(problems)} reference/mask file problems:\n  " + "\n  ".join(problems[:limit]) + more)


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
