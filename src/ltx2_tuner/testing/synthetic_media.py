"""Synthetic media for tests, benchmarks and the demo, written with PyAV: no downloads, deterministic."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

_AUDIO_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".m4a": "aac", ".aac": "aac", ".mp4": "aac", ".mkv": "aac"}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}


def tone(duration_s: float, sample_rate: int, frequencies_hz: tuple[float, ...] = (440.0,)) -> np.ndarray:
    """[C, S] float32 sine waves at amplitude 0.5, one channel per frequency."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    return np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in frequencies_hz]).astype(np.float32)


def write_audio(path: str | Path, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write [C, S] float samples in [-1, 1] (C = 1, 2, 6 or 8) to an audio file; the codec follows the suffix."""
    path = Path(path)
    codec = _AUDIO_CODECS[path.suffix.lower()]
    layout = _LAYOUTS[waveform.shape[0]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name  # the encoder's native sample format
        samples = np.ascontiguousarray(waveform, dtype=np.float32)
        to_encoder_format = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate)
        for start in range(0, samples.shape[1], frame_size):
            chunk = samples[:, start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            for resampled in to_encoder_format.resample(frame):
                container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return path
