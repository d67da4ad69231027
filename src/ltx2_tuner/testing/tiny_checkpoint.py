"""Random LTX-2 checkpoints in the official unified format, small enough for tests and the demo.

The file has what a real `ltx-2-19b-dev.safetensors` / `ltx-2.3-22b-dev.safetensors` has: every component under
its official tensor names (including tensors diffusers drops, such as the VAE's `per_channel_statistics.channel`)
and safetensors metadata `config` (official schema) + `model_version`. Only the sizes differ. The modules are
built through our own official -> diffusers config translation, filled with seeded random values, and written
back under official names, so every test exercises the real loading path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ltx2_tuner.models.checkpoint import COMPONENTS, CONFIG_SECTION
from ltx2_tuner.models.fp8 import SCALE_SUFFIX, is_fp8_linear, quantize
from ltx2_tuner.models.loading import KEY_MAPS, construct_module
from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.testing.tiny_configs import official_config, tensor_shape_hints

MODEL_VERSIONS = {"2.0": "2.0.0", "2.3": "2.3.0", "2.5": "2.5.0"}
# LTX 2.5 names the Gemma it was trained with; the text encoder's config must carry the same `gemma_version`.
GEMMA_VERSION_2_5 = "gemma4-12b-ltx-v1"
CHECKPOINT_NAME = "ltx2_tiny.safetensors"


def build_diffusers_modules(version: str, size: str = "tiny", seed: int = 0) -> dict[str, nn.Module]:
    """Random diffusers modules for every component, configured from `official_config` via our translation."""
    config = official_config(version, size)
    shapes = tensor_shape_hints(version, size)
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for component in COMPONENTS:
        module = construct_module(component, config[CONFIG_SECTION[component]], shapes, empty=False)
        _randomize(module, generator)
        modules[component] = module.eval()
    return modules


@torch.no_grad()
def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    # Default inits leave some tensors at zero (AdaLN tables, gates); random values make every weight matter.
    for param in module.parameters():
        fan_in = param[0].numel() if param.dim() >= 2 else param.numel()
        param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)
    for name, buffer in module.named_buffers():
        if name == "latents_mean":
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name == "latents_std":
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))


def official_state_dict(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """All modules' tensors under official names, plus the official-only tensors the real files carry."""
    tensors: dict[str, torch.Tensor] = {}
    for component, module in modules.items():
        key_map = KEY_MAPS[component]
        for name, tensor in module.state_dict().items():
            tensors[key_map.to_official(name)] = tensor.detach().clone()
    # The video VAE file carries three more statistics that no loader uses.
    mean = tensors.get("vae.per_channel_statistics.mean-of-means")
    if mean is not None:
        tensors["vae.per_channel_statistics.channel"] = torch.arange(mean.numel(), dtype=torch.int64)
        tensors["vae.per_channel_statistics.mean-of-stds"] = torch.ones_like(mean)
        tensors["vae.per_channel_statistics.mean-of-stds_over_std-of-means"] = torch.ones_like(mean)
    return tensors


def write_tiny_checkpoint(
    out_dir: str | Path,
    version: str,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
    fp8: bool = False,
) -> Path:
    """Write `out_dir/ltx2_tiny.safetensors` (official format; `path` overrides the name) and return its path.

    `fp8`: as Lightricks' `-fp8` files: the blocks' attention and feed-forward weights in float8 e4m3 with a scalar
    fp32 `.weight_scale` beside each, everything else in `dtype`."""
    modules = build_diffusers_modules(version, size, seed)
    tensors = {
        name: tensor.to(dtype) if tensor.is_floating_point() else tensor
        for name, tensor in official_state_dict(modules).items()
    }
    del modules
    if fp8:
        tensors = _quantize_official(tensors)
    metadata = checkpoint_metadata(version, official_config(version, size))
    path = Path(path) if path is not None else Path(out_dir) / CHECKPOINT_NAME
    save_atomically(tensors, path, metadata)
    return path


def checkpoint_metadata(version: str, config: dict) -> dict[str, str]:
    """The safetensors metadata of an official file of `version` with metadata `config`."""
    metadata = {"config": json.dumps(config), "model_version": MODEL_VERSIONS[version]}
    if version == "2.5":
        source = {"ltx_version": MODEL_VERSIONS[version], "gemma_version": GEMMA_VERSION_2_5}
        metadata["gemma_source_checkpoint"] = json.dumps(source)
    return metadata


def _quantize_official(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "model.diffusion_model."
    out = {}
    for name, tensor in tensors.items():
        layer = name.removeprefix(prefix).removesuffix(".weight")
        if name.startswith(prefix) and name.endswith(".weight") and is_fp8_linear(layer):
            out[name], out[f"{name}{SCALE_SUFFIX}"] = quantize(tensor, scaled=True)
        else:
            out[name] = tensor
    return out


def copy_without(path: Path, out: Path, prefix: str) -> Path:
    """A copy of the checkpoint `path` at `out` (same metadata) without the tensors whose name starts with `prefix`:
    a file that lacks a component, for tests of what a command needs."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(prefix)}  # noqa: SIM118
    save_file(tensors, str(out), metadata=metadata)
    return out
