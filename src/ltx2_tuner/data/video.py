"""Video probing and frame reading with PyAV.

Frames are picked by time, not by index: output frame k is the picture on screen at `times_s[k]`, the last frame
whose timestamp is at or before it. That keeps variable-frame-rate clips (phones) in sync with their audio, where
counting frames would drift. Frames come out upright: a display-matrix rotation (portrait phone clips) is applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from ltx2_tuner.data.transforms import cover_size, crop_center
from ltx2_tuner.errors import MediaError

DEFAULT_FPS = 24.0  # when a stream states no rate at all
# Earlier first times are reached by decoding from the start: cameras write a keyframe every 1-2 s, so a seek
# would land at the start anyway.
_SEEK_AFTER_S = 1.0
# A frame counts as shown at t when its timestamp is within half a tick of the stream's time base after t (plus
# float slack): muxers round timestamps to their time base (Matroska to the millisecond: frame 1 at 24 fps is
# stored at 42 ms), and k / fps must still give frame k.
_TOLERANCE_TICKS = 0.5
_TOLERANCE_S = 1e-6
_FIX_ENCODING = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # displayed size, after rotation
    height: int
    fps: float  # stream.average_rate, else guessed_rate / base_rate, else DEFAULT_FPS
    num_frames: int  # frames in the stream (the container's count, else counted packet by packet)
    duration_s: float  # from the stream's start to the end of its last frame
    rotation: int  # counter-clockwise degrees (0, 90, 180, 270) to turn coded frames for display
    has_audio: bool


def probe_video(path: str | Path) -> VideoInfo:
    """Size, rate, frame count, duration and rotation of the first video stream; decodes one frame."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        # PyAV 18 exposes the display matrix on decoded frames (`frame.rotation`) only, not on the stream.
        first = _first_frame(container, stream, path)
        rotation = _quarter_turns(first.rotation) * 90
        num_frames = stream.frames
        duration_s = float(stream.duration * stream.time_base) if stream.duration else 0.0
        has_audio = bool(container.streams.audio)
        fps = _frame_rate(stream)
    if num_frames <= 0 or duration_s <= 0:  # e.g. Matroska/WebM, whose headers hold neither
        num_frames, duration_s = _count_frames(path, fps)
    width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
    return VideoInfo(path, width, height, fps, num_frames, duration_s, rotation, has_audio)


def read_video_frames(path: str | Path, times_s: Sequence[float], size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB [F, H, W, 3], upright: frame k is the one on screen at `times_s[k]` seconds from the stream start.

    Times before the first frame give the first frame. With `size` = (width, height), each frame is scaled to
    cover it (aspect ratio kept, bicubic, in swscale before the RGB conversion) and centre-cropped to exactly
    [height, width]: ~0.9x the speed of plain decoding (benchmarks/bench_media.py). Decodes in one forward pass,
    from the keyframe before the earliest time, and stops after the latest; only frames that are used are
    converted.
    """
    path = Path(path)
    times = np.asarray(times_s, dtype=np.float64)
    if times.ndim != 1 or not len(times) or not np.isfinite(times).all():
        raise ValueError(f"times_s must be a non-empty list of finite seconds, got {times_s!r}")
    order = np.argsort(times, kind="stable")
    with _open(path) as container:
        # PyAV's default slice threading is kept: frame threading ("AUTO") measured ~10% slower on 2 cores.
        stream = _video_stream(container, path)
        start = stream.start_time or 0
        # Latest timestamp (in stream ticks) a frame may have to be on screen at each time, earliest time first.
        limits = start + (times[order] + _TOLERANCE_S) / float(stream.time_base) + _TOLERANCE_TICKS
        frame_ticks = 1 / (_frame_rate(stream) * stream.time_base)
        stream_end = start + (stream.duration or 0)
        to_pixels = _Converter(size)
        out = None
        try:
            picked = _pick_frames(_frames_from(container, stream, limits[0]), limits, frame_ticks, stream_end)
            for slot, frame in zip(order, picked, strict=False):  # `picked` is empty when nothing decodes
                pixels = to_pixels(frame)
                if out is None:
                    out = np.empty((len(times), *pixels.shape), dtype=np.uint8)
                out[slot] = pixels
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode video ({error}); {_FIX_ENCODING}") from error
        except _Truncated as cut:
            decoded_s, header_s = (float((ticks - start) * stream.time_base) for ticks in cut.ends_ticks)
            raise MediaError(
                f"{path}: the frames stop at {decoded_s:.3f} s but the file says it lasts {header_s:.3f} s "
                "(a truncated file, e.g. an unfinished copy); copy or download it again"
            ) from None
        except _PastEnd as past:
            end_s = float((past.end_ticks - start) * stream.time_base)
            info = probe_video(path)
            raise MediaError(
                f"{path}: asked for the frame at {times.max():.3f} s but the video ends at {end_s:.3f} s "
                f"({info.num_frames} frames at {info.fps:.3f} fps); use fewer or shorter windows for this clip"
            ) from None
    if out is None:
        raise MediaError(f"{path}: no decodable video frames; {_FIX_ENCODING}")
    return out


class _PastEnd(Exception):
    def __init__(self, end_ticks: float):
        self.end_ticks = end_ticks


class _Truncated(Exception):
    def __init__(self, decoded_end_ticks: float, header_end_ticks: float):
        self.ends_ticks = (decoded_end_ticks, header_end_ticks)


def _pick_frames(
    frames: Iterator[av.VideoFrame], limits: np.ndarray, frame_ticks: float, stream_end_ticks: float
) -> Iterator[av.VideoFrame]:
    """For each limit (ascending, stream ticks), the last frame with pts ≤ limit, or the first frame when none is.

    Raises `_PastEnd` when a limit reaches the end of the last frame: no frame is on screen there. That end is
    the later of the stream's end and the last frame's pts + duration (else + one frame at the stream rate);
    the later, because MP4 keeps durations in decode order, so with B-frames a frame's own may be short.
    """
    held = None
    index = 0
    for frame in frames:
        while index < len(limits) and frame.pts > limits[index]:
            yield held if held is not None else frame
            index += 1
        if index == len(limits):
            return
        held = frame
    if held is None:
        return
    decoded_end = held.pts + (held.duration or frame_ticks)
    # Frames stop more than a frame before the end the header promises: the file was cut (a copy or download
    # that did not finish), and holding the last frame would cache a frozen picture as the missing ones.
    if limits[-1] >= decoded_end and stream_end_ticks - decoded_end > frame_ticks:
        raise _Truncated(decoded_end, stream_end_ticks)
    end_ticks = max(decoded_end, stream_end_ticks)
    if limits[-1] >= end_ticks:
        raise _PastEnd(end_ticks)
    for _ in range(index, len(limits)):
        yield held


def _frames_from(container, stream, first_limit: float) -> Iterator[av.VideoFrame]:
    """Decoded frames in presentation order, starting at or before the timestamp `first_limit` (stream ticks)."""
    start = stream.start_time or 0
    if (first_limit - start) * stream.time_base > _SEEK_AFTER_S:
        container.seek(int(first_limit), stream=stream, backward=True)
        frames = _with_pts(container.decode(stream), stream)
        first = next(frames, None)
        # A demuxer whose index is by decode time or coarse can land on a keyframe shown after the target
        # (FFmpeg 8's MP4 demuxer does not): then decode from the start rather than return a later frame.
        if first is not None and first.pts <= first_limit:
            yield first
            yield from frames
            return
        container.seek(start, stream=stream, backward=True)
    yield from _with_pts(container.decode(stream), stream)


def _with_pts(frames: Iterator[av.VideoFrame], stream) -> Iterator[av.VideoFrame]:
    """Frames with a timestamp: a frame without one (raw streams) is placed one frame after the previous."""
    step = round(1 / (_frame_rate(stream) * stream.time_base))
    previous = None
    for frame in frames:
        if frame.pts is None:
            frame.pts = (stream.start_time or 0) if previous is None else previous + step
        previous = frame.pts
        yield frame


class _Converter:
    """Decoded frame -> upright uint8 RGB [H, W, 3], optionally scaled to cover `size` and centre-cropped."""

    def __init__(self, size: tuple[int, int] | None):
        self.size = size
        # One reformatter per step keeps one swscale context each for the whole clip.
        self.scaler, self.to_rgb = VideoReformatter(), VideoReformatter()
        self.last: tuple[av.VideoFrame, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.last is not None and self.last[0] is frame:  # one frame held for several times
            return self.last[1]
        turns = _quarter_turns(frame.rotation)
        if self.size is None:
            pixels = np.rot90(self.to_rgb.reformat(frame, format="rgb24").to_ndarray(), turns)
        else:
            width, height = self.size
            shown_w, shown_h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
            cover_w, cover_h = cover_size(shown_w, shown_h, width, height)
            coded_w, coded_h = (cover_h, cover_w) if turns % 2 else (cover_w, cover_h)
            pixels = crop_center(np.rot90(self._scaled_rgb(frame, coded_w, coded_h), turns), width, height)
        self.last = (frame, pixels)
        return pixels

    def _scaled_rgb(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        # Bicubic matches the reference's torchvision resize; swscale widens the kernel when shrinking, so it
        # antialiases like torchvision's antialias=True. YUV frames are scaled in their own format first and
        # converted after: swscale's scaled-YUV -> RGB path is ~3.5x slower than scaling the planes and then
        # using its unscaled converter (2.1 vs 0.6 ms for 720p -> 796x448), and lands closer to Pillow's bicubic.
        if frame.format.name.startswith("yuv"):
            frame = self.scaler.reformat(frame, width=width, height=height, interpolation=Interpolation.BICUBIC)
            return self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
        scaled = self.to_rgb.reformat(frame, width=width, height=height, format="rgb24", interpolation="BICUBIC")
        return scaled.to_ndarray()


def _open(path: Path):
    if not path.is_file():
        raise MediaError(f"{path}: video file not found; fix the path or remove the item from the dataset")
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot open as a video ({error}); {_FIX_ENCODING}") from error


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream; list audio-only files as audio items, not as videos")
    return container.streams.video[0]


def _first_frame(container, stream, path: Path) -> av.VideoFrame:
    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode video ({error}); {_FIX_ENCODING}") from error
    if frame is None:
        raise MediaError(f"{path}: no decodable video frames; {_FIX_ENCODING}")
    return frame


def _count_frames(path: Path, fps: float) -> tuple[int, float]:
    """(frames, duration in seconds) from a demux-only pass: reads packets, decodes nothing."""
    count, end = 0, None
    with _open(path) as container:
        stream = container.streams.video[0]
        step = 1 / (fps * stream.time_base)
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            count += 1
            if packet.pts is not None:
                packet_end = packet.pts + (packet.duration or step)
                end = packet_end if end is None else max(end, packet_end)
        start = stream.start_time or 0
        return count, float((end - start) * stream.time_base) if end is not None else count / fps


def _frame_rate(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:  # None or 0 when the container does not say
            return float(rate)
    return DEFAULT_FPS


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (0-3) for PyAV's `frame.rotation` (degrees in [-180, 180]; flips ignored)."""
    return round(rotation / 90) % 4
