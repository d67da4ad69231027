"""Duration buckets of audio datasets: the length each clip is cut or padded to, so clips batch together.

    pad       bucket = ceil(d / interval) · interval: the whole clip, zero-padded up to the bucket (the padding is
              masked out of the loss through the cached `audio_lengths`)
    truncate  bucket = floor(d / interval) · interval: the clip cut down to it; a clip shorter than one interval
              gets one interval, padded

Both are capped at `max_audio_duration`: a longer clip is cut there. Each audio item is one window, from its start.
"""

from __future__ import annotations

import math

from ltx2_tuner.data.config import AUDIO_BUCKET_STRATEGIES, DatasetConfig

# Durations within this of a multiple of the interval count as that multiple: container durations are rounded
# (e.g. to the microsecond), and a 4 s clip must not land in the 6 s bucket.
_TOLERANCE_S = 1e-6


def audio_bucket_seconds(duration_s: float, interval_s: float, strategy: str, max_duration_s: float) -> float:
    """The bucket (seconds) of a clip of `duration_s` seconds."""
    if duration_s <= 0 or interval_s <= 0 or max_duration_s <= 0:
        raise ValueError(f"durations must be positive, got {duration_s}, {interval_s}, {max_duration_s}")
    if strategy not in AUDIO_BUCKET_STRATEGIES:
        raise ValueError(f"strategy must be one of {AUDIO_BUCKET_STRATEGIES}, not {strategy!r}")
    intervals = duration_s / interval_s
    slack = _TOLERANCE_S / interval_s
    count = math.ceil(intervals - slack) if strategy == "pad" else max(1, math.floor(intervals + slack))
    # Rounded so that 3 x 0.1 s is 0.3 s: the bucket is recorded in cache fingerprints and compared.
    return min(round(count * interval_s, 6), max_duration_s)


def dataset_audio_bucket(dataset: DatasetConfig, duration_s: float) -> float:
    """`audio_bucket_seconds` with an audio dataset's settings."""
    return audio_bucket_seconds(
        duration_s, dataset.audio_bucket_interval, dataset.audio_bucket_strategy, dataset.max_audio_duration
    )
