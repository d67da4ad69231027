"""LTX 2.5's diffusion video VAE file (`vae/ltx-2.5-video-vae-bf16.safetensors`, `_class_name` "CausalDiffusionVAE").

The file holds 2.3's conv encoder (same weights, same block ladder) and a diffusion decoder: deterministic
neighborhood-attention upsampling stages, then a small diffusion model that denoises pixels conditioned on them.
Its metadata `config.vae` is nested: `encoder{blocks, out_channels, ...}`, `decoder{stage_channels, stage_depths,
stage_kernels, upsamples, stage5_kernel, head_dim, t_emb_dim, default_num_inference_steps,
timestep_scale_multiplier}` and a top-level `model_output_type`. We build the halves as diffusers 0.42.1's
`AutoencoderKLLTX2Video` (encoder only) and `LTX2VideoDiffusionDecoderModel`, and load them as ltx-core does:
the fused `attn.qkv` is split into `to_q/to_k/to_v`, the static gates of distilled decoders (`gate_msa`,
`gate_mlp`, `gate_ctx`) are folded into the Linear they scale (W <- g*W, b <- g*b, in float32), and the bundled
preview heads `coarse_*` are dropped. A field the metadata lacks takes ltx-core's default (2 steps, "v",
multiplier 1.0; diffusers' own defaults differ), so a file's sampling settings always come from its metadata.

Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md A4, A8; ltx-core video_vae/model_configurator.py
(`_prepare_video_encoder_kwargs`, `_build_diffusion_video_decoder`, `_build_diffusion_vae_decoder_sd_ops`),
diffusers scripts/convert_ltx2_to_diffusers.py (`convert_ltx2_diffusion_video_vae`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from accelerate import init_empty_weights
from torch import nn

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import configs
from ltx2_tuner.models.checkpoint import CheckpointInfo
from ltx2_tuner.models.diffusion_decoder import decode_latents, use_tiled_neighborhood_attention
from ltx2_tuner.models.key_maps import VIDEO_VAE_KEYS, KeyMap
from ltx2_tuner.models.safetensors_io import read_tensors

CONV_VAE_CLASS = "CausalVideoAutoencoder"
DIFFUSION_VAE_CLASS = "CausalDiffusionVAE"

# ltx-core's DiffusionVideoDecoder defaults, used for fields a file does not write (released files write them all).
_LTX_CORE_DECODER_DEFAULTS: dict[str, Any] = {
    "stage_channels": (1024, 512, 256, 256, 128),
    "stage_depths": (4, 6, 4, 2, 8),
    "stage_kernels": ((3, 7, 7), (3, 7, 7), (3, 5, 5), (3, 5, 5), (3, 3, 3)),
    "upsamples": (((1, 2, 2), 2), ((2, 1, 1), 2), ((2, 2, 2), 1), ((2, 2, 2), 2)),
    "stage5_kernel": (3, 7, 7),
    "head_dim": 64,
    "t_emb_dim": 384,
    "default_num_inference_steps": 2,
    "timestep_scale_multiplier": 1.0,
    "model_output_type": "v",
}
# diffusers' AutoencoderKLLTX2Video always builds a conv decoder; this smallest valid one is built on the meta
# device and removed before loading, since the diffusion file has no conv decoder.
_PLACEHOLDER_DECODER_BLOCKS = [["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 1}], ["res_x", {}]]

_DECODER_PREFIX = "vae.decoder."
_STATISTICS_PREFIX = "vae.per_channel_statistics."
_GATES = (".gate_msa", ".gate_mlp", ".gate_ctx")
# Official Linear (weight or bias) -> the gate that scales its output, as ltx-core folds them.
_GATE_OF = {
    ".attn.proj.weight": ".gate_msa",
    ".attn.proj.bias": ".gate_msa",
    ".mlp.w_down.weight": ".gate_mlp",
    ".mlp.w_down.bias": ".gate_mlp",
    ".context_proj.weight": ".gate_ctx",
    ".context_proj.bias": ".gate_ctx",
}
# Official decoder names -> diffusers names (fused `attn.qkv` is split in code); the per-channel statistics are the
# diffusers model's latents_mean / latents_std, shared with the encoder.
DIFFUSION_DECODER_KEYS = KeyMap(
    prefix="vae.",
    rules=(
        ("decoder.t_embedder.mlp.0", "decoder.t_embedder.timestep_embedder.linear_1"),
        ("decoder.t_embedder.mlp.2", "decoder.t_embedder.timestep_embedder.linear_2"),
        ("attn.proj", "attn.to_out.0"),
        ("q_norm", "norm_q"),
        ("k_norm", "norm_k"),
        ("per_channel_statistics.mean-of-means", "latents_mean"),
        ("per_channel_statistics.std-of-means", "latents_std"),
    ),
)

VaePart = Literal["both", "encoder", "decoder"]


def is_diffusion_vae(section: Mapping[str, Any], where: str = "checkpoint") -> bool:
    """Whether the official `config["vae"]` section describes the diffusion VAE (else the conv VAE), as ltx-core
    decides it: by `_class_name`, absent meaning the conv VAE. An unknown class is a CheckpointError."""
    name = section.get("_class_name", CONV_VAE_CLASS)
    if name not in (CONV_VAE_CLASS, DIFFUSION_VAE_CLASS):
        raise CheckpointError(
            f"{where}: video VAE class `vae._class_name` {name!r} is unknown (ltx2-tuner reads {CONV_VAE_CLASS!r} "
            f"and {DIFFUSION_VAE_CLASS!r}); pass an official LTX-2 video VAE file, or update ltx2-tuner"
        )
    return name == DIFFUSION_VAE_CLASS


# Config translation ---------------------------------------------------------------------------------------------------
def encoder_config(section: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """diffusers `AutoencoderKLLTX2Video` kwargs for the encoder half, from the nested `vae.encoder` section.

    The encoder is 2.3's, so the section is rewritten in the flat 2.3 vocabulary (`blocks` -> `encoder_blocks`,
    `out_channels` -> `latent_channels`, as ltx-core's `_prepare_video_encoder_kwargs` reads it) and translated by
    `configs.video_vae_config`, with a placeholder conv decoder that is never loaded.
    """
    encoder = section.get("encoder")
    if not isinstance(encoder, Mapping) or not encoder.get("blocks"):
        raise CheckpointError(
            f"{where}: `vae.encoder.blocks` is missing from the diffusion VAE's metadata; the file is damaged or "
            "was re-saved without it, download it again"
        )
    flat = {
        "_class_name": CONV_VAE_CLASS,
        "dims": encoder.get("dims", section.get("dims", 3)),
        "in_channels": encoder.get("in_channels", 3),
        "latent_channels": encoder.get("out_channels", section.get("latent_channels", 128)),
        "encoder_blocks": encoder["blocks"],
        "patch_size": encoder.get("patch_size", 4),
        "norm_layer": encoder.get("norm_layer", "pixel_norm"),
        "latent_log_var": encoder.get("latent_log_var", "uniform"),
        "spatial_padding_mode": encoder.get("spatial_padding_mode", section.get("encoder_spatial_padding_mode")),
        "scaling_factor": section.get("scaling_factor", 1.0),
        "decoder_blocks": _PLACEHOLDER_DECODER_BLOCKS,
        "decoder_base_channels": 8,
    }
    return configs.video_vae_config(flat, shapes={}, where=where)


def decoder_config(section: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """diffusers `LTX2VideoDiffusionDecoderModel` kwargs from the official `config["vae"]` section.

    Reads `vae.decoder` (or the flat section, as ltx-core falls back to it) and the top-level `model_output_type`.
    `stage_kernels` lists one kernel per stage; diffusers takes those of the deterministic stages only (stage 5 has
    `stage5_kernel`).
    """
    decoder = section.get("decoder", section)
    if not isinstance(decoder, Mapping):
        raise CheckpointError(f"{where}: `vae.decoder` is not an object; the metadata is damaged, download it again")

    def field(key: str, fallback: str | None = None) -> Any:
        if key in decoder:
            return decoder[key]
        if fallback is not None and fallback in decoder:
            return decoder[fallback]
        return _LTX_CORE_DECODER_DEFAULTS[key]

    try:
        upsamples = [(tuple(int(s) for s in stride), int(reduction)) for stride, reduction in field("upsamples")]
        channels = tuple(int(c) for c in field("stage_channels"))
        kernels = tuple(tuple(int(k) for k in kernel) for kernel in field("stage_kernels"))
        stage5_kernel = tuple(int(k) for k in field("stage5_kernel"))
        depths = tuple(int(d) for d in field("stage_depths"))
        triples = [stride for stride, _ in upsamples] + list(kernels) + [stage5_kernel]
        if not channels or len(depths) != len(channels) or any(len(triple) != 3 for triple in triples):
            raise ValueError
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{where}: `vae.decoder` stage layout (upsamples, stage_channels, stage_depths, stage_kernels, "
            "stage5_kernel) is malformed; the metadata is damaged, download the file again"
        ) from None
    output_type = section.get("model_output_type", _LTX_CORE_DECODER_DEFAULTS["model_output_type"])
    steps = field("default_num_inference_steps")
    problems = []
    if output_type not in ("x0", "v"):
        problems.append(f"`vae.model_output_type` {output_type!r} is neither 'x0' nor 'v'")
    if not isinstance(steps, int) or steps < 1:
        problems.append(f"`vae.decoder.default_num_inference_steps` {steps!r} is not a positive integer")
    if len(kernels) < len(upsamples) or len(channels) != len(upsamples) + 1:
        problems.append(f"{len(upsamples)} upsamples need {len(upsamples) + 1} stage_channels and stage_kernels")
    if decoder.get("resampler_kind", "linear") != "linear":
        problems.append(f"`vae.decoder.resampler_kind` {decoder['resampler_kind']!r} is not supported")
    if decoder.get("stage5_channels", channels[-1]) != channels[-1]:
        problems.append("`vae.decoder.stage5_channels` differing from the last stage's width is not supported")
    if problems:
        raise CheckpointError(f"{where}: {'; '.join(problems)}; use an official LTX 2.5 video VAE file")
    strides = [stride for stride, _ in upsamples]
    patch_size = int(decoder.get("patch_size", 4))
    return {
        "out_channels": int(decoder.get("out_channels", 3)),
        "latent_channels": int(decoder.get("in_channels", section.get("latent_channels", 128))),
        "patch_size": patch_size,
        "scaling_factor": section.get("scaling_factor", 1.0),
        "decoder_head_dim": int(field("head_dim", fallback="na_head_dim")),
        "decoder_stage_channels": channels,
        "decoder_stage_depths": depths,
        "decoder_stage_kernels": kernels[: len(upsamples)],
        "decoder_upsample_strides": tuple(strides),
        "decoder_upsample_channel_reductions": tuple(reduction for _, reduction in upsamples),
        "decoder_stage5_kernel": stage5_kernel,
        "decoder_t_emb_dim": int(field("t_emb_dim")),
        "decoder_timestep_scale_multiplier": float(field("timestep_scale_multiplier")),
        "decoder_model_output_type": output_type,
        "decoder_num_inference_steps": steps,
        "spatial_compression_ratio": math.prod(s[1] for s in strides) * patch_size,
        "temporal_compression_ratio": math.prod(s[0] for s in strides),
    }


# Modules --------------------------------------------------------------------------------------------------------------
class DiffusionVideoVae(nn.Module):
    """Both halves of a diffusion VAE file: `encoder_vae` (diffusers `AutoencoderKLLTX2Video` without its conv
    decoder) and `diffusion_decoder` (diffusers `LTX2VideoDiffusionDecoderModel`). `encode` and `decode` take and
    give what the conv VAE's do (pixels in [-1, 1], de-normalized latents)."""

    def __init__(self, encoder_vae: nn.Module, diffusion_decoder: nn.Module):
        super().__init__()
        self.encoder_vae = encoder_vae
        self.diffusion_decoder = diffusion_decoder

    def encode(self, sample: torch.Tensor):
        return self.encoder_vae.encode(sample)

    def decode(
        self, latents: torch.Tensor, generator: torch.Generator | None = None, num_inference_steps: int | None = None
    ):
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=decode_latents(self.diffusion_decoder, latents, generator, num_inference_steps))


def build_encoder(section: Mapping[str, Any], where: str = "checkpoint", empty: bool = True) -> nn.Module:
    """`AutoencoderKLLTX2Video` with the encoder of `section` and no decoder (parameters on the meta device if
    `empty`)."""
    from diffusers import AutoencoderKLLTX2Video

    with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
        module = AutoencoderKLLTX2Video.from_config(encoder_config(section, where))
    module.decoder = None
    return module


def build_decoder(section: Mapping[str, Any], where: str = "checkpoint", empty: bool = True) -> nn.Module:
    """`LTX2VideoDiffusionDecoderModel` configured from `section` (parameters on the meta device if `empty`), with
    the memory-bounded neighborhood attention of `diffusion_decoder`."""
    from diffusers import LTX2VideoDiffusionDecoderModel

    kwargs = decoder_config(section, where)
    try:
        with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
            module = LTX2VideoDiffusionDecoderModel.from_config(kwargs)
    except ValueError as error:  # inconsistent widths or head size, as diffusers checks them
        raise CheckpointError(f"{where}: `vae.decoder` cannot be built ({error}); the metadata is damaged") from None
    use_tiled_neighborhood_attention(module)
    return module


def construct_diffusion_vae(section: Mapping[str, Any], where: str = "checkpoint", empty: bool = True) -> nn.Module:
    """Both halves as one `DiffusionVideoVae`, configured from the official `config["vae"]` section."""
    return DiffusionVideoVae(build_encoder(section, where, empty), build_decoder(section, where, empty))


# Loading --------------------------------------------------------------------------------------------------------------
def load_diffusion_video_vae(
    info: CheckpointInfo,
    part: VaePart = "both",
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a diffusion VAE file's `part`: "encoder" -> `AutoencoderKLLTX2Video` (no decoder), "decoder" ->
    `LTX2VideoDiffusionDecoderModel`, "both" -> `DiffusionVideoVae`. Only that part's tensors are read; floating
    tensors are cast to `dtype`; eval mode, frozen."""
    info.require("video_vae")
    section = info.configs["vae"]
    where = str(info.path)
    if not is_diffusion_vae(section, where):
        raise ValueError(f"{where} holds the conv video VAE; load it with load_video_vae")
    halves = []
    if part in ("encoder", "both"):
        encoder = build_encoder(section, where)
        halves.append(_assign(info, encoder, _encoder_tensors(info, dtype, device), "encoder"))
    if part in ("decoder", "both"):
        decoder = build_decoder(section, where)
        halves.append(_assign(info, decoder, _decoder_tensors(info, dtype, device), "diffusion decoder"))
    if part not in ("encoder", "decoder", "both"):
        raise ValueError(f"part must be 'encoder', 'decoder' or 'both', not {part!r}")
    module = halves[0] if len(halves) == 1 else DiffusionVideoVae(*halves)
    return module.to(device).eval().requires_grad_(False)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None, device: str | torch.device) -> torch.Tensor:
    tensor = tensor.to(device)
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _encoder_tensors(info: CheckpointInfo, dtype, device) -> dict[str, torch.Tensor]:
    names = [n for n in info.tensor_names["video_vae"] if n.startswith(("vae.encoder.", _STATISTICS_PREFIX))]
    renamed = {name: VIDEO_VAE_KEYS.to_diffusers(name) for name in names}
    wanted = [name for name, new in renamed.items() if new is not None]
    return {renamed[name]: _cast(tensor, dtype, device) for name, tensor in read_tensors(info.header, wanted)}


def _decoder_tensors(info: CheckpointInfo, dtype, device) -> dict[str, torch.Tensor]:
    """The decoder's tensors under diffusers names: QKV split, gates folded, `coarse_*` and `type_emb` dropped."""
    names = info.tensor_names["video_vae"]
    gate_names = [n for n in names if n.startswith(_DECODER_PREFIX) and n.endswith(_GATES)]
    gates = dict(read_tensors(info.header, gate_names))
    wanted = [n for n in names if _is_decoder_weight(n) and n not in gates]
    state: dict[str, torch.Tensor] = {}
    for name, tensor in read_tensors(info.header, wanted):
        tensor = _fold_gate(info, name, tensor, gates)
        new = DIFFUSION_DECODER_KEYS.to_diffusers(name)
        if new.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            state.update(_split_qkv(info, name, new, tensor))
        else:
            state[new] = tensor
    return {key: _cast(tensor, dtype, device) for key, tensor in state.items()}


def _is_decoder_weight(name: str) -> bool:
    if name in (f"{_STATISTICS_PREFIX}mean-of-means", f"{_STATISTICS_PREFIX}std-of-means"):
        return True
    if not name.startswith(_DECODER_PREFIX):
        return False
    body = name.removeprefix(_DECODER_PREFIX)
    # Bundled preview heads (ltx-core drops them) and `type_emb`, which neither ltx-core nor diffusers defines
    # (ltx-core's non-strict load ignores it).
    return not (body.startswith("coarse_") or ".coarse_" in body or body == "type_emb")


def _fold_gate(info: CheckpointInfo, name: str, tensor: torch.Tensor, gates: dict[str, torch.Tensor]) -> torch.Tensor:
    suffix = next((leaf for leaf in _GATE_OF if name.endswith(leaf)), None)
    gate = gates.get(name[: -len(suffix)] + _GATE_OF[suffix]) if suffix else None
    if gate is None:
        return tensor
    if gate.shape != tensor.shape[:1]:
        raise CheckpointError(
            f"{info.path}: gate of {name} has shape {list(gate.shape)}, not [{tensor.shape[0]}]; the file is "
            "damaged, download it again"
        )
    scale = gate.float().view(-1, *([1] * (tensor.ndim - 1)))
    return (scale * tensor.float()).to(tensor.dtype)


def _split_qkv(info: CheckpointInfo, name: str, new: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if tensor.shape[0] % 3:
        raise CheckpointError(
            f"{info.path}: fused {name} has {tensor.shape[0]} rows, not 3 equal parts; the file is damaged"
        )
    stem, leaf = new.rsplit(".qkv.", 1)
    q, k, v = tensor.chunk(3, dim=0)
    return {f"{stem}.to_q.{leaf}": q.clone(), f"{stem}.to_k.{leaf}": k.clone(), f"{stem}.to_v.{leaf}": v.clone()}


def official_decoder_name(diffusers_name: str) -> str:
    """The official tensor name a diffusers decoder parameter is loaded from (`to_q/k/v` from the fused `qkv`)."""
    name = DIFFUSION_DECODER_KEYS.to_official(diffusers_name)
    for part in ("to_q", "to_k", "to_v"):
        name = name.replace(f".attn.{part}.", ".attn.qkv.")
    return name


def _assign(info: CheckpointInfo, module: nn.Module, state: dict[str, torch.Tensor], half: str) -> nn.Module:
    """Load `state` into `module` strictly; a missing, unexpected or mis-shaped tensor is one CheckpointError."""
    official = official_decoder_name if half != "encoder" else VIDEO_VAE_KEYS.to_official
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(
            f"{info.path}: video VAE {half} weights are incomplete ({len(missing)} missing, e.g. "
            f"{_first(official(k) for k in missing)}); the file is damaged or not an official LTX 2.5 video VAE, "
            "download it again"
        )
    if unexpected:
        raise CheckpointError(
            f"{info.path}: video VAE {half} has {len(unexpected)} tensors its `config` does not describe (e.g. "
            f"{_first(official(k) for k in unexpected)}); the metadata does not match the weights, use the "
            "original file"
        )
    for key, value in expected.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{info.path}: {official(key)} has shape {list(state[key].shape)} but the `config` metadata implies "
                f"{list(value.shape)}; the metadata does not match the weights, use the original file"
            )
    module.load_state_dict(state, strict=True, assign=True)
    return module


def _first(names: Iterable[str]) -> str:
    names = sorted(set(names))
    return ", ".join(names[:3])
