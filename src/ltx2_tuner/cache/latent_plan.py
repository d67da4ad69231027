"""What `ltx2_cache_latents.py` will write: one job per image or video window, with its file names and fingerprint.

Planning probes every media file (headers only) so that every problem is known before any model is loaded: a
video without an audio track in AV mode, an unreadable file, a clip shorter than every target frame count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.store import source_stamp
from ltx2_tuner.data.buckets import select_bucket
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.frames import FrameWindow, available_frames, frame_windows, sampling_fps
from ltx2_tuner.data.items import MediaItem, list_media
from ltx2_tuner.errors import MediaError

IMAGE_FPS = 24.0  # an image is one frame of a 24 fps clip (the official trainer's 1.0 skews its RoPE time)


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
    key: str
    bucket: tuple[int, int]  # (width, height) the frames are resized and cropped to
    window: FrameWindow  # images: one frame at IMAGE_FPS
    latent_path: Path
    audio_path: Path | None  # the audio sidecar to write (AV mode, video items with audio)
    audio_source: Path | None
    fingerprint: dict = field(repr=False)
    audio_fingerprint: dict | None = field(default=None, repr=False)


@dataclass
class LatentPlan:
    jobs: list[LatentJob] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: reason"
    too_short: list[str] = field(default_factory=list)
    missing_audio: list[Path] = field(default_factory=list)


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
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def plan_latent_jobs(
    datasets: list[DatasetConfig],
    mode: str,
    video_checkpoint: dict,
    audio_checkpoint: dict | None,
    audio_source: AudioSource,
) -> LatentPlan:
    """Every cache file the run should produce.

    `video_checkpoint` / `audio_checkpoint` identify the VAEs (file fingerprint, version, dtype); a cache made
    with others is stale. In AV mode every video window gets an audio sidecar; a video without audio is listed in
    `missing_audio`, and its sidecar (if the run goes on) records the absence instead of latents.
    """
    from ltx2_tuner.data.audio import AUDIO_PREPROCESSING, has_audio_stream
    from ltx2_tuner.data.images import image_size
    from ltx2_tuner.data.video import probe_video

    plan = LatentPlan()
    for dataset in datasets:
        digest = dataset_digest(dataset)
        for item in list_media(dataset):
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
                continue
            if not windows:
                plan.too_short.append(f"{item.path} ({total} frames < {min(dataset.target_frames)})")
                continue

            with_audio = mode == "av" and dataset.kind == "video"
            audio_file = audio_source.path_for(item.path) if with_audio else None
            if audio_file is not None and not (audio_file.is_file() and has_audio_stream(audio_file)):
                plan.missing_audio.append(item.path)
                audio_file = None

            bucket = select_bucket(dataset, width, height)
            stamp = source_stamp(item.path)
            audio_stamp = source_stamp(audio_file) if audio_file is not None else "absent"
            for window in windows:
                window_args = (window.start, window.num_frames) if dataset.kind == "video" else ()
                key = naming.item_key(item.stem, *window_args)
                fingerprint = {
                    "source": stamp,
                    "checkpoint": video_checkpoint,
                    "dataset": digest,
                    "bucket": bucket,
                    "window": [window.start, window.num_frames],
                    "fps": window.fps,
                }
                plan.jobs.append(
                    LatentJob(
                        item=item,
                        key=key,
                        bucket=bucket,
                        window=window,
                        latent_path=naming.latent_cache_path(dataset.cache_directory, key, width, height),
                        audio_path=naming.audio_cache_path(dataset.cache_directory, key) if with_audio else None,
                        audio_source=audio_file,
                        fingerprint=fingerprint,
                        audio_fingerprint={
                            **fingerprint,
                            "audio_checkpoint": audio_checkpoint,
                            "audio": audio_stamp,
                            "audio_preprocessing": AUDIO_PREPROCESSING,
                        }
                        if with_audio
                        else None,
                    )
                )
    return plan


def unusable_cache_files(plan: LatentPlan, datasets: list[DatasetConfig]) -> list[Path]:
    """Latent and audio cache files in the datasets' cache folders that no planned item can use in any mode.

    A video window's audio cache is usable even when this run is video-only (an AV run reads it), so only files
    of windows, buckets or items that the datasets no longer have count; text caches are never considered.
    """
    usable = {job.latent_path for job in plan.jobs}
    usable |= {
        naming.audio_cache_path(job.latent_path.parent, job.key)
        for job in plan.jobs
        if job.item.dataset.kind == "video"
    }
    return [
        path
        for directory in dict.fromkeys(dataset.cache_directory for dataset in datasets)
        if directory.is_dir()
        for suffix in (naming.LATENT_SUFFIX, naming.AUDIO_SUFFIX)
        for path in sorted(directory.glob(f"*{suffix}"))
        if path not in usable
    ]
