"""Synthetic media for tests, benchmarks and the demo, written with PyAV and Pillow: no downloads, deterministic.

Video frames show a bright square moving left to right over the clip, a colour bar whose hue follows the frame
index, and the frame index itself as a row of 8 black/white blocks along the top edge (`read_frame_index` reads
it back), so a test can tell which source frame a decoder returned. `width` x `height` is always the displayed
size: with `rotation` (video) or `exif_orientation` (image) the stored pixels are turned the other way, as a
phone stores a portrait clip, and only a reader that honours the metadata shows them upright.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

_AUDIO_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".m4a": "aac", ".aac": "aac", ".mp4": "aac", ".mkv": "aac",
                 ".mp3": "libmp3lame", ".ogg": "vorbis", ".oga": "flac", ".opus": "libopus"}  # fmt: skip
# FFmpeg's own Vorbis encoder (the build has no libvorbis) is marked experimental and writes stereo only.
_CODEC_OPTIONS = {"vorbis": {"strict": "experimental"}}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}


def tone(duration_s: float, sample_rate: int, frequencies_hz: tuple[float, ...] = (440.0,)) -> np.ndarray:
    """[C, S] float32 sine waves at amplitude 0.5, one channel per frequency."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    return np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in frequencies_hz]).astype(np.float32)


def write_audio(path: str | Path, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write [C, S] float samples in [-1, 1] (C = 1, 2, 6 or 8) to an audio file; the codec follows the suffix:
    .wav (16-bit PCM), .flac / .oga (FLAC), .mp3 (LAME), .ogg (Vorbis, stereo only), .opus (Opus: 8, 12, 16, 24 or
    48 kHz), .m4a / .aac / .mp4 / .mkv (AAC)."""
    path = Path(path)
    codec = _AUDIO_CODECS[path.suffix.lower()]
    layout = _LAYOUTS[waveform.shape[0]]
    if codec == "vorbis" and layout != "stereo":
        raise ValueError(f"{path.name}: FFmpeg's Vorbis encoder writes stereo only, not {layout}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout, options=_CODEC_OPTIONS.get(codec, {}))
        frame_size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name  # the encoder's native sample format
        for frame in _audio_frames(waveform, sample_rate, layout, fmt, frame_size):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _audio_frames(
    waveform: np.ndarray, sample_rate: int, layout: str, fmt: str, frame_size: int
) -> Iterator[av.AudioFrame]:
    """[C, S] float samples as encoder-ready frames of `frame_size` samples, pts in samples."""
    samples = np.ascontiguousarray(waveform, dtype=np.float32)
    to_encoder_format = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate)
    for start in range(0, samples.shape[1], frame_size):
        chunk = samples[:, start : start + frame_size]
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        yield from to_encoder_format.resample(frame)


INDEX_BITS = 8  # the frame index is drawn as this many bits, so it reads back modulo 2**8
_VFR_TICKS_PER_FRAME = 10  # a VFR clip's time base is 1/10 of a frame, like the fine time bases phones use


def synthetic_frame_times(num_frames: int, fps: float | Fraction, *, vfr: bool = False) -> tuple[np.ndarray, float]:
    """(times at which each frame of a `write_video` clip appears, clip duration), in seconds.

    Constant rate: frame k at k / fps. With `vfr`, the gaps alternate between 1 / fps and 2 / fps.
    """
    rate = _as_rate(fps)
    gaps = [1 + (k % 2 if vfr else 0) for k in range(num_frames)]  # in units of 1 / fps; gaps[k] follows frame k
    starts = np.concatenate([[0], np.cumsum(gaps)[:-1]]) if num_frames else np.zeros(0)
    return starts / float(rate), sum(gaps) / float(rate)


def write_video(
    path: str | Path,
    num_frames: int,
    fps: float | Fraction,
    width: int,
    height: int,
    *,
    audio: Literal["tone"] | np.ndarray | None = None,
    audio_rate: int = 48000,
    codec: Literal["libx264", "mpeg4"] = "libx264",
    rotation: int = 0,
    vfr: bool = False,
    grain: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write a clip of `num_frames` frames of `width` x `height` (displayed size) at `fps`; return its path.

    `fps` may be a float (12.5, 30) or a Fraction (24000/1001 for 23.976). `audio="tone"` adds an AAC stereo track
    as long as the video whose pitch and panning follow the square (220 Hz at the left edge, 880 Hz at the
    right); a [C, S] float array in [-1, 1] is written as given. `rotation` (counter-clockwise degrees, a multiple
    of 90) is stored as a display matrix, with the frames turned the other way. `vfr` writes irregular timestamps
    (see `synthetic_frame_times`). `grain` adds per-frame noise of that standard deviation (8-bit levels): about
    3 gives a camera-like ~9 Mbit/s at 720p, so decoding costs what it does for real footage. Odd sizes are
    encoded as 4:4:4 with libx264, which rejects odd sizes in 4:2:0.
    """
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    if width < 16 or height < 16:
        raise ValueError(f"synthetic frames need at least 16x16 pixels to draw the frame index, got {width}x{height}")
    path, rate = Path(path), _as_rate(fps)
    times_s, duration_s = synthetic_frame_times(num_frames, rate, vfr=vfr)
    ticks_per_frame = _VFR_TICKS_PER_FRAME if vfr else 1
    time_base = 1 / (rate * ticks_per_frame)
    pts = np.round(times_s * float(rate) * ticks_per_frame).astype(int).tolist()
    ticks_total = round(duration_s * float(rate) * ticks_per_frame)
    durations = dict(zip(pts, np.diff([*pts, ticks_total]).tolist(), strict=True))
    quarter_turns = (rotation // 90) % 4
    coded_w, coded_h = (height, width) if quarter_turns % 2 else (width, height)

    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=rate)
        video.width, video.height = coded_w, coded_h
        video.codec_context.time_base = time_base
        video.codec_context.gop_size = max(1, round(2 * float(rate)))  # a keyframe every 2 s, as cameras write
        if codec == "libx264":
            video.pix_fmt = "yuv444p" if coded_w % 2 or coded_h % 2 else "yuv420p"
            video.options = {"crf": "18"}
        else:
            video.pix_fmt = "yuv420p"
            video.bit_rate = max(400_000, int(coded_w * coded_h * float(rate)))  # ~1 bit per pixel: clean blocks
        if vfr:  # MP4 keeps durations in decode order: with B-frames the last frame's length cannot be set
            video.codec_context.max_b_frames = 0
        if rotation % 360:
            video.set_display_rotation(rotation)
        scene = _Scene(width, height, num_frames, seed, grain)
        positions = [scene.square_x(k) for k in range(num_frames)]
        audio_stream, audio_frames = _add_audio(container, audio, audio_rate, times_s, positions, duration_s)
        next_audio = next(audio_frames, None)

        def mux_video(packets: list[av.Packet]) -> None:
            for packet in packets:
                # Encoders drop frame durations; without them the muxer guesses the last frame's length.
                packet.duration = durations.get(packet.pts, packet.duration)
                container.mux(packet)

        for k in range(num_frames):
            upright = scene.frame(k)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(upright, -quarter_turns)), "rgb24")
            frame.pts, frame.time_base = pts[k], time_base
            mux_video(video.encode(frame))
            while next_audio is not None and next_audio.pts < (times_s[k] + 1 / float(rate)) * audio_rate:
                container.mux(audio_stream.encode(next_audio))
                next_audio = next(audio_frames, None)
        mux_video(video.encode(None))
        while next_audio is not None:
            container.mux(audio_stream.encode(next_audio))
            next_audio = next(audio_frames, None)
        if audio_stream is not None:
            container.mux(audio_stream.encode(None))
    return path


def read_frame_index(frame: np.ndarray) -> int:
    """The frame index drawn by `write_video` into uint8 RGB [H, W, 3] decoded at the written (displayed) size."""
    code_h, block_w = _code_geometry(frame.shape[1], frame.shape[0])
    rows = frame[code_h // 4 : max(code_h // 4 + 1, code_h * 3 // 4)]
    index = 0
    for bit in range(INDEX_BITS):  # most significant bit first
        block = rows[:, bit * block_w + block_w // 4 : bit * block_w + max(block_w // 4 + 1, block_w * 3 // 4)]
        index = index * 2 + int(block.mean() > 128)
    return index


class _Scene:
    """The upright frames of a synthetic clip: panning texture, moving square, colour bar, index code."""

    _PAN_PX = 2  # the background moves this far left per frame, as under a slow camera pan

    def __init__(self, width: int, height: int, num_frames: int, seed: int, grain: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.width, self.height, self.num_frames, self.grain = width, height, num_frames, grain
        self.code_h, self.block_w = _code_geometry(width, height)
        self.bar_h = max(2, height // 8)
        middle_h = height - self.code_h - self.bar_h
        self.side = max(2, min(width, middle_h) // 3)
        self.top = self.code_h + (middle_h - self.side) // 2
        self.square_rgb = self.rng.integers(200, 256, 3).astype(np.uint8)
        span = width + self._PAN_PX * num_frames
        texture = 0.25 * self._noise(span, height, 32) + 0.12 * self._noise(span, height, 4)
        self.background = texture[:, :, None] + self.rng.integers(60, 120, 3)[None, None, :]

    def _noise(self, width: int, height: int, cell_px: int) -> np.ndarray:
        """[height, width] smooth random texture in about [-128, 128] with features ~`cell_px` wide."""
        cells = self.rng.integers(0, 256, (height // cell_px + 2, width // cell_px + 2), dtype=np.uint8)
        size = (cells.shape[1] * cell_px, cells.shape[0] * cell_px)
        smooth = np.asarray(Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        return smooth[:height, :width] - 128

    def square_x(self, k: int) -> float:
        """The square's position, 0 at the left edge and 1 at the right, in frame k."""
        return k / (self.num_frames - 1) if self.num_frames > 1 else 0.0

    def frame(self, k: int) -> np.ndarray:
        shift = self._PAN_PX * k
        background = self.background[:, shift : shift + self.width]
        if self.grain:
            background = background + self.rng.normal(0, self.grain, (self.height, self.width, 1))
        pixels = background.clip(0, 255).astype(np.uint8)
        left = round(self.square_x(k) * (self.width - self.side))
        pixels[self.top : self.top + self.side, left : left + self.side] = self.square_rgb
        hue = (k / max(1, self.num_frames)) % 1.0
        pixels[self.height - self.bar_h :] = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255
        for bit in range(INDEX_BITS):
            on = (k >> (INDEX_BITS - 1 - bit)) & 1
            pixels[: self.code_h, bit * self.block_w : (bit + 1) * self.block_w] = 235 if on else 16
        return pixels


def _code_geometry(width: int, height: int) -> tuple[int, int]:
    """(height of the index strip, width of one bit's block)."""
    return max(4, height // 6), width // INDEX_BITS


def _as_rate(fps: float | Fraction) -> Fraction:
    # 12.5 -> 25/2 exactly; pass Fraction(24000, 1001) for NTSC rates (the float 23.976 stays 2997/125).
    return fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)


def _add_audio(container, audio, audio_rate: int, times_s: np.ndarray, positions: list[float], duration_s: float):
    """(AAC stream or None, iterator of its encoder-ready frames); `positions` are the square's, per frame."""
    if audio is None:
        return None, iter(())
    if isinstance(audio, str):
        if audio != "tone":
            raise ValueError(f'audio must be None, "tone" or a [C, S] array, got {audio!r}')
        waveform = _square_tone(times_s, positions, duration_s, audio_rate)
    else:
        waveform = np.asarray(audio, dtype=np.float32)
    layout = _LAYOUTS[waveform.shape[0]]
    stream = container.add_stream("aac", rate=audio_rate, layout=layout)
    frame_size = stream.codec_context.frame_size or 1024
    return stream, _audio_frames(waveform, audio_rate, layout, stream.codec_context.format.name, frame_size)


def _square_tone(times_s: np.ndarray, positions: list[float], duration_s: float, sample_rate: int) -> np.ndarray:
    """[2, S] tone, S = duration · rate: pitch 220 -> 880 Hz and pan left -> right as the square moves."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    x = np.interp(t, times_s, positions) if len(times_s) else np.zeros_like(t)
    phase = 2 * np.pi * np.cumsum(220.0 * 4.0**x) / sample_rate  # integrate the frequency: no clicks
    pan = (0.25 + 0.5 * x) * np.pi / 2
    return (0.5 * np.stack([np.cos(pan), np.sin(pan)]) * np.sin(phase)).astype(np.float32)


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
# Stored pixels for an EXIF orientation: the inverse of the turn a viewer applies (ImageOps.exif_transpose).
_STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def image_pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB [height, width, 3] drawn by `write_image`: gradients, and a white block in the top-left corner."""
    rng = np.random.default_rng(seed)
    xs = np.linspace(40, 200, width, dtype=np.float32)[None, :]
    ys = np.linspace(40, 200, height, dtype=np.float32)[:, None]
    blue = np.full((height, width), rng.integers(60, 160), dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(xs, ys, blue), axis=-1).round().astype(np.uint8)
    side = max(2, min(width, height) // 4)
    pixels[:side, :side] = 255
    return pixels


def write_image(
    path: str | Path,
    width: int,
    height: int,
    mode: Literal["RGB", "RGBA", "L", "I;16", "CMYK", "P"] = "RGB",
    exif_orientation: int | None = None,
    seed: int = 0,
) -> Path:
    """Write `image_pattern` as a `mode` image of `width` x `height` (displayed size); the suffix picks the format.

    RGBA: the right half is fully transparent. L / I;16: the pattern's luminance (16-bit values are 257x the
    8-bit ones, so the white block is 65535). P: an adaptive 64-colour palette. CMYK needs .jpg or .tif.
    With `exif_orientation` (2-8) the pixels are stored turned and the tag tells viewers how to turn them back
    (Pillow 13 misreads an I;16 TIFF with an orientation: it turns the size but not the pixels).
    """
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"unsupported image suffix {path.suffix!r}; use one of {sorted(_FORMATS)}")
    file_format = _FORMATS[path.suffix.lower()]
    rgb = Image.fromarray(image_pattern(width, height, seed))
    if mode == "RGB":
        image = rgb
    elif mode == "RGBA":
        alpha = np.zeros((height, width), dtype=np.uint8)
        alpha[:, : width // 2] = 255
        image = rgb.copy()
        image.putalpha(Image.fromarray(alpha))
    elif mode == "L":
        image = rgb.convert("L")
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    elif mode == "CMYK":
        image = rgb.convert("CMYK")
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    else:
        raise ValueError(f"unsupported mode {mode!r}")
    options: dict = {"quality": 95, "subsampling": 0} if file_format == "JPEG" else {}
    if exif_orientation is not None:
        if exif_orientation != 1:
            image = image.transpose(_STORE_FOR_ORIENTATION[exif_orientation])
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif
    image.save(path, format=file_format, **options)
    return path
