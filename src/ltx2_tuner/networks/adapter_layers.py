"""One adapter layer as a file holds it, and the weight change it makes: LoRA, DoRA, LoKr and LoHa.

The formulas are ComfyUI's (`comfy/weight_adapter/{lora,lokr,loha,base}.py`), which the files we write are made for;
`scale` is the factor the file's `.alpha` implies (1.0 when there is none: our files fold every scale into a factor).
For a Linear weight W of shape [out, in]:

- LoRA:  W + s * up @ down                                      (up [out, r], down [r, in])
- DoRA:  (W + s * up @ down) * dora_scale / (||W||_row + eps)   (ComfyUI's output-axis form, dora_scale [out, 1])
- LoKr:  W + s * kron(w1, w2)      (w1 = w1_a @ w1_b or full [out_l, in_m]; w2 likewise [out_k, in_n])
- LoHa:  W + s * (w1_a @ w1_b) * (w2_a @ w2_b)                  (element-wise product of two rank-r products)

DoRA's magnitude: PEFT and musubi keep m with the norm of the *adapted* weight, W' = m * (W + dW) / ||W + dW||_row;
ComfyUI divides by the norm of the *base* weight instead. A ComfyUI file therefore stores
dora_scale = m * (||W||_row + eps) / ||W + dW||_row, which needs W to convert either way
(`comfy_dora_scale`, `peft_magnitude`). eps is float32's: ComfyUI patches weights in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = torch.finfo(torch.float32).eps  # ComfyUI adds finfo(weight.dtype).eps; its patch weight is float32


def _f32(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor  # lora_A, [rank, in_features], as stored
    up: torch.Tensor  # lora_B, [out_features, rank], as stored (without `scale`)
    scale: float  # alpha / rank; 1.0 when the file has no alpha (it is folded into `up` already)
    algo = "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def features(self) -> tuple[int, int]:
        """(out_features, in_features) of the Linear layer it adapts."""
        return self.up.shape[0], self.down.shape[1]

    def folded_up(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """B with the scale folded in: the layer adds `folded_up @ down @ x`."""
        return (self.up.float() * self.scale).to(dtype)

    def delta(self, device=None) -> torch.Tensor:
        """The weight change dW [out, in] in float32, scale included."""
        return self.folded_up().to(device) @ _f32(self.down, device)

    def merged(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """W + strength * dW, in float32 (`weight` any float dtype)."""
        return weight.float() + strength * self.delta(weight.device)


@dataclass(frozen=True)
class DoraLayer(LoraLayer):
    """A LoRA pair plus the magnitude, as ComfyUI's `dora_scale` (official files) or as PEFT's/musubi's magnitude
    m (musubi's `.lora_magnitude_vector.weight`); exactly one of the two is set."""

    dora_scale: torch.Tensor | None = None  # [out, 1], ComfyUI's output-axis form
    magnitude: torch.Tensor | None = None  # [out], PEFT / musubi
    algo = "dora"

    def comfy_dora_scale(self, weight: torch.Tensor) -> torch.Tensor:
        if self.dora_scale is not None:
            return _f32(self.dora_scale, weight.device).reshape(-1, 1)
        return comfy_dora_scale(_f32(self.magnitude, weight.device), weight, self.delta(weight.device))

    def peft_magnitude(self, weight: torch.Tensor) -> torch.Tensor:
        if self.magnitude is not None:
            return _f32(self.magnitude, weight.device).reshape(-1)
        return peft_magnitude(_f32(self.dora_scale, weight.device), weight, self.delta(weight.device))

    def merged(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        base = weight.float()
        adapted = (base + self.delta(weight.device)) * self.comfy_dora_scale(base) / (_row_norm(base) + EPS)
        return base + strength * (adapted - base)


def _row_norm(weight: torch.Tensor) -> torch.Tensor:
    return weight.float().norm(dim=1, keepdim=True)  # [out, 1]


def comfy_dora_scale(magnitude: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """ComfyUI's dora_scale [out, 1] that gives PEFT's DoRA weight m * (W + dW) / ||W + dW||_row."""
    base = weight.float()
    return magnitude.float().reshape(-1, 1) * (_row_norm(base) + EPS) / _row_norm(base + delta)


def peft_magnitude(dora_scale: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The inverse of `comfy_dora_scale`: PEFT's magnitude m [out]."""
    base = weight.float()
    return (dora_scale.float().reshape(-1, 1) * _row_norm(base + delta) / (_row_norm(base) + EPS)).reshape(-1)


@dataclass(frozen=True)
class LokrLayer:
    """Kronecker factors; each of w1, w2 is a full matrix or an (a, b) pair whose product it is."""

    w1: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # [out_l, in_m] or ([out_l, r], [r, in_m])
    w2: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # [out_k, in_n] or ([out_k, r], [r, in_n])
    scale: float
    algo = "lokr"

    @staticmethod
    def _matrix(factor, device) -> torch.Tensor:
        if isinstance(factor, tuple):
            return _f32(factor[0], device) @ _f32(factor[1], device)
        return _f32(factor, device)

    @staticmethod
    def _shape(factor) -> tuple[int, int]:
        return (factor[0].shape[0], factor[1].shape[1]) if isinstance(factor, tuple) else tuple(factor.shape)

    @property
    def features(self) -> tuple[int, int]:
        (out_l, in_m), (out_k, in_n) = self._shape(self.w1), self._shape(self.w2)
        return out_l * out_k, in_m * in_n

    def delta(self, device=None) -> torch.Tensor:
        return torch.kron(self._matrix(self.w1, device), self._matrix(self.w2, device)) * self.scale

    def merged(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return weight.float() + strength * self.delta(weight.device)


@dataclass(frozen=True)
class LohaLayer:
    w1_a: torch.Tensor  # [out, r]
    w1_b: torch.Tensor  # [r, in]
    w2_a: torch.Tensor  # [out, r]
    w2_b: torch.Tensor  # [r, in]
    scale: float
    algo = "loha"

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def features(self) -> tuple[int, int]:
        return self.w1_a.shape[0], self.w1_b.shape[1]

    def delta(self, device=None) -> torch.Tensor:
        first = _f32(self.w1_a, device) @ _f32(self.w1_b, device)
        return first * (_f32(self.w2_a, device) @ _f32(self.w2_b, device)) * self.scale

    def merged(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return weight.float() + strength * self.delta(weight.device)


AdapterLayer = LoraLayer | DoraLayer | LokrLayer | LohaLayer
