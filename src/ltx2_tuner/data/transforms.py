"""Geometry of fitting media to a bucket, and pixels to VAE input.

Every frame is scaled so it covers the bucket with its aspect ratio kept, then the bucket is cut from the centre
(the official trainer's default; reference §2.4). Images and video frames share these functions so both crop alike.
"""

from __future__ import annotations

import numpy as np
import torch


def cover_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """The smallest (w, h) with the source's aspect ratio that covers (dst_w, dst_h); both are ≥ the target.

    Rounding to whole pixels can land a side one pixel short of the target; it is raised to the target then,
    which distorts the aspect ratio by under one pixel.
    """
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"sizes must be positive, got source {src_w}x{src_h} and target {dst_w}x{dst_h}")
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, round(src_w * scale)), max(dst_h, round(src_h * scale))


def center_crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred dst_w x dst_h region of a src_w x src_h picture (Pillow's box).

    When the margin is odd, the extra pixel is left on the right / bottom.
    """
    if dst_w > src_w or dst_h > src_h:
        raise ValueError(f"cannot crop {dst_w}x{dst_h} out of {src_w}x{src_h}")
    left, top = (src_w - dst_w) // 2, (src_h - dst_h) // 2
    return left, top, left + dst_w, top + dst_h


def crop_center(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """The centred [height, width] region of [..., H, W, C] pixels (a view, no copy)."""
    left, top, right, bottom = center_crop_box(pixels.shape[-2], pixels.shape[-3], width, height)
    return pixels[..., top:bottom, left:right, :]


def frames_to_model_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 RGB [F, H, W, 3] -> float32 [3, F, H, W] in [-1, 1] (x / 127.5 - 1, the VAE's input range)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if not frames.flags.writeable:  # torch warns about read-only arrays, though this only reads them
        frames = frames.copy()
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    return (pixels.to(torch.float32) / 127.5 - 1.0).contiguous()
