"""Writing and reading cache files: atomic writes, a format version and a fingerprint in the metadata.

A fingerprint records what a cache was made from (source file, checkpoint, settings). A cache is reused only when
every field matches what the current run would write; otherwise it is stale and made again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ltx2_tuner.errors import CacheError, CheckpointError
from ltx2_tuner.models.safetensors_io import read_header, save_atomically

CACHE_FORMAT = "ltx2-tuner-cache-1"
_FORMAT_KEY, _FINGERPRINT_KEY = "format", "fingerprint"
_DISK_FULL_FIX = "free space on that drive, then rerun with --skip_existing to cache only what is missing"


def source_stamp(path: Path) -> dict:
    """Identity of a source file that changes when it is edited: resolved path, size, mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_cache(path: Path, tensors: Mapping[str, torch.Tensor], fingerprint: dict, **info: str) -> None:
    """Write atomically; `info` adds informational metadata that is not compared (e.g. the caching mode).

    A full disk raises CacheError (the caches written so far are complete and are reused with --skip_existing)."""
    metadata = {**info, _FORMAT_KEY: CACHE_FORMAT, _FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)}
    # The caching commands clear killed runs' temporaries once at the start (remove_interrupted_writes), not per file.
    save_atomically(tensors, path, metadata, CacheError, _DISK_FULL_FIX, remove_abandoned=False)


def read_fingerprint(path: Path) -> dict | None:
    """The fingerprint of a cache file, or None when the file is missing, unreadable, truncated or of another
    format (so such a file is never taken for current and is written again)."""
    try:
        header = read_header(path)
    except CheckpointError:
        return None
    return fingerprint_from_metadata(header.metadata)


def fingerprint_from_metadata(metadata: Mapping[str, str]) -> dict | None:
    """The fingerprint stored in a cache file's metadata; None for another format or a damaged entry."""
    if metadata.get(_FORMAT_KEY) != CACHE_FORMAT:
        return None
    try:
        fingerprint = json.loads(metadata[_FINGERPRINT_KEY])
    except (KeyError, json.JSONDecodeError):
        return None
    return fingerprint if isinstance(fingerprint, dict) else None


def differences(stored: dict | None, expected: dict) -> list[str]:
    """Fields of `expected` that `stored` lacks or holds with another value (empty: the cache is current)."""
    if stored is None:
        return ["no readable cache"]
    normalized = json.loads(json.dumps(expected))  # tuples -> lists, as stored
    return [key for key, value in normalized.items() if stored.get(key) != value]


def remove_interrupted_writes(directory: Path, suffixes: tuple[str, ...]) -> int:
    """Delete the temporary files that a killed run left in `directory` for cache files ending in `suffixes`
    (only those: another caching command may be writing other cache files there right now); return how many."""
    if not directory.is_dir():
        return 0
    leftovers = [path for suffix in suffixes for path in directory.glob(f".*{suffix}.tmp*")]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)
