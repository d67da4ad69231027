"""Frame windows for every extraction mode, and bucket selection."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ltx2_tuner.data.buckets import bucket_sizes, select_bucket
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.frames import FrameWindow, available_frames, frame_windows, sampling_fps


def _dataset(**overrides) -> DatasetConfig:
    base = DatasetConfig(
        index=1, kind="video", source=__import__("pathlib").Path("clips"), source_is_jsonl=False,
        caption_extension=".txt", resolution=(512, 288), batch_size=1, num_repeats=1, enable_bucket=False,
        bucket_no_upscale=False, cache_directory=__import__("pathlib").Path("cache"), target_frames=(9,),
        frame_extraction="head", frame_stride=1, frame_sample=1, max_frames=129, source_fps=None, target_fps=None,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def _starts(windows):
    return [(w.start, w.num_frames) for w in windows]


def test_head():
    windows = frame_windows(_dataset(target_frames=(1, 9, 33)), total_frames=20, fps=24.0)
    assert _starts(windows) == [(0, 1), (0, 9)]  # 33 does not fit


def test_chunk():
    assert _starts(frame_windows(_dataset(frame_extraction="chunk"), 30, 24.0)) == [(0, 9), (9, 9), (18, 9)]


def test_slide():
    windows = frame_windows(_dataset(frame_extraction="slide", frame_stride=5), 25, 24.0)
    assert _starts(windows) == [(0, 9), (5, 9), (10, 9), (15, 9)]


def test_uniform():
    windows = frame_windows(_dataset(frame_extraction="uniform", frame_sample=3), 41, 24.0)
    assert _starts(windows) == [(0, 9), (16, 9), (32, 9)]
    assert _starts(frame_windows(_dataset(frame_extraction="uniform", frame_sample=1), 41, 24.0)) == [(0, 9)]


def test_full_snaps_to_8k_plus_1_and_caps():
    assert _starts(frame_windows(_dataset(frame_extraction="full"), 40, 24.0)) == [(0, 33)]
    assert _starts(frame_windows(_dataset(frame_extraction="full", max_frames=20), 40, 24.0)) == [(0, 17)]


def test_window_times_and_sampling_rate():
    window = FrameWindow(start=12, num_frames=9, fps=24.0)
    assert window.start_s == 0.5 and window.duration_s == pytest.approx(0.375)
    assert window.times_s()[:2] == [0.5, 13 / 24]
    assert sampling_fps(_dataset(), 29.97) == 29.97
    assert sampling_fps(_dataset(source_fps=30.0), 29.97) == 30.0
    assert sampling_fps(_dataset(target_fps=12.0, source_fps=30.0), 29.97) == 12.0
    assert available_frames(2.0, 48, 24.0, 24.0) == 48
    assert available_frames(2.0, 48, 24.0, 12.0) == 24


def test_fixed_bucket_without_bucketing():
    assert select_bucket(_dataset(), 1920, 1080) == (512, 288)
    assert select_bucket(_dataset(), 300, 900) == (512, 288)


def test_buckets_keep_the_area_and_follow_the_aspect_ratio():
    dataset = _dataset(enable_bucket=True, resolution=(960, 544))
    sizes = bucket_sizes((960, 544))
    assert all(w % 32 == 0 and h % 32 == 0 and w * h <= 960 * 544 for w, h in sizes)
    assert all(w * h > 0.85 * 960 * 544 for w, h in sizes)
    wide, tall, square = (select_bucket(dataset, *size) for size in ((1920, 1080), (1080, 1920), (1000, 1000)))
    assert wide[0] > wide[1] and tall[0] < tall[1] and abs(math.log(square[0] / square[1])) < 0.05
    assert abs(math.log(wide[0] / wide[1]) - math.log(16 / 9)) < 0.05


def test_bucket_no_upscale_keeps_small_media_small():
    dataset = _dataset(enable_bucket=True, bucket_no_upscale=True, resolution=(960, 544))
    assert select_bucket(dataset, 330, 250) == (320, 224)
    assert select_bucket(dataset, 1920, 1080) == select_bucket(
        _dataset(enable_bucket=True, resolution=(960, 544)), 1920, 1080
    )
