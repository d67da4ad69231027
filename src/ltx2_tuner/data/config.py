"""The dataset config: a musubi-tuner-style TOML file with `[general]` and `[[datasets]]` tables.

    [general]
    resolution = [960, 544]
    caption_extension = ".txt"
    enable_bucket = true

    [[datasets]]
    video_directory = "clips"
    cache_directory = "cache/clips"
    target_frames = [1, 25, 49]
    frame_extraction = "head"

    [[datasets]]
    audio_directory = "voice"          # an audio dataset (--ltx_mode audio): wav, flac, mp3, ogg, m4a, ...
    cache_directory = "cache/voice"
    audio_bucket_interval = 2.0        # clip lengths are rounded to whole multiples of this (seconds)
    caption_dropout_rate = 0.1         # train 10% of its samples on the empty prompt

    [[validation_datasets]]            # held out: the trainer's validation loss, never trained on
    video_directory = "held_out"
    cache_directory = "cache/held_out"

Keys of `[general]` apply to every dataset that does not set them, validation datasets included (except
`caption_dropout_rate`: a validation dataset never drops its captions, and may not set it). Every problem in the
file (unknown key, wrong type, impossible value) is reported at once, each naming the file, the table and the key.
Relative paths are resolved against the config file's folder, or the current folder when only that one has them.
Schema facts: ../shared/reference/musubi-ltx2-fork.md Part 2.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx2_tuner.data.text_files import read_text_file
from ltx2_tuner.errors import DatasetError
from ltx2_tuner.roles import ModalityRoles, roles_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BUCKET_STEP = 32  # the video VAE's spatial factor
FRAME_EXTRACTION_MODES = ("head", "chunk", "slide", "uniform", "full")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# .ts, .mts and .m2ts: MPEG transport streams, as broadcast recorders and AVCHD cameras write them.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                    ".m2ts")  # fmt: skip
# Anything PyAV (FFmpeg) decodes; these are the suffixes an audio_directory is listed by.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff",
                    ".aifc", ".mka", ".ac3", ".caf")  # fmt: skip
MEDIA_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS, "audio": AUDIO_EXTENSIONS}
AUDIO_BUCKET_STRATEGIES = ("pad", "truncate")
# Audio datasets' defaults (the TOML keys of the same names; docs/dataset-config.md "Audio datasets").
AUDIO_BUCKET_INTERVAL_S = 2.0
AUDIO_BUCKET_STRATEGY = "pad"
MAX_AUDIO_DURATION_S = 30.0


@dataclass(frozen=True)
class DatasetConfig:
    """One `[[datasets]]` table after defaults, `[general]` fallbacks and validation."""

    index: int  # 1-based position in the file, for messages
    kind: str  # "image", "video" or "audio"
    source: Path  # the media directory or the JSONL file
    source_is_jsonl: bool
    caption_extension: str
    resolution: tuple[int, int]  # (width, height)
    batch_size: int
    num_repeats: int
    enable_bucket: bool
    bucket_no_upscale: bool
    cache_directory: Path
    target_frames: tuple[int, ...]  # each 8k+1
    frame_extraction: str
    frame_stride: int
    frame_sample: int
    max_frames: int
    source_fps: float | None  # overrides the container's frame rate when set
    target_fps: float | None  # frames are sampled at this rate when set, else at the source rate
    # Audio datasets only (the defaults elsewhere): clip lengths become multiples of the interval, padded up or
    # cut down (data.audio_buckets), and never longer than max_audio_duration.
    audio_bucket_interval: float = AUDIO_BUCKET_INTERVAL_S
    audio_bucket_strategy: str = AUDIO_BUCKET_STRATEGY
    max_audio_duration: float = MAX_AUDIO_DURATION_S
    # Paired files ("References and masks" in docs/dataset-config.md): folders of partner files matched by stem
    # (JSONL datasets name them per line instead), and how references are scaled.
    reference_directory: Path | None = None  # reference clips / images (musubi: control_directory)
    mask_directory: Path | None = None  # masks: white (> 0.5) = kept as clean conditioning, black = generated
    reference_audio_directory: Path | None = None  # audio and video datasets (AV2AV / A2A references)
    audio_mask_directory: Path | None = None  # audio and video datasets, on the item's audio latent steps
    reference_downscale_factor: int = 1  # the reference is cached at the target bucket / N
    reference_temporal_scale_factor: int = 1  # reference frames: frame 0, then every S-th
    control_resolution: tuple[int, int] | None = None  # the reference's own (width, height), multiples of 32
    no_resize_control: bool = False  # the reference keeps its own size, floored to multiples of 32
    # Probability per sample of training on the empty prompt; None: unset, the trainer's --caption_dropout_rate.
    # Validation datasets hold 0.0 (never dropped).
    caption_dropout_rate: float | None = None
    is_validation: bool = False  # a [[validation_datasets]] table: evaluated, never trained on

    @property
    def table(self) -> str:
        """`[[datasets]] #i` or `[[validation_datasets]] #i`: where the dataset is in the file."""
        return f"[[{'validation_datasets' if self.is_validation else 'datasets'}]] #{self.index}"

    @property
    def name(self) -> str:
        return f"{self.table} ({self.source.name})"


# key -> (accepted types, default, validator returning an error text or None). `None` default = required/unset.
def _positive(value) -> str | None:
    return None if value > 0 else "must be positive"


def _resolution(value) -> str | None:
    sizes = [value, value] if isinstance(value, int) else value
    if len(sizes) != 2 or not all(isinstance(v, int) and v > 0 for v in sizes):
        return "must be an integer or [width, height]"
    return None


def _frames(value) -> str | None:
    if not value or not all(isinstance(v, int) and v > 0 for v in value):
        return "must be a list of positive integers"
    return None


def _extraction(value) -> str | None:
    return None if value in FRAME_EXTRACTION_MODES else f"must be one of {', '.join(FRAME_EXTRACTION_MODES)}"


def _factor(value) -> str | None:
    return None if value >= 1 else "must be an integer >= 1"


def _control_resolution(value) -> str | None:
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 and v % BUCKET_STEP == 0 for v in value):
        return f"must be [width, height], positive multiples of {BUCKET_STEP}"
    return None


def _rate(value) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _audio_strategy(value) -> str | None:
    return None if value in AUDIO_BUCKET_STRATEGIES else f"must be one of {', '.join(AUDIO_BUCKET_STRATEGIES)}"


_Validator = Callable[[Any], str | None] | None
# Keys allowed in [general] and [[datasets]].
_SHARED: dict[str, tuple[tuple[type, ...], Any, _Validator]] = {
    "resolution": ((int, list), (960, 544), _resolution),
    "caption_extension": ((str,), ".txt", None),
    "batch_size": ((int,), 1, _positive),
    "num_repeats": ((int,), 1, _positive),
    "enable_bucket": ((bool,), False, None),
    "bucket_no_upscale": ((bool,), False, None),
    "cache_directory": ((str,), None, None),
    "target_frames": ((list,), [1], _frames),
    "frame_extraction": ((str,), "head", _extraction),
    "frame_stride": ((int,), 1, _positive),
    "frame_sample": ((int,), 1, _positive),
    "max_frames": ((int,), 129, _positive),
    "source_fps": ((int, float), None, _positive),
    "target_fps": ((int, float), None, _positive),
    "audio_bucket_interval": ((int, float), AUDIO_BUCKET_INTERVAL_S, _positive),
    "audio_bucket_strategy": ((str,), AUDIO_BUCKET_STRATEGY, _audio_strategy),
    "max_audio_duration": ((int, float), MAX_AUDIO_DURATION_S, _positive),
    "caption_dropout_rate": ((int, float), None, _rate),
}
_SOURCES = ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file", "audio_directory",
            "audio_jsonl_file")  # fmt: skip
_DATASET_ONLY: dict[str, tuple[tuple[type, ...], Any, _Validator]] = {key: ((str,), None, None) for key in _SOURCES}
# Partner folders, by our name and musubi-tuner's (same meaning); JSONL datasets name the files per line instead.
PARTNER_DIRECTORY_KEYS = {"reference": ("reference_directory", "control_directory"), "mask": ("mask_directory",),
                          "reference_audio": ("reference_audio_directory",),
                          "audio_mask": ("audio_mask_directory",)}  # fmt: skip
_PARTNER_SETTINGS: dict[str, tuple[tuple[type, ...], Any, _Validator]] = {
    **{key: ((str,), None, None) for keys in PARTNER_DIRECTORY_KEYS.values() for key in keys},
    "reference_downscale_factor": ((int,), 1, _factor),
    "reference_temporal_scale_factor": ((int,), 1, _factor),
    "control_resolution": ((list,), None, _control_resolution),
    "no_resize_control": ((bool,), False, None),
}
_DATASET_ONLY.update(_PARTNER_SETTINGS)
# Which dataset kinds take each partner setting.
_PICTURE_PARTNER_KEYS = ("reference_directory", "control_directory", "mask_directory", "reference_downscale_factor",
                         "reference_temporal_scale_factor", "control_resolution", "no_resize_control")  # fmt: skip
_AUDIO_PARTNER_KEYS = ("reference_audio_directory", "audio_mask_directory")
_VIDEO_ONLY = ("target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames", "source_fps",
               "target_fps")  # fmt: skip
_AUDIO_ONLY = ("audio_bucket_interval", "audio_bucket_strategy", "max_audio_duration")
_PICTURE_ONLY = ("resolution", "enable_bucket", "bucket_no_upscale")  # image and video datasets
# Keys a dataset table of each kind may not set ([general] may: there they apply to the kinds that have them).
_NOT_FOR_KIND = {
    "image": (
        (_VIDEO_ONLY, "video datasets only"),
        (_AUDIO_ONLY, "audio datasets only"),
        (_AUDIO_PARTNER_KEYS, "audio and video datasets only"),
    ),
    "video": ((_AUDIO_ONLY, "audio datasets only"),),  # video datasets take audio references/masks (AV runs)
    "audio": (
        (_VIDEO_ONLY, "video datasets only"),
        (_PICTURE_ONLY + _PICTURE_PARTNER_KEYS, "image and video datasets only"),
    ),
}


def snap_frame_count(frames: int) -> int:
    """The largest 8k+1 not above `frames` (the video VAE encodes 1 + 8k frames)."""
    return 1 + (frames - 1) // 8 * 8


class _Problems:
    def __init__(self, path: Path):
        self.path = path
        self.items: list[str] = []

    def add(self, where: str, text: str) -> None:
        self.items.append(f"{self.path} {where}: {text}")

    def raise_if_any(self) -> None:
        if self.items:
            raise DatasetError("; ".join(self.items))


def _check_table(table: dict, schema: dict, where: str, problems: _Problems) -> dict:
    """Type- and value-check one table; return the keys that passed."""
    valid = {}
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, schema, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.add(where, f'unknown key "{key}"{hint}')
            continue
        types, _, validator = schema[key]
        # bool is an int in Python; an int key must not accept true/false.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join("number" if t is float else t.__name__ for t in types)
            problems.add(where, f'key "{key}" must be {expected}, not {type(value).__name__} {value!r}')
            continue
        error = validator(value) if validator else None
        if error:
            problems.add(where, f'key "{key}" {error} (got {value!r})')
            continue
        valid[key] = value
    return valid


def _resolve(config_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside_config = config_dir / path
    return beside_config if beside_config.exists() or not path.exists() else path.resolve()


def read_dataset_document(path: Path) -> dict:
    """The dataset TOML file's tables, unchecked; DatasetError when it is missing or not TOML."""
    if not path.is_file():
        raise DatasetError(f"{path}: dataset config not found; pass --dataset_config with an existing TOML file")
    try:
        return tomllib.loads(read_text_file(path))
    except tomllib.TOMLDecodeError as error:
        raise DatasetError(f"{path}: not valid TOML ({error}); fix the syntax") from None


def load_dataset_config(path: str | Path) -> list[DatasetConfig]:
    """The training datasets (`[[datasets]]`) of a dataset TOML file; raise DatasetError listing every problem in
    the file (its validation datasets included)."""
    return [dataset for dataset in load_all_datasets(path) if not dataset.is_validation]


def load_validation_datasets(path: str | Path) -> list[DatasetConfig]:
    """The `[[validation_datasets]]` of a dataset TOML file (an empty list when it has none), checked as
    `load_dataset_config` checks the file."""
    return [dataset for dataset in load_all_datasets(path) if dataset.is_validation]


def load_all_datasets(path: str | Path) -> list[DatasetConfig]:
    """The training datasets, then the validation datasets: everything the caching commands cache."""
    path = Path(path)
    document = read_dataset_document(path)

    problems = _Problems(path)
    known = ("general", "datasets", "validation_datasets", "conditions")  # [[conditions]]: conditioning/spec.py's
    for key in document:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.add("top level", f'unknown table "{key}"{hint}')
    general = _check_table(document.get("general", {}), _SHARED, "[general]", problems)
    training = document.get("datasets", [])
    if not isinstance(training, list) or not training:
        problems.add("top level", "no [[datasets]] table; add at least one dataset")
        training = []
    validation = document.get("validation_datasets", [])
    if not isinstance(validation, list):
        problems.add("top level", '"validation_datasets" must be [[validation_datasets]] tables')
        validation = []

    datasets = []
    for is_validation, tables in ((False, training), (True, validation)):
        for index, table in enumerate(tables, start=1):
            where = f"[[{'validation_datasets' if is_validation else 'datasets'}]] #{index}"
            if not isinstance(table, dict):
                problems.add(where, "must be a table of keys")
                continue
            own = _check_table(table, {**_SHARED, **_DATASET_ONLY}, where, problems)
            if is_validation and "caption_dropout_rate" in table:
                problems.add(where, 'key "caption_dropout_rate" is for [[datasets]]: validation never drops captions')
            dataset = _build(path, index, where, general, own, problems, is_validation)
            if dataset is not None:
                datasets.append(dataset)
    problems.raise_if_any()
    _check_unique_caches(path, datasets)
    return datasets


def _build(
    path: Path, index: int, where: str, general: dict, own: dict, problems: _Problems, is_validation: bool = False
) -> DatasetConfig | None:
    values = {**general, **own}
    sources = [key for key in _SOURCES if key in values]
    if len(sources) != 1:
        found = ", ".join(sources) or "none"
        problems.add(where, f"needs exactly one of {', '.join(_SOURCES)} (found: {found})")
        return None
    source_key = sources[0]
    kind = source_key.split("_")[0]  # image, video or audio
    source = _resolve(path.parent, values[source_key])
    is_jsonl = source_key.endswith("jsonl_file")
    if not (source.is_file() if is_jsonl else source.is_dir()):
        problems.add(where, f'{source_key} "{source}" does not exist; fix the path')
        return None
    for keys, applies_to in _NOT_FOR_KIND[kind]:
        for key in keys:
            if key in own:
                problems.add(where, f'key "{key}" applies to {applies_to}')
    if "cache_directory" not in values and is_jsonl:
        problems.add(where, "cache_directory is required for a JSONL dataset")
        return None

    defaults = {key: spec[1] for key, spec in _SHARED.items()}
    merged = {**defaults, **values}
    resolution = merged["resolution"]
    width, height = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if kind != "audio" and not merged["enable_bucket"] and (width % BUCKET_STEP or height % BUCKET_STEP):
        problems.add(
            where, f"resolution {width}x{height} must be a multiple of {BUCKET_STEP} without enable_bucket = true"
        )
    target_frames = tuple(merged["target_frames"]) if kind == "video" else (1,)
    snapped = tuple(dict.fromkeys(snap_frame_count(n) for n in target_frames))
    if snapped != target_frames:
        warnings.warn(
            f"{path} {where}: target_frames {list(target_frames)} snapped down to {list(snapped)} "
            "(the video VAE encodes 8k+1 frames)",
            stacklevel=2,
        )
    cache = merged["cache_directory"]
    rate = merged["caption_dropout_rate"]
    return DatasetConfig(
        index=index,
        kind=kind,
        source=source,
        source_is_jsonl=is_jsonl,
        caption_extension=merged["caption_extension"],
        resolution=(width, height),
        batch_size=merged["batch_size"],
        num_repeats=merged["num_repeats"],
        enable_bucket=merged["enable_bucket"],
        bucket_no_upscale=merged["bucket_no_upscale"],
        cache_directory=_resolve(path.parent, cache) if cache else source,
        target_frames=snapped,
        frame_extraction=merged["frame_extraction"] if kind == "video" else "head",
        frame_stride=merged["frame_stride"],
        frame_sample=merged["frame_sample"],
        max_frames=merged["max_frames"],
        source_fps=float(merged["source_fps"]) if merged["source_fps"] else None,
        target_fps=float(merged["target_fps"]) if merged["target_fps"] else None,
        **(_audio_settings(merged) if kind == "audio" else {}),
        **_partner_settings(path.parent, where, values, is_jsonl, problems),
        # [general]'s rate is for training datasets only: validation is always on the real captions.
        caption_dropout_rate=0.0 if is_validation else None if rate is None else float(rate),
        is_validation=is_validation,
    )


def _partner_settings(config_dir: Path, where: str, values: dict, is_jsonl: bool, problems: _Problems) -> dict:
    """The DatasetConfig fields of the paired files (references, masks) and the reference scaling."""
    settings = {}
    for kind, keys in PARTNER_DIRECTORY_KEYS.items():
        given = [key for key in keys if key in values]
        if len(given) > 1:
            problems.add(where, f"{' and '.join(given)} mean the same; keep one")
        if not given:
            continue
        if is_jsonl:
            problems.add(where, f'key "{given[0]}" is for directory datasets; give "{kind}_path" on each JSONL line')
            continue
        directory = _resolve(config_dir, values[given[0]])
        if not directory.is_dir():
            problems.add(where, f'{given[0]} "{directory}" does not exist; fix the path')
        settings[f"{kind}_directory"] = directory
    downscale = values.get("reference_downscale_factor", 1)
    control = values.get("control_resolution")
    if control is not None and (downscale != 1 or values.get("no_resize_control")):
        problems.add(where, "control_resolution sets the reference size itself; drop reference_downscale_factor "
                     "and no_resize_control, or control_resolution")  # fmt: skip
    if values.get("no_resize_control") and downscale != 1:
        problems.add(where, "no_resize_control keeps the reference's own size; drop reference_downscale_factor")
    return settings | {
        "reference_downscale_factor": downscale,
        "reference_temporal_scale_factor": values.get("reference_temporal_scale_factor", 1),
        "control_resolution": tuple(control) if control is not None else None,
        "no_resize_control": values.get("no_resize_control", False),
    }


def _audio_settings(merged: dict) -> dict:
    return {
        "audio_bucket_interval": float(merged["audio_bucket_interval"]),
        "audio_bucket_strategy": merged["audio_bucket_strategy"],
        "max_audio_duration": float(merged["max_audio_duration"]),
    }


def _check_unique_caches(path: Path, datasets: list[DatasetConfig]) -> None:
    seen: dict[Path, DatasetConfig] = {}
    for dataset in datasets:
        other = seen.setdefault(dataset.cache_directory.resolve(), dataset)
        if other is not dataset:
            raise DatasetError(
                f"{path} {dataset.name}: cache_directory {dataset.cache_directory} is also used by {other.name}; "
                "give every dataset its own cache_directory"
            )


def dataset_kind_problems(datasets: list[DatasetConfig], roles: ModalityRoles | str) -> list[str]:
    """One line per dataset that cannot take part in a run of `roles` (or of an --ltx_mode: video, av, audio):
    images have no sound, and audio datasets have no pictures (roles.ModalityRoles.dataset_problem)."""
    roles = roles_for(roles) if isinstance(roles, str) else roles
    return [f"{d.name}: {problem}" for d in datasets if (problem := roles.dataset_problem(d.kind)) is not None]


def check_dataset_kinds(datasets: list[DatasetConfig], roles: ModalityRoles | str) -> None:
    """DatasetError listing `dataset_kind_problems`, if any."""
    problems = dataset_kind_problems(datasets, roles)
    if problems:
        raise DatasetError("; ".join(problems))
