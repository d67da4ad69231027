"""Attention perturbations for guidance passes, per batch sample, installed only for the duration of a forward.

What each pass changes in the transformer (ltx-core `guidance/perturbations.py` + `attention.py`, read for facts):
- STG: in the listed blocks, a modality's self-attention (diffusers `attn1` / `audio_attn1`) outputs its value
  projection instead of attending: `to_out(gate · to_v(x))`, the per-head gate (LTX-2.3) and output projection still
  applied. ltx-core blends `attn · m + v · (1 - m)` with m in {0, 1}; selecting per sample is the same result.
- Modality isolation: the audio -> video and video -> audio cross-attention contributions are removed in all blocks.

The masks are per sample, so the cond / uncond / perturbed / isolated passes can run as one batch. Forward hooks
(not processor swaps) keep this independent of the attention processor, backend and LoRA wrapping; they are removed
on exit, leaving the model as it was. A model may bring its own `perturbed(perturbations)` context manager instead
(test doubles, other architectures); `perturbed()` below then defers to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

VIDEO_SELF_ATTN = "attn1"
AUDIO_SELF_ATTN = "audio_attn1"
CROSS_MODAL_ATTN = ("audio_to_video_attn", "video_to_audio_attn")


@dataclass(frozen=True)
class Perturbation:
    """What one batch sample's forward changes. The default changes nothing."""

    video_self_attn_blocks: tuple[int, ...] = ()  # blocks whose video self-attention is bypassed (STG)
    audio_self_attn_blocks: tuple[int, ...] = ()  # same for audio
    cross_modal: bool = True  # False: audio <-> video cross-attention removed in every block

    @property
    def is_identity(self) -> bool:
        return not self.video_self_attn_blocks and not self.audio_self_attn_blocks and self.cross_modal


def perturbed(model: nn.Module, perturbations: Sequence[Perturbation]) -> contextlib.AbstractContextManager:
    """Context manager under which `model`'s forward applies `perturbations[i]` to batch sample i."""
    if all(p.is_identity for p in perturbations):
        return contextlib.nullcontext()
    custom = getattr(model, "perturbed", None)
    if custom is not None:
        return custom(perturbations)
    return _hooked(model.backbone.transformer_blocks, list(perturbations))


@contextlib.contextmanager
def _hooked(blocks: nn.ModuleList, perturbations: list[Perturbation]) -> Iterator[None]:
    handles = []
    try:
        for index, block in enumerate(blocks):
            for name, field in (
                (VIDEO_SELF_ATTN, "video_self_attn_blocks"),
                (AUDIO_SELF_ATTN, "audio_self_attn_blocks"),
            ):
                bypass = [index in getattr(p, field) for p in perturbations]
                if any(bypass) and hasattr(block, name):
                    handles.append(_hook(getattr(block, name), bypass, _value_passthrough))
            removed = [not p.cross_modal for p in perturbations]
            for name in CROSS_MODAL_ATTN:
                if any(removed) and hasattr(block, name):
                    handles.append(_hook(getattr(block, name), removed, _zeros))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hook(module: nn.Module, replaced: list[bool], replacement: Callable) -> torch.utils.hooks.RemovableHandle:
    """Replace `module`'s output on the samples flagged in `replaced` by `replacement(module, hidden_states, out)`."""

    def hook(module, args, kwargs, output):
        if output.shape[0] != len(replaced):
            raise RuntimeError(f"perturbations for {len(replaced)} samples, batch of {output.shape[0]}")
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        flags = torch.tensor(replaced, device=output.device).view(-1, *([1] * (output.ndim - 1)))
        return torch.where(flags, replacement(module, hidden, output), output)

    return module.register_forward_hook(hook, with_kwargs=True)


def _value_passthrough(attn: nn.Module, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Self-attention with the attention itself skipped: the value projection through gate and output projection."""
    value = attn.to_v(hidden)
    if attn.to_gate_logits is not None:  # LTX-2.3 per-head gates, computed from the block's input as in attention
        gates = 2.0 * torch.sigmoid(attn.to_gate_logits(hidden))
        value = (value.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
    return attn.to_out[1](attn.to_out[0](value)).to(output.dtype)


def _zeros(attn: nn.Module, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output)
