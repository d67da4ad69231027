"""Which cached items a training run has, with every cache file checked before training starts.

For each media item of the datasets, what the modality roles (roles.py) need: its video latent cache (one per window)
when video is present, its audio cache (a video window's sidecar, or an audio dataset item's file) when audio is
present, and its text cache with the embeddings of the present modalities. Each file's header is read (size checked against it, so a truncated file is caught), its fingerprint
fields, tensor keys and shapes are checked, and it must match the media, the model and the mode. Every problem is
collected and reported in one CacheError, a line per file naming what is wrong and the command that rewrites it,
so a run never fails later inside a DataLoader worker on a missing key.

Datasets with references or masks (docs/dataset-config.md "References and masks") need each item's partner caches
too (cache.partner_jobs): `{key}_ltx2_ref`, `_ltx2_mask` when video is present, `_ltx2_ref_audio`, `_ltx2_audio_mask`
when audio is (audio items, and video windows in AV and audio runs: checked against the window's audio sidecar and
its latent steps); each must have been made from the current partner file for the same window and bucket as the
item. A video dataset with references and no reference audio needs `_ltx2_ref_audio` exactly for the items whose
reference clip has a soundtrack (data.items.soundtrack_reference).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import AUDIO_FINGERPRINT_FIELDS, dataset_digest
from ltx2_tuner.cache.partner_jobs import (
    AUDIO_PARTNERS,
    PICTURE_PARTNERS,
)
from ltx2_tuner.cache.partner_jobs import (
    FINGERPRINT_FIELDS as PARTNER_FIELDS,
)
from ltx2_tuner.cache.store import fingerprint_from_metadata, source_stamp
from ltx2_tuner.cache.text_cacher import cached_modalities
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.items import (
    declared_partners,
    find_partner,
    list_media,
    read_caption,
    reference_soundtrack,
    soundtrack_reference,
)
from ltx2_tuner.data.masks import AUDIO_MASK_RULES, VIDEO_MASK_RULES
from ltx2_tuner.errors import CacheError, CheckpointError, DatasetError, MediaError
from ltx2_tuner.models.model_files import latent_space
from ltx2_tuner.models.safetensors_io import SafetensorsHeader, read_header, read_tensors
from ltx2_tuner.roles import ModalityRoles

_WINDOW_KEY = re.compile(r"^(?P<stem>.+)_\d{5}-\d{3}$")
DTYPE_SUFFIX = re.compile(r"_(bfloat16|float16|float32|float64|float8_e4m3fn|float8_e5m2)$")
SHAPED_KEY = re.compile(r"^(?P<name>latents|audio_latents|mask|audio_mask)_(?P<shape>\d+(x\d+)*)$")
# Fingerprint fields each kind of cache file is written with (ltx2_cache_latents.py / the text cacher).
LATENT_FIELDS = ("source", "checkpoint", "dataset", "bucket", "window", "fps")
# Audio latents depend on the source, its window and the audio VAE only (not the video VAE or the frame size), so an
# audio-mode cache of a video window serves AV training and the other way round.
AUDIO_FIELDS = AUDIO_FINGERPRINT_FIELDS
_SHARED_FIELDS = ("source", "dataset", "window", "fps")  # a window's audio and video caches must agree on these
TEXT_FIELDS = ("caption_sha256", "mode", "connectors")
_MAX_LISTED = 50  # problem lines shown; the rest are counted


@dataclass(frozen=True)
class CachedItem:
    key: str
    dataset: DatasetConfig
    latent_path: Path | None  # None when video is absent (T2A)
    audio_path: Path | None  # None when audio is absent (T2V), and for image items
    text_path: Path
    fps: float
    shape: tuple[int, ...]  # latent (F, H, W) when video is present, plus the audio length when audio is, plus the
    # reference's (F, H, W) / audio length when there is one: items of one shape batch together
    reference_path: Path | None = None  # `{key}_ltx2_ref.safetensors` (video present, dataset with references)
    reference_fps: float | None = None  # the reference's frame rate: fps / reference_temporal_scale_factor
    mask_path: Path | None = None  # `{key}_ltx2_mask.safetensors` (video present, dataset with masks)
    reference_audio_path: Path | None = None  # `{key}_ltx2_ref_audio.safetensors` (audio present)
    audio_mask_path: Path | None = None  # `{key}_ltx2_audio_mask.safetensors` (audio present)


def plain_name(key: str) -> str:
    """Tensor key without its dtype suffix and shape: `latents_3x4x5_bfloat16` -> `latents`."""
    key = DTYPE_SUFFIX.sub("", key)
    match = SHAPED_KEY.match(key)
    return match["name"] if match else key


class CacheProblems:
    """'file: problem; fix' lines, reported together."""

    def __init__(self, dataset_config: Path | None, roles: ModalityRoles):
        config = f" --dataset_config {dataset_config}" if dataset_config else ""
        extra = f" --ltx_mode {roles.build}" if roles.build != "video" else ""
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


def open_cache(path: Path, fields: tuple[str, ...]) -> tuple[SafetensorsHeader | None, dict | None, str | None]:
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


def audio_length(header: SafetensorsHeader) -> tuple[tuple[int, int] | None, str | None]:
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


def text_tensor_problem(header: SafetensorsHeader, roles: ModalityRoles, video_context_dim: int | None) -> str | None:
    tensors = {plain_name(key): entry for key, entry in header.tensors.items()}
    if "video_prompt_embeds" in tensors or "audio_prompt_embeds" in tensors:
        needed = ["prompt_attention_mask"] + [f"{m}_prompt_embeds" for m in roles.present_modalities]
        embeds = tensors.get("video_prompt_embeds") or tensors["audio_prompt_embeds"]
    elif "text" in tensors:
        needed, embeds = ["text_mask"], tensors["text"]
    else:
        return "no video_prompt_embeds_{dtype} or audio_prompt_embeds_{dtype} (or text_{dtype}) tensor"
    missing = [name for name in needed if name not in tensors]
    if missing:
        what = {"audio_prompt_embeds": "the audio embeddings this run needs",
                "video_prompt_embeds": "the video embeddings this run needs"}  # fmt: skip
        return f"no {missing[0]} tensor ({what.get(missing[0], 'its mask')})"
    if len(embeds.shape) != 2:
        return f"text embeddings have shape {list(embeds.shape)}, expected [tokens, width]"
    width = embeds.shape[1]
    if video_context_dim and "video_prompt_embeds" in tensors and width != video_context_dim:
        return f"text embeddings are {width} wide, this model's video text context is {video_context_dim} (another model's cache)"
    return None


def _text_fingerprint_problem(fingerprint: dict, media, roles: ModalityRoles, model_version: str | None) -> str | None:
    held = cached_modalities(fingerprint["mode"])
    for modality in roles.present_modalities:
        if modality not in held:
            return (
                f"made with --ltx_mode {fingerprint['mode']} (no {modality} embeddings) but training needs them "
                f"(--ltx_mode {roles.build})"
            )
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
    roles: ModalityRoles,
    dataset_config: Path | None = None,
    model_version: str | None = None,
    video_context_dim: int | None = None,
) -> list[CachedItem]:
    """The cached items of `datasets` for training under `roles`, after checking every cache file; all problems are
    reported in one CacheError."""
    problems = CacheProblems(dataset_config, roles)
    items, dropped = [], []
    for dataset in datasets:
        problem = roles.dataset_problem(dataset.kind)
        if problem is not None:
            problems.lines.append(f"{dataset.source}: {dataset.name}: {problem}")
            continue
        by_stem = {media.stem: media for media in list_media(dataset)}
        scan = DatasetScan(dataset, by_stem, roles, model_version, video_context_dim, problems)
        # Items are found by their video latent files, or by their audio files when there is no video (T2A).
        suffix = naming.LATENT_SUFFIX if roles.present("video") else naming.AUDIO_SUFFIX
        for path in sorted(dataset.cache_directory.glob(f"*{suffix}")):
            item = scan.check(path)
            if item == "no audio":
                dropped.append(path.name)
            elif item is not None:
                items.append(item)
        scan.report_missing()
    problems.raise_if_any()
    if dropped:
        warnings.warn(
            f"{len(dropped)} video window(s) have no audio and are left out of this {roles.name.upper()} run: "
            f"{', '.join(dropped[:10])}" + (" ..." if len(dropped) > 10 else ""),
            stacklevel=2,
        )
    if not items:
        raise CacheError(f"no cached items to train on; {problems.latents_fix}")
    return items


class DatasetScan:
    """The cache files of one dataset, checked one by one against its media, the model and the roles."""

    def __init__(self, dataset, by_stem: dict, roles: ModalityRoles, model_version, video_context_dim, problems):
        self.dataset, self.by_stem, self.roles = dataset, by_stem, roles
        self.model_version, self.video_context_dim, self.problems = model_version, video_context_dim, problems
        self.digest = dataset_digest(dataset)
        kinds = declared_partners(dataset, list(by_stem.values()))
        video_kinds = [k for k in kinds if k in PICTURE_PARTNERS] if roles.present("video") else []
        with_audio = roles.present("audio") and dataset.kind != "image"
        audio_kinds = [k for k in kinds if k in AUDIO_PARTNERS] if with_audio else []
        self.partner_kinds = video_kinds + audio_kinds
        self.soundtrack = with_audio and soundtrack_reference(dataset, kinds)  # reference clips' own audio
        self._soundtracks: dict[Path, Path | None] = {}
        self.found: dict[str, int] = defaultdict(int)
        self.ignored = 0

    def check(self, path: Path) -> CachedItem | str | None:
        """The CachedItem of the cache file `path`, "no audio" (a window whose source has none), or None (a problem
        was added, or the file belongs to no current item)."""
        key = _cache_key(path, self.roles)
        if key is None:
            return None
        match = _WINDOW_KEY.match(key)
        stem = match["stem"] if match and match["stem"] in self.by_stem else key
        if stem not in self.by_stem:
            self.ignored += 1  # a removed media file's cache
            return None
        media, problems = self.by_stem[stem], self.problems
        fields = LATENT_FIELDS if self.roles.present("video") else AUDIO_FIELDS
        header, fingerprint, problem = open_cache(path, fields)
        if problem is not None:
            self.found[stem] += 1
            problems.add(path, problem, problems.latents_fix + " (with --prune_cache if the window is gone)")
            return None
        if fingerprint["dataset"] != self.digest:
            self.ignored += 1  # made with other dataset settings
            return None
        self.found[stem] += 1
        if self.found[stem] == 1:
            _check_text_cache(naming.text_cache_path(self.dataset.cache_directory, stem), media, self.roles,
                              self.model_version, self.video_context_dim, problems)  # fmt: skip
        if fingerprint["source"] != source_stamp(media.path):
            problems.add(path, f"stale cache, {media.path} changed since it was cached", problems.latents_fix)
            return None
        if not self.roles.present("video"):
            return self._audio_item(key, media, path, header, fingerprint)
        return self._video_item(key, media, path, header, fingerprint)

    def _video_item(self, key, media, path, header, fingerprint):
        fix = self.problems.latents_fix
        problem = _version_problem(fingerprint["checkpoint"], self.model_version, "VAE")
        shape = None
        if problem is None:
            shape, problem = _latent_shape(header)
        if problem is not None:
            self.problems.add(path, problem, fix)
            return None
        audio_path = None
        if self.roles.present("audio") and self.dataset.kind == "video":
            audio_path = naming.audio_cache_path(self.dataset.cache_directory, key)
            lengths = self._sidecar_lengths(audio_path, key, fingerprint)
            if lengths is None or lengths == "no audio":
                return lengths
            shape = (*shape, lengths[0])
        text_path = naming.text_cache_path(self.dataset.cache_directory, media.stem)
        # Audio partners of a window are checked against its audio sidecar and its latent steps.
        audio_target = open_cache(audio_path, AUDIO_FIELDS)[1] if audio_path is not None else None
        partners = self._partners(key, media, fingerprint, shape[:3], audio_target, shape[3:4])
        if partners is None:
            return None
        shape = (*shape, *partners.pop("shape"))
        return CachedItem(key, self.dataset, path, audio_path, text_path, float(fingerprint["fps"]), shape, **partners)

    def _audio_item(self, key, media, path, header, fingerprint):
        lengths = self._audio_lengths(path, header, fingerprint)
        if lengths is None or lengths == "no audio":
            return lengths
        text_path = naming.text_cache_path(self.dataset.cache_directory, media.stem)
        partners = self._partners(key, media, fingerprint, (lengths[0],), fingerprint, (lengths[0],))
        if partners is None:
            return None
        shape = (lengths[0], *partners.pop("shape"))
        fps = float(fingerprint["fps"] or 0.0)
        return CachedItem(key, self.dataset, None, path, text_path, fps, shape, **partners)

    def _partners(self, key: str, media, target: dict, grid: tuple[int, ...], audio_target: dict | None = None,
                  audio_grid: tuple[int, ...] = ()) -> dict | None:  # fmt: skip
        """CachedItem fields of the item's partner caches (plus "shape": the reference dims), or None after adding
        a problem line per bad file. `target` is the item's own cache fingerprint, `grid` its latent (F, H, W) or
        (T,); `audio_target` / `audio_grid` the same of its audio cache (for the audio partners)."""
        fields: dict = {"shape": ()}
        ok = True
        kinds = list(self.partner_kinds)
        if self.soundtrack and self._soundtrack(media) is not None:
            kinds.append("reference_audio")
        for kind in kinds:
            path = naming.partner_cache_path(self.dataset.cache_directory, key, kind)
            audio = kind in AUDIO_PARTNERS
            problem, dims = self._partner_problem(
                path, kind, media, audio_target if audio else target, audio_grid if audio else grid
            )
            if problem is not None:
                self.problems.add(path, problem, self.problems.latents_fix)
                ok = False
                continue
            fields[f"{kind}_path"] = path
            if kind in ("reference", "reference_audio"):
                fields["shape"] = (*fields["shape"], *dims)
            if kind == "reference":
                fields["reference_fps"] = float(target["fps"]) / self.dataset.reference_temporal_scale_factor
        return fields if ok else None

    def _partner_problem(self, path: Path, kind: str, media, target: dict, grid: tuple[int, ...]):
        """(problem or None, the reference's latent dims) of one partner cache file."""
        what = kind.replace("_", " ")
        if not path.is_file():
            return f"{what} cache missing for {path.name.removesuffix(naming.PARTNER_SUFFIXES[kind])}", ()
        header, fingerprint, problem = open_cache(path, PARTNER_FIELDS[kind])
        if problem is not None:
            return problem, ()
        shared = [name for name in ("dataset", "window", "fps", "bucket", "audio_checkpoint") if name in fingerprint]
        if kind == "reference":
            shared = ["dataset", "window", "fps"]
        if any(fingerprint[name] != target.get(name) for name in shared) or (
            kind == "reference" and fingerprint["target_bucket"] != target["bucket"]
        ):
            return f"stale {what} cache (its item was cached again with other settings)", ()
        try:
            source = self._source(media, kind)
        except (DatasetError, MediaError) as error:
            return str(error), ()
        if fingerprint["source"] != source_stamp(source):
            return f"stale {what} cache, {source} changed since it was cached", ()
        return self._partner_content_problem(header, kind, fingerprint, grid)

    def _soundtrack(self, media) -> Path | None:
        """The item's reference clip when it has sound (probed once per item), else None."""
        if media.path not in self._soundtracks:
            try:
                self._soundtracks[media.path] = reference_soundtrack(media)
            except (DatasetError, MediaError):
                self._soundtracks[media.path] = None  # a missing or unreadable reference: its video check says so
        return self._soundtracks[media.path]

    def _source(self, media, kind: str) -> Path:
        if kind == "reference_audio" and self.soundtrack:
            return find_partner(media, "reference")
        return find_partner(media, kind)

    def _partner_content_problem(self, header, kind: str, fingerprint: dict, grid: tuple[int, ...]):
        dataset = self.dataset
        if kind == "reference":
            problem = _version_problem(fingerprint["checkpoint"], self.model_version, "VAE")
            spatial, temporal = fingerprint["factors"]
            if temporal != dataset.reference_temporal_scale_factor or (
                dataset.control_resolution is None
                and not dataset.no_resize_control
                and spatial != dataset.reference_downscale_factor
            ):
                problem = f"made with reference factors {spatial}/{temporal}, the dataset now asks for others"
            if dataset.control_resolution is not None and tuple(fingerprint["bucket"]) != dataset.control_resolution:
                problem = f"made at {fingerprint['bucket']}, the dataset's control_resolution changed"
            dims, shape_problem = _latent_shape(header)
            return problem or shape_problem, dims or ()
        if kind == "reference_audio":
            problem = _version_problem(fingerprint["audio_checkpoint"], self.model_version, "audio VAE")
            lengths, shape_problem = audio_length(header)
            return problem or shape_problem, (lengths[0],) if lengths else ()
        rules = VIDEO_MASK_RULES if kind == "mask" else AUDIO_MASK_RULES
        if fingerprint["rules"] != rules:
            return "made with older mask rules", ()
        found = _shaped(header, kind)
        if found is None or tuple(header.tensors[found[0]].shape) != grid or found[1] != grid:
            return f"no {kind}_{'x'.join(map(str, grid))} tensor (the item's latent grid)", ()
        return None, ()

    def _sidecar_lengths(self, audio_path: Path, key: str, video_fingerprint: dict):
        """`_audio_lengths` of a video window's audio sidecar, which must agree with its video cache."""
        if not audio_path.is_file():
            self.problems.add(audio_path, f"audio latent cache missing for {key}", self.problems.latents_fix)
            return None
        header, fingerprint, problem = open_cache(audio_path, AUDIO_FIELDS)
        if problem is None and any(fingerprint.get(k) != video_fingerprint.get(k) for k in _SHARED_FIELDS):
            problem = "stale audio cache (its video cache was made again)"
        if problem is not None:
            self.problems.add(audio_path, problem, self.problems.latents_fix)
            return None
        return self._audio_lengths(audio_path, header, fingerprint)

    def _audio_lengths(self, path: Path, header, fingerprint: dict):
        """(latent steps, valid steps) of an opened audio cache, "no audio", or None after adding its problem."""
        problem = _version_problem(fingerprint["audio_checkpoint"], self.model_version, "audio VAE")
        lengths = None
        if problem is None:
            lengths, problem = audio_length(header)
        if problem is not None:
            self.problems.add(path, problem, self.problems.latents_fix)
            return None
        return "no audio" if lengths[1] == 0 else lengths  # 0: the source has none (cached with --missing_audio skip)

    def report_missing(self) -> None:
        problems, dataset = self.problems, self.dataset
        missing = [str(self.by_stem[stem].path) for stem in self.by_stem if not self.found[stem]]
        if missing:
            what = "latent" if self.roles.present("video") else "audio latent"
            more = f" (and {len(missing) - 1} more media files)" if len(missing) > 1 else ""
            problems.lines.append(
                f"{missing[0]}: no {what} cache in {dataset.cache_directory}{more}; {problems.latents_fix}"
            )
        if self.ignored:
            warnings.warn(
                f"{dataset.name}: ignored {self.ignored} cache file(s) made with other dataset settings or for "
                "removed media (ltx2_cache_latents.py --prune_cache deletes them)",
                stacklevel=3,
            )


def _cache_key(path: Path, roles: ModalityRoles) -> str | None:
    if roles.present("video"):
        parsed = naming.parse_latent_name(path)
        return parsed[0] if parsed is not None else None
    return path.name.removesuffix(naming.AUDIO_SUFFIX) or None


def _version_problem(checkpoint: dict | None, model_version: str | None, what: str) -> str | None:
    """Latents are per latent space: LTX 2.5 trains on caches made with LTX-2.3's VAEs (the same encoders)."""
    cached_version = (checkpoint or {}).get("version")
    if model_version and cached_version not in (None, "unknown", latent_space(model_version)):
        return (
            f"cached with an LTX-{cached_version} {what} but training uses LTX-{model_version} (cache it again "
            "with the training checkpoint)"
        )
    return None


def _check_text_cache(text_path: Path, media, roles, model_version, video_context_dim, problems: CacheProblems) -> None:
    """The text cache exists, is whole, fits the roles and the model, and was made from the current caption."""
    if not text_path.is_file():
        problems.add(text_path, f"text encoder cache missing for {media.path.name}", problems.text_fix)
        return
    header, fingerprint, problem = open_cache(text_path, TEXT_FIELDS)
    if problem is None:
        problem = _text_fingerprint_problem(fingerprint, media, roles, model_version)
    if problem is None:
        problem = text_tensor_problem(header, roles, video_context_dim)
    if problem is not None:
        problems.add(text_path, problem, problems.text_fix)
