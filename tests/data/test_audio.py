"""Audio windows from synthetic files: channel mixing, resampling, sample-exact trimming, padding, errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from ltx2_tuner.data import audio
from ltx2_tuner.data.audio import has_audio_stream, load_audio_clip, stereo_mix_matrix
from ltx2_tuner.errors import MediaError
from ltx2_tuner.testing.synthetic_media import tone, write_audio

RATE = 16000
S16_STEP = 1 / 32768  # quantization of 16-bit PCM
# The official trainer's normalized weights: FL/FR at 1, centre and surrounds at 0.707, each row summing to 1.
W51_FRONT, W51_OTHER = 1 / 2.414, 0.707 / 2.414
W71_FRONT, W71_OTHER = 1 / 3.121, 0.707 / 3.121


def _write(path, waveform: np.ndarray, sample_rate: int, codec: str, layout: str):
    """Like `write_audio`, for codecs and layouts it lacks (MP3, Opus, 7.1). Frames are packed: PyAV 18's
    planar frames with 8 channels crash when converted to or from numpy."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        to_encoder = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=sample_rate)
        size = stream.codec_context.frame_size or 1024
        for start in range(0, waveform.shape[1], size):
            chunk = np.ascontiguousarray(waveform[:, start : start + size].T, dtype=np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, start
            for encoder_frame in to_encoder.resample(frame):
                container.mux(stream.encode(encoder_frame))
        container.mux(stream.encode(None))
    return path


def _write_video(path, audio_waveform: np.ndarray | None = None, sample_rate: int = 48000):
    """A 16x16 MPEG-4 clip of 5 frames at 25 fps, with a stereo AAC track when `audio_waveform` is given."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        sound = None if audio_waveform is None else container.add_stream("aac", rate=sample_rate, layout="stereo")
        for k in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * k, dtype=np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            for start in range(0, audio_waveform.shape[1], 1024):
                chunk = np.ascontiguousarray(audio_waveform[:, start : start + 1024], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = sample_rate, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def _spectrum(x: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(frequency in Hz, amplitude) of the strongest sinusoid; exact for a whole number of cycles."""
    magnitudes = np.abs(np.fft.rfft(x)) * 2 / len(x)
    peak = int(np.argmax(magnitudes))
    return peak * sample_rate / len(x), float(magnitudes[peak])


def _amplitude_at(x: np.ndarray, sample_rate: int, hz: float) -> float:
    return float(np.abs(np.fft.rfft(x))[round(hz * len(x) / sample_rate)] * 2 / len(x))


def _ramp(duration_s: float, sample_rate: int) -> np.ndarray:
    """[1, S] whose value encodes time: 0.2 per second."""
    return (0.2 * np.arange(round(duration_s * sample_rate)) / sample_rate)[None].astype(np.float32)


def _chirp(duration_s: float, sample_rate: int) -> np.ndarray:
    """[1, S] sweep from 100 Hz up by 1 kHz per second, amplitude 0.4."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    return (0.4 * np.sin(2 * np.pi * (100 * t + 500 * t**2)))[None].astype(np.float32)


def _lag(x: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    """Samples by which `x` is late against `reference` (same length), by cross-correlation."""
    inner = slice(max_lag, len(x) - max_lag)
    scores = [np.dot(x[inner], reference[max_lag - k : len(x) - max_lag - k]) for k in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


# ---- channels


def test_mono_is_duplicated_to_identical_stereo(tmp_path):
    source = tone(1.0, RATE, (440.0,))
    clip = load_audio_clip(write_audio(tmp_path / "mono.wav", source, RATE), 0.0, 1.0)
    assert clip.waveform.shape == (2, RATE) and clip.waveform.dtype == torch.float32
    assert clip.sample_rate == RATE and clip.valid_samples == RATE
    assert torch.equal(clip.waveform[0], clip.waveform[1])
    np.testing.assert_allclose(clip.waveform[0].numpy(), source[0], atol=S16_STEP)


def test_stereo_channels_are_kept_apart(tmp_path):
    path = write_audio(tmp_path / "stereo.flac", tone(1.0, RATE, (440.0, 1000.0)), RATE)
    left, right = load_audio_clip(path, 0.0, 1.0).waveform.numpy()
    assert _spectrum(left, RATE) == pytest.approx((440.0, 0.5), abs=1e-3)
    assert _spectrum(right, RATE) == pytest.approx((1000.0, 0.5), abs=1e-3)
    assert _amplitude_at(left, RATE, 1000.0) < 1e-3 and _amplitude_at(right, RATE, 440.0) < 1e-3


def test_official_downmix_weights():
    assert (round(W51_FRONT, 3), round(W51_OTHER, 3)) == (0.414, 0.293)
    assert (round(W71_FRONT, 3), round(W71_OTHER, 3)) == (0.320, 0.227)
    five_one = stereo_mix_matrix(("FL", "FR", "FC", "LFE", "SL", "SR"))
    np.testing.assert_allclose(
        five_one, [[W51_FRONT, 0, W51_OTHER, 0, W51_OTHER, 0], [0, W51_FRONT, W51_OTHER, 0, 0, W51_OTHER]]
    )
    # Unnamed channels (a WAV without a channel mask) are read in FFmpeg's order: 5.1 = FL FR FC LFE BL BR.
    np.testing.assert_allclose(stereo_mix_matrix(("NONE",) * 6), five_one)
    # Any other layout of more than two channels: the mean, on both sides.
    np.testing.assert_allclose(stereo_mix_matrix(("FL", "FR", "BL", "BR")), np.full((2, 4), 0.25))


# Distinct constant per channel, LFE loud: any swapped or leaked channel changes the mix. WAV is lossless.
LEVELS_5_1 = [0.10, 0.20, 0.30, 0.90, 0.05, -0.15]  # FL FR FC LFE BL BR
LEVELS_7_1 = [0.10, 0.20, 0.30, 0.90, 0.05, -0.15, -0.25, 0.35]  # FL FR FC LFE BL BR SL SR


def test_5_1_is_mixed_with_official_weights(tmp_path):
    fl, fr, fc, _lfe, bl, br = LEVELS_5_1
    source = np.repeat(np.array(LEVELS_5_1, dtype=np.float32)[:, None], RATE // 2, axis=1)
    clip = load_audio_clip(write_audio(tmp_path / "surround.wav", source, RATE), 0.0, 0.5)
    expected = [W51_FRONT * fl + W51_OTHER * (fc + bl), W51_FRONT * fr + W51_OTHER * (fc + br)]
    np.testing.assert_allclose(
        clip.waveform.numpy(), np.repeat(np.array(expected)[:, None], RATE // 2, 1), atol=2 * S16_STEP
    )


def test_7_1_is_mixed_with_official_weights(tmp_path):
    fl, fr, fc, _lfe, bl, br, sl, sr = LEVELS_7_1
    source = np.repeat(np.array(LEVELS_7_1, dtype=np.float32)[:, None], RATE // 2, axis=1)
    clip = load_audio_clip(_write(tmp_path / "surround.wav", source, RATE, "pcm_s16le", "7.1"), 0.0, 0.5)
    expected = [W71_FRONT * fl + W71_OTHER * (fc + bl + sl), W71_FRONT * fr + W71_OTHER * (fc + br + sr)]
    np.testing.assert_allclose(
        clip.waveform.numpy(), np.repeat(np.array(expected)[:, None], RATE // 2, 1), atol=2 * S16_STEP
    )


def test_7_1_aac_decodes_and_keeps_sides_apart(tmp_path):
    # Decoded AAC is planar; PyAV 18 crashes turning an 8-plane frame into numpy, so the loader must not.
    source = np.zeros((8, RATE), dtype=np.float32)
    source[0], source[1] = tone(1.0, RATE, (440.0, 1000.0))
    left, right = load_audio_clip(
        _write(tmp_path / "surround.m4a", source, RATE, "aac", "7.1"), 0.0, 0.5
    ).waveform.numpy()
    assert _amplitude_at(left, RATE, 440.0) == pytest.approx(0.5 * W71_FRONT, rel=0.02)
    assert _amplitude_at(right, RATE, 1000.0) == pytest.approx(0.5 * W71_FRONT, rel=0.02)
    assert _amplitude_at(left, RATE, 1000.0) < 0.01 and _amplitude_at(right, RATE, 440.0) < 0.01


# ---- resampling and timing


def test_resampling_keeps_frequency_and_amplitude(tmp_path):
    path = write_audio(tmp_path / "48k.flac", tone(3.0, 48000, (440.0,)), 48000)
    clip = load_audio_clip(path, 0.5, 1.0, sample_rate=RATE)
    assert clip.waveform.shape == (2, RATE)
    frequency, amplitude = _spectrum(clip.waveform[0].numpy(), RATE)
    assert frequency == 440.0 and amplitude == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize("start_s", [0.0, 0.37, 2.5])  # 2.5 s is reached by seeking
def test_window_starts_at_start_s_to_the_sample(tmp_path, suffix, start_s):
    path = write_audio(tmp_path / f"ramp{suffix}", _ramp(4.0, RATE), RATE)
    clip = load_audio_clip(path, start_s, 1 / 3)
    assert clip.waveform.shape == (2, 5333) and clip.valid_samples == 5333  # round(16000 / 3)
    expected = 0.2 * (round(start_s * RATE) + np.arange(5333)) / RATE
    np.testing.assert_allclose(clip.waveform[0].numpy(), expected, atol=S16_STEP)


@pytest.mark.parametrize("start_s", [0.37, 2.5])
def test_resampled_window_starts_at_start_s(tmp_path, start_s):
    path = write_audio(tmp_path / "ramp.flac", _ramp(4.0, 44100), 44100)
    clip = load_audio_clip(path, start_s, 0.5)
    expected = 0.2 * (start_s + np.arange(RATE // 2) / RATE)
    # The window is cut before resampling (as the official preprocessing does), so its ends ring against the zeros
    # beyond them (test_resample checks them against the formula); inside, the ramp is where start_s puts it.
    # The filter's gain at 0 Hz is 1.00045 (torchaudio's kernel is not renormalized), hence rtol.
    inside = slice(40, -40)
    np.testing.assert_allclose(clip.waveform[0].numpy()[inside], expected[inside], rtol=6e-4, atol=2e-5)


@pytest.mark.parametrize("suffix", [".flac", ".m4a"])
def test_window_at_a_tone_change_starts_with_the_second_tone(tmp_path, suffix):
    source = np.concatenate([tone(1.0, 48000, (440.0,)), tone(1.0, 48000, (880.0,))], axis=1)
    path = write_audio(tmp_path / f"change{suffix}", source, 48000)
    before = load_audio_clip(path, 0.5, 0.5, sample_rate=48000).waveform[0].numpy()
    after = load_audio_clip(path, 1.0, 0.5, sample_rate=48000).waveform[0].numpy()
    assert np.corrcoef(before, source[0, 24000:48000])[0, 1] > 0.99
    assert np.corrcoef(after, source[0, 48000:72000])[0, 1] > 0.99  # in phase: off by at most ~1 sample
    # The first 10 ms already hold the 880 Hz tone, not the 440 Hz one continued (AAC smears the jump a little).
    first_tone_continued = tone(2.0, 48000, (440.0,))[0, 48000:48480]
    assert np.corrcoef(after[:480], source[0, 48000:48480])[0, 1] > 0.9
    assert abs(np.corrcoef(after[:480], first_tone_continued)[0, 1]) < 0.2


@pytest.mark.parametrize("suffix", [".m4a", ".mp4", ".mkv"])
def test_aac_priming_samples_are_dropped(tmp_path, suffix):
    # AAC encoders put 1024 priming samples first; MP4 (edit list) and Matroska (codec delay) say so and FFmpeg
    # drops them. A raw ADTS .aac file cannot say so: there the audio comes 1024 samples (21 ms) late.
    noise = np.random.default_rng(0).standard_normal((1, 96000)).astype(np.float32)
    source = np.convolve(noise[0], np.ones(8) / 8, mode="same")[None].astype(np.float32) * 0.3  # AAC-friendly band
    clip = load_audio_clip(write_audio(tmp_path / f"noise{suffix}", source, 48000), 0.5, 1.0, sample_rate=48000)
    assert _lag(clip.waveform[0].numpy(), source[0, 24000:72000], 2000) == 0


@pytest.mark.parametrize(("suffix", "codec", "layout"), [
    (".m4a", "aac", "stereo"), (".mp3", "libmp3lame", "stereo"), (".ogg", "libopus", "stereo"), (".flac", "flac", "mono"),
])  # fmt: skip
def test_seeking_gives_the_same_window_as_decoding_from_the_start(tmp_path, suffix, codec, layout):
    # A chirp, not noise: AAC's noise substitution makes decoded noise depend on the decoder's history.
    source = np.repeat(_chirp(4.0, 48000), 2 if layout == "stereo" else 1, axis=0)
    path = _write(tmp_path / f"chirp{suffix}", source, 48000, codec, layout)
    from_start = load_audio_clip(path, 0.0, 4.0, sample_rate=48000).waveform
    sought = load_audio_clip(path, 2.7, 1.0, sample_rate=48000).waveform  # seeks: more than 1 s in
    torch.testing.assert_close(sought, from_start[:, 129600:177600], atol=1e-6, rtol=0)  # measured: identical


def test_matroska_windows_past_the_seek_threshold_are_within_a_millisecond(tmp_path, monkeypatch):
    # Matroska keeps times to the ms, so seeking there costs up to ~1 ms of accuracy (why we seek only past 30 s).
    monkeypatch.setattr(audio, "_SEEK_AFTER_COARSE_S", 1.0)
    source = np.random.default_rng(2).standard_normal((1, 4 * 48000)).astype(np.float32) * 0.2
    path = write_audio(tmp_path / "noise.mkv", source, 48000)
    from_start = load_audio_clip(path, 0.0, 4.0, sample_rate=48000).waveform[0].numpy()
    sought = load_audio_clip(path, 2.7, 1.0, sample_rate=48000).waveform[0].numpy()
    assert abs(_lag(sought, from_start[129600:177600], 200)) <= 48


# ---- padding


def test_short_file_is_zero_padded_with_a_warning(tmp_path):
    path = write_audio(tmp_path / "short.wav", tone(1.0, RATE, (440.0,)), RATE)
    with pytest.warns(
        UserWarning, match=r"short\.wav: only 0\.500 s of audio in the 1\.000 s window at 0\.500 s .* other 0\.500 s"
    ):
        clip = load_audio_clip(path, 0.5, 1.0)
    assert clip.waveform.shape == (2, RATE) and clip.valid_samples == RATE // 2
    assert torch.count_nonzero(clip.waveform[:, RATE // 2 :]) == 0
    assert clip.waveform[:, : RATE // 2].abs().max() > 0.4


def test_window_past_the_end_is_silence(tmp_path):
    path = write_audio(tmp_path / "short.flac", tone(1.0, RATE, (440.0,)), RATE)
    with pytest.warns(UserWarning, match="padded with silence"):
        clip = load_audio_clip(path, 3.0, 0.5)
    assert clip.valid_samples == 0 and torch.count_nonzero(clip.waveform) == 0


# ---- streams and errors


def test_video_file_audio_track_is_read(tmp_path):
    path = _write_video(tmp_path / "with_audio.mp4", tone(1.0, 48000, (440.0, 1000.0)))
    assert has_audio_stream(path)
    left, right = load_audio_clip(path, 0.0, 0.2).waveform.numpy()
    assert _spectrum(left, RATE)[0] == 440.0 and _spectrum(right, RATE)[0] == 1000.0


def test_has_audio_stream(tmp_path):
    assert has_audio_stream(write_audio(tmp_path / "a.m4a", tone(0.2, RATE), RATE))
    assert not has_audio_stream(_write_video(tmp_path / "silent.mp4"))


def test_missing_file_is_a_one_line_media_error(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.wav: media file not found; fix the path") as error:
        load_audio_clip(tmp_path / "nope.wav", 0.0, 1.0)
    assert "\n" not in str(error.value)
    with pytest.raises(MediaError, match="not found"):
        has_audio_stream(tmp_path / "nope.wav")


def test_video_without_audio_is_a_media_error(tmp_path):
    path = _write_video(tmp_path / "silent.mp4")
    with pytest.raises(MediaError, match=r"silent\.mp4: no audio stream; use a file with an audio track"):
        load_audio_clip(path, 0.0, 0.1)


def test_undecodable_file_is_a_media_error(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"not audio at all" * 64)
    with pytest.raises(MediaError, match=r"garbage\.wav: cannot open .*; re-encode it"):
        load_audio_clip(path, 0.0, 0.1)


# ---- probing and duration buckets


@pytest.mark.parametrize(("suffix", "rate", "channels"), [(".wav", 22050, 1), (".flac", 44100, 6), (".mp3", 48000, 2)])
def test_probe_audio_reads_duration_rate_and_channels(tmp_path, suffix, rate, channels):
    from ltx2_tuner.data.audio import probe_audio
    from ltx2_tuner.testing.audio_reference import decode_all

    path = write_audio(tmp_path / f"clip{suffix}", np.zeros((channels, int(1.37 * rate)), np.float32), rate)
    info = probe_audio(path)
    assert (info.sample_rate, info.channels) == (rate, channels)
    decoded = decode_all(path)[0].shape[1]
    assert info.duration_s == pytest.approx(decoded / rate, abs=1e-3)


def test_probe_audio_counts_the_samples_of_a_raw_stream(tmp_path):
    # ADTS AAC has no duration in any header; FFmpeg's bit-rate estimate is off by percents.
    from ltx2_tuner.data.audio import probe_audio
    from ltx2_tuner.testing.audio_reference import decode_all

    path = write_audio(tmp_path / "clip.aac", tone(1.0, 44100, (440.0, 660.0)), 44100)
    assert probe_audio(path).duration_s == pytest.approx(decode_all(path)[0].shape[1] / 44100, abs=1e-9)


def test_probe_audio_errors_are_one_line(tmp_path):
    from ltx2_tuner.data.audio import probe_audio

    (tmp_path / "noise.ogg").write_bytes(b"OggS not really")
    with pytest.raises(MediaError, match=r"noise\.ogg: cannot open"):
        probe_audio(tmp_path / "noise.ogg")
    with pytest.raises(MediaError, match=r"gone\.wav: media file not found"):
        probe_audio(tmp_path / "gone.wav")
    with pytest.raises(MediaError, match=r"silent\.mp4: no audio stream"):
        probe_audio(_write_video(tmp_path / "silent.mp4"))


@pytest.mark.parametrize(
    ("duration", "interval", "strategy", "cap", "expected"),
    [
        (1.37, 0.5, "pad", 30.0, 1.5),  # up to the next multiple
        (1.37, 0.5, "truncate", 30.0, 1.0),  # down to the previous one
        (0.3, 0.5, "truncate", 30.0, 0.5),  # shorter than one interval: one interval (padded)
        (0.3, 0.5, "pad", 30.0, 0.5),
        (2.0, 0.5, "pad", 30.0, 2.0),  # a whole multiple stays
        (2.0000004, 0.5, "pad", 30.0, 2.0),  # a header rounded to the microsecond is still the whole multiple
        (1.9999996, 0.5, "truncate", 30.0, 2.0),
        (0.3 * 3, 0.1, "pad", 30.0, 0.9),  # 0.30000000000000004 x 3: no float dust in the bucket
        (45.2, 2.0, "pad", 30.0, 30.0),  # capped at max_audio_duration (the clip is cut)
        (45.2, 2.0, "truncate", 25.0, 25.0),
        (7.1, 2.0, "pad", 7.0, 7.0),  # a cap that is no multiple of the interval is still the cap
    ],
)
def test_audio_bucket_seconds(duration, interval, strategy, cap, expected):
    from ltx2_tuner.data.audio_buckets import audio_bucket_seconds

    assert audio_bucket_seconds(duration, interval, strategy, cap) == expected


def test_audio_bucket_rejects_bad_arguments():
    from ltx2_tuner.data.audio_buckets import audio_bucket_seconds

    with pytest.raises(ValueError, match="strategy"):
        audio_bucket_seconds(1.0, 0.5, "round", 30.0)
    with pytest.raises(ValueError, match="positive"):
        audio_bucket_seconds(0.0, 0.5, "pad", 30.0)
