"""Optimizers and the learning-rate schedule as a pure function of the optimizer step."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.training.optim import lr_factor, make_optimizer, parse_optimizer_args


def test_schedules():
    assert [lr_factor(s, 10, "constant", 5) for s in (0, 9)] == [1.0, 1.0]
    assert [lr_factor(s, 10, "constant_with_warmup", 3) for s in (0, 1, 2, 3, 9)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert (
        lr_factor(0, 10, "linear") == 1.0 and lr_factor(5, 10, "linear") == 0.5 and lr_factor(10, 10, "linear") == 0.0
    )
    assert lr_factor(0, 10, "cosine") == 1.0 and lr_factor(5, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(2, 12, "cosine", warmup_steps=2) == 1.0  # decay starts after warm-up
    assert lr_factor(25, 100, "cosine_with_restarts") == pytest.approx(1.0)  # the second of four cycles begins
    with pytest.raises(ConfigError):
        lr_factor(1, 10, "exponential")


def test_optimizers():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adamw = make_optimizer(params, "AdamW", 1e-3, ["weight_decay=0.0", "betas=0.9,0.99"])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.99)
    assert adamw.defaults["fused"] is True and adamw.defaults["weight_decay"] == 0.0
    sgd = make_optimizer(params, "torch.optim.SGD", 0.1, ["momentum=0.5"])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5
    with pytest.raises(ConfigError, match=r"importable module\.Class"):
        make_optimizer(params, "nowhere.Optimizer", 0.1, None)
    with pytest.raises(ConfigError, match="--optimizer_args"):
        make_optimizer(params, "AdamW", 0.1, ["nonsense=1"])
    assert parse_optimizer_args(["eps=1e-6", "name=text"]) == {"eps": 1e-6, "name": "text"}
    with pytest.raises(ConfigError, match="expected name=value"):
        parse_optimizer_args(["eps"])
