"""Flow-matching math: the official sigma sampler's properties, noising, targets, masked losses."""

from __future__ import annotations

import math

import pytest
import torch

from ltx2_tuner.training import flow_matching as fm


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shift_passes_through_the_official_points():
    assert fm.logit_normal_shift(1024) == pytest.approx(0.95)
    assert fm.logit_normal_shift(4096) == pytest.approx(2.05)
    assert fm.logit_normal_shift(6120) == pytest.approx(2.775, abs=1e-3)  # 960x544x89: extrapolated, not clamped
    assert fm.logit_normal_shift(126) == pytest.approx(0.628, abs=1e-3)


def test_shifted_logit_normal_statistics():
    sigmas = fm.shifted_logit_normal_sigmas(200_000, 4032, _generator(), uniform_prob=0.0)
    assert sigmas.min() >= 0 and sigmas.max() <= 1
    # Hand computation: with mu = 2.027, std 1, the stretch maps the 0.5th and 99.9th percentiles to 0 and 1.
    mu = fm.logit_normal_shift(4032)
    low, high = 1 / (1 + math.exp(-(mu - 2.5758))), 1 / (1 + math.exp(-(mu + 3.0902)))
    median = (1 / (1 + math.exp(-mu)) - low) / (high - low)
    assert sigmas.median().item() == pytest.approx(median, abs=5e-3)
    assert (sigmas < 1e-3).float().mean() < 1e-3  # reflected at eps, not piled up at 0
    assert (sigmas == 1).float().mean() == pytest.approx(0.001, abs=5e-4)  # above the 99.9th percentile -> 1


def test_ten_percent_uniform_share():
    plain = fm.shifted_logit_normal_sigmas(100_000, 1024, _generator(1), uniform_prob=0.0)
    mixed = fm.shifted_logit_normal_sigmas(100_000, 1024, _generator(1), uniform_prob=0.1)
    share = (plain != mixed).float().mean().item()
    assert share == pytest.approx(0.1, abs=0.005)


def test_longer_sequences_draw_noisier_sigmas():
    short = fm.shifted_logit_normal_sigmas(20_000, 256, _generator(), uniform_prob=0)
    long = fm.shifted_logit_normal_sigmas(20_000, 8192, _generator(), uniform_prob=0)
    assert long.mean() > short.mean() + 0.1


@pytest.mark.parametrize("sampler", fm.SIGMA_SAMPLERS)
def test_every_sampler_is_in_range_and_reproducible(sampler):
    a = fm.sample_sigmas(sampler, 1000, 512, _generator(3))
    b = fm.sample_sigmas(sampler, 1000, 512, _generator(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and a.shape == (1000,)


def test_shift_sampler_moves_mass_to_high_noise():
    base = fm.sample_sigmas("sigmoid", 50_000, 1, _generator())
    shifted = fm.sample_sigmas("shift", 50_000, 1, _generator(), shift=3.0)
    torch.testing.assert_close(shifted, 3 * base / (1 + 2 * base))
    assert shifted.mean() > base.mean()
    with pytest.raises(ValueError, match="unknown sigma sampler"):
        fm.sample_sigmas("lognorm", 1, 1, _generator())


def test_noising_and_target():
    x0, noise = torch.full((2, 3, 4), 2.0), torch.full((2, 3, 4), -1.0)
    xt = fm.add_noise(x0, noise, torch.tensor([0.0, 0.25]))
    assert torch.equal(xt[0], x0[0]) and torch.allclose(xt[1], torch.full((3, 4), 0.75 * 2 - 0.25))
    per_token = fm.add_noise(x0, noise, torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]))
    assert per_token[0, 0, 0] == 2.0 and per_token[0, 1, 0] == -1.0 and per_token[1].eq(-1).all()
    assert torch.equal(fm.velocity_target(x0, noise), noise - x0)
    # the velocity moves x_t to the clean sample: x0 = x_t - sigma v
    sigma = torch.tensor([0.3, 0.7])
    torch.testing.assert_close(
        fm.add_noise(x0, noise, sigma) - sigma[:, None, None] * fm.velocity_target(x0, noise), x0
    )


def test_first_frame_conditioning_and_timesteps():
    conditioning = fm.first_frame_conditioning(
        1000, tokens_per_frame=6, num_tokens=18, probability=0.1, generator=_generator()
    )
    drawn = conditioning.any(dim=1)
    assert drawn.float().mean() == pytest.approx(0.1, abs=0.03)
    assert conditioning[drawn][:, :6].all() and not conditioning[:, 6:].any()
    timesteps = fm.per_token_timesteps(torch.full((1000,), 0.8), conditioning, 18)
    assert (timesteps[conditioning] == 0).all() and (timesteps[~conditioning] == 0.8).all()
    assert torch.equal(fm.per_token_timesteps(torch.tensor([0.5]), None, 3), torch.full((1, 3), 0.5))


def test_masked_mse_ignores_masked_tokens_and_keeps_scale():
    prediction = torch.zeros(2, 4, 3)
    target = torch.ones(2, 4, 3)
    target[0, 0] = 100.0  # masked out below
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    loss = fm.masked_mse(prediction, target, mask)
    assert loss.tolist() == [1.0, 1.0]
    assert fm.masked_mse(prediction, target).tolist()[1] == 1.0
    assert fm.masked_mse(prediction, target, torch.zeros(2, 4, dtype=torch.bool)).tolist() == [0.0, 0.0]
    lengths = torch.tensor([2, 0])
    assert fm.audio_loss_mask(lengths, 3).tolist() == [[True, True, False], [False, False, False]]
