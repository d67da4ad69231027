"""fp8 base weights: the big frozen Linear weights of the transformer blocks stored in float8 e4m3, computed in bf16.

Which layers: the attention projections (`to_q`, `to_k`, `to_v`, `to_out.0`) and the feed-forward matrices
(`ff.net.0.proj`, `ff.net.2`, and their audio twins) inside `transformer_blocks`: ltx-core's own fp8 set
(`quantization/fp8_cast.py`), about 95% of the weights. Everything else stays in the compute dtype: patchify/proj_out,
the AdaLN and timestep embeddings, caption projections, norms, scale-shift tables, LTX-2.3's `to_gate_logits`, and
every bias (small, and the official trainer's quantizer excludes the same kinds of layers). LoRA weights are fp32 and
are never cast (`compute_dtype` tells PEFT which dtype to give them).

Scales: `--fp8_scaled` stores one fp32 scale per weight tensor (amax / 448), so the largest weight maps to e4m3's
largest value and small weights keep 3 mantissa bits instead of falling into e4m3's subnormals (its finest step is
2^-9, about a tenth of a typical LTX weight); without it the scale is 1. Official fp8 checkpoints
(`ltx-2.3-22b-dev-fp8.safetensors`) ship e4m3 weights with a scalar `.weight_scale` beside each; they are used as
they are (no second rounding). Without `--fp8_base`, an fp8 file is dequantized to the compute dtype on load.

Memory: autograd would keep the bf16 copy of every weight it used until backward (a saved `weight.t()`), which
would give back all the memory fp8 saves (../shared/reference/diffusers-ltx2-and-peers.md §4.2). `Fp8Matmul` saves
the fp8 weight itself and upcasts it again in backward, so at any time one layer's bf16 copy exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
FP8_FILE_DTYPES = ("F8_E4M3", "F8_E5M2")
# Module-name endings of the fp8 Linears inside `transformer_blocks` (diffusers names, equal to the official ones
# here). `ff.net.*` without a leading dot also matches `audio_ff.net.*`.
FP8_LINEAR_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0", "ff.net.0.proj", "ff.net.2")
SCALE_SUFFIX = "_scale"  # official: `<layer>.weight_scale` beside `<layer>.weight`


@dataclass(frozen=True)
class Fp8Storage:
    """How the fp8 layers store their weights: `scaled` = one amax/448 scale per tensor."""

    scaled: bool = False


def fp8_storage(fp8_base: bool, fp8_scaled: bool) -> Fp8Storage | None:
    """The storage the --fp8_base / --fp8_scaled flags ask for (None: keep the compute dtype)."""
    return Fp8Storage(scaled=fp8_scaled) if fp8_base else None


def is_fp8_linear(module_name: str) -> bool:
    """Whether the Linear `module_name` (diffusers name in the transformer) stores its weight in fp8."""
    return module_name.startswith("transformer_blocks.") and module_name.endswith(FP8_LINEAR_SUFFIXES)


def quantize(weight: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, fp32 scalar scale) with weight ~= e4m3 * scale. Values beyond e4m3's range saturate (a plain
    cast would make them NaN)."""
    weight = weight.float()
    scale = torch.ones((), dtype=torch.float32, device=weight.device)
    if scaled:
        amax = weight.abs().amax()
        if amax > 0:
            scale = amax / FP8_MAX
        weight = weight / scale
    return weight.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The fp8 weight in `dtype`; the scale is applied in place on the fresh upcast (no second weight-sized tensor)."""
    upcast = weight.to(dtype)
    return upcast if scale is None else upcast.mul_(scale.to(dtype))


class Fp8Matmul(torch.autograd.Function):
    """y = x W^T + b with W stored in fp8; backward gives the input gradient only (W and b are frozen) and saves the
    fp8 W, not its upcast."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        ctx.save_for_backward(weight, scale)
        return F.linear(x, dequantize(weight, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        weight, scale = ctx.saved_tensors
        grad_x = grad_out.matmul(dequantize(weight, scale, grad_out.dtype)) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class Fp8Linear(nn.Linear):
    """An nn.Linear whose frozen weight is e4m3 with a `weight_scale` buffer; made by `to_fp8_linear` (class swap, so
    the module keeps its name, its place and its LoRA wrapping)."""

    weight_scale: torch.Tensor
    compute_dtype: torch.dtype  # read by PEFT: the dtype its LoRA layers get (cast to fp32 afterwards by add_lora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
            raise ValueError("an fp8 base layer cannot be trained; train a LoRA on it instead")
        x = x.to(_compute_dtype(x))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return Fp8Matmul.apply(x, self.weight, self.weight_scale, bias)
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), bias)


def to_fp8_linear(module: nn.Linear, compute_dtype: torch.dtype) -> None:
    """Turn `module` into an Fp8Linear in place: e4m3 weight (on the module's device; meta stays meta, to be loaded)
    and a scale buffer. A real weight is quantized unscaled; `prepare_fp8` + loading sets real scales."""
    weight = module.weight
    if weight.device.type == "meta":
        data, scale = torch.empty(weight.shape, dtype=FP8_DTYPE, device="meta"), torch.ones((), device="meta")
    else:
        data, scale = quantize(weight.detach(), scaled=False)
    module.__class__ = Fp8Linear
    module.weight = nn.Parameter(data, requires_grad=False)
    module.register_buffer("weight_scale", scale)
    module.compute_dtype = compute_dtype


def prepare_fp8(backbone: nn.Module, compute_dtype: torch.dtype) -> tuple[str, ...]:
    """Make the fp8 Linears of a transformer built on the meta device; return their names (to be loaded with
    `Fp8Loader`)."""
    names = tuple(name for name, m in backbone.named_modules() if isinstance(m, nn.Linear) and is_fp8_linear(name))
    for name in names:
        to_fp8_linear(backbone.get_submodule(name), compute_dtype)
    return names


class Fp8Loader:
    """Converts the transformer's tensors as they are read from a file, one at a time.

    `storage` None: every fp8 tensor of the file is dequantized (with its `_scale`) to `dtype`. Otherwise the weights
    of `fp8_layers` become e4m3 + scale (fp8 ones from the file kept as they are), all else goes to `dtype`.
    """

    def __init__(self, fp8_layers: tuple[str, ...], storage: Fp8Storage | None, dtype: torch.dtype | None):
        self.fp8_weights = {f"{name}.weight" for name in fp8_layers}
        self.storage, self.dtype = storage, dtype

    @staticmethod
    def is_scale(name: str) -> bool:
        return name.endswith(SCALE_SUFFIX)

    def convert(self, name: str, tensor: torch.Tensor, scale: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """{diffusers name: tensor} for one tensor of the file (diffusers name) and its file scale, if any."""
        if self.storage is not None and name in self.fp8_weights:
            if tensor.dtype == FP8_DTYPE:
                fp8, fp8_scale = tensor, (scale if scale is not None else torch.ones(())).float().reshape(())
            else:
                fp8, fp8_scale = quantize(dequantize(tensor, scale, torch.float32), self.storage.scaled)
            return {name: fp8, f"{name}{SCALE_SUFFIX}": fp8_scale.to(fp8.device)}
        if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) or scale is not None:
            return {name: dequantize(tensor, scale, self.dtype or torch.bfloat16)}
        if self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype:
            tensor = tensor.to(self.dtype)
        return {name: tensor}


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the frozen weights and buffers of `module` (what fp8 storage shrinks)."""
    frozen = [p for p in module.parameters() if not p.requires_grad] + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in frozen)
