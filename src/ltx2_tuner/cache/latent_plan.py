"""What `ltx2_cache_latents.py` will write: one job per image, video window or audio file, with its file names and
fingerprints.

| dataset | mode video | mode av | mode audio |
|---|---|---|---|
| image | latents | latents | (an error: no sound) |
| video | latents per window | latents + audio sidecar per window | audio sidecar per window, no video latents |
| audio | (an error) | (an error) | one audio file per item: `{stem}_ltx2_audio.safetensors` |

Planning probes every media file (headers only) so that every problem is known before any model is loaded: a
video without an audio track, an unreadable file, a clip shorter than every target frame count.

An audio sidecar's fingerprint holds only what its latents depend on (`AUDIO_FINGERPRINT_FIELDS`: not the video
VAE, not the frame bucket), so the sidecar of a video window cached in audio mode serves AV training, and the
other way round.

Datasets with references or masks (`reference_directory`, `mask_directory`, ...) give each job partner files
(cache.partner_jobs; video windows get audio ones too in AV and audio runs): their problems (a missing partner file, a reference too short or of a size that does not fit)
are collected in `LatentPlan.partner_problems`, all of them, before any model loads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.partner_jobs import AUDIO_PARTNERS, PICTURE_PARTNERS, PartnerFile, PartnerPlanner
from ltx2_tuner.cache.store import source_stamp
from ltx2_tuner.data.audio_buckets import dataset_audio_bucket
from ltx2_tuner.data.buckets import select_bucket
from ltx2_tuner.data.config import DatasetConfig, check_dataset_kinds
from ltx2_tuner.data.frames import FrameWindow, available_frames, frame_windows, sampling_fps
from ltx2_tuner.data.items import MediaItem, declared_partners, list_media, soundtrack_reference
from ltx2_tuner.errors import MediaError

IMAGE_FPS = 24.0  # an image is one frame of a 24 fps clip (the official trainer's 1.0 skews its RoPE time)
# Fingerprint fields of the two kinds of latent cache file (the training-side scanner checks them).
LATENT_FINGERPRINT_FIELDS = ("source", "checkpoint", "dataset", "bucket", "window", "fps")
AUDIO_FINGERPRINT_FIELDS = ("source", "dataset", "window", "fps", "audio_checkpoint", "audio", "audio_preprocessing")


@dataclass(frozen=True)
class AudioSource:
    """Where the audio of a video comes from: its own container or a sidecar file."""

    kind: str  # "video" or "audio_files"
    directory: Path | None = None  # sidecar folder (default: the video's folder)
    extension: str = ".wav"

    def path_for(self, video: Path) -> Path:
        if self.kind == "video":
            return video
        return (self.directory or video.parent) / f"{video.stem}{self.extension}"


@dataclass(frozen=True)
class LatentJob:
    item: MediaItem
    key: str  # naming.item_key: `stem` (image, audio item) or `stem_{start:05d}-{frames:03d}` (video window)
    bucket: tuple[int, int] | None  # (width, height) the frames are resized and cropped to; None: no video latents
    window: FrameWindow | None  # the frames (images: one at IMAGE_FPS); None for audio items
    latent_path: Path | None  # the video/image latent file; None for audio-only jobs (audio mode)
    audio_path: Path | None  # the audio sidecar to write (AV and audio modes)
    audio_source: Path | None  # the file its audio is read from; None when the video has no audio
    fingerprint: dict | None = field(repr=False)  # of latent_path (LATENT_FINGERPRINT_FIELDS)
    audio_fingerprint: dict | None = field(default=None, repr=False)  # of audio_path (AUDIO_FINGERPRINT_FIELDS)
    audio_window_s: tuple[float, float] | None = None  # (start, duration) seconds of audio_source to encode
    partners: tuple[PartnerFile, ...] = field(default=(), repr=False)  # reference / mask cache files of this job


@dataclass
class LatentPlan:
    jobs: list[LatentJob] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: reason"
    too_short: list[str] = field(default_factory=list)
    missing_audio: list[Path] = field(default_factory=list)
    partner_problems: list[str] = field(default_factory=list)  # missing or unfit reference / mask files


def dataset_digest(dataset: DatasetConfig) -> str:
    """Hash of the settings that decide which windows and buckets a dataset has."""
    settings = {
        "resolution": dataset.resolution,
        "enable_bucket": dataset.enable_bucket,
        "bucket_no_upscale": dataset.bucket_no_upscale,
        "target_frames": dataset.target_frames,
        "frame_extraction": dataset.frame_extraction,
        "frame_stride": dataset.frame_stride,
        "frame_sample": dataset.frame_sample,
        "max_frames": dataset.max_frames,
        "source_fps": dataset.source_fps,
        "target_fps": dataset.target_fps,
    }
    if dataset.kind == "audio":  # only there: image and video digests (and their caches) stay as they were
        settings |= {
            "audio_bucket_interval": dataset.audio_bucket_interval,
            "audio_bucket_strategy": dataset.audio_bucket_strategy,
            "max_audio_duration": dataset.max_audio_duration,
        }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def plan_latent_jobs(
    datasets: list[DatasetConfig],
    mode: str,
    video_checkpoint: dict | None,
    audio_checkpoint: dict | None,
    audio_source: AudioSource,
) -> LatentPlan:
    """Every cache file the run should produce in `mode` (video, av or audio: roles.build).

    `video_checkpoint` / `audio_checkpoint` identify the VAEs (encoder fingerprint, latent space, dtype); a cache
    made with others is stale. In AV and audio modes every video window gets an audio sidecar; a video without
    audio is listed in `missing_audio`, and its sidecar (if the run goes on) records the absence instead of
    latents. DatasetError when a dataset's kind does not fit the mode (data.config.dataset_kind_problems).
    """
    check_dataset_kinds(datasets, mode)
    plan = LatentPlan()
    partners = PartnerPlanner(mode, video_checkpoint, audio_checkpoint)
    for dataset in datasets:
        digest = dataset_digest(dataset)
        items = list_media(dataset)
        kinds = declared_partners(dataset, items)
        fitting = _FITTING_PARTNERS[dataset.kind]
        for kind in (kind for kind in kinds if kind not in fitting):
            partners.problems.append(
                f'{dataset.source}: "{kind}_path" is not for {dataset.kind} datasets (they take '
                f"{', '.join(f'{k}_path' for k in fitting)}); remove it"
            )
        for item in items:
            first = len(plan.jobs)
            if dataset.kind == "audio":
                _plan_audio_item(plan, item, digest, audio_checkpoint)
            else:
                _plan_picture_item(plan, item, digest, mode, video_checkpoint, audio_checkpoint, audio_source)
            if kinds:
                for index in range(first, len(plan.jobs)):
                    plan.jobs[index] = replace(
                        plan.jobs[index], partners=partners.files_for(plan.jobs[index], kinds, digest)
                    )
    plan.partner_problems = partners.problems
    return plan


# The partner kinds each dataset kind takes (video: the audio ones too, over each window's audio).
_FITTING_PARTNERS = {"image": PICTURE_PARTNERS, "video": PICTURE_PARTNERS + AUDIO_PARTNERS, "audio": AUDIO_PARTNERS}


def _audio_fingerprint(source: dict, digest: str, window: list, fps: float | None, audio_checkpoint, audio) -> dict:
    from ltx2_tuner.data.audio import AUDIO_PREPROCESSING

    fingerprint = {
        "source": source,
        "dataset": digest,
        "window": window,
        "fps": fps,
        "audio_checkpoint": audio_checkpoint,
        "audio": audio,
        "audio_preprocessing": AUDIO_PREPROCESSING,
    }
    assert tuple(fingerprint) == AUDIO_FINGERPRINT_FIELDS
    return fingerprint


def _plan_audio_item(plan: LatentPlan, item: MediaItem, digest: str, audio_checkpoint: dict | None) -> None:
    """An audio dataset's file: one window from its start, as long as its duration bucket."""
    from ltx2_tuner.data.audio import probe_audio

    try:
        info = probe_audio(item.path)
    except MediaError as error:
        plan.unreadable.append(str(error))
        return
    bucket_s = dataset_audio_bucket(item.dataset, info.duration_s)
    key = naming.item_key(item.stem)
    stamp = source_stamp(item.path)
    plan.jobs.append(
        LatentJob(
            item=item,
            key=key,
            bucket=None,
            window=None,
            latent_path=None,
            audio_path=naming.audio_cache_path(item.dataset.cache_directory, key),
            audio_source=item.path,
            fingerprint=None,
            audio_fingerprint=_audio_fingerprint(stamp, digest, [0, bucket_s], None, audio_checkpoint, stamp),
            audio_window_s=(0.0, bucket_s),
        )
    )


def _plan_picture_item(
    plan: LatentPlan,
    item: MediaItem,
    digest: str,
    mode: str,
    video_checkpoint: dict | None,
    audio_checkpoint: dict | None,
    audio_source: AudioSource,
) -> None:
    """An image (one job) or a video (one job per frame window)."""
    from ltx2_tuner.data.audio import has_audio_stream
    from ltx2_tuner.data.images import image_size
    from ltx2_tuner.data.video import probe_video

    dataset = item.dataset
    try:
        if dataset.kind == "image":
            width, height = image_size(item.path)
            windows = [FrameWindow(0, 1, IMAGE_FPS)]
        else:
            info = probe_video(item.path)
            width, height = info.width, info.height
            fps = sampling_fps(dataset, info.fps)
            total = available_frames(info.duration_s, info.num_frames, dataset.source_fps or info.fps, fps)
            windows = frame_windows(dataset, total, fps)
    except MediaError as error:
        plan.unreadable.append(str(error))
        return
    if not windows:
        plan.too_short.append(f"{item.path} ({total} frames < {min(dataset.target_frames)})")
        return

    with_video = mode != "audio"
    with_audio = mode != "video" and dataset.kind == "video"
    audio_file = audio_source.path_for(item.path) if with_audio else None
    if audio_file is not None and not (audio_file.is_file() and has_audio_stream(audio_file)):
        plan.missing_audio.append(item.path)
        audio_file = None

    bucket = select_bucket(dataset, width, height) if with_video else None
    stamp = source_stamp(item.path)
    audio_stamp = source_stamp(audio_file) if audio_file is not None else "absent"
    for window in windows:
        window_args = (window.start, window.num_frames) if dataset.kind == "video" else ()
        key = naming.item_key(item.stem, *window_args)
        frames = [window.start, window.num_frames]
        plan.jobs.append(
            LatentJob(
                item=item,
                key=key,
                bucket=bucket,
                window=window,
                latent_path=naming.latent_cache_path(dataset.cache_directory, key, width, height)
                if with_video
                else None,
                audio_path=naming.audio_cache_path(dataset.cache_directory, key) if with_audio else None,
                audio_source=audio_file,
                fingerprint={
                    "source": stamp,
                    "checkpoint": video_checkpoint,
                    "dataset": digest,
                    "bucket": bucket,
                    "window": frames,
                    "fps": window.fps,
                }
                if with_video
                else None,
                audio_fingerprint=_audio_fingerprint(stamp, digest, frames, window.fps, audio_checkpoint, audio_stamp)
                if with_audio
                else None,
                audio_window_s=(window.start_s, window.duration_s) if with_audio else None,
            )
        )


def unusable_cache_files(plan: LatentPlan, datasets: list[DatasetConfig]) -> list[Path]:
    """Latent and audio cache files in the datasets' cache folders that no planned item can use in any mode.

    A video window's audio cache is usable even when this run is video-only (an AV or audio run reads it), and its
    video latents even when this run is audio-only (an AV run reads them); so only files of windows, buckets or
    items that the datasets no longer have count. Text caches are never considered.
    """
    usable = {job.latent_path for job in plan.jobs if job.latent_path is not None}
    usable |= {
        naming.audio_cache_path(job.item.dataset.cache_directory, job.key)
        for job in plan.jobs
        if job.item.dataset.kind in ("video", "audio")
    }
    # An audio-mode plan does not know which frame bucket a window's latents were made at: keep them by key.
    keys_without_latents = {
        (job.item.dataset.cache_directory, job.key)
        for job in plan.jobs
        if job.latent_path is None and job.item.dataset.kind == "video"
    }

    # A window's references and masks are usable in any mode too, while its dataset still declares them.
    kinds_of = {}
    for dataset in datasets:
        kinds = declared_partners(dataset, list_media(dataset))
        kinds_of[dataset.cache_directory] = [k for k in kinds if k in _FITTING_PARTNERS[dataset.kind]]
        if soundtrack_reference(dataset, kinds):  # reference clips' soundtracks
            kinds_of[dataset.cache_directory].append("reference_audio")
    usable |= {
        naming.partner_cache_path(job.item.dataset.cache_directory, job.key, kind)
        for job in plan.jobs
        for kind in kinds_of[job.item.dataset.cache_directory]
    }

    def is_usable(path: Path) -> bool:
        if path in usable:
            return True
        parsed = naming.parse_latent_name(path)
        return parsed is not None and (path.parent, parsed[0]) in keys_without_latents

    return [
        path
        for directory in dict.fromkeys(dataset.cache_directory for dataset in datasets)
        if directory.is_dir()
        for suffix in (naming.LATENT_SUFFIX, naming.AUDIO_SUFFIX, *naming.PARTNER_SUFFIXES.values())
        for path in sorted(directory.glob(f"*{suffix}"))
        if not is_usable(path)
    ]
