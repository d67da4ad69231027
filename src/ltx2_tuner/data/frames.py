"""Which frames of a clip become training windows (`frame_extraction`) and when each frame is shown.

Windows are counted in frames at the sampling rate: the dataset's `target_fps` when set, else the clip's own
rate (`source_fps` overrides what the container reports). Frame k of a window starting at frame s is the picture on
screen at (s + k) / fps seconds, which keeps variable-frame-rate clips correct.
Modes (musubi-tuner's): head, chunk, slide, uniform, full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltx2_tuner.data.config import DatasetConfig, snap_frame_count


@dataclass(frozen=True)
class FrameWindow:
    start: int  # first frame, at the sampling rate
    num_frames: int  # 8k+1
    fps: float  # sampling rate: frames per second of the window (drives RoPE time and the audio span)

    @property
    def start_s(self) -> float:
        return self.start / self.fps

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def times_s(self) -> list[float]:
        return [(self.start + k) / self.fps for k in range(self.num_frames)]


def sampling_fps(dataset: DatasetConfig, container_fps: float) -> float:
    return dataset.target_fps or dataset.source_fps or container_fps


def frame_windows(dataset: DatasetConfig, total_frames: int, fps: float) -> list[FrameWindow]:
    """The windows of a clip with `total_frames` frames at the sampling rate `fps`, per `dataset`'s settings."""
    mode = dataset.frame_extraction
    if mode == "full":
        count = snap_frame_count(min(total_frames, dataset.max_frames))
        return [FrameWindow(0, count, fps)] if total_frames >= 1 else []
    windows = []
    for count in dataset.target_frames:
        last_start = total_frames - count
        if last_start < 0:
            continue
        if mode == "head":
            starts = [0]
        elif mode == "chunk":
            starts = range(0, last_start + 1, count)
        elif mode == "slide":
            starts = range(0, last_start + 1, dataset.frame_stride)
        else:  # uniform: frame_sample windows spread evenly over the clip
            starts = np.linspace(0, last_start, dataset.frame_sample).round().astype(int).tolist()
        windows.extend(FrameWindow(start, count, fps) for start in dict.fromkeys(starts))
    return windows


def available_frames(duration_s: float, container_frames: int, container_fps: float, fps: float) -> int:
    """Frames available at the sampling rate `fps` (the container's own count when not resampling)."""
    if abs(fps - container_fps) < 1e-6 and container_frames > 0:
        return container_frames
    return int(duration_s * fps + 1e-6)
