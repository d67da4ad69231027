"""The synthetic media writers, checked with plain PyAV and Pillow (not with the readers they exist to test)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from ltx2_tuner.testing.synthetic_media import (
    read_frame_index,
    synthetic_frame_times,
    tone,
    write_audio,
    write_image,
    write_video,
)


@dataclass
class _Stream:  # what a test needs of a video stream, read while the container is open
    average_rate: Fraction
    frames: int
    duration_s: float
    time_base: Fraction


def _decode(path) -> tuple[_Stream, list[av.VideoFrame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration_s = float(stream.duration * stream.time_base)
        info = _Stream(stream.average_rate, stream.frames, duration_s, stream.time_base)
        return info, list(container.decode(stream))


@pytest.mark.parametrize(
    ("fps", "rate"), [(Fraction(24000, 1001), Fraction(24000, 1001)), (12.5, Fraction(25, 2)), (30, 30)]
)
def test_video_rate_timestamps_and_frame_index(tmp_path, fps, rate):
    stream, frames = _decode(write_video(tmp_path / "clip.mp4", 40, fps, 64, 48))
    assert stream.average_rate == rate and stream.frames == 40
    assert [float(frame.time) for frame in frames] == pytest.approx([k / rate for k in range(40)])
    assert [read_frame_index(frame.to_ndarray(format="rgb24")) for frame in frames] == list(range(40))


def test_moving_square_crosses_left_to_right(tmp_path):
    _, frames = _decode(write_video(tmp_path / "clip.mp4", 10, 24.0, 96, 64))
    square_rows = slice(30, 38)  # the square spans the vertical middle of the frame
    brightest = [frame.to_ndarray(format="rgb24")[square_rows].sum(axis=(0, 2)).argmax() for frame in frames]
    assert brightest[0] < 32 < 64 < brightest[-1] and brightest == sorted(brightest)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_vfr_timestamps_alternate_one_and_two_frame_gaps(tmp_path, codec):
    stream, frames = _decode(write_video(tmp_path / "vfr.mp4", 10, 24.0, 64, 48, vfr=True, codec=codec))
    shown_at, duration = synthetic_frame_times(10, 24.0, vfr=True)
    assert np.diff([*shown_at, duration]) * 24 == pytest.approx([1, 2] * 5)
    assert [float(frame.time) for frame in frames] == pytest.approx(shown_at.tolist())
    assert stream.duration_s == pytest.approx(duration)  # the last frame keeps its length
    assert stream.time_base.denominator >= 240  # a finer time base than one tick per frame


def test_rotation_is_written_as_display_matrix(tmp_path):
    _, frames = _decode(write_video(tmp_path / "phone.mp4", 4, 24.0, 64, 48, rotation=90))
    assert frames[0].rotation == 90  # what PyAV reads back from the display matrix
    assert (frames[0].width, frames[0].height) == (48, 64)
    upright = np.rot90(frames[2].to_ndarray(format="rgb24"), 1)  # a player turns it 90 degrees counter-clockwise
    assert read_frame_index(upright) == 2


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_odd_sizes_encode(tmp_path, codec):
    _, frames = _decode(write_video(tmp_path / "odd.mp4", 5, 24.0, 65, 49, codec=codec))
    assert (frames[0].width, frames[0].height) == (65, 49)
    assert [read_frame_index(frame.to_ndarray(format="rgb24")) for frame in frames] == list(range(5))


def _dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[spectrum.argmax()])


def test_tone_track_lasts_the_clip_and_follows_the_square(tmp_path):
    path = write_video(tmp_path / "av.mp4", 48, 24.0, 64, 48, audio="tone")
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.channels, stream.rate) == ("aac", 2, 48000)
        assert float(stream.duration * stream.time_base) == pytest.approx(2.0, abs=1e-3)  # 48 frames at 24 fps
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    start, end = audio[:, 2400:7200], audio[:, -7200:-2400]  # 0.05-0.15 s from either end
    assert _dominant_hz(start[0], 48000) == pytest.approx(220 * 4**0.05, rel=0.1)
    assert _dominant_hz(end[0], 48000) == pytest.approx(880 / 4**0.05, rel=0.1)
    rms = lambda x: float(np.sqrt((x**2).mean()))  # noqa: E731
    assert rms(start[0]) > rms(start[1]) and rms(end[1]) > rms(end[0])  # panned with the square


def test_given_waveform_is_muxed_as_is(tmp_path):
    waveform = tone(1.0, 16000, (440.0,))
    path = write_video(tmp_path / "mono.mkv", 12, 12.0, 64, 48, audio=waveform, audio_rate=16000)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.channels, stream.rate) == (1, 16000)
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    assert _dominant_hz(audio[0, 1600:14400], 16000) == pytest.approx(440, abs=5)


def test_write_audio_round_trips_wav_samples(tmp_path):
    waveform = tone(0.25, 8000, (300.0, 500.0))
    with av.open(str(write_audio(tmp_path / "a.wav", waveform, 8000))) as container:
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    assert decoded.shape == (1, 4000)  # packed s16: one row of interleaved L, R samples
    assert np.abs(decoded.reshape(-1, 2).T / 32768 - waveform).max() < 1e-4


@pytest.mark.parametrize(
    ("mode", "suffix"), [("RGB", ".png"), ("RGBA", ".png"), ("L", ".jpg"), ("I;16", ".png"), ("CMYK", ".jpg"),
                         ("P", ".png"), ("I;16", ".tiff")]
)  # fmt: skip
def test_write_image_modes(tmp_path, mode, suffix):
    with Image.open(write_image(tmp_path / f"a{suffix}", 37, 21, mode=mode)) as image:
        assert (image.mode, image.size) == (mode, (37, 21))


def test_write_image_exif_orientation_stores_the_pixels_turned(tmp_path):
    with Image.open(write_image(tmp_path / "a.jpg", 40, 20, exif_orientation=6)) as image:
        assert image.size == (20, 40) and image.getexif()[0x0112] == 6
