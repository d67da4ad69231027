"""Log-mel spectrogram: the audio VAE's input, computed as ltx-core's `AudioProcessor` computes it.

What ltx-core does (`model/audio_vae/ops.py` and the audio encoder's configurator, checked at Lightricks/LTX-2
400fd31): torchaudio `MelSpectrogram` with sample rate 16000, n_fft = win_length = 1024, hop 160, f_min 0,
f_max = sample_rate / 2, 64 mel bins, periodic Hann window (`torch.hann_window`), `center=True` with reflect
padding, magnitude (power 1), slaney mel scale and slaney (area) normalization; then the natural log of
max(mel, 1e-5), laid out [B, C, T_mel, n_mels]. Rate and hop come from the checkpoint config
(`audio_vae.model.params.sampling_rate`, `preprocessing.stft.hop_length` / `filter_length`, `ddconfig.mel_bins`).

`preprocessing.stft.causal` does not change the spectrogram: ltx-core reads it as `is_causal` and hands it only to
the `AudioPatchifier`, which shifts each latent frame's timestamp back (latent positions for the transformer).
`AudioProcessor` is built from rate, hop, n_fft and mel bins alone and always pads the STFT centred (reflect);
the encoder's convolutions are made causal by a different key, `ddconfig.causality_axis`.

Here the same transform is written with `torch.stft` and a filterbank built in this module, so the package does
not depend on torchaudio; tests compare it with librosa (slaney scale and norm, centred reflect-padded STFT).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

LOG_FLOOR = 1e-5  # mel magnitudes are clamped to this before the log, as ltx-core does: log(1e-5) ≈ -11.5

# Slaney's mel scale (Auditory Toolbox): linear below 1 kHz at 200/3 Hz per mel, logarithmic above it.
_HZ_PER_MEL = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _HZ_PER_MEL  # 15 mels
_LOG_STEP = math.log(6.4) / 27.0  # mels above 1 kHz step by this factor in log-frequency


def log_mel_spectrogram(
    waveform: torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 160,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float = 8000.0,
) -> torch.Tensor:
    """Natural-log mel magnitudes, float32 [..., T_mel, n_mels] with T_mel = 1 + S // hop_length, for [..., S].

    Any leading shape works ([2, S], [B, 2, S]); the audio VAE takes [B, 2, T_mel, 64]. The input is cast to
    float32 first: a bf16 STFT would lose the quiet bins the log makes visible, and ltx-core's encoder runs
    in float32 as well. Runs on the waveform's device.
    """
    num_samples = waveform.shape[-1]
    if num_samples <= n_fft // 2:
        raise ValueError(
            f"log_mel_spectrogram needs more than n_fft // 2 = {n_fft // 2} samples for its reflect padding, "
            f"got {num_samples}; pass a longer waveform"
        )
    samples = waveform.to(torch.float32).reshape(-1, num_samples)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=samples.device)
    spectrum = torch.stft(
        samples,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()  # [N, n_fft // 2 + 1, T_mel]
    filterbank = _cached_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).to(samples.device)
    mel = torch.matmul(filterbank, spectrum)  # [N, n_mels, T_mel]
    log_mel = torch.log(torch.clamp(mel, min=LOG_FLOOR)).transpose(-1, -2)
    return log_mel.reshape(*waveform.shape[:-1], *log_mel.shape[-2:])


def mel_filterbank(
    sample_rate: int = 16000, n_fft: int = 1024, n_mels: int = 64, f_min: float = 0.0, f_max: float = 8000.0
) -> torch.Tensor:
    """Slaney-scale, area-normalized triangular filters, float32 [n_mels, n_fft // 2 + 1] (librosa's layout).

    Filter m rises from mel point m to m + 1 and falls to m + 2 (n_mels + 2 points evenly spaced in mels from
    f_min to f_max) and is scaled by 2 / (f_{m+2} - f_m) so that each has the same area. Returns a copy of a
    cached tensor: modifying it changes nothing else.
    """
    return _cached_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).clone()


@functools.lru_cache(maxsize=8)
def _cached_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"mel filterbank needs 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, {sample_rate}"
        )
    # Built in float64 and rounded once at the end, like librosa (torchaudio builds it in float32).
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    widths_hz = np.diff(edges_hz)
    offsets = edges_hz[:, None] - fft_hz[None, :]  # [n_mels + 2, n_freqs]: edge minus bin frequency
    rising = -offsets[:-2] / widths_hz[:-1, None]
    falling = offsets[2:] / widths_hz[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return torch.from_numpy((triangles * area_norm[:, None]).astype(np.float32))


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz < _LOG_START_HZ, hz / _HZ_PER_MEL, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_part = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel < _LOG_START_MEL, mel * _HZ_PER_MEL, log_part)
