"""Bad inputs for the corpus tests (tests/corpus, docs/bad-input.md), written on the fly: no binary fixtures.

Each function writes one kind of file users bring: damaged or mislabelled videos, streams that start at different
times, 10-bit pixels, captions in odd encodings. Good media comes from `synthetic_media`; these functions damage,
transcode or remux it with PyAV so the damage is the only difference from a good file.
"""

from __future__ import annotations

import codecs
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ltx2_tuner.testing.synthetic_media import write_video

# 64x64 at 24 fps: two latent cells a side (the VAE's are 32 pixels), and small enough that the corpus runs in seconds.
SIZE = 64
FPS = 24.0


def good_video(path: Path, num_frames: int = 20, *, audio: bool | np.ndarray = True, **options) -> Path:
    """A 64x64 clip at 24 fps with a tone track; `audio` False leaves the sound out, a [C, S] array is muxed as
    given (its rate in `audio_rate`). `options` go to `write_video`."""
    sound = "tone" if audio is True else (None if audio is False else audio)
    width, height = options.pop("width", SIZE), options.pop("height", SIZE)
    return write_video(path, num_frames, FPS, width, height, audio=sound, **options)


def empty_file(path: Path) -> Path:
    """A zero-byte file (a failed export, a placeholder)."""
    path.write_bytes(b"")
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut `path` to its first `keep` share of bytes, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def truncate_between_packets(path: Path, keep: float = 0.5) -> Path:
    """Cut `path` at the first packet that starts past `keep` of its bytes: the frames before decode cleanly and
    the rest are gone (a cut inside a packet would make a decoding error of it instead)."""
    with av.open(str(path)) as container:
        starts = sorted(packet.pos for packet in container.demux() if packet.pos is not None and packet.pos >= 0)
    size = path.stat().st_size
    cut = next(pos for pos in starts if pos >= size * keep)
    path.write_bytes(path.read_bytes()[:cut])
    return path


def text_named_video(path: Path) -> Path:
    """A text file with a video suffix (a renamed note, a download that saved an error page)."""
    path.write_text("this is not a video\n", encoding="utf-8")
    return path


def ten_bit_copy(source: Path, path: Path) -> Path:
    """`source`'s frames re-encoded as 10-bit H.264 (yuv420p10le, as HDR phones and cinema cameras record);
    no audio."""
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream_in = src.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height = stream_in.codec_context.width, stream_in.codec_context.height
        stream.pix_fmt = "yuv420p10le"
        for frame in src.decode(stream_in):
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), "rgb24")
            picture.pts, picture.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return path


def remux(source: Path, path: Path, *, audio_delay_s: float = 0.0, faststart: bool = False) -> Path:
    """`source`'s packets copied unchanged into `path` (its suffix picks the container: .ts for MPEG-TS, .mp4,
    .mov). The audio stream starts `audio_delay_s` after the video (before it when negative), as camera and
    broadcast files often do: the video starts at 0 when the audio is late, the audio when it is early.
    `faststart` puts an MP4's index first, so a truncated copy still opens and promises frames it lacks."""
    with av.open(str(source)) as src:
        options = {"movflags": "faststart"} if faststart else {}
        with av.open(str(path), "w", options=options) as out:
            _copy_packets(src, out, audio_delay_s)
    return path


def _copy_packets(src, out, audio_delay_s: float) -> None:
    inputs = [*src.streams.video[:1], *src.streams.audio[:1]]
    streams = {s.index: out.add_stream_from_template(s) for s in inputs}
    delays = {s.index: max(0.0, audio_delay_s if s.type == "audio" else -audio_delay_s) for s in inputs}
    for packet in src.demux(*inputs):
        if packet.dts is None:  # the demuxer's end-of-stream marker
            continue
        shift = round(Fraction(delays[packet.stream.index]).limit_denominator(1000) / packet.time_base)
        packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
        packet.stream = streams[packet.stream.index]
        out.mux(packet)


def stream_starts_s(path: Path) -> tuple[float, float]:
    """(video, audio) first timestamps in seconds, as the container stores them."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        return float(video.start_time * video.time_base), float(audio.start_time * audio.time_base)


# A two-line caption, and the bytes editors write for it: each of these reads back as CAPTION.
CAPTION = "a red fox\njumps"
CAPTION_VARIANTS = {
    "crlf": b"a red fox\r\njumps\r\n",  # Windows line endings
    "bom": codecs.BOM_UTF8 + CAPTION.encode(),  # Notepad's "UTF-8 with BOM"
    "utf16": codecs.BOM_UTF16_LE + CAPTION.encode("utf-16-le"),  # Notepad's "Unicode"
}
CP1252_CAPTION = "café rouge".encode("cp1252")  # read as Windows-1252, with a warning
UNDECODABLE_CAPTION = b"caf\x81 rouge"  # 0x81 is undefined in Windows-1252 too
EMPTY_CAPTION = b""
BLANK_CAPTION = b" \n\t\r\n"  # whitespace only: as empty as no text
