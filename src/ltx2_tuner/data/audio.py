"""Audio decoding with PyAV: one time window of a file's first audio stream, as stereo float32 at the VAE's rate.

Order, as the official preprocessing: decode at the file's rate, cut the window there, zero-pad, mix to stereo,
resample (`data.resample`, torchaudio's windowed-sinc defaults; swresample's filter differs between 4 and 8 kHz
and moved the cached latents by ~0.5%).

Time: `start_s` counts from the audio stream's start, i.e. from its first sample once the decoder has dropped
the codec's priming samples (AAC in MP4, Opus, LAME MP3 all signal them; FFmpeg reports such an MP3 stream as
starting at 0.023 s). The official trainer takes the decoded samples from the first one (`torchaudio.load`),
which is the same origin. Samples are counted from the first decoded frame's timestamp, so a window near the
start is sample-exact. One further in is reached by seeking to `_PREROLL_S` before it (AAC, MP3 and Opus
decoders need a frame or two of history after a seek); there samples are counted from the frame the seek found,
which puts the window within half a source sample of where decoding from the start would.

Channels: the official trainer's rules (reference §2.5): mono is duplicated, stereo kept, 5.1 and 7.1 mixed
with FL/FR at 1 and centre and surround (side and back) channels at 0.707, each output row normalized to sum 1
(5.1: 0.414 / 0.293; 7.1: 0.320 / 0.227), LFE dropped; any other layout of more than two channels becomes the
mean of its channels, duplicated. We mix here with those weights rather than let swresample rematrix: its
default 5.1 matrix has the same normalized weights only when it writes integer samples; writing float it
leaves the rows unnormalized (L = FL + 0.707·FC + 0.707·BL, which can exceed 1), so the result would depend on
the sample format asked for.

Probing (`probe_audio`): duration from the stream's header (exact in WAV, FLAC, MP4/M4A, Ogg, MP3 with a Xing/LAME
header), else by decoding the stream and counting its samples: raw elementary streams (ADTS AAC, AC-3, DTS) have
no duration, and FFmpeg's estimate from the bit rate was 2% short on a 1 s ADTS file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from ltx2_tuner.data.resample import resample, resampled_length
from ltx2_tuner.errors import MediaError

_PREROLL_S = 0.2  # decoded before the window and dropped (the decoder's history after a seek)
# Windows starting earlier than this are decoded from the start of the stream (~2 ms per second of AAC).
_SEEK_AFTER_S = 1.0
# Matroska/WebM keep times to the millisecond, so a window reached by seeking may start up to ~1 ms off;
# decoding from the start counts samples and is exact, so there we seek only into long files.
_SEEK_AFTER_COARSE_S = 30.0
_SURROUND_GAIN = 0.707  # centre and surround channels relative to front left/right, before normalizing
_LEFT_WEIGHTS = {"FL": 1.0, "FC": _SURROUND_GAIN, "SL": _SURROUND_GAIN, "BL": _SURROUND_GAIN}
_RIGHT_WEIGHTS = {"FR": 1.0, "FC": _SURROUND_GAIN, "SR": _SURROUND_GAIN, "BR": _SURROUND_GAIN}
_5_1 = ("FL", "FR", "FC", "LFE", "BL", "BR")  # FFmpeg's channel order for these layouts
_5_1_SIDE = ("FL", "FR", "FC", "LFE", "SL", "SR")
_7_1 = ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")
_SURROUND_LAYOUTS = {frozenset(_5_1), frozenset(_5_1_SIDE), frozenset(_7_1)}
# Files that do not name their channels (e.g. a WAV without a channel mask) are read in FFmpeg's default order
# for the count, as the official trainer reads every 6- and 8-channel file.
_DEFAULT_ORDER = {6: _5_1, 8: _7_1}
# Names how a clip becomes the VAE's waveform; audio caches record it, so a change here recomputes them.
AUDIO_PREPROCESSING = "native-trim,stereo-mix,sinc-hann-6-0.99"
# FFmpeg demuxers of raw elementary streams: their duration is estimated from the bit rate.
_RAW_STREAM_FORMATS = frozenset({"aac", "ac3", "eac3", "dts", "truehd", "mlp"})
_FIX_ENCODING = "re-encode it, e.g. `ffmpeg -i IN -vn -c:a flac OUT.flac`"


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float  # of the first audio stream, from its first sample
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class AudioClip:
    waveform: torch.Tensor  # [2, S] float32 at sample_rate
    sample_rate: int
    valid_samples: int  # samples that came from the source; the rest is zero padding


def has_audio_stream(path: str | Path) -> bool:
    """Whether the file has an audio stream; a missing or unreadable file raises `MediaError` rather than False."""
    path = Path(path)
    with _open(path) as container:
        return bool(container.streams.audio)


def probe_audio(path: str | Path) -> AudioInfo:
    """Duration, sample rate and channel count of the file's first audio stream (headers; a decode when they hold
    no duration). `MediaError` for a missing or unreadable file or one without audio."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream; use an audio file, or remove it from the dataset")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        channels = len(stream.codec_context.layout.channels)
        duration_s = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if duration_s <= 0 or not rate or container.format.name in _RAW_STREAM_FORMATS:
            try:
                samples = 0
                for frame in container.decode(stream):
                    samples, rate = samples + frame.samples, frame.sample_rate
                    channels = len(frame.layout.channels)
            except av.FFmpegError as error:
                raise MediaError(f"{path}: cannot decode audio ({error}); {_FIX_ENCODING}") from error
            duration_s = samples / rate if rate else 0.0
    if duration_s <= 0 or not rate or not channels:
        raise MediaError(f"{path}: no decodable audio in its first audio stream; {_FIX_ENCODING}")
    return AudioInfo(duration_s, rate, channels)


def load_audio_clip(
    path: str | Path, start_s: float, duration_s: float, sample_rate: int = 16000, warn_padding: bool = True
) -> AudioClip:
    """The stereo audio of `duration_s` seconds from `start_s`, at `sample_rate`, as the official preprocessing
    makes it: the window is cut at the file's own rate (int(duration_s · rate) samples), zero-padded where the
    source ends early, mixed to stereo, then resampled with torchaudio's windowed-sinc defaults
    (`data.resample`), so it has ceil(samples · sample_rate / rate) samples.

    `valid_samples` says how much is real; a warning names the file and the shortfall (unless `warn_padding` is
    off: audio datasets pad clips up to their bucket by design). Only the window (plus a
    short pre-roll for the decoder) is decoded, so long files cost little memory.
    """
    path = Path(path)
    if start_s < 0 or duration_s <= 0 or sample_rate <= 0:
        raise ValueError(
            f"need start_s >= 0, duration_s > 0, sample_rate > 0; got {start_s}, {duration_s}, {sample_rate}"
        )
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(
                f"{path}: no audio stream; use a file with an audio track, or train this item without audio"
            )
        stream = container.streams.audio[0]
        try:
            window, channel_names, native_rate = _read_window(container, stream, start_s, duration_s)
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode audio ({error}); {_FIX_ENCODING}") from error
    if window is None or window.samples is None:
        raise MediaError(f"{path}: no decodable audio in its first audio stream; {_FIX_ENCODING}")
    if warn_padding and window.valid < window.num_samples:
        warnings.warn(
            f"{path}: only {window.valid / native_rate:.3f} s of audio in the {duration_s:.3f} s window at "
            f"{start_s:.3f} s (the audio ends there); the other "
            f"{(window.num_samples - window.valid) / native_rate:.3f} s are padded with silence",
            stacklevel=2,
        )
    stereo = torch.from_numpy((stereo_mix_matrix(channel_names) @ window.samples.T).astype(np.float32))
    waveform = resample(stereo, native_rate, sample_rate)
    valid = min(waveform.shape[-1], resampled_length(window.valid, native_rate, sample_rate))
    return AudioClip(waveform, sample_rate, valid)


def stereo_mix_matrix(channel_names: tuple[str, ...]) -> np.ndarray:
    """[2, C] weights turning C channels (FFmpeg names, 'NONE' when unnamed) into left and right."""
    count = len(channel_names)
    if count == 1:
        return np.ones((2, 1))
    if count == 2:
        return np.eye(2)
    names = channel_names
    if "NONE" in names and count in _DEFAULT_ORDER:
        names = _DEFAULT_ORDER[count]
    if frozenset(names) in _SURROUND_LAYOUTS:
        rows = np.array([[_LEFT_WEIGHTS.get(n, 0.0) for n in names], [_RIGHT_WEIGHTS.get(n, 0.0) for n in names]])
        return rows / rows.sum(axis=1, keepdims=True)
    return np.full((2, count), 1.0 / count)


class _Window:
    """The `num_samples` samples of the window, filled from consecutive resampled chunks [n, C]."""

    def __init__(self, offset: int, num_samples: int):
        self.position = -offset  # where the next chunk's first sample falls, relative to the window start
        self.num_samples = num_samples
        self.samples: np.ndarray | None = None  # [num_samples, C], allocated at the first chunk
        self.valid = 0

    @property
    def full(self) -> bool:
        return self.position >= self.num_samples

    def add(self, chunk: np.ndarray) -> None:
        if self.samples is None:
            self.samples = np.zeros((self.num_samples, chunk.shape[1]), dtype=np.float32)
        lo, hi = max(self.position, 0), min(self.position + len(chunk), self.num_samples)
        if hi > lo:
            self.samples[lo:hi] = chunk[lo - self.position : hi - self.position]
            self.valid = hi
        self.position += len(chunk)


def _read_window(container, stream, start_s: float, duration_s: float):
    """(_Window or None when nothing decodes, source channel names, the source's sample rate)."""
    origin_s = float((stream.start_time or 0) * stream.time_base)
    window_s = origin_s + start_s
    # Packed float at the source's own rate and layout. Packed: PyAV 18 crashes converting planar frames with 8
    # channels to numpy.
    converter = av.AudioResampler(format="flt")
    window, names, rate = None, (), 0
    for time_s, frame in _timed_frames(container, stream, window_s - _PREROLL_S, origin_s):
        if window is None:
            rate = frame.sample_rate
            # Cut as the official preprocessing trims: int(duration · rate) samples at the file's rate.
            window = _Window(round((window_s - time_s) * rate), int(duration_s * rate))
            names = tuple(channel.name for channel in frame.layout.channels)
        for chunk in converter.resample(frame):
            window.add(_to_numpy(chunk))
        if window.full:
            return window, names, rate
    if window is not None:
        for chunk in converter.resample(None):
            window.add(_to_numpy(chunk))
    return window, names, rate


def _timed_frames(container, stream, target_s: float, origin_s: float) -> Iterator[tuple[float, av.AudioFrame]]:
    """(time in seconds, frame) in order, from a frame at or before `target_s` when seeking gets there."""
    coarse = stream.time_base * stream.codec_context.sample_rate > 1  # a tick longer than a sample
    if target_s - origin_s > (_SEEK_AFTER_COARSE_S if coarse else _SEEK_AFTER_S):
        try:
            container.seek(round(target_s / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError:  # not seekable: decode from the start
            pass
        else:
            frames = _with_times(container.decode(stream), stream, None)
            first = next(frames, None)
            # Without a timestamp, or landed after the target (a coarse index): decode from the start instead.
            if first is not None and first[0] is not None and first[0] <= target_s:
                yield first
                yield from frames
                return
            container.seek(stream.start_time or 0, stream=stream, backward=True)
    yield from _with_times(container.decode(stream), stream, origin_s)


def _with_times(frames, stream, origin_s: float | None) -> Iterator[tuple[float | None, av.AudioFrame]]:
    """A frame without a timestamp (some raw streams) follows the previous one, or starts at `origin_s`."""
    next_s = origin_s
    for frame in frames:
        time_s = float(frame.pts * stream.time_base) if frame.pts is not None else next_s
        yield time_s, frame
        if time_s is not None:
            next_s = time_s + frame.samples / frame.sample_rate


def _to_numpy(frame: av.AudioFrame) -> np.ndarray:
    """Packed float frame -> [n, C]."""
    return frame.to_ndarray().reshape(frame.samples, len(frame.layout.channels))


def _open(path: Path):
    if not path.is_file():
        raise MediaError(f"{path}: media file not found; fix the path or remove the item from the dataset")
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot open as audio or video ({error}); {_FIX_ENCODING}") from error
