"""The empty prompt's text cache: what a sample trains on when its caption is dropped (caption dropout).

    {cache_directory}/ltx2_empty_prompt_te.safetensors   the tensors and fingerprint of a caption's text cache
                                                         (text_cacher), made from the caption ""

`ltx2_cache_text_encoder_outputs.py` encodes "" once per run (the cost of one caption) and writes it into every
training dataset's cache folder, so turning dropout on later needs no caching run; `--skip_existing` reuses a file
whose fingerprint is current. Validation datasets never drop captions and get none. The name is no media stem's
cache name (cache.naming), so the scans never take it for an item.

Training checks the file when its batches are built, for each dataset that drops captions: it must exist, hold the
empty prompt, and come from the same connectors, Gemma, mode and dtype as the dataset's caption caches (else the
dropped samples would see another model's embeddings), with embeddings of the same shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.cached_items import (
    TEXT_FIELDS,
    CachedItem,
    CacheProblems,
    open_cache,
    plain_name,
    text_tensor_problem,
)
from ltx2_tuner.cache.store import write_cache
from ltx2_tuner.cache.text_cacher import PromptEncoder, TextStamp, cache_tensors, is_current
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.roles import ModalityRoles

EMPTY_PROMPT = ""
_EMPTY_SHA256 = hashlib.sha256(EMPTY_PROMPT.encode("utf-8")).hexdigest()
# TextStamp.models(): how text became embeddings. The empty prompt's must equal its dataset's captions'.
MODEL_FIELDS = ("connectors", "gemma", "mode", "dtype")


def empty_prompt_paths(datasets: Iterable[DatasetConfig]) -> list[Path]:
    """The empty prompt's cache file of each training dataset (validation datasets drop no captions)."""
    folders = dict.fromkeys(d.cache_directory for d in datasets if not d.is_validation)
    return [naming.empty_prompt_cache_path(folder) for folder in folders]


def pending_empty_prompts(paths: list[Path], stamp: TextStamp, skip_existing: bool) -> list[Path]:
    """The files to write: all, or with `skip_existing` those missing or stale."""
    if not skip_existing:
        return list(paths)
    return [path for path in paths if not is_current(path, stamp.fingerprint(EMPTY_PROMPT))]


def cache_empty_prompt(paths: list[Path], encode: PromptEncoder, stamp: TextStamp) -> list[str]:
    """Encode the empty prompt once and write it atomically to each of `paths`; return the failed writes' lines."""
    if not paths:
        return []
    video, audio, mask = encode([EMPTY_PROMPT])
    tensors = cache_tensors(
        None if video is None else video[0], None if audio is None else audio[0], mask[0], stamp.compat_keys
    )
    failed = []
    for path in paths:
        try:
            write_cache(path, tensors, stamp.fingerprint(EMPTY_PROMPT), mode=stamp.mode)
        except OSError as error:  # e.g. a full disk: report it, keep going with the others
            failed.append(f"{path}: {error}")
    return failed


def check_empty_prompt_caches(
    dropping: dict[DatasetConfig, float],
    items: list[CachedItem],
    roles: ModalityRoles,
    dataset_config: Path | None = None,
    video_context_dim: int | None = None,
) -> None:
    """CacheError, a line per dataset of `dropping` ({dataset: its caption dropout rate > 0}) whose empty prompt
    cache is missing, damaged or made by another model than its captions' caches (`items`: the scanned items)."""
    problems = CacheProblems(dataset_config, roles)
    fix = f"{problems.text_fix} (current captions are reused: only the empty prompt is encoded)"
    caption_of = {}  # a caption cache of each dataset, to compare with (the scan has checked them all)
    for item in items:
        caption_of.setdefault(item.dataset, item.text_path)
    for dataset, rate in dropping.items():
        if dataset not in caption_of:
            continue  # no items: the scan has said so
        path = naming.empty_prompt_cache_path(dataset.cache_directory)
        problem = _problem(path, caption_of[dataset], roles, video_context_dim)
        if problem is not None:
            problems.add(path, f"{problem} ({dataset.name} drops captions at rate {rate:g})", fix)
    problems.raise_if_any()


def _problem(path: Path, caption_path: Path, roles: ModalityRoles, video_context_dim: int | None) -> str | None:
    if not path.is_file():
        return "empty prompt cache missing"
    header, fingerprint, problem = open_cache(path, TEXT_FIELDS)
    if problem is not None:
        return problem
    if fingerprint["caption_sha256"] != _EMPTY_SHA256:
        return "not the empty prompt's cache (its caption is not empty)"
    caption_header, caption_fingerprint, _ = open_cache(caption_path, TEXT_FIELDS)
    changed = [f for f in MODEL_FIELDS if fingerprint.get(f) != caption_fingerprint.get(f)]
    if changed:
        return (
            f"stale empty prompt cache, its {', '.join(changed)} differ from the caption caches' ({caption_path.name})"
        )
    problem = text_tensor_problem(header, roles, video_context_dim)
    if problem is not None:
        return problem
    shapes = {plain_name(key): entry.shape for key, entry in header.tensors.items()}
    for key, entry in caption_header.tensors.items():
        name = plain_name(key)
        if name in shapes and shapes[name] != entry.shape:
            return f"{name} is {list(shapes[name])}, the caption caches' is {list(entry.shape)} ({caption_path.name})"
    return None
