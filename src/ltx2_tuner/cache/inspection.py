"""The state of each dataset's caches, at a glance: what `python -m ltx2_tuner.cli.inspect_cache` prints.

Per dataset: its media files, the cached windows (and how many training could use), the buckets (size x frames)
and frame counts of those windows, the audio coverage in AV and audio modes (windows with an audio cache, and
those whose audio lasts the whole clip rather than being padded), the text caches, the empty prompt's cache,
the partner caches (references, masks), cache files holding NaN or Inf, and every stale or missing cache with
the line that says why and how to fix it.

The checks are the trainer's own (cache.cached_items, cache.empty_prompt): a dataset reported without problems
is one training accepts. Only the non-finite scan is added here, as training cannot afford to read every tensor
up front.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.cached_items import (
    CachedItem,
    CacheProblems,
    DatasetScan,  # the trainer's per-dataset scan, so that this report and training never disagree
    audio_length,  # the scanner's reading of an audio cache's (latent steps, valid steps)
)
from ltx2_tuner.cache.empty_prompt import check_empty_prompt_caches
from ltx2_tuner.cache.store import read_fingerprint
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.items import list_media
from ltx2_tuner.errors import CacheError, CheckpointError
from ltx2_tuner.models.safetensors_io import read_header, read_tensors
from ltx2_tuner.roles import ModalityRoles

_CACHE_GLOB = "*_ltx2*.safetensors"  # every cache file kind (cache.naming), the empty prompt's included
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


@dataclass
class DatasetReport:
    """What one dataset's cache folder holds for a run in `roles`; `problems` are 'file: problem; fix' lines."""

    dataset: DatasetConfig
    media_files: int = 0
    cached_windows: int = 0  # cache files of current media and dataset settings (usable or not)
    items: list[CachedItem] = field(default_factory=list)  # the windows training would use
    buckets: Counter = field(default_factory=Counter)  # "640x352x17" -> windows
    frames: Counter = field(default_factory=Counter)  # frames per window -> windows
    audio_windows: int | None = None  # windows with an audio cache (None: the mode has no audio)
    audio_covering: int = 0  # of those, windows whose audio lasts the whole clip
    silent_windows: int = 0  # windows cached without audio (--missing_audio skip): left out of the run
    text_caches: int = 0  # media files with a text cache
    empty_prompt: str = "-"  # "current", "absent", or its problem ("-": validation datasets need none)
    partners: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (windows with its file, windows)
    nonfinite: list[Path] = field(default_factory=list)  # cache files with NaN or Inf values
    ignored: int = 0  # cache files of removed media or other dataset settings
    problems: list[str] = field(default_factory=list)

    @property
    def is_current(self) -> bool:
        return not self.problems and not self.nonfinite


def inspect_datasets(
    datasets: list[DatasetConfig],
    roles: ModalityRoles,
    dataset_config: Path | None = None,
    model_version: str | None = None,
    video_context_dim: int | None = None,
) -> list[DatasetReport]:
    """A DatasetReport per dataset; `model_version` / `video_context_dim` (from a checkpoint) add the checks
    against that model (latent space, connectors, text width), as training does."""
    return [inspect_dataset(d, roles, dataset_config, model_version, video_context_dim) for d in datasets]


def inspect_dataset(
    dataset: DatasetConfig,
    roles: ModalityRoles,
    dataset_config: Path | None = None,
    model_version: str | None = None,
    video_context_dim: int | None = None,
) -> DatasetReport:
    """The report of one dataset: its cache files scanned and checked as training checks them, plus the counts."""
    report = DatasetReport(dataset)
    problems = CacheProblems(dataset_config, roles)
    media = list_media(dataset)
    report.media_files = len(media)
    report.text_caches = sum(naming.text_cache_path(dataset.cache_directory, m.stem).is_file() for m in media)
    report.nonfinite = nonfinite_files(dataset.cache_directory)
    unfit = roles.dataset_problem(dataset.kind)
    if unfit is not None:
        report.problems = [f"{dataset.source}: {unfit}"]
        return report

    scan = DatasetScan(dataset, {m.stem: m for m in media}, roles, model_version, video_context_dim, problems)
    suffix = naming.LATENT_SUFFIX if roles.present("video") else naming.AUDIO_SUFFIX
    keys = []  # of the windows cached for current media and settings
    for path in sorted(dataset.cache_directory.glob(f"*{suffix}")):
        counted = sum(scan.found.values())
        item = scan.check(path)
        if sum(scan.found.values()) > counted:  # a file of a current item (usable or not)
            parsed = naming.parse_latent_name(path)
            keys.append(parsed[0] if parsed else path.name.removesuffix(naming.AUDIO_SUFFIX))
        if item == "no audio":
            report.silent_windows += 1
        elif item is not None:
            report.items.append(item)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its count of ignored files is reported below instead
        scan.report_missing()
    report.cached_windows = sum(scan.found.values())
    report.ignored = scan.ignored
    _count_shapes(report, roles)
    report.partners = {
        kind: (sum(naming.partner_cache_path(dataset.cache_directory, key, kind).is_file() for key in keys), len(keys))
        for kind in scan.partner_kinds
    }
    report.empty_prompt = _empty_prompt_state(report, roles, problems, dataset_config, video_context_dim)
    report.problems = problems.lines
    return report


def nonfinite_files(cache_directory: Path) -> list[Path]:
    """The cache files in `cache_directory` with a NaN or Inf in a floating-point tensor (unreadable files are
    skipped: the scan reports them)."""
    found = []
    for path in sorted(cache_directory.glob(_CACHE_GLOB)):
        try:
            header = read_header(path)
            names = [name for name, entry in header.tensors.items() if entry.dtype in _FLOAT_DTYPES]
            if any(not torch.isfinite(tensor.float()).all() for _, tensor in read_tensors(header, names)):
                found.append(path)
        except CheckpointError:
            continue
    return found


def _count_shapes(report: DatasetReport, roles: ModalityRoles) -> None:
    """Buckets, frame counts and audio coverage of the usable windows, from their fingerprints and audio caches."""
    if roles.present("audio") and report.dataset.kind != "image":
        report.audio_windows = 0
    for item in report.items:
        fingerprint = read_fingerprint(item.latent_path or item.audio_path) or {}
        start_and_length = fingerprint.get("window") or [0, 0]
        if report.dataset.kind == "audio":
            report.buckets[f"audio {start_and_length[1]:g}s"] += 1
        else:
            frames = int(start_and_length[1])
            report.frames[frames] += 1
            width, height = fingerprint.get("bucket") or (0, 0)
            report.buckets[f"{width}x{height}x{frames}" if item.latent_path else f"audio of {frames} frames"] += 1
        if item.audio_path is not None:
            report.audio_windows += 1
            lengths, _ = audio_length(read_header(item.audio_path))
            report.audio_covering += lengths is not None and lengths[1] >= lengths[0]


def _empty_prompt_state(
    report: DatasetReport, roles, problems: CacheProblems, dataset_config, video_context_dim
) -> str:
    """The state of the dataset's empty prompt cache: "current", "absent" or its problem. A problem line is added
    when the dataset drops captions, or when the file exists but is stale or damaged."""
    dataset = report.dataset
    if dataset.is_validation:
        return "-"  # never drops captions, gets none
    path = naming.empty_prompt_cache_path(dataset.cache_directory)
    rate = dataset.caption_dropout_rate or 0.0
    # Compared with a readable caption cache (training has stopped at a damaged one before this check).
    captioned = [item for item in report.items if read_fingerprint(item.text_path) is not None][:1]
    if not captioned:
        return "present" if path.is_file() else "absent"
    if not path.is_file() and rate == 0:
        return "absent (needed only for caption dropout)"
    try:
        check_empty_prompt_caches({dataset: rate}, captioned, roles, dataset_config, video_context_dim)
    except CacheError as error:
        line = str(error).replace(f" ({dataset.name} drops captions at rate 0)", "")
        problems.lines.append(line)
        return line.split(": ", 1)[1].split(";")[0]
    return "current"


def format_report(report: DatasetReport, max_problems: int = 50) -> str:
    """The dataset's table: one row per measure, then its problem lines."""
    dataset = report.dataset
    usable = len(report.items)
    rows = [
        ("items (media files)", str(report.media_files)),
        ("cached windows", f"{report.cached_windows} ({usable} usable)"),
        ("buckets (W x H x frames)", _counts(report.buckets)),
        ("frames per window", _counts(report.frames)),
    ]
    if report.audio_windows is not None:
        audio = f"{report.audio_windows}/{usable} usable windows with an audio cache, {report.audio_covering} cover the clip"
        if report.silent_windows:
            audio += f"; {report.silent_windows} cached without audio (left out)"
        rows.append(("audio coverage", audio))
    rows.append(("text caches", f"{report.text_caches}/{report.media_files} media files"))
    rows.append(("empty prompt cache", report.empty_prompt))
    if report.partners:
        rows.append(("partner caches", ", ".join(f"{k} {u}/{n}" for k, (u, n) in report.partners.items())))
    rows.append(("NaN/Inf files", _nonfinite(report.nonfinite)))
    if report.ignored:
        rows.append(("ignored files", f"{report.ignored} (removed media or other settings; --prune_cache)"))
    rows.append(("stale or missing", str(len(report.problems))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{dataset.name}: {dataset.kind}, cache {dataset.cache_directory}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += [f"    {line}" for line in report.problems[:max_problems]]
    if len(report.problems) > max_problems:
        lines.append(f"    ... and {len(report.problems) - max_problems} more")
    return "\n".join(lines)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key}: {count}" for key, count in sorted(counter.items(), key=str)) or "-"


def _nonfinite(paths: list[Path]) -> str:
    if not paths:
        return "0"
    names = ", ".join(path.name for path in paths[:10])
    return f"{len(paths)}: {names}" + (" ..." if len(paths) > 10 else "")
