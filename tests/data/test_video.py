"""Video probing and time-based frame reading on synthetic clips whose frames carry their own index."""

from __future__ import annotations

import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ltx2_tuner.data.transforms import center_crop_box, cover_size, frames_to_model_input
from ltx2_tuner.data.video import probe_video, read_video_frames
from ltx2_tuner.errors import MediaError
from ltx2_tuner.testing.synthetic_media import (
    read_frame_index,
    synthetic_frame_times,
    tone,
    write_audio,
    write_video,
)

W, H, N = 64, 48, 20


def _indices(frames: np.ndarray) -> list[int]:
    return [read_frame_index(frame) for frame in frames]


@pytest.mark.parametrize(
    ("fps", "codec", "suffix"),
    [
        (24.0, "libx264", ".mp4"),
        (Fraction(24000, 1001), "libx264", ".mp4"),
        (12.5, "mpeg4", ".mp4"),
        (30.0, "libx264", ".mkv"),  # Matroska states no frame count: it is counted from the packets
    ],
)
def test_probe_reports_size_rate_frames_and_duration(tmp_path, fps, codec, suffix):
    path = write_video(tmp_path / f"clip{suffix}", N, fps, W, H, codec=codec, audio="tone")
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.rotation, info.has_audio) == (W, H, N, 0, True)
    assert info.fps == pytest.approx(float(fps))
    assert info.duration_s == pytest.approx(N / float(fps), abs=1e-3)  # Matroska rounds to the millisecond
    assert probe_video(write_video(tmp_path / f"mute{suffix}", N, fps, W, H, codec=codec)).has_audio is False


@pytest.mark.parametrize(
    ("fps", "codec", "size", "suffix"),
    [
        (24.0, "libx264", (W, H), ".mp4"),
        (Fraction(24000, 1001), "libx264", (W, H), ".mp4"),
        (12.5, "mpeg4", (W, H), ".mp4"),
        (30.0, "libx264", (65, 49), ".mp4"),  # odd size: 4:4:4
        (24.0, "libx264", (W, H), ".mkv"),  # millisecond timestamps: frame 1 is stored at 42 ms, not 41.67
    ],
)
def test_time_k_over_fps_gives_source_frame_k(tmp_path, fps, codec, size, suffix):
    path = write_video(tmp_path / f"clip{suffix}", N, fps, *size, codec=codec)
    times = [k / float(fps) for k in range(N)]
    frames = read_video_frames(path, times)
    assert frames.shape == (N, size[1], size[0], 3) and frames.dtype == np.uint8
    assert _indices(frames) == list(range(N))


def test_times_between_frames_give_the_frame_on_screen_in_any_order(tmp_path):
    path = write_video(tmp_path / "clip.mp4", N, 24.0, W, H)
    times = [(k + 0.5) / 24 for k in (7, 2, 19, 2)] + [-1.0, 0.0]  # unsorted, repeated, before the start
    assert _indices(read_video_frames(path, times)) == [7, 2, 19, 2, 0, 0]


def test_variable_frame_rate_times_map_to_the_held_frame(tmp_path):
    path = write_video(tmp_path / "vfr.mp4", N, 24.0, W, H, vfr=True)
    shown_at, duration = synthetic_frame_times(N, 24.0, vfr=True)  # gaps alternate 1/24 and 2/24 s
    times = np.arange(0, duration - 1e-3, 1 / 48)
    expected = np.searchsorted(shown_at, times + 1e-9, side="right") - 1
    assert _indices(read_video_frames(path, times)) == expected.tolist()
    assert len(set(expected.tolist())) == N  # every frame was asked for, most of them twice or more


def test_seeking_far_into_a_clip_lands_on_the_right_frames(tmp_path):
    path = write_video(tmp_path / "long.mp4", 150, 24.0, W, H)  # keyframes every 48 frames
    wanted = [47, 48, 49, 95, 96, 149]  # either side of keyframes, and the last frame
    for start in wanted:  # each read starts past 1 s, so it seeks
        assert _indices(read_video_frames(path, [start / 24, (start + 0.5) / 24])) == [start, start]


class _LateSeekingContainer:
    """A container whose seeks land two seconds late, as a demuxer with a coarse index can."""

    def __init__(self, container):
        self._container = container

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def seek(self, offset, *, stream, backward=True):
        late = round(2 / stream.time_base) if offset > (stream.start_time or 0) else 0
        self._container.seek(offset + late, stream=stream, backward=backward)


def test_a_seek_that_lands_late_falls_back_to_decoding_from_the_start(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", 150, 24.0, W, H)  # keyframes at frames 0, 48, 96, 144
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: _LateSeekingContainer(real_open(*args, **kwargs)))
    assert _indices(read_video_frames(path, [47 / 24, 50 / 24])) == [47, 50]  # the seek found frame 96


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clip_comes_out_upright_with_displayed_size(tmp_path, rotation):
    path = write_video(tmp_path / "phone.mp4", N, 24.0, W, H, rotation=rotation)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (W, H, rotation)
    with av.open(str(path)) as container:
        coded = next(container.decode(video=0))
    assert (coded.width, coded.height) == ((H, W) if rotation % 180 else (W, H))  # stored turned
    frames = read_video_frames(path, [k / 24 for k in range(N)])
    assert frames.shape == (N, H, W, 3)
    assert _indices(frames) == list(range(N))  # the index strip only reads back when turned the right way

    upright = write_video(tmp_path / "upright.mp4", N, 24.0, W, H)
    scaled = read_video_frames(path, [0.25], size=(32, 64))
    assert np.abs(scaled.astype(int) - read_video_frames(upright, [0.25], size=(32, 64))).mean() < 4


def _pillow_cover_crop(frame: np.ndarray, width: int, height: int, shift: int = 0) -> np.ndarray:
    image = Image.fromarray(frame)
    image = image.resize(cover_size(*image.size, width, height), Image.Resampling.BICUBIC)
    left, top, right, bottom = center_crop_box(*image.size, width, height)
    wide = image.size[0] > width  # shift the crop along the axis that has a margin
    box = (left + shift, top, right + shift, bottom) if wide else (left, top + shift, right, bottom + shift)
    return np.asarray(image.crop(box))


@pytest.mark.parametrize(
    ("source", "bucket"),
    [
        ((65, 49), (32, 32)),  # odd size, wider than the bucket
        ((49, 97), (64, 96)),  # odd size, taller than the bucket
        ((120, 40), (64, 32)),  # much wider: a large horizontal margin
        ((40, 30), (96, 64)),  # smaller than the bucket: scaled up
    ],
)
def test_resize_covers_the_bucket_and_crops_the_centre(tmp_path, source, bucket):
    path = write_video(tmp_path / "clip.mp4", 6, 24.0, *source)
    times = [k / 24 for k in range(6)]
    frames = read_video_frames(path, times, size=bucket)
    assert frames.shape == (6, bucket[1], bucket[0], 3)
    native = read_video_frames(path, times)

    def error(shift: int) -> float:
        pairs = zip(frames, native, strict=True)
        return float(np.mean([np.abs(f.astype(int) - _pillow_cover_crop(n, *bucket, shift)).mean() for f, n in pairs]))

    errors = {shift: error(shift) for shift in (-2, -1, 0, 1, 2)}
    assert errors[0] < 4  # same picture as Pillow's bicubic cover-and-crop of the full frame...
    assert min(errors, key=errors.get) == 0  # ...and best aligned with the centred crop


def test_frames_to_model_input_layout_and_range(tmp_path):
    frames = read_video_frames(write_video(tmp_path / "clip.mp4", 3, 24.0, W, H), [0, 1 / 24, 2 / 24])
    frames[0, 0, 0] = (0, 127, 255)
    pixels = frames_to_model_input(frames)
    assert pixels.shape == (3, 3, H, W) and pixels.dtype == torch.float32
    assert pixels[:, 0, 0, 0].tolist() == pytest.approx([-1.0, 127 / 127.5 - 1, 1.0])
    assert torch.equal(pixels[:, 2], torch.from_numpy(frames[2]).permute(2, 0, 1).float() / 127.5 - 1)
    frames.flags.writeable = False  # e.g. a view of a decoder's buffer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(frames_to_model_input(frames), pixels)


def test_reading_past_the_end_names_the_frame_count(tmp_path):
    path = write_video(tmp_path / "clip.mp4", N, 24.0, W, H)
    assert _indices(read_video_frames(path, [(N - 1) / 24, (N - 0.01) / 24])) == [N - 1, N - 1]
    with pytest.raises(MediaError, match=r"clip\.mp4: asked for the frame at 0\.833 s .* \(20 frames at 24\.000 fps\)"):
        read_video_frames(path, [0.0, N / 24])


def test_unreadable_files_raise_media_error(tmp_path):
    with pytest.raises(MediaError, match=r"missing\.mp4: video file not found"):
        probe_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match=r"garbage\.mp4: cannot open as a video .*re-encode"):
        read_video_frames(garbage, [0.0])
    audio_only = write_audio(tmp_path / "speech.m4a", tone(0.5, 16000), 16000)
    for call in (lambda: probe_video(audio_only), lambda: read_video_frames(audio_only, [0.0])):
        with pytest.raises(MediaError, match=r"speech\.m4a: no video stream"):
            call()
    for error in ("missing", "garbage"):
        with pytest.raises(MediaError) as caught:
            probe_video(tmp_path / f"{error}.mp4")
        assert "\n" not in str(caught.value)
