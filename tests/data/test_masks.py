"""Masks on the latent grid: pooling rules, tensor and envelope sources, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ltx2_tuner.data.masks import pool_video_mask, read_audio_mask_signal, resample_audio_mask
from ltx2_tuner.errors import MediaError


def test_video_mask_pools_area_then_causal_frame_groups():
    grey = torch.zeros(17, 64, 64)
    grey[0, :32, :20] = 1.0  # frame 0, cell (0, 0): 20/32 of its area white -> mean 0.625 > 0.5: kept
    grey[3, :32, 32:44] = 1.0  # frame 3 (latent 1), cell (0, 1): 12/32 -> 0.375: generated
    grey[16, 32:, 32:] = 0.8  # frame 16 only (latent 2 = frames 9..16), cell (1, 1): 0.8 -> kept
    grey[8, 32:, :32] = 1.0  # frame 8 is the last frame of latent 1 (the official grouping would give latent 1 too)
    grey[1, 32:, :32] = 0.51  # and frame 1 its first: still latent 1, not latent 0
    mask = pool_video_mask(grey)
    expected = torch.zeros(3, 2, 2)
    expected[0, 0, 0] = 1
    expected[1, 1, 0] = 1
    expected[2, 1, 1] = 1
    assert mask.dtype == torch.float32
    torch.testing.assert_close(mask, expected)


def test_video_mask_needs_the_vae_grid():
    with pytest.raises(ValueError, match="8k\\+1"):
        pool_video_mask(torch.zeros(10, 64, 64))


def test_audio_mask_is_nearest_resampled_and_thresholded():
    signal = torch.tensor([0.0, 0.2, 0.9, 1.0, 0.6, 0.1])
    # 6 -> 4 steps: step i reads sample floor(i * 6 / 4) = 0, 1, 3, 4
    assert resample_audio_mask(signal, 4).tolist() == [0.0, 0.0, 1.0, 1.0]
    # 6 -> 12 steps: each sample twice
    assert resample_audio_mask(signal, 12).tolist() == [float(v > 0.5) for v in signal.tolist() for _ in range(2)]


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_audio_mask_tensor_files(tmp_path, suffix):
    values = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # flattened in order
    path = tmp_path / f"mask{suffix}"
    if suffix == ".pt":
        torch.save({"mask": values, "other": torch.zeros(3)}, path)
    elif suffix == ".npy":
        np.save(path, values.numpy())
    else:
        save_file({"mask": values}, str(path))
    assert read_audio_mask_signal(path).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_audio_mask_file_without_a_tensor_is_one_line(tmp_path):
    path = tmp_path / "mask.safetensors"
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, str(path))
    with pytest.raises(MediaError, match=r"mask\.safetensors: no mask tensor"):
        read_audio_mask_signal(path)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    with pytest.raises(MediaError, match=r"broken\.npy: cannot read the audio mask"):
        read_audio_mask_signal(broken)
