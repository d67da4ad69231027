"""Sigma schedules for sampling: the LTX-2 shifted schedule and the distilled list.

`ltx2_sigmas` follows ltx-core's LTX2Scheduler (facts: ../shared/reference/official-ltx-trainer.md §1.11): evenly
spaced sigmas from 1 to 0, shifted by `e^s / (e^s + (1/σ - 1))` where `s` grows linearly with the token count
(0.95 at 1024 tokens, 2.05 at 4096), then stretched so that the last non-zero sigma equals `terminal`. The official
pipelines and validation runner call it without a latent, i.e. at the 4096-token anchor. The arithmetic runs in
float32 in the official order so that the values match it bit for bit (e.g. the first sigma is 1 - 1.2e-7 at
4096 tokens, and one step gives [0.1, 0.0]: its only non-zero sigma is stretched to the terminal). Where ltx-core
divides 0 by 0 and returns NaN (every shifted sigma rounds to 1.0) the unstretched sigmas are returned instead.
"""

from __future__ import annotations

import math

import torch

from ltx2_tuner.errors import ConfigError

BASE_SHIFT_TOKENS = 1024  # token count at which the shift is `base_shift`
MAX_SHIFT_TOKENS = 4096  # ... and `max_shift`; also the count used when none is given
# ltx-pipelines' distilled schedule (utils/constants.py DISTILLED_SIGMA_VALUES): 8 steps for distilled checkpoints.
DISTILLED_SIGMAS = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)


def token_shift(num_tokens: int, max_shift: float = 2.05, base_shift: float = 0.95) -> float:
    """The schedule's shift `s` for `num_tokens` tokens: linear through (1024, base_shift) and (4096, max_shift)."""
    slope = (max_shift - base_shift) / (MAX_SHIFT_TOKENS - BASE_SHIFT_TOKENS)
    return num_tokens * slope + (base_shift - slope * BASE_SHIFT_TOKENS)


def ltx2_sigmas(
    steps: int,
    num_tokens: int | None = None,
    *,
    max_shift: float = 2.05,
    base_shift: float = 0.95,
    stretch: bool = True,
    terminal: float = 0.1,
) -> torch.Tensor:
    """float32 [steps + 1] sigmas from ~1 down to 0 (ltx-core LTX2Scheduler.execute).

    num_tokens: the video token count (F' x H' x W') the shift follows; None = 4096, as the official pipelines and
    validation runner use it.
    """
    if steps < 1:
        raise ConfigError(f"sampling steps must be at least 1, not {steps}")
    if stretch and not 0.0 <= terminal < 1.0:
        raise ConfigError(f"sigma schedule terminal must be in [0, 1), not {terminal}")
    tokens = MAX_SHIFT_TOKENS if num_tokens is None else num_tokens
    exp_shift = math.exp(token_shift(tokens, max_shift, base_shift))

    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
    nonzero = sigmas != 0
    # 1/σ is inf at σ = 0; those entries are masked out, so the shifted value there does not matter.
    shifted = exp_shift / (exp_shift + (1 / sigmas - 1))
    sigmas = torch.where(nonzero, shifted, torch.zeros_like(sigmas))
    one_minus = 1.0 - sigmas[nonzero]
    # Stretch: rescale 1 - σ so that the smallest non-zero sigma lands exactly on `terminal`. When every shifted
    # sigma rounds to 1.0 (one step, or a huge token count) the stretch is 0/0; ltx-core returns NaN there, we keep
    # the unstretched sigmas.
    if stretch and one_minus[-1] != 0:
        sigmas[nonzero] = 1.0 - one_minus / (one_minus[-1] / (1.0 - terminal))
    return sigmas
