"""Rectified-flow training math, as pure functions: sigma samplers, noising, targets, masked losses.

Noising `x_t = (1 - sigma) * x0 + sigma * noise`, target velocity `noise - x0` (sigma 1 = pure noise, 0 = clean).
Per-token timesteps are `sigma` on generated tokens and 0 on clean conditioning tokens. Facts:
../shared/reference/official-ltx-trainer.md §1.5-1.7 (the official trainer's sampler and loss).
Every function that draws takes a `torch.Generator`; nothing here touches global random state.
"""

from __future__ import annotations

import math

import torch

SIGMA_SAMPLERS = ("shifted_logit_normal", "uniform", "sigmoid", "shift")
# The official shift: a line through (1024 tokens, 0.95) and (4096 tokens, 2.05), not clamped.
_SHIFT_SLOPE = (2.05 - 0.95) / (4096 - 1024)
_SHIFT_INTERCEPT = 0.95 - _SHIFT_SLOPE * 1024
_LOW_QUANTILE_Z, _HIGH_QUANTILE_Z = 2.5758, 3.0902  # 0.5th and 99.9th percentiles of N(0, 1)


def logit_normal_shift(seq_len: int) -> float:
    """The official sequence-length-dependent mean of the logit-normal: 0.95 at 1024 tokens, 2.05 at 4096."""
    return _SHIFT_SLOPE * seq_len + _SHIFT_INTERCEPT


def shifted_logit_normal_sigmas(
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    std: float = 1.0,
    eps: float = 1e-3,
    uniform_prob: float = 0.1,
) -> torch.Tensor:
    """[B] sigmas as the official trainer draws them: sigmoid(N(mu, std)) stretched so its 0.5th..99.9th
    percentiles span [0, 1], small values reflected at `eps`, and a `uniform_prob` share replaced by U(eps, 1)."""
    mu = logit_normal_shift(seq_len)
    sigma = torch.sigmoid(torch.randn(batch_size, generator=generator) * std + mu)
    low = 1 / (1 + math.exp(-(mu - _LOW_QUANTILE_Z * std)))
    high = 1 / (1 + math.exp(-(mu + _HIGH_QUANTILE_Z * std)))
    sigma = (sigma - low) / (high - low)
    sigma = torch.where(sigma >= eps, sigma, 2 * eps - sigma).clamp(0, 1)
    use_uniform = torch.rand(batch_size, generator=generator) < uniform_prob
    uniform = eps + (1 - eps) * torch.rand(batch_size, generator=generator)
    return torch.where(use_uniform, uniform, sigma)


def sample_sigmas(
    sampler: str,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    shift: float = 3.0,
    sigmoid_scale: float = 1.0,
) -> torch.Tensor:
    """[B] sigmas in [0, 1] from one of SIGMA_SAMPLERS.

    shifted_logit_normal: the official default (above). uniform: U(0, 1). sigmoid: sigmoid(N(0, 1) x scale).
    shift: the sigmoid sample warped by `shift` (sigma' = shift sigma / (1 + (shift - 1) sigma)), the common
    `--discrete_flow_shift` of other trainers.
    """
    if sampler == "shifted_logit_normal":
        return shifted_logit_normal_sigmas(batch_size, seq_len, generator)
    if sampler == "uniform":
        return torch.rand(batch_size, generator=generator)
    sigma = torch.sigmoid(torch.randn(batch_size, generator=generator) * sigmoid_scale)
    if sampler == "sigmoid":
        return sigma
    if sampler == "shift":
        return shift * sigma / (1 + (shift - 1) * sigma)
    raise ValueError(f"unknown sigma sampler {sampler!r}; choose one of {SIGMA_SAMPLERS}")


def add_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma noise. latents/noise [B, N, C]; sigmas [B] or per token [B, N]."""
    sigma = sigmas.reshape(sigmas.shape[0], -1, 1).to(latents.dtype)
    return (1 - sigma) * latents + sigma * noise


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching velocity the transformer predicts: noise - x0."""
    return noise - latents


def per_token_timesteps(sigmas: torch.Tensor, conditioning: torch.Tensor | None, num_tokens: int) -> torch.Tensor:
    """[B, N] timesteps: the sample's sigma on generated tokens, 0 where `conditioning` ([B, N] bool) is set."""
    timesteps = sigmas[:, None].expand(-1, num_tokens)
    return timesteps if conditioning is None else timesteps * (~conditioning).to(timesteps.dtype)


def first_frame_conditioning(
    batch_size: int, tokens_per_frame: int, num_tokens: int, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """[B, N] bool: True on the first latent frame's tokens of the samples drawn (each with `probability`)."""
    drawn = torch.rand(batch_size, generator=generator) < probability
    first_frame = torch.arange(num_tokens) < tokens_per_frame
    return drawn[:, None] & first_frame[None, :]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B] mean squared error over tokens and channels where `mask` ([B, N], True = counted) is set.

    As the official trainer: mean(mask (pred - target)^2) / max(mean(mask), 1e-8), so a sample's loss does not
    depend on how many of its tokens are masked. Computed in float32.
    """
    error = (prediction.float() - target.float()) ** 2
    if mask is None:
        return error.mean(dim=(1, 2))
    weights = mask.to(error.dtype)[:, :, None]
    return (error * weights).mean(dim=(1, 2)) / weights.mean(dim=(1, 2)).clamp_min(1e-8)


def audio_loss_mask(lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, T] bool: True on the audio latents that cover real audio (`lengths` [B] from the cache)."""
    return torch.arange(num_tokens, device=lengths.device)[None, :] < lengths[:, None]
