"""Optimizer construction and the learning-rate schedule as a pure function of the optimizer step.

The schedule is applied by setting each param group's lr before every optimizer step, so it advances once per
optimizer step whatever the number of processes (accelerate's prepared schedulers step once per process, which is
the official trainer's multi-GPU bug).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import math

import torch

from ltx2_tuner.errors import ConfigError

KNOWN_OPTIMIZERS = ("AdamW", "AdamW8bit")


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


def optimizer_class(optimizer_type: str) -> type:
    """The class --optimizer_type names: AdamW, AdamW8bit (bitsandbytes, CUDA) or any importable `module.Class`.

    Argument checks call this too, so a typo fails before any model loads."""
    name = optimizer_type.lower()
    if name == "adamw":
        return torch.optim.AdamW
    if name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise ConfigError("--optimizer_type AdamW8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bitsandbytes.optim.AdamW8bit
    module_name, _, class_name = optimizer_type.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not isinstance(cls, type):
        close = difflib.get_close_matches(optimizer_type, KNOWN_OPTIMIZERS, n=1)
        hint = f"did you mean {close[0]}?" if close else "check the spelling"
        raise ConfigError(
            f"--optimizer_type {optimizer_type}: not AdamW, AdamW8bit or an importable module.Class "
            f"(e.g. torch.optim.SGD); {hint}"
        )
    return cls


def make_optimizer(params, optimizer_type: str, learning_rate: float, args: list[str] | None) -> torch.optim.Optimizer:
    """An optimizer of `optimizer_class(optimizer_type)` over `params`, with --optimizer_args."""
    kwargs = parse_optimizer_args(args)
    cls = optimizer_class(optimizer_type)
    if cls is torch.optim.AdamW and "foreach" not in kwargs:
        # One fused kernel over all LoRA tensors: the per-tensor default costs ~40x more on the CPU and is
        # measurable next to a forward+backward even on GPUs.
        kwargs.setdefault("fused", True)
    try:
        return cls(params, lr=learning_rate, **kwargs)
    except TypeError as error:
        raise ConfigError(f"--optimizer_args for {optimizer_type}: {error}") from None


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
