"""The log-mel front end against librosa: slaney filterbank, centred reflect-padded STFT, log of clamped magnitudes."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from ltx2_tuner.data.mel import LOG_FLOOR, log_mel_spectrogram, mel_filterbank

RATE = 16000


def _signal(name: str, duration_s: float = 1.3) -> np.ndarray:
    t = np.arange(round(duration_s * RATE)) / RATE
    signals = {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "two_tones": 0.3 * np.sin(2 * np.pi * 97 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t),
        "noise": 0.3 * np.random.default_rng(0).standard_normal(len(t)),
        "silence": np.zeros(len(t)),
        "chirp": 0.5 * np.sin(2 * np.pi * (50 * t + 3000 * t**2)),  # 50 Hz -> ~7.8 kHz
    }
    return signals[name].astype(np.float32)


def _librosa_mel(x: np.ndarray) -> np.ndarray:
    """[T, 64] mel magnitudes (not yet logged), in float64."""
    filters = librosa.filters.mel(sr=RATE, n_fft=1024, n_mels=64, fmin=0, fmax=8000, htk=False, norm="slaney")
    spectrum = librosa.stft(
        x.astype(np.float64), n_fft=1024, hop_length=160, window="hann", center=True, pad_mode="reflect"
    )
    return (filters.astype(np.float64) @ np.abs(spectrum)).T


def test_filterbank_matches_librosa():
    ours = mel_filterbank(RATE, n_fft=1024, n_mels=64, f_min=0.0, f_max=8000.0).numpy()
    reference = librosa.filters.mel(sr=RATE, n_fft=1024, n_mels=64, fmin=0, fmax=8000, htk=False, norm="slaney")
    assert ours.shape == (64, 513)
    assert np.abs(ours - reference).max() <= 1e-6 * reference.max()  # measured 9e-8


@pytest.mark.parametrize("name", ["tone", "two_tones", "noise", "silence", "chirp"])
def test_log_mel_matches_librosa(name):
    x = _signal(name)
    ours = log_mel_spectrogram(torch.from_numpy(x)).numpy()
    reference_mel = _librosa_mel(x)
    assert ours.shape == reference_mel.shape == (1 + len(x) // 160, 64)
    # Mel magnitudes agree to 1e-4 relative (measured <= 1.1e-5). Bins below a millionth of the peak are compared
    # absolutely: there our float32 STFT's rounding (~1e-7 of the peak) is all that differs from librosa's float64.
    peak = max(reference_mel.max(), LOG_FLOOR)
    np.testing.assert_allclose(np.exp(ours), np.maximum(reference_mel, LOG_FLOOR), rtol=1e-4, atol=1e-6 * peak)
    loud = reference_mel > 1e-3 * peak
    np.testing.assert_allclose(ours[loud], np.log(reference_mel[loud]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("num_samples", [513, 16000, 16159, 16160, 33333])
def test_frame_count_is_one_plus_samples_over_hop(num_samples):
    mel = log_mel_spectrogram(torch.zeros(2, num_samples))
    assert mel.shape == (2, 1 + num_samples // 160, 64)


def test_silence_is_the_log_floor():
    assert torch.equal(
        log_mel_spectrogram(torch.zeros(2, 1600)), torch.full((2, 11, 64), float(np.log(np.float32(LOG_FLOOR))))
    )


def test_batched_input_keeps_leading_dims():
    batch = torch.from_numpy(
        np.stack([np.stack([_signal("tone"), _signal("noise")]), np.stack([_signal("chirp")] * 2)])
    )
    mel = log_mel_spectrogram(batch)
    assert mel.shape == (2, 2, 131, 64)
    assert torch.allclose(mel[1, 0], log_mel_spectrogram(batch[1, 0]), atol=1e-5)


def test_bf16_input_is_computed_in_float32():
    x = torch.from_numpy(_signal("chirp")).to(torch.bfloat16)
    mel = log_mel_spectrogram(x)
    assert mel.dtype == torch.float32
    # Same numbers as casting first: nothing was computed in bf16.
    assert torch.equal(mel, log_mel_spectrogram(x.float()))


def test_filterbank_is_returned_as_a_copy():
    mel_filterbank().zero_()
    assert mel_filterbank().abs().sum() > 0


def test_too_short_waveform_is_rejected():
    with pytest.raises(ValueError, match="512 samples"):
        log_mel_spectrogram(torch.zeros(2, 512))
