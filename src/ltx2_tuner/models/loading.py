"""Build diffusers modules for each component of an official LTX-2 checkpoint and load their weights.

Modules are built with parameters on the meta device (buffers that the constructor computes, such as the
vocoder's resampling filters, stay real), then each tensor of the requested component alone is read from disk,
renamed, optionally cast, and assigned in place. RAM peaks near one copy of that component's weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Literal

import torch
from accelerate import init_empty_weights
from torch import nn
from tqdm import tqdm

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import configs, diffusion_vae
from ltx2_tuner.models.checkpoint import CONFIG_SECTION, CheckpointInfo, read_checkpoint_info
from ltx2_tuner.models.fp8 import SCALE_SUFFIX, Fp8Loader
from ltx2_tuner.models.key_maps import (
    AUDIO_VAE_KEYS,
    CONNECTOR_KEYS,
    TRANSFORMER_KEYS,
    VIDEO_VAE_KEYS,
    VOCODER_KEYS,
    KeyMap,
)
from ltx2_tuner.models.safetensors_io import read_tensors

_PROGRESS_MIN_BYTES = 256 * 2**20  # smaller components load in well under a second
VaePart = Literal["both", "encoder", "decoder"]
PathOrInfo = str | os.PathLike | CheckpointInfo

KEY_MAPS: dict[str, KeyMap] = {
    "transformer": TRANSFORMER_KEYS,
    "text_connectors": CONNECTOR_KEYS,
    "video_vae": VIDEO_VAE_KEYS,
    "audio_vae": AUDIO_VAE_KEYS,
    "vocoder": VOCODER_KEYS,
}


def _info(checkpoint: PathOrInfo) -> CheckpointInfo:
    return checkpoint if isinstance(checkpoint, CheckpointInfo) else read_checkpoint_info(checkpoint)


def _shapes(info: CheckpointInfo, component: str) -> dict[str, tuple[int, ...]]:
    return {name: info.header.tensors[name].shape for name in info.tensor_names[component]}


def build_module(info: CheckpointInfo, component: str) -> nn.Module:
    """The diffusers module of `component`, parameters on the meta device, configured from the checkpoint."""
    info.require(component)
    section = info.configs[CONFIG_SECTION[component]]
    return construct_module(component, section, _shapes(info, component), where=str(info.path))


def construct_module(
    component: str,
    section: dict,
    shapes: dict[str, tuple[int, ...]],
    where: str = "checkpoint",
    empty: bool = True,
) -> nn.Module:
    """The diffusers module of `component` from its official config section and official tensor shapes.

    With `empty`, parameters are created on the meta device (to be assigned from a file); otherwise they are
    initialized on the CPU (the tiny-checkpoint factory).
    """
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder, LTX2VocoderWithBWE

    if component == "video_vae" and diffusion_vae.is_diffusion_vae(section, where):  # LTX 2.5's default VAE file
        return diffusion_vae.construct_diffusion_vae(section, where, empty)
    with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
        if component == "transformer":
            return LTX2VideoTransformer3DModel.from_config(configs.transformer_config(section, where))
        if component == "text_connectors":
            return LTX2TextConnectors.from_config(configs.connectors_config(section, shapes, where))
        if component == "video_vae":
            return AutoencoderKLLTX2Video.from_config(configs.video_vae_config(section, shapes, where))
        if component == "audio_vae":
            module = AutoencoderKLLTX2Audio.from_config(configs.audio_vae_config(section, where))
            _size_audio_latent_statistics(module, shapes)
            return module
        if component == "vocoder":
            with_bwe, kwargs = configs.vocoder_config(section, where)
            return (LTX2VocoderWithBWE if with_bwe else LTX2Vocoder).from_config(kwargs)
    raise ValueError(f"unknown component {component!r}")


def _size_audio_latent_statistics(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    # diffusers sizes the audio latent statistics by `base_channels`; they are per packed latent channel
    # (latent_channels x mel_bins / 4 = 128). Both are 128 in released models, so only smaller ones need this.
    shape = shapes.get("audio_vae.per_channel_statistics.mean-of-means")
    if shape is not None and tuple(module.latents_mean.shape) != shape:
        module.register_buffer("latents_mean", torch.zeros(shape), persistent=True)
        module.register_buffer("latents_std", torch.ones(shape), persistent=True)


def load_component(
    checkpoint: PathOrInfo,
    component: str,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    part: VaePart = "both",
) -> nn.Module:
    """Load one component of an official checkpoint as its diffusers module, in eval mode, frozen.

    component: "transformer" (the plain diffusers backbone), "text_connectors" (connectors + Gemma feature
    projection), "video_vae", "audio_vae" or "vocoder". `part` selects the encoder or decoder half of a VAE;
    the other half is neither built nor read. Floating-point weights are cast to `dtype` when given.
    """
    info = _info(checkpoint)
    if component == "video_vae" and diffusion_vae.is_diffusion_vae(info.configs.get("vae", {}), str(info.path)):
        return diffusion_vae.load_diffusion_video_vae(info, part, dtype, device)
    module = build_module(info, component)
    keep = None
    if part != "both":
        if component not in ("video_vae", "audio_vae"):
            raise ValueError(f"part={part!r} applies to the VAEs only, not {component}")
        other = "decoder" if part == "encoder" else "encoder"
        setattr(module, other, None)

        def keep(name: str) -> bool:
            return not name.startswith(f"{other}.")

    return load_weights(info, component, module, dtype, device, keep)


def load_weights(
    info: CheckpointInfo,
    component: str,
    module: nn.Module,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    keep: Callable[[str], bool] | None = None,
    loader: Fp8Loader | None = None,
) -> nn.Module:
    """Read `component`'s tensors into `module` (built by `build_module`, possibly pruned), eval mode, frozen.

    `keep(diffusers_name)` selects the tensors a pruned module still has; the others are not read at all.
    Every tensor the module expects must come from the file. Each tensor goes to `device` and is converted there
    as soon as it is read (cast to `dtype`; fp8 tensors of the file dequantized with their `_scale`, or kept in fp8
    by an `Fp8Loader` with storage), so host memory holds one tensor at a time.
    """
    key_map = KEY_MAPS[component]
    loader = loader or Fp8Loader((), None, dtype)
    official = info.tensor_names[component]
    scale_of = {
        name.removesuffix(SCALE_SUFFIX): name
        for name in official
        if name.endswith(SCALE_SUFFIX) and name.removesuffix(SCALE_SUFFIX) in set(official)
    }
    skipped = set(scale_of.values())
    renamed = {name: key_map.to_diffusers(name) for name in official if name not in skipped}
    names = [name for name, new in renamed.items() if new is not None and (keep is None or keep(new))]
    scales = dict(read_tensors(info.header, [scale_of[name] for name in names if name in scale_of]))
    state_dict = {}
    total_bytes = sum(info.header.tensors[name].nbytes for name in names)
    with tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc=f"loading {component}",
        disable=total_bytes < _PROGRESS_MIN_BYTES,
        leave=False,
    ) as progress:
        for name, tensor in read_tensors(info.header, names):
            scale = scales.get(scale_of.get(name, ""))
            state_dict.update(loader.convert(renamed[name], tensor.to(device), scale))
            progress.update(info.header.tensors[name].nbytes)
    _assign_state_dict(info, component, module, state_dict)
    if dtype is not None:
        _cast_constructed_buffers(module, dtype, loaded=state_dict.values())
    return module.to(device).eval().requires_grad_(False)


def _cast_constructed_buffers(module: nn.Module, dtype: torch.dtype, loaded) -> None:
    # Buffers the constructor computes (resampling filters) are not in the file and so were not cast on read.
    from_file = {id(tensor) for tensor in loaded}
    for submodule in module.modules():
        for name, buffer in submodule._buffers.items():
            if buffer is None or id(buffer) in from_file:
                continue
            if buffer.is_floating_point() and buffer.dtype != dtype:
                submodule._buffers[name] = buffer.to(dtype)


def _assign_state_dict(info: CheckpointInfo, component: str, module: nn.Module, state_dict: dict) -> None:
    key_map = KEY_MAPS[component]
    expected = module.state_dict(keep_vars=True).keys()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        names = ", ".join(key_map.to_official(k) for k in missing[:3])
        raise CheckpointError(
            f"{info.path}: {component.replace('_', ' ')} weights are incomplete ({len(missing)} missing, e.g. "
            f"{names}); the file is damaged or not an official LTX-{info.version} checkpoint, download it again"
        )
    if unexpected:
        names = ", ".join(key_map.to_official(k) for k in unexpected[:3])
        raise CheckpointError(
            f"{info.path}: {component.replace('_', ' ')} has {len(unexpected)} tensors that its `config` does not "
            f"describe (e.g. {names}); the metadata does not match the weights, use the original checkpoint"
        )
    shape_errors = [
        (k, tuple(v.shape), tuple(state_dict[k].shape))
        for k, v in module.state_dict(keep_vars=True).items()
        if tuple(v.shape) != tuple(state_dict[k].shape)
    ]
    if shape_errors:
        key, want, got = shape_errors[0]
        raise CheckpointError(
            f"{info.path}: {key_map.to_official(key)} has shape {list(got)} but the `config` metadata implies "
            f"{list(want)}; the metadata does not match the weights, use the original checkpoint"
        )
    module.load_state_dict(state_dict, strict=True, assign=True)


def load_transformer_backbone(
    checkpoint: PathOrInfo, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The plain diffusers `LTX2VideoTransformer3DModel` (audio and video streams), without text connectors."""
    return load_component(checkpoint, "transformer", dtype, device)


def load_text_connectors(
    checkpoint: PathOrInfo, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """diffusers `LTX2TextConnectors`: Gemma feature projection + video/audio connectors with registers."""
    return load_component(checkpoint, "text_connectors", dtype, device)


def load_video_vae(
    checkpoint: PathOrInfo, part: VaePart = "both", dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """diffusers `AutoencoderKLLTX2Video` (32x spatial, 8x temporal); `part` loads only the encoder or decoder.

    LTX 2.5's diffusion VAE file (`_class_name` "CausalDiffusionVAE") gives the encoder as `AutoencoderKLLTX2Video`
    without a decoder, the decoder as `LTX2VideoDiffusionDecoderModel`, both as `diffusion_vae.DiffusionVideoVae`."""
    return load_component(checkpoint, "video_vae", dtype, device, part)


def load_audio_vae(
    checkpoint: PathOrInfo, part: VaePart = "both", dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """diffusers `AutoencoderKLLTX2Audio` (stereo log-mel <-> [8, T, 16] latents)."""
    return load_component(checkpoint, "audio_vae", dtype, device, part)


def load_vocoder(
    checkpoint: PathOrInfo, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """diffusers `LTX2Vocoder` (LTX-2.0, 24 kHz) or `LTX2VocoderWithBWE` (LTX-2.3, 48 kHz)."""
    return load_component(checkpoint, "vocoder", dtype, device)
