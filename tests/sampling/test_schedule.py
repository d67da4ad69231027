"""The sigma schedules and sampling defaults match the official ones."""

from __future__ import annotations

import math

import pytest
import torch

from ltx2_tuner.cache.sample_prompts import DEFAULT_NEGATIVE_PROMPT
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.sampling import (
    DISTILLED_SIGMAS,
    OFFICIAL_NEGATIVE_PROMPT,
    GuidanceParams,
    ltx2_sigmas,
    sampling_defaults,
)


def documented_sigmas(steps: int, tokens: int = 4096, terminal: float = 0.1) -> list[float]:
    """The documented formula in float64, written independently: evenly spaced t from 1 to 0, shift s linear in the
    token count (0.95 at 1024, 2.05 at 4096), σ = e^s / (e^s + 1/t - 1), then 1 - σ rescaled so the last non-zero
    sigma is `terminal`."""
    shift = 0.95 + (2.05 - 0.95) * (tokens - 1024) / (4096 - 1024)
    ts = [1.0 - i / steps for i in range(steps + 1)]
    shifted = [math.exp(shift) / (math.exp(shift) + 1.0 / t - 1.0) if t > 0 else 0.0 for t in ts]
    last = shifted[-2]
    return [1.0 - (1.0 - s) * (1.0 - terminal) / (1.0 - last) if s > 0 else 0.0 for s in shifted]


@pytest.mark.parametrize("steps", [2, 8, 30, 40])
def test_default_schedule_follows_the_documented_formula(steps):
    sigmas = ltx2_sigmas(steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    # float32 arithmetic (as ltx-core does it) against float64: within 1e-6 (measured max 4.8e-7).
    torch.testing.assert_close(sigmas.double(), torch.tensor(documented_sigmas(steps), dtype=torch.float64),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert sigmas[-1] == 0 and abs(sigmas[-2].item() - 0.1) < 1e-6
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("tokens", [1024, 4096, 6144, 15000])
@pytest.mark.parametrize("steps", [8, 30])
def test_token_count_shift_follows_the_documented_formula(steps, tokens):
    expected = torch.tensor(documented_sigmas(steps, tokens), dtype=torch.float64)
    # 1e-5: at 15000 tokens the shifted sigmas sit near 1, and float32's 1 - σ before the stretch loses digits
    # (measured max 4.2e-6 there, ltx-core's own float32 values included; <= 4.8e-7 up to 6144 tokens).
    torch.testing.assert_close(ltx2_sigmas(steps, tokens).double(), expected, rtol=0, atol=1e-5)


# Literal values printed from ltx-core's LTX2Scheduler.execute (packages/ltx-core/src/ltx_core/components/
# schedulers.py at the mirrored HEAD), run on this machine in float32; our function must give them bit for bit.
OFFICIAL = {
    (8, None): [0.9999998807907104, 0.9657117128372192, 0.9218747615814209, 0.8638560771942139, 0.7834454774856567,
                0.6645792722702026, 0.4710026979446411, 0.10000002384185791, 0.0],
    (8, 1024): [1.0, 0.9354737997055054, 0.8592633605003357, 0.7678793668746948, 0.6562888622283936,
                0.5169569253921509, 0.33807069063186646, 0.10000002384185791, 0.0],
    (8, 6144): [1.0, 0.9739132523536682, 0.9398331046104431, 0.8934217095375061, 0.8265072107315063,
                0.7216510772705078, 0.5338148474693298, 0.10000002384185791, 0.0],
    (8, 15000): [1.0, 0.981304943561554, 0.9563992619514465, 0.9215746521949768, 0.8694294095039368,
                 0.7827663421630859, 0.6103123426437378, 0.10000008344650269, 0.0],
    # One step: the only non-zero sigma is the last one, so the stretch puts it on the terminal.
    (1, None): [0.10000002384185791, 0.0],
    (2, None): [0.9999995231628418, 0.10000002384185791, 0.0],
}  # fmt: skip
OFFICIAL_30_HEAD = [0.9999999403953552, 0.9949570298194885, 0.9896030426025391, 0.9839084148406982]
OFFICIAL_30_TAIL = [0.48016369342803955, 0.3875408172607422, 0.26612043380737305, 0.10000002384185791, 0.0]
OFFICIAL_40_TAIL = [0.42071861028671265, 0.33780860900878906, 0.23393601179122925, 0.10000002384185791, 0.0]


@pytest.mark.parametrize(("steps", "tokens"), list(OFFICIAL))
def test_matches_official_values_bit_for_bit(steps, tokens):
    assert torch.equal(ltx2_sigmas(steps, tokens), torch.tensor(OFFICIAL[steps, tokens], dtype=torch.float32))


def test_matches_official_30_and_40_step_schedules():
    assert ltx2_sigmas(30)[:4].tolist() == OFFICIAL_30_HEAD
    assert ltx2_sigmas(30)[-5:].tolist() == OFFICIAL_30_TAIL
    assert ltx2_sigmas(40)[-5:].tolist() == OFFICIAL_40_TAIL


def test_no_stretch_and_other_terminal():
    plain = ltx2_sigmas(8, stretch=False)
    shift = math.exp(2.05)
    expected = [shift / (shift + 1 / t - 1) if t > 0 else 0.0 for t in torch.linspace(1, 0, 9).double().tolist()]
    torch.testing.assert_close(plain.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(ltx2_sigmas(8, terminal=0.05)[-2].item() - 0.05) < 1e-6


def test_degenerate_stretch_gives_finite_sigmas():
    # Where every shifted sigma rounds to 1.0 in float32, ltx-core's stretch is 0/0 (NaN); ours stays unstretched.
    assert ltx2_sigmas(1, 1024).tolist() == [1.0, 0.0]
    assert ltx2_sigmas(2, 50000).tolist() == [1.0, 1.0, 0.0]


def test_rejects_zero_steps():
    with pytest.raises(ConfigError, match="steps"):
        ltx2_sigmas(0)


def test_distilled_sigmas_pinned():
    assert DISTILLED_SIGMAS == (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)


def test_official_defaults_per_version():
    v20, v23 = sampling_defaults("2.0"), sampling_defaults("2.3")
    assert (v20.steps, v23.steps) == (40, 30)
    assert v20.video == GuidanceParams(cfg=3.0, stg=1.0, rescale=0.7, modality=3.0, stg_blocks=(29,))
    assert v20.audio == GuidanceParams(cfg=7.0, stg=1.0, rescale=0.7, modality=3.0, stg_blocks=(29,))
    assert v23.video.stg_blocks == v23.audio.stg_blocks == (28,)
    assert (v23.video.cfg, v23.audio.cfg) == (3.0, 7.0)
    # ltx-pipelines' LTX_2_4_PARAMS: "2.4 continues the 2.3 lineage" (only the image CRF moves).
    assert sampling_defaults("2.5") == v23
    with pytest.raises(ConfigError, match=r"LTX-2\.6"):
        sampling_defaults("2.6")


def test_negative_prompt_is_the_one_definition():
    assert OFFICIAL_NEGATIVE_PROMPT is DEFAULT_NEGATIVE_PROMPT
    assert OFFICIAL_NEGATIVE_PROMPT.startswith("blurry, out of focus") and "AI artifacts" in OFFICIAL_NEGATIVE_PROMPT
