"""Which cached items a training run has, with every cache file checked before training starts.

For each media item of the datasets: its latent cache (one per window), its audio sidecar in AV mode and its text
cache. Each file's header is read (size checked against it, so a truncated file is caught), its fingerprint
fields, tensor keys and shapes are checked, and it must match the media, the model and the mode. Every problem is
collected and reported in one CacheError, a line per file naming what is wrong and the command that rewrites it,
so a run never fails later inside a DataLoader worker on a missing key.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.cache.store import fingerprint_from_metadata, source_stamp
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.items import list_media, read_caption
from ltx2_tuner.errors import CacheError, CheckpointError, DatasetError
from ltx2_tuner.models.model_files import latent_space
from ltx2_tuner.models.safetensors_io import SafetensorsHeader, read_header, read_tensors

_WINDOW_KEY = re.compile(r"^(?P<stem>.+)_\d{5}-\d{3}$")
DTYPE_SUFFIX = re.compile(r"_(bfloat16|float16|float32|float64|float8_e4m3fn|float8_e5m2)$")
SHAPED_KEY = re.compile(r"^(?P<name>latents|audio_latents)_(?P<shape>\d+(x\d+)*)$")
# Fingerprint fields each kind of cache file is written with (ltx2_cache_latents.py / the text cacher).
LATENT_FIELDS = ("source", "checkpoint", "dataset", "bucket", "window", "fps")
AUDIO_FIELDS = (*LATENT_FIELDS, "audio_checkpoint", "audio")
TEXT_FIELDS = ("caption_sha256", "mode", "connectors")
_MAX_LISTED = 50  # problem lines shown; the rest are counted


@dataclass(frozen=True)
class CachedItem:
    key: str
    dataset: DatasetConfig
    latent_path: Path
    audio_path: Path | None
    text_path: Path
    fps: float
    shape: tuple[int, ...]  # latent (F, H, W), plus the audio length in AV mode: items of one shape batch together


def plain_name(key: str) -> str:
    """Tensor key without its dtype suffix and shape: `latents_3x4x5_bfloat16` -> `latents`."""
    key = DTYPE_SUFFIX.sub("", key)
    match = SHAPED_KEY.match(key)
    return match["name"] if match else key


class _Problems:
    """'file: problem; fix' lines, reported together."""

    def __init__(self, dataset_config: Path | None, mode: str):
        config = f" --dataset_config {dataset_config}" if dataset_config else ""
        extra = " --ltx_mode av" if mode == "av" else ""
        self.latents_fix = f"run `python ltx2_cache_latents.py{config} --ltx2_checkpoint ...{extra} --skip_existing`"
        self.text_fix = (
            f"run `python ltx2_cache_text_encoder_outputs.py{config} --ltx2_checkpoint ...{extra} --skip_existing`"
        )
        self.lines: list[str] = []

    def add(self, path: Path, problem: str, fix: str) -> None:
        self.lines.append(f"{path}: {problem}; {fix}")

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        shown = self.lines[:_MAX_LISTED]
        more = len(self.lines) - len(shown)
        if len(self.lines) == 1:
            raise CacheError(self.lines[0])
        raise CacheError(
            f"{len(self.lines)} cache problems, nothing trained:\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )


def _open(path: Path, fields: tuple[str, ...]) -> tuple[SafetensorsHeader | None, dict | None, str | None]:
    """(header, fingerprint, problem): the problem says why the file cannot be used as a cache at all."""
    try:
        header = read_header(path)
    except CheckpointError as error:
        detail = str(error).removeprefix(f"{path}: ").split(";")[0]
        return None, None, f"unreadable cache file ({detail})"
    fingerprint = fingerprint_from_metadata(header.metadata)
    if fingerprint is None:
        return header, None, "no ltx2-tuner fingerprint (made by another tool or an older version)"
    missing = [name for name in fields if name not in fingerprint]
    if missing:
        return header, fingerprint, f"fingerprint lacks {', '.join(missing)} (made by another version)"
    return header, fingerprint, None


def _shaped(header: SafetensorsHeader, name: str) -> tuple[str, tuple[int, ...]] | None:
    """(key, dimensions its name gives) of the `name_{dims}_{dtype}` tensor, or None."""
    for key in header.tensors:
        match = SHAPED_KEY.match(DTYPE_SUFFIX.sub("", key))
        if match and match["name"] == name:
            return key, tuple(int(n) for n in match["shape"].split("x"))
    return None


def _latent_shape(header: SafetensorsHeader) -> tuple[tuple[int, ...] | None, str | None]:
    found = _shaped(header, "latents")
    if found is None:
        return None, "no latents_{F}x{H}x{W}_{dtype} tensor"
    key, dims = found
    shape = header.tensors[key].shape
    if len(dims) != 3 or len(shape) != 4 or shape[1:] != dims:
        return None, f"tensor {key} has shape {list(shape)}, its name says [C, {', '.join(map(str, dims))}]"
    return dims, None


def _audio_length(header: SafetensorsHeader) -> tuple[tuple[int, int] | None, str | None]:
    """((latent steps, valid steps), None) or (None, problem)."""
    found = _shaped(header, "audio_latents")
    if found is None:
        return None, "no audio_latents_{T}x{mel}x{C}_{dtype} tensor"
    key, dims = found
    shape = header.tensors[key].shape
    if len(dims) != 3 or shape != (dims[2], dims[0], dims[1]):
        return None, f"tensor {key} has shape {list(shape)}, its name says [{dims[-1]}, {dims[0]}, {dims[1]}]"
    lengths = header.tensors.get("audio_lengths_int32")
    if lengths is None or lengths.dtype != "I32" or lengths.nbytes != 4:
        return None, "no audio_lengths_int32 tensor of one int32"
    ((_, value),) = read_tensors(header, ["audio_lengths_int32"])
    return (dims[0], int(value.reshape(-1)[0])), None


def _text_problem(header: SafetensorsHeader, mode: str, video_context_dim: int | None) -> str | None:
    tensors = {plain_name(key): entry for key, entry in header.tensors.items()}
    if "video_prompt_embeds" in tensors:
        needed = ["prompt_attention_mask"] + (["audio_prompt_embeds"] if mode == "av" else [])
        embeds = tensors["video_prompt_embeds"]
    elif "text" in tensors:
        needed, embeds = ["text_mask"], tensors["text"]
    else:
        return "no video_prompt_embeds_{dtype} (or text_{dtype}) tensor"
    missing = [name for name in needed if name not in tensors]
    if missing:
        what = "the audio embeddings an AV run needs" if missing == ["audio_prompt_embeds"] else "its mask"
        return f"no {missing[0]} tensor ({what})"
    if len(embeds.shape) != 2:
        return f"text embeddings have shape {list(embeds.shape)}, expected [tokens, width]"
    width = embeds.shape[1]
    if video_context_dim and "video_prompt_embeds" in tensors and width != video_context_dim:
        return f"text embeddings are {width} wide, this model's video text context is {video_context_dim} (another model's cache)"
    return None


def _text_fingerprint_problem(fingerprint: dict, media, mode: str, model_version: str | None) -> str | None:
    if mode == "av" and fingerprint["mode"] == "video":
        return "made with --ltx_mode video (no audio embeddings) but training is AV"
    version = (fingerprint["connectors"] or {}).get("version")
    if model_version and version and version != model_version:
        return f"made with LTX-{version} connectors but training uses LTX-{model_version}"
    try:
        caption = read_caption(media, allow_empty=True)
    except DatasetError as error:
        return str(error).removeprefix(f"{media.caption_path}: ")
    if hashlib.sha256(caption.encode("utf-8")).hexdigest() != fingerprint["caption_sha256"]:
        return f"stale, the caption of {media.path.name} changed"
    return None


def scan_cached_items(
    datasets: list[DatasetConfig],
    mode: str,
    dataset_config: Path | None = None,
    model_version: str | None = None,
    video_context_dim: int | None = None,
) -> list[CachedItem]:
    """The cached items of `datasets` for training in `mode`, after checking every cache file; all problems are
    reported in one CacheError."""
    problems = _Problems(dataset_config, mode)
    items, dropped = [], []
    for dataset in datasets:
        digest = dataset_digest(dataset)
        by_stem = {media.stem: media for media in list_media(dataset)}
        found: dict[str, int] = defaultdict(int)
        ignored = 0
        for path in sorted(dataset.cache_directory.glob(f"*{naming.LATENT_SUFFIX}")):
            parsed = naming.parse_latent_name(path)
            if parsed is None:
                continue
            key = parsed[0]
            match = _WINDOW_KEY.match(key)
            stem = match["stem"] if match and match["stem"] in by_stem else key
            if stem not in by_stem:
                ignored += 1  # a removed media file's cache
                continue
            header, fingerprint, problem = _open(path, LATENT_FIELDS)
            if problem is not None:
                found[stem] += 1
                problems.add(path, problem, problems.latents_fix + " (with --prune_cache if the window is gone)")
                continue
            if fingerprint["dataset"] != digest:
                ignored += 1  # made with other dataset settings
                continue
            found[stem] += 1
            if found[stem] == 1:
                _check_text_cache(naming.text_cache_path(dataset.cache_directory, stem), by_stem[stem], mode,
                                  model_version, video_context_dim, problems)  # fmt: skip
            item = _check_item(dataset, by_stem[stem], key, path, header, fingerprint, mode, model_version, problems)
            if item == "no audio":
                dropped.append(key)
            elif item is not None:
                items.append(item)
        missing = [str(by_stem[stem].path) for stem in by_stem if not found[stem]]
        if missing:
            more = f" (and {len(missing) - 1} more media files)" if len(missing) > 1 else ""
            problems.lines.append(
                f"{missing[0]}: no latent cache in {dataset.cache_directory}{more}; {problems.latents_fix}"
            )
        if ignored:
            warnings.warn(
                f"{dataset.name}: ignored {ignored} cache file(s) made with other dataset settings or for removed "
                "media (ltx2_cache_latents.py --prune_cache deletes them)",
                stacklevel=2,
            )
    problems.raise_if_any()
    if dropped:
        warnings.warn(
            f"{len(dropped)} video window(s) have no audio and are left out of AV training: {', '.join(dropped[:10])}"
            + (" ..." if len(dropped) > 10 else ""),
            stacklevel=2,
        )
    if not items:
        raise CacheError(f"no cached items to train on; {problems.latents_fix}")
    return items


def _check_item(dataset, media, key, path, header, fingerprint, mode, model_version, problems: _Problems):
    """The CachedItem, "no audio" (AV item whose source has none), or None after adding its problems."""
    fix = problems.latents_fix
    if fingerprint["source"] != source_stamp(media.path):
        problems.add(path, f"stale cache, {media.path} changed since it was cached", fix)
        return None
    cached_version = (fingerprint["checkpoint"] or {}).get("version")
    # Latents are per latent space: LTX 2.5 trains on caches made with LTX-2.3's VAE (the same encoder).
    if model_version and cached_version and cached_version != latent_space(model_version):
        problems.add(
            path,
            f"cached with an LTX-{cached_version} VAE but training uses LTX-{model_version}",
            fix + " with the training checkpoint",
        )
        return None
    shape, problem = _latent_shape(header)
    if problem is not None:
        problems.add(path, problem, fix)
        return None
    audio_path = None
    if mode == "av" and dataset.kind == "video":
        audio_path = naming.audio_cache_path(dataset.cache_directory, key)
        if not audio_path.is_file():
            problems.add(audio_path, f"audio latent cache missing for {key}", fix)
            return None
        audio_header, audio_fingerprint, problem = _open(audio_path, AUDIO_FIELDS)
        if problem is None and any(audio_fingerprint.get(k) != v for k, v in fingerprint.items()):
            problem = "stale audio cache (its video cache was made again)"
        lengths = None
        if problem is None:
            lengths, problem = _audio_length(audio_header)
        if problem is not None:
            problems.add(audio_path, problem, fix)
            return None
        if lengths[1] == 0:
            return "no audio"  # the source has no audio (cached with --missing_audio skip)
        shape = (*shape, lengths[0])
    text_path = naming.text_cache_path(dataset.cache_directory, media.stem)
    return CachedItem(key, dataset, path, audio_path, text_path, float(fingerprint["fps"]), shape)


def _check_text_cache(text_path: Path, media, mode, model_version, video_context_dim, problems: _Problems) -> None:
    """The text cache exists, is whole, fits the mode and the model, and was made from the current caption."""
    if not text_path.is_file():
        problems.add(text_path, f"text encoder cache missing for {media.path.name}", problems.text_fix)
        return
    header, fingerprint, problem = _open(text_path, TEXT_FIELDS)
    if problem is None:
        problem = _text_fingerprint_problem(fingerprint, media, mode, model_version)
    if problem is None:
        problem = _text_problem(header, mode, video_context_dim)
    if problem is not None:
        problems.add(text_path, problem, problems.text_fix)
