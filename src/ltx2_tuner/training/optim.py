"""Optimizer construction, the schedule-free train/eval switch, and the learning-rate schedule.

`--optimizer_type` names one of KNOWN_OPTIMIZERS (any case; `schedulefree` means AdamWScheduleFree) or any importable
`module.Class`. A known optimizer gets our defaults unless `--optimizer_args` sets them (docs/optimizers.md says
which and why). A missing package, and a setting the optimizer cannot use (Prodigy at an AdamW learning rate, a
decaying schedule with a schedule-free one), is one line with the fix, found when the flags are checked.

The schedule is applied by setting each param group's lr before every optimizer step, so it advances once per
optimizer step whatever the number of processes (accelerate's prepared schedulers step once per process, which is
the official trainer's multi-GPU bug).

Schedule-free optimizers (any with `train()` and `eval()` methods, e.g. AdamWScheduleFree) hold two points: the
weights the gradient is taken at (train mode) and their running average (eval mode). The average is the result:
LoRA files, previews and validation must see it (`evaluation_weights`), while steps and the resumable state use the
train-mode weights (switching eval -> train is not bit-exact, so a state saved in eval mode resumes only approximately).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import importlib
import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ltx2_tuner.errors import ConfigError


@dataclass(frozen=True)
class KnownOptimizer:
    name: str  # as the docs and error messages spell it
    module: str
    class_name: str
    package: str  # the pip name
    defaults: tuple[tuple[str, object], ...] = ()  # keyword arguments set unless --optimizer_args sets them


_KNOWN = (
    KnownOptimizer("AdamW", "torch.optim", "AdamW", "torch"),
    KnownOptimizer("AdamW8bit", "bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    # The prodigyopt README's advice for diffusion models (safeguard_warmup: its step-size estimate does not
    # overshoot while a warm-up holds the learning rate small).
    KnownOptimizer(
        "Prodigy",
        "prodigyopt",
        "Prodigy",
        "prodigyopt",
        (("safeguard_warmup", True), ("use_bias_correction", True), ("weight_decay", 0.01)),
    ),
    # Our --learning_rate and schedule apply, not Adafactor's own step-size rule.
    KnownOptimizer(
        "Adafactor",
        "transformers.optimization",
        "Adafactor",
        "transformers",
        (("relative_step", False), ("scale_parameter", False), ("warmup_init", False)),
    ),
    KnownOptimizer("AdamWScheduleFree", "schedulefree", "AdamWScheduleFree", "schedulefree"),
)
KNOWN_OPTIMIZERS = tuple(known.name for known in _KNOWN)
_BY_NAME = {known.name.lower(): known for known in _KNOWN} | {"schedulefree": _KNOWN[-1]}
# Prodigy's lr multiplies the step size it estimates itself: 1.0 is its intended use (its README); values much
# below that shrink every step (our default 1e-4 would train 10,000x slower) and d_coef is the knob to turn instead.
PRODIGY_MIN_LEARNING_RATE = 0.1
_SCHEDULE_FREE_SCHEDULERS = ("constant", "constant_with_warmup")  # its averaging replaces a decaying schedule


def parse_optimizer_args(args: list[str] | None) -> dict:
    """["weight_decay=0.01", "betas=0.9,0.99"] -> {"weight_decay": 0.01, "betas": (0.9, 0.99)}."""
    kwargs = {}
    for arg in args or []:
        key, sep, text = arg.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--optimizer_args {arg!r}: expected name=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return kwargs


def known_optimizer(optimizer_type: str) -> KnownOptimizer | None:
    """The built-in optimizer --optimizer_type names (any case), or None for a `module.Class` path."""
    return _BY_NAME.get(optimizer_type.lower())


def optimizer_class(optimizer_type: str) -> type:
    """The class --optimizer_type names: one of KNOWN_OPTIMIZERS or any importable `module.Class`.

    Argument checks call this too, so a typo or a missing package fails before any model loads."""
    known = known_optimizer(optimizer_type)
    if known is not None:
        cls = getattr(_import_package_module(known), known.class_name)
        if known.name == "AdamW8bit":
            problem = _eight_bit_problem()
            if problem:
                raise ConfigError(f"--optimizer_type AdamW8bit: {problem}")
        return cls
    module_name, _, class_name = optimizer_type.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not isinstance(cls, type):
        names = {name.lower(): name for name in KNOWN_OPTIMIZERS}
        close = difflib.get_close_matches(optimizer_type.lower(), names, n=1)
        hint = f"did you mean {names[close[0]]}?" if close else "check the spelling"
        raise ConfigError(
            f"--optimizer_type {optimizer_type}: not {', '.join(KNOWN_OPTIMIZERS[:-1])} or {KNOWN_OPTIMIZERS[-1]}, "
            f"nor an importable module.Class (e.g. torch.optim.SGD); {hint}"
        )
    return cls


def _import_package_module(known: KnownOptimizer):
    try:
        return importlib.import_module(known.module)
    except ImportError as error:
        top = known.module.split(".")[0]
        if importlib.util.find_spec(top) is None:
            raise ConfigError(
                f"--optimizer_type {known.name} needs {known.package}: pip install {known.package}"
            ) from None
        raise ConfigError(
            f"--optimizer_type {known.name}: {known.package} is installed but does not import ({error}); "
            f"reinstall it: pip install -U {known.package}"
        ) from None


@functools.cache
def _eight_bit_problem() -> str | None:
    """Why bitsandbytes' AdamW8bit cannot step on this machine, or None. Without CUDA it needs bitsandbytes' CPU
    kernels (0.50 and later): one step on a tensor large enough for 8-bit state (4096 values) tells."""
    if torch.cuda.is_available():
        return None
    import bitsandbytes

    weight = torch.nn.Parameter(torch.zeros(4096))
    weight.grad = torch.ones(4096)
    try:
        bitsandbytes.optim.AdamW8bit([weight]).step()
    except (RuntimeError, NotImplementedError, AttributeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (
            f"bitsandbytes {bitsandbytes.__version__} cannot run it without a CUDA GPU ({reason}); on a CPU-only "
            f"machine use bitsandbytes>=0.50 (pip install -U bitsandbytes) or --optimizer_type AdamW"
        )
    return None


def optimizer_problems(
    optimizer_type: str,
    learning_rate: float,
    lr_scheduler: str,
    lr_warmup_steps: int,
    optimizer_args: list[str] | None,
) -> list[str]:
    """Everything wrong with the optimizer flags, one line each, before any model loads: an unknown name or missing
    package, malformed --optimizer_args, and settings the chosen optimizer cannot use as asked."""
    try:
        cls = optimizer_class(optimizer_type)
        kwargs = parse_optimizer_args(optimizer_args)
    except ConfigError as error:
        return [str(error)]
    name = cls.__name__
    problems = [_learning_rate_problem(cls, learning_rate)]
    if is_schedule_free(cls):
        if lr_scheduler not in _SCHEDULE_FREE_SCHEDULERS:
            problems.append(
                f"--lr_scheduler {lr_scheduler} with --optimizer_type {name}: a schedule-free optimizer averages its "
                f"weights instead of decaying the learning rate; use --lr_scheduler constant (warm-up: "
                f"--optimizer_args warmup_steps=N)"
            )
        own_warmup = kwargs.get("warmup_steps", 0)
        if own_warmup and lr_scheduler == "constant_with_warmup" and lr_warmup_steps:
            problems.append(
                f"--lr_warmup_steps {lr_warmup_steps} and --optimizer_args warmup_steps={own_warmup}: {name} would "
                f"warm up twice; keep one (--lr_scheduler constant with warmup_steps=N is its own warm-up)"
            )
    return [problem for problem in problems if problem]


def _learning_rate_problem(cls: type, learning_rate: float) -> str | None:
    # Not for a learning rate <= 0: the flag's own bound reports that.
    if cls.__name__ == "Prodigy" and 0 < learning_rate < PRODIGY_MIN_LEARNING_RATE:
        return (
            f"--learning_rate {learning_rate:g} with --optimizer_type Prodigy: Prodigy estimates its own step size and "
            f"--learning_rate multiplies it (1.0 is its intended use); pass --learning_rate 1 (for smaller steps "
            f"add --optimizer_args d_coef=0.5)"
        )
    return None


def make_optimizer(params, optimizer_type: str, learning_rate: float, args: list[str] | None) -> torch.optim.Optimizer:
    """An optimizer of `optimizer_class(optimizer_type)` over `params`, with its defaults and --optimizer_args.

    A schedule-free optimizer comes back in train mode, ready for the first step."""
    kwargs = parse_optimizer_args(args)
    cls = optimizer_class(optimizer_type)
    known = known_optimizer(optimizer_type)
    for key, value in known.defaults if known else ():
        kwargs.setdefault(key, value)
    if cls is torch.optim.AdamW and "foreach" not in kwargs:
        # One fused kernel over all LoRA tensors: the per-tensor default costs ~40x more on the CPU and is
        # measurable next to a forward+backward even on GPUs.
        kwargs.setdefault("fused", True)
    problem = _learning_rate_problem(cls, learning_rate)  # also checked with the flags; here for library callers
    if problem:
        raise ConfigError(problem)
    if cls.__name__ == "Adafactor" and kwargs.get("relative_step"):
        learning_rate = None  # Adafactor's own time-dependent step size; it refuses an lr beside it
    try:
        optimizer = cls(params, lr=learning_rate, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--optimizer_args for {optimizer_type}: {error}") from None
    optimizer_train_mode(optimizer)
    return optimizer


def is_schedule_free(optimizer_or_class) -> bool:
    """Whether an optimizer (or its class; accelerate's wrapper is looked through) switches weights with
    train()/eval(), as the schedulefree package's optimizers do."""
    target = optimizer_or_class if isinstance(optimizer_or_class, type) else _unwrapped(optimizer_or_class)
    return callable(getattr(target, "train", None)) and callable(getattr(target, "eval", None))


def _unwrapped(optimizer):
    # accelerate's AcceleratedOptimizer (itself an Optimizer with train/eval of its own) keeps ours in `.optimizer`.
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_train_mode(optimizer) -> None:
    """Put a schedule-free optimizer's train-mode weights into the parameters (before training steps); no-op for
    other optimizers."""
    if is_schedule_free(optimizer):
        _unwrapped(optimizer).train()


def optimizer_eval_mode(optimizer) -> None:
    """Put a schedule-free optimizer's averaged weights into the parameters (before saving a LoRA, previews and
    validation); no-op for other optimizers."""
    if is_schedule_free(optimizer):
        _unwrapped(optimizer).eval()


@contextlib.contextmanager
def evaluation_weights(optimizer) -> Iterator[None]:
    """Inside the block the parameters hold a schedule-free optimizer's averaged (eval-mode) weights; after it, the
    train-mode weights exactly as they were, so saving or previewing never changes the training that follows
    (eval() then train() alone is off by rounding). No-op for other optimizers, and for one already in eval mode."""
    inner = _unwrapped(optimizer)
    # schedulefree records the mode in each param group; an optimizer that does not is taken to be training.
    if not is_schedule_free(inner) or not all(group.get("train_mode", True) for group in inner.param_groups):
        yield
        return
    params = [param for group in inner.param_groups for param in group["params"]]
    train_weights = [param.detach().clone() for param in params]
    inner.eval()
    try:
        yield
    finally:
        inner.train()
        with torch.no_grad():
            for param, weights in zip(params, train_weights, strict=True):
                param.copy_(weights)


def lr_factor(step: int, total_steps: int, scheduler: str, warmup_steps: int = 0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of `total_steps`.

    1. warm-up: linear from 1/(warmup+1) to 1 over `warmup_steps` (any scheduler but constant);
    2. then: constant, linear to 0, cosine to 0, cosine with 4 restarts, or polynomial (power 1) to 0.
    """
    if scheduler == "constant":
        return 1.0
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if scheduler == "constant_with_warmup":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if scheduler == "linear" or scheduler == "polynomial":
        return 1.0 - progress
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if scheduler == "cosine_with_restarts":
        return 0.5 * (1.0 + math.cos(math.pi * ((progress * 4) % 1.0)))
    raise ConfigError(f"--lr_scheduler {scheduler!r} is not known")


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
