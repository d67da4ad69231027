"""`--attention_backend`: our names for diffusers' attention backends, and the checks that make a bad choice one line.

diffusers 0.42.1 dispatches every attention of the LTX-2 transformer through `dispatch_attention_fn`
(models/attention_dispatch.py); `set_attention_backend(name)` picks the kernel. We expose the ones that fit LoRA
training or sampling of LTX-2 and are installable from a package index; the Hub-kernel backends (`*_hub`, downloaded
at run time with `kernels`), the varlen ones (they take boolean masks only) and the NPU/XLA ones are left out.

Text padding masks: LTX-2's text cross-attention can take a padding mask, but the connectors fill padding with learned
registers, so the cached mask is all ones and the trainer passes none (training/step.py). Backends without mask
support (flash, flash3, sage) are therefore fine; a batch that does carry a partial mask is refused by the adapter
with one line (`require_mask_support`) instead of a kernel error in the middle of a step.

This module imports neither torch's CUDA runtime nor diffusers until a check runs, so the training config can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ltx2_tuner.errors import ConfigError


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # ours, the value of --attention_backend
    diffusers_name: str  # diffusers' AttentionBackendName value
    needs: str  # what it needs, one phrase (docs and errors)
    install: str | None = None  # how to get the package it needs
    cuda: bool = False  # kernels for CUDA GPUs only
    half_only: bool = False  # computes in bf16/fp16 only
    backward: bool = True  # has a backward pass (can train)
    masks: bool = True  # takes an attention mask (text padding)


BACKENDS: dict[str, AttentionBackend] = {
    backend.name: backend
    for backend in (
        AttentionBackend("native", "native", "nothing: PyTorch SDPA, which picks its fastest kernel"),
        AttentionBackend(
            "cudnn", "_native_cudnn", "a CUDA GPU, bf16/fp16 (PyTorch's cuDNN SDPA kernel)", cuda=True, half_only=True
        ),
        AttentionBackend("efficient", "_native_efficient", "a CUDA GPU (PyTorch's memory-efficient kernel)", cuda=True),
        AttentionBackend("math", "_native_math", "nothing (PyTorch's reference math kernel; slow, for checks)"),
        AttentionBackend(
            "flash",
            "flash",
            "a CUDA GPU, bf16/fp16, flash-attn >= 2.6.3",
            "pip install flash-attn",
            cuda=True,
            half_only=True,
            masks=False,
        ),
        AttentionBackend(
            "flash3",
            "_flash_3",
            "a Hopper GPU (H100/H200), bf16/fp16, FlashAttention 3 (flash_attn_interface)",
            "build flash-attention's hopper/ folder (pip install flash-attn does not include FA3)",
            cuda=True,
            half_only=True,
            masks=False,
        ),
        AttentionBackend("xformers", "xformers", "a CUDA GPU, xformers >= 0.0.29", "pip install xformers", cuda=True),
        AttentionBackend(
            "sage",
            "sage",
            "a CUDA GPU, bf16/fp16, sageattention >= 2.1.1; no backward pass (previews, generation)",
            "pip install sageattention",
            cuda=True,
            half_only=True,
            backward=False,
            masks=False,
        ),
    )
}
ATTENTION_BACKENDS: tuple[str, ...] = tuple(BACKENDS)
_BY_DIFFUSERS_NAME = {backend.diffusers_name: backend for backend in BACKENDS.values()}
TRAINABLE = tuple(name for name, backend in BACKENDS.items() if backend.backward)


def find_backend(name: str) -> AttentionBackend:
    """The backend called `name` (ours, or the diffusers name it maps to, e.g. "_native_math")."""
    backend = BACKENDS.get(name) or _BY_DIFFUSERS_NAME.get(name)
    if backend is None:
        raise ConfigError(
            f"--attention_backend {name}: unknown attention backend; use one of {', '.join(ATTENTION_BACKENDS)}"
        )
    return backend


def backend_problem(name: str, training: bool, dtype=None) -> str | None:
    """What keeps backend `name` from running here (for training when `training`), as the end of one line; None when
    it is usable. `dtype`: the compute dtype, when known."""
    try:
        backend = find_backend(name)
    except ConfigError:
        return f"unknown attention backend; use one of {', '.join(ATTENTION_BACKENDS)}"
    if training and not backend.backward:
        return (
            f"has no backward pass, so it serves previews and generation only (ltx2_generate_video.py); "
            f"train with {', '.join(TRAINABLE)}"
        )
    import torch

    if backend.cuda and not torch.cuda.is_available():
        return f"needs a CUDA GPU ({backend.needs}); use native on this machine"
    if (missing := _missing_package(backend)) is not None:
        return missing
    if dtype is not None and backend.half_only and dtype not in (torch.bfloat16, torch.float16):
        return f"computes in bf16 or fp16 only, not {str(dtype).removeprefix('torch.')}; use --mixed_precision bf16"
    return None


def check_backend(name: str, training: bool, dtype=None) -> AttentionBackend:
    """The backend called `name`, checked for use here; ConfigError (one line) when it cannot run."""
    backend = find_backend(name)
    problem = backend_problem(name, training, dtype)
    if problem is not None:
        raise ConfigError(f"--attention_backend {backend.name}: {problem}")
    return backend


def require_mask_support(backend: AttentionBackend) -> None:
    """A batch carries a text padding mask: refuse a backend that cannot apply it (one line, not a kernel error)."""
    if not backend.masks:
        with_masks = ", ".join(name for name, b in BACKENDS.items() if b.masks)
        raise ConfigError(
            f"--attention_backend {backend.name}: cannot apply the text padding mask this batch carries (text caches "
            f"written by ltx2_cache_text_encoder_outputs.py have none: the connectors' registers fill the padding); "
            f"use one of {with_masks}, or re-cache the text"
        )


def _missing_package(backend: AttentionBackend) -> str | None:
    """diffusers' own requirement check (the one set_attention_backend runs), as one line naming the package."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(backend.diffusers_name))
    except RuntimeError:
        return f"needs {backend.needs}; the package is missing or too old here: {backend.install}"
    return None
