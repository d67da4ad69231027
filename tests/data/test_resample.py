"""The resampler against the documented windowed-sinc formula (torchaudio's `functional.resample` defaults), on
tones and noise at 8, 22.05, 44.1 and 48 kHz, and the audio windows built on it."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from ltx2_tuner.data.audio import load_audio_clip, stereo_mix_matrix
from ltx2_tuner.data.resample import resample, resampled_length
from ltx2_tuner.testing.audio_reference import decode_all, documented_resample
from ltx2_tuner.testing.synthetic_media import tone, write_audio

RATE = 16000
SOURCE_RATES = [8000, 22050, 44100, 48000]


def _noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(round(seconds * rate))).astype(np.float32)


@pytest.mark.parametrize("orig", SOURCE_RATES)
@pytest.mark.parametrize("signal", ["noise", "tones"])
def test_equals_the_documented_formula(orig, signal):
    x = _noise(0.4, orig) if signal == "noise" else tone(0.4, orig, (440.0, 3000.0))[0]
    ours = resample(torch.from_numpy(x), orig, RATE).numpy()
    expected = documented_resample(x.astype(np.float64), orig, RATE)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-5  # measured 1e-7 to 6e-7 (float32 sums)


def test_torchaudio_float32_kernel_rounding_stays_within_its_measured_bound():
    # torchaudio builds the kernel in the waveform's dtype; its float32 phases move the output from the formula.
    from ltx2_tuner.data import resample as module

    x = _noise(0.4, 22050)
    kernel, width = module._sinc_kernel(441, 320, torch.float32)
    padded = torch.nn.functional.pad(torch.from_numpy(x)[None], (width, width + 441))
    rounded = torch.nn.functional.conv1d(padded[:, None], kernel, stride=441).transpose(1, 2).reshape(-1)
    rounded = rounded[: resampled_length(len(x), 22050, RATE)].numpy()
    ours = resample(torch.from_numpy(x), 22050, RATE).numpy()
    assert 1e-6 < np.abs(rounded - ours).max() < 3e-5  # measured 1.4e-5: below 16-bit PCM's step (3e-5)


@pytest.mark.parametrize(("num_samples", "orig", "new", "expected"), [
    (44100, 44100, 16000, 16000), (31237, 44100, 16000, 11334), (34000, 48000, 16000, 11334), (5, 8000, 16000, 10),
    (1, 22050, 16000, 1), (0, 48000, 16000, 0),
])  # fmt: skip
def test_output_length_is_the_ceiling(num_samples, orig, new, expected):
    assert resampled_length(num_samples, orig, new) == expected
    assert resample(torch.zeros(2, num_samples), orig, new).shape == (2, expected)


def test_batches_channels_and_keeps_dtype():
    x = torch.from_numpy(np.stack([_noise(0.1, 44100, 1), _noise(0.1, 44100, 2)]))
    both = resample(x, 44100, RATE)
    assert both.dtype == torch.float32
    torch.testing.assert_close(both[1], resample(x[1], 44100, RATE), atol=1e-7, rtol=0)  # conv blocking order
    assert resample(x, RATE, RATE) is x


@pytest.mark.parametrize("orig", SOURCE_RATES)
def test_passband_tone_keeps_frequency_and_amplitude(orig):
    y = resample(torch.from_numpy(tone(1.0, orig, (1000.0,))[0]), orig, RATE).numpy()[1000:-1000]  # away from ends
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spectrum) * RATE / len(y) == pytest.approx(1000.0, abs=RATE / len(y))
    assert np.abs(y).max() == pytest.approx(0.5, rel=2e-3)  # tone() writes amplitude 0.5


@pytest.mark.parametrize("orig", [44100, 48000])
def test_tone_above_the_new_nyquist_is_removed(orig):
    y = resample(torch.from_numpy(tone(1.0, orig, (11000.0,))[0]), orig, RATE).numpy()[1000:-1000]
    assert np.abs(y).max() < 0.5 * 10 ** (-40 / 20)  # at least 40 dB down (the alias would sit at 5 kHz)


def test_rejects_bad_rates_and_integer_input():
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 0, RATE)
    with pytest.raises(TypeError, match="floating point"):
        resample(torch.zeros(10, dtype=torch.int16), 44100, RATE)


# ---- audio windows: cut at the source rate, padded, mixed, resampled (the official order)


@pytest.mark.parametrize("orig", [44100, 48000])
@pytest.mark.parametrize(("start_s", "duration_s"), [(0.0, 17 / 24), (0.37, 0.5), (1.8, 0.5)])  # last: padded
def test_clip_equals_the_formula_on_the_cut_source_window(tmp_path, orig, start_s, duration_s):
    source = np.stack([_noise(2.0, orig, 3), tone(2.0, orig, (440.0,))[0]])
    path = write_audio(tmp_path / f"src{orig}.wav", source, orig)
    samples, rate = decode_all(path)
    first, count = round(start_s * rate), int(duration_s * rate)
    window = np.zeros((2, count))
    available = samples[:, first : first + count]
    window[:, : available.shape[1]] = available
    expected = np.stack([documented_resample(channel, rate, RATE) for channel in window])

    with pytest.warns(UserWarning, match="padded with silence") if first + count > samples.shape[1] else _no_warning():
        clip = load_audio_clip(path, start_s, duration_s, sample_rate=RATE)
    assert clip.waveform.shape == expected.shape
    assert np.abs(clip.waveform.numpy() - expected).max() <= 1e-5
    assert clip.valid_samples == min(expected.shape[1], resampled_length(available.shape[1], rate, RATE))


def test_surround_is_mixed_before_resampling_with_the_official_weights(tmp_path):
    source = np.stack([_noise(1.0, 48000, seed) for seed in range(6)])
    path = write_audio(tmp_path / "surround.wav", source, 48000)
    samples, rate = decode_all(path)
    with av.open(str(path)) as container:
        names = tuple(channel.name for channel in container.streams.audio[0].layout.channels)
    assert stereo_mix_matrix(names)[0, 2] == pytest.approx(0.707 / 2.414)  # a 5.1 mix, not a plain mean
    stereo = stereo_mix_matrix(names) @ samples[:, :24000]
    expected = np.stack([documented_resample(channel, rate, RATE) for channel in stereo])
    clip = load_audio_clip(path, 0.0, 0.5, sample_rate=RATE)
    assert np.abs(clip.waveform.numpy() - expected).max() <= 1e-5


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)
