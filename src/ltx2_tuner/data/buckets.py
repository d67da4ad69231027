"""Resolution buckets: the (width, height) each item is resized and cropped to, multiples of 32.

With `enable_bucket`, buckets keep about the area of `resolution` at many aspect ratios and an item goes to the
bucket nearest its aspect ratio (musubi-tuner's scheme, step 32 for LTX-2). Without it, every item uses
`resolution`. `bucket_no_upscale` keeps media smaller than the bucket area at their own size, floored to 32.
"""

from __future__ import annotations

import math
from functools import cache

from ltx2_tuner.data.config import BUCKET_STEP, DatasetConfig


def _floor_step(value: float) -> int:
    return max(BUCKET_STEP, int(value) // BUCKET_STEP * BUCKET_STEP)


@cache
def bucket_sizes(resolution: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """All buckets of about `resolution`'s area, portrait and landscape."""
    area = resolution[0] * resolution[1]
    side = math.isqrt(area)
    sizes = set()
    for width in range(_floor_step(side / 2), side + 1, BUCKET_STEP):
        height = _floor_step(area / width)
        sizes.update({(width, height), (height, width)})
    return tuple(sorted(sizes))


def select_bucket(dataset: DatasetConfig, width: int, height: int) -> tuple[int, int]:
    """The (width, height) bucket of a `width` x `height` (displayed) image or video."""
    if not dataset.enable_bucket:
        return dataset.resolution
    bucket_area = dataset.resolution[0] * dataset.resolution[1]
    if dataset.bucket_no_upscale and width * height <= bucket_area:
        return _floor_step(width), _floor_step(height)
    aspect = math.log(width / height)
    return min(bucket_sizes(dataset.resolution), key=lambda size: (abs(math.log(size[0] / size[1]) - aspect), size))
