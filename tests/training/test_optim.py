"""Optimizers (each known one builds, steps, lowers a loss and resumes bit-exactly), the schedule-free eval/train
switch, the flag checks, and the learning-rate schedule as a pure function of the optimizer step."""

from __future__ import annotations

import importlib
import io
import sys

import pytest
import torch

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.training import optim
from ltx2_tuner.training.optim import (
    KNOWN_OPTIMIZERS,
    evaluation_weights,
    lr_factor,
    make_optimizer,
    optimizer_class,
    optimizer_eval_mode,
    optimizer_problems,
    optimizer_train_mode,
    parse_optimizer_args,
    set_learning_rate,
)

# A learning rate that fits each optimizer (Prodigy's is a multiplier of the step size it estimates).
LEARNING_RATES = {"AdamW": 0.05, "AdamW8bit": 0.05, "Prodigy": 1.0, "Adafactor": 0.05, "AdamWScheduleFree": 0.05}


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    """A LoRA-like pair: a 64 x 64 matrix (4096 values: enough for bitsandbytes' 8-bit state) and a zero matrix."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(64, 64, generator=generator)), torch.nn.Parameter(torch.zeros(8, 64))]


def _loss(params) -> torch.Tensor:
    target = torch.linspace(-1, 1, 64)
    return ((params[0] - target) ** 2).mean() + ((params[1] - 0.5) ** 2).mean()


def _step(optimizer, params, learning_rate: float) -> None:
    """One step as the trainer takes it: set the lr, backward, step, clear the gradients."""
    set_learning_rate(optimizer, learning_rate)
    _loss(params).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", KNOWN_OPTIMIZERS)
def test_each_optimizer_lowers_a_quadratic_loss(name):
    params = _params()
    optimizer = make_optimizer(params, name, LEARNING_RATES[name], None)
    before = _loss(params).item()
    for _ in range(100):  # Prodigy's first ~60 steps (with the safeguards) mostly estimate its step size
        _step(optimizer, params, LEARNING_RATES[name])
    with evaluation_weights(optimizer), torch.no_grad():  # the averaged weights, for the schedule-free one
        after = _loss(params).item()
    assert after < 0.5 * before, (before, after)


def test_the_known_optimizers_are_what_their_names_say():
    params = _params()
    eight_bit = make_optimizer(params, "adamw8bit", 1e-3, None)
    assert type(eight_bit).__module__.startswith("bitsandbytes")
    _step(eight_bit, params, 1e-3)
    assert eight_bit.state[params[0]]["state1"].dtype == torch.uint8  # really 8-bit moments, here on the CPU
    prodigy = make_optimizer(params, "PRODIGY", 1.0, ["use_bias_correction=False"])
    assert type(prodigy).__name__ == "Prodigy"
    assert prodigy.defaults["safeguard_warmup"] is True and prodigy.defaults["weight_decay"] == 0.01
    assert prodigy.defaults["use_bias_correction"] is False  # --optimizer_args wins over our defaults
    for alias in ("schedulefree", "AdamWScheduleFree"):
        assert type(make_optimizer(params, alias, 1e-3, None)).__name__ == "AdamWScheduleFree"


def test_adafactor_follows_our_learning_rate():
    params = _params()
    adafactor = make_optimizer(params, "Adafactor", 0.05, None)
    assert {key: adafactor.defaults[key] for key in ("relative_step", "scale_parameter", "warmup_init")} == {
        "relative_step": False, "scale_parameter": False, "warmup_init": False}  # fmt: skip
    before = [p.detach().clone() for p in params]
    _step(adafactor, params, 0.0)  # a schedule at 0 holds the weights still: our lr is the one applied
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    _step(adafactor, params, 0.05)
    assert not torch.equal(params[0], before[0])
    own = make_optimizer(_params(), "Adafactor", 0.05, ["relative_step=True"])  # the user's choice: its own rule
    assert own.defaults["relative_step"] is True and own.defaults["lr"] is None


@pytest.mark.parametrize("name", KNOWN_OPTIMIZERS)
def test_a_saved_state_resumes_bit_exactly(name):
    """The trainer's resume: the trainable weights and `optimizer.state_dict()` through torch.save, into a new
    optimizer; the next steps equal those of the run that never stopped."""
    learning_rate = LEARNING_RATES[name]
    params = _params()
    optimizer = make_optimizer(params, name, learning_rate, None)
    for _ in range(3):
        _step(optimizer, params, learning_rate)
    with evaluation_weights(optimizer):  # a LoRA save between steps changes nothing that follows
        pass
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = make_optimizer(resumed_params, name, learning_rate, None)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    for _ in range(3):
        _step(optimizer, params, learning_rate)
        _step(resumed, resumed_params, learning_rate)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params, strict=True))


def _schedule_free_after_steps():
    params = _params()
    optimizer = make_optimizer(params, "AdamWScheduleFree", 0.05, None)
    for _ in range(5):
        _step(optimizer, params, 0.05)
    return params, optimizer


def _averaged(params, optimizer) -> list[torch.Tensor]:
    """The schedule-free average x from the train-mode point y and z: y = (1 - beta1) z + beta1 x."""
    beta1 = optimizer.param_groups[0]["betas"][0]
    return [p.detach().lerp(optimizer.state[p]["z"], 1 - 1 / beta1) for p in params]


def test_evaluation_weights_are_the_average_and_training_resumes_exactly():
    params, optimizer = _schedule_free_after_steps()
    train_weights = [p.detach().clone() for p in params]
    expected = _averaged(params, optimizer)
    assert not torch.allclose(expected[0], train_weights[0])  # the two points differ: the switch matters
    with evaluation_weights(optimizer):
        assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(params, expected, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(params, train_weights, strict=True))
    _step(optimizer, params, 0.05)  # back in train mode: steps are allowed


def test_the_mode_helpers_work_through_accelerates_wrapper():
    from accelerate import Accelerator

    params, optimizer = _schedule_free_after_steps()
    wrapped = Accelerator(cpu=True).prepare(optimizer)
    assert type(wrapped).__name__ == "AcceleratedOptimizer"
    train_weights = [p.detach().clone() for p in params]
    expected = _averaged(params, optimizer)
    optimizer_eval_mode(wrapped)
    assert optimizer.param_groups[0]["train_mode"] is False
    assert torch.allclose(params[0], expected[0], atol=1e-6)
    with evaluation_weights(wrapped):  # already in eval mode: stays there
        pass
    assert optimizer.param_groups[0]["train_mode"] is False
    optimizer_train_mode(wrapped)
    assert optimizer.param_groups[0]["train_mode"] is True
    assert torch.allclose(params[0], train_weights[0], atol=1e-6)
    with evaluation_weights(wrapped):
        assert torch.allclose(params[0], expected[0], atol=1e-6)
    assert optimizer.param_groups[0]["train_mode"] is True


def test_the_mode_helpers_leave_other_optimizers_alone():
    params = _params()
    adamw = make_optimizer(params, "AdamW", 1e-3, None)
    _step(adamw, params, 1e-3)
    weights = [p.detach().clone() for p in params]
    optimizer_eval_mode(adamw)
    with evaluation_weights(adamw):
        assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True))
    optimizer_train_mode(adamw)
    assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True))


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [("Prodigy", "prodigyopt", "prodigyopt"), ("AdamWScheduleFree", "schedulefree", "schedulefree"),
     ("schedulefree", "schedulefree", "schedulefree"), ("AdamW8bit", "bitsandbytes", "bitsandbytes")],
)  # fmt: skip
def test_a_missing_package_is_one_line_with_the_pip_command(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    for submodule in [key for key in sys.modules if key.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, submodule, None)
    canonical = "AdamWScheduleFree" if name == "schedulefree" else name
    line = f"--optimizer_type {canonical} needs {package}: pip install {package}"
    with pytest.raises(ConfigError) as caught:
        optimizer_class(name)
    assert str(caught.value) == line
    assert optimizer_problems(name, 1.0, "constant", 0, None) == [line]


def test_a_package_that_is_installed_but_broken_says_so(monkeypatch):
    real_import = importlib.import_module

    def failing(name, *args):
        if name == "schedulefree":
            raise ImportError("libfoo.so: cannot open shared object file")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", failing)
    with pytest.raises(ConfigError, match=r"schedulefree is installed but does not import \(libfoo.so: cannot open"):
        optimizer_class("AdamWScheduleFree")


def test_bitsandbytes_that_cannot_step_on_this_cpu_says_why(monkeypatch):
    import bitsandbytes

    def no_cpu_kernel(self, closure=None):
        raise NotImplementedError("Could not run 'bitsandbytes::optimizer_update_8bit_blockwise' on 'CPU'")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bitsandbytes.optim.AdamW8bit, "step", no_cpu_kernel)
    optim._eight_bit_problem.cache_clear()
    try:
        with pytest.raises(ConfigError) as caught:
            optimizer_class("AdamW8bit")
    finally:
        optim._eight_bit_problem.cache_clear()
    message = str(caught.value)
    assert message.startswith(f"--optimizer_type AdamW8bit: bitsandbytes {bitsandbytes.__version__} cannot run it ")
    assert "optimizer_update_8bit_blockwise" in message and "bitsandbytes>=0.50" in message and "\n" not in message


def test_settings_the_optimizer_cannot_use_are_refused_with_the_fix():
    (prodigy,) = optimizer_problems("Prodigy", 1e-4, "cosine", 0, None)
    assert prodigy.startswith("--learning_rate 0.0001 with --optimizer_type Prodigy:")
    assert "pass --learning_rate 1" in prodigy and "d_coef" in prodigy
    with pytest.raises(ConfigError, match="pass --learning_rate 1"):  # also for callers that skip the flag checks
        make_optimizer(_params(), "prodigyopt.Prodigy", 1e-4, None)
    assert optimizer_problems("Prodigy", 1.0, "cosine", 100, ["d_coef=0.5"]) == []
    (decay,) = optimizer_problems("schedulefree", 1e-3, "cosine", 0, None)
    assert decay.startswith("--lr_scheduler cosine with --optimizer_type AdamWScheduleFree:")
    assert "use --lr_scheduler constant" in decay
    (twice,) = optimizer_problems("AdamWScheduleFree", 1e-3, "constant_with_warmup", 10, ["warmup_steps=10"])
    assert "would warm up twice" in twice
    assert optimizer_problems("AdamWScheduleFree", 1e-3, "constant", 0, ["warmup_steps=10"]) == []
    assert optimizer_problems("schedulefree.SGDScheduleFree", 1.0, "linear", 0, None)[0].startswith(
        "--lr_scheduler linear with --optimizer_type SGDScheduleFree:"
    )  # any optimizer with train()/eval() is schedule-free
    assert optimizer_problems("AdamW", 1e-4, "cosine", 0, ["eps"]) == ["--optimizer_args 'eps': expected name=value"]


def test_an_unknown_name_lists_the_choices_and_the_closest():
    for typo, closest in (("prodigi", "Prodigy"), ("adamw_8bit", "AdamW8bit"), ("ADAFACTR", "Adafactor")):
        with pytest.raises(ConfigError) as caught:
            optimizer_class(typo)
        assert str(caught.value) == (
            f"--optimizer_type {typo}: not AdamW, AdamW8bit, Prodigy, Adafactor or AdamWScheduleFree, nor an "
            f"importable module.Class (e.g. torch.optim.SGD); did you mean {closest}?"
        )


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
