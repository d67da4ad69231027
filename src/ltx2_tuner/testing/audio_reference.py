"""Independent references for audio tests: the documented resampling formula, evaluated sample by sample, and
plain PyAV decoding of a whole stream."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def documented_resample(x: np.ndarray, orig: int, new: int, width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Direct float64 evaluation of the formula, sample by sample, independent of the polyphase implementation:
    y[k] = sum_m x[m] · (f/orig) · sinc(f·(m/orig − k/new)) · cos²(π·f·(m/orig − k/new) / (2·width)), for
    |f·(m/orig − k/new)| <= width, with f = rolloff · min(orig, new); zeros outside the input; ceil(S·new/orig)
    outputs."""
    cutoff = rolloff * min(orig, new)
    outputs = -(-len(x) * new // orig)
    reach = int(np.ceil(width * orig / cutoff)) + 2  # input samples on each side within the window
    k = np.arange(outputs)[:, None]
    m = np.floor(k * orig / new).astype(np.int64) + np.arange(-reach, reach + 1)[None]
    u = cutoff * (m / orig - k / new)
    h = (cutoff / orig) * np.sinc(u) * np.cos(np.pi * u / (2 * width)) ** 2
    h[np.abs(u) > width] = 0.0
    inside = (m >= 0) & (m < len(x))
    return (np.where(inside, x[np.clip(m, 0, len(x) - 1)], 0.0) * h).sum(axis=1)


def decode_all(path: str | Path) -> tuple[np.ndarray, int]:
    """[C, S] float samples of the whole first audio stream, with plain PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in to_float.resample(frame)]
        return np.concatenate(chunks, axis=1).astype(np.float64), stream.rate
