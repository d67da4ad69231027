"""The LTX-2 transformer with the official reference's forward semantics, in three builds: av, video, audio.

`load_transformer(path, mode)` returns a `TransformerAdapter` around diffusers' `LTX2VideoTransformer3DModel`
(kept under `.backbone`, with diffusers' module names, so LoRA targets and key maps are unchanged). Its forward takes
one `ModalityInput` per modality and returns the flow-matching velocities.

What differs from calling diffusers directly (../shared/reference/diffusers-ltx2-and-peers.md §1.3):
- Audio <-> video cross-attention AdaLN follows ltx-core: scale/shift from the modality's own per-token timesteps,
  gates from the other modality's sigma (times `av_ca_timestep_scale_multiplier`). diffusers has no such mode; it
  differs by 0.1-0.6 under first-frame conditioning or independent audio/video sigmas.
- mode="video" builds, loads and runs no audio stream and no audio <-> video cross-attention (5.8 B of the 18.9 B
  parameters of LTX-2.0); mode="audio" builds and runs no video stream.
- Per-sample uniform timesteps are embedded once per sample rather than once per token (same values, less memory).

LTX 2.5's learned keyframe embedding is added right after `proj_in` to the video tokens `keyframes_mask` marks
(models/keyframes.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models.attention_backends import BACKENDS, check_backend, require_mask_support
from ltx2_tuner.models.block_swap import BlockSwap
from ltx2_tuner.models.checkpoint import CheckpointInfo, read_checkpoint_info
from ltx2_tuner.models.fp8 import Fp8Loader, Fp8Storage, prepare_fp8
from ltx2_tuner.models.keyframes import add_keyframes_embedding
from ltx2_tuner.models.loading import build_module, load_weights

Mode = Literal["av", "video", "audio"]
MODES: tuple[str, ...] = ("av", "video", "audio")

# Module and parameter names (diffusers naming) that belong to one stream only, at the top level and per block.
VIDEO_ONLY_TOP = ("proj_in", "caption_projection", "time_embed", "prompt_adaln", "scale_shift_table", "norm_out",
                  "proj_out", "rope", "keyframes_abs_pos_embedding")  # fmt: skip
AUDIO_ONLY_TOP = ("audio_proj_in", "audio_caption_projection", "audio_time_embed", "audio_prompt_adaln",
                  "audio_scale_shift_table", "audio_norm_out", "audio_proj_out", "audio_rope")  # fmt: skip
AV_CROSS_TOP = ("av_cross_attn_video_scale_shift", "av_cross_attn_audio_scale_shift", "av_cross_attn_video_a2v_gate",
                "av_cross_attn_audio_v2a_gate", "cross_attn_rope", "cross_attn_audio_rope")  # fmt: skip
VIDEO_ONLY_BLOCK = ("norm1", "attn1", "norm2", "attn2", "norm3", "ff", "scale_shift_table", "prompt_scale_shift_table")
AUDIO_ONLY_BLOCK = ("audio_norm1", "audio_attn1", "audio_norm2", "audio_attn2", "audio_norm3", "audio_ff",
                    "audio_scale_shift_table", "audio_prompt_scale_shift_table")  # fmt: skip
AV_CROSS_BLOCK = ("audio_to_video_norm", "audio_to_video_attn", "video_to_audio_norm", "video_to_audio_attn",
                  "video_a2v_cross_attn_scale_shift_table", "audio_a2v_cross_attn_scale_shift_table")  # fmt: skip


def context_dims(config) -> tuple[int, int]:
    """(video, audio) width of the text context the transformer takes: the connectors' output width. LTX-2.0
    projects captions inside the transformer (from Gemma's width), LTX-2.3 takes them at its cross-attention width."""
    if config.use_prompt_embeddings:
        return config.caption_channels, config.caption_channels
    return config.cross_attention_dim, config.audio_cross_attention_dim


def excluded_names(mode: Mode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(top-level names, per-block names) that a `mode` build leaves out."""
    if mode == "video":
        return AUDIO_ONLY_TOP + AV_CROSS_TOP, AUDIO_ONLY_BLOCK + AV_CROSS_BLOCK
    if mode == "audio":
        return VIDEO_ONLY_TOP + AV_CROSS_TOP, VIDEO_ONLY_BLOCK + AV_CROSS_BLOCK
    return (), ()


def is_excluded(diffusers_name: str, mode: Mode) -> bool:
    """Whether a parameter of the full model (diffusers name) is absent from a `mode` build."""
    top, per_block = excluded_names(mode)
    parts = diffusers_name.split(".")
    if parts[0] == "transformer_blocks":
        return len(parts) > 2 and parts[2] in per_block
    return parts[0] in top


@dataclass(frozen=True)
class ModalityInput:
    """One modality's input to the transformer.

    latent: [B, N, C] patchified tokens, VAE-normalized (`latent_layout.patchify_video/audio`).
    sigma: [B] noise level in [0, 1] of the sample (drives prompt AdaLN and the other modality's cross gate).
    timesteps: [B, N] per-token noise level in [0, 1]; 0 on clean conditioning tokens.
    positions: [B, 3, N, 2] (video) or [B, 1, N, 2] (audio) `[start, end)` bounds (`latent_layout`).
    context: [B, T, D] text context from the connectors.
    context_mask: optional [B, T], 1 = real token (None = all real, the case after connector registers).
    keyframes_mask: optional [B, N] (or [B, N, 1]), > 0 on video tokens that get the learned keyframe embedding
        (LTX 2.5 marks the first latent frame, `keyframes.first_frame_keyframes_mask`); ignored for audio and by models
        without the embedding (2.0, 2.3).
    """

    latent: torch.Tensor
    sigma: torch.Tensor
    timesteps: torch.Tensor
    positions: torch.Tensor
    context: torch.Tensor
    context_mask: torch.Tensor | None = None
    keyframes_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class _Stream:
    """Per-modality tensors prepared once per forward and shared by all blocks (never mutated: activation
    checkpointing re-runs blocks in backward with these same objects)."""

    context: torch.Tensor
    context_bias: torch.Tensor | None
    temb: torch.Tensor
    embedded_timestep: torch.Tensor
    temb_prompt: torch.Tensor | None
    rope: tuple[torch.Tensor, torch.Tensor]


class TransformerAdapter(nn.Module):
    """LTX-2 transformer forward with official semantics over a (possibly pruned) diffusers backbone."""

    def __init__(self, backbone: nn.Module, mode: Mode):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.backbone = backbone
        self.mode = mode
        self.gradient_checkpointing = False
        self.block_swap = None  # a models.block_swap.BlockSwap when some blocks live in host memory
        self.compiled_steps: dict[Callable, Callable] = {}  # block step function -> its torch.compile'd version
        self.attention_backend = BACKENDS["native"]  # diffusers' default: PyTorch SDPA

    @property
    def config(self):
        return self.backbone.config

    @property
    def has_keyframes_embedding(self) -> bool:
        """Whether video tokens marked by `ModalityInput.keyframes_mask` get the learned embedding (LTX 2.5)."""
        return getattr(self.backbone, "keyframes_abs_pos_embedding", None) is not None

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in backward instead of keeping its activations."""
        self.gradient_checkpointing = enabled

    def enable_block_swap(self, num_blocks: int, device: torch.device | str) -> None:
        """Keep the frozen weights of the last `num_blocks` transformer blocks in (pinned) host memory and stream them
        to `device` ahead of use (models/block_swap.py); move everything else to `device` now. Call it on a model
        loaded on the CPU. LoRA layers injected before go to `device` now; injected after, when their block first
        runs (so inject first if an optimizer state is loaded before the first forward)."""
        if self.block_swap is not None:
            raise ValueError("block swap is already enabled on this transformer")
        swap = BlockSwap(self.backbone.transformer_blocks, num_blocks, device)
        streamed = {id(tensor) for tensor in swap.streamed_tensors()}
        for tensor in [*self.parameters(), *self.buffers()]:
            if id(tensor) not in streamed and tensor.device != swap.device:
                tensor.data = tensor.data.to(swap.device)
        self.block_swap = swap

    def set_attention_backend(self, backend: str, training: bool) -> None:
        """Attention kernel by our name (models/attention_backends.py: native, cudnn, efficient, math, flash, flash3,
        xformers, sage); ConfigError when it cannot run here, or has no backward pass and `training`."""
        chosen = check_backend(backend, training, self.backbone.dtype)
        try:
            self.backbone.set_attention_backend(chosen.diffusers_name)
        except (ValueError, ImportError, RuntimeError) as error:
            raise ConfigError(f"--attention_backend {chosen.name}: not usable here: {error}") from None
        self.attention_backend = chosen

    def compile_blocks(self, backend: str = "inductor") -> None:
        """torch.compile the step of each kind of block (regional; one graph shared by every block), see
        models/compile.py. Call it after LoRA injection and block swap."""
        from ltx2_tuner.models.compile import compile_blocks

        compile_blocks(self, backend=backend)

    def forward(
        self, video: ModalityInput | None = None, audio: ModalityInput | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(video_velocity [B, N_v, 128] | None, audio_velocity [B, N_a, 128] | None)."""
        if video is None and audio is None:
            raise ValueError("pass at least one of video and audio")
        if video is not None and self.mode == "audio":
            raise ValueError("this transformer was built with mode='audio'; it has no video stream")
        if audio is not None and self.mode == "video":
            raise ValueError("this transformer was built with mode='video'; it has no audio stream")

        blocks = self.backbone.transformer_blocks
        video_hidden, video_stream = self._prepare(video, "video") if video is not None else (None, None)
        audio_hidden, audio_stream = self._prepare(audio, "audio") if audio is not None else (None, None)
        if video_stream is not None and audio_stream is not None:
            cross = self._prepare_cross(video, audio, video_hidden.dtype, audio_hidden.dtype)
            for index, block in enumerate(blocks):
                video_hidden, audio_hidden = self._run(
                    _av_block, index, block, video_hidden, audio_hidden, video_stream, audio_stream, cross
                )
        elif video_stream is not None:
            for index, block in enumerate(blocks):
                video_hidden = self._run(_video_block, index, block, video_hidden, video_stream)
        else:
            for index, block in enumerate(blocks):
                audio_hidden = self._run(_audio_block, index, block, audio_hidden, audio_stream)

        video_out = self._output(video_hidden, video_stream, "") if video_stream is not None else None
        audio_out = self._output(audio_hidden, audio_stream, "audio_") if audio_stream is not None else None
        return video_out, audio_out

    def _run(self, step: Callable, index: int, block: nn.Module, *args):
        """Block `index` of the stack: its weights on the device first (block swap), compiled when enabled,
        recomputed in backward with gradient checkpointing."""
        step = self.compiled_steps.get(step, step)
        if self.block_swap is not None:
            self.block_swap.before_forward(index)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            out = activation_checkpoint(step, block, *args, use_reentrant=False)
        else:
            out = step(block, *args)
        if self.block_swap is not None:
            out = self.block_swap.after_forward(index, out)
        return out

    def _prepare(self, inputs: ModalityInput, modality: str) -> tuple[torch.Tensor, _Stream]:
        """(projected tokens, the stream's per-forward constants)."""
        model = self.backbone
        prefix = "" if modality == "video" else "audio_"
        batch_size = inputs.latent.shape[0]
        hidden = getattr(model, f"{prefix}proj_in")(inputs.latent)
        if modality == "video":
            embedding = getattr(model, "keyframes_abs_pos_embedding", None)
            hidden = add_keyframes_embedding(hidden, inputs.keyframes_mask, embedding)
        dtype = hidden.dtype
        scale = model.config.timestep_scale_multiplier

        temb, embedded = getattr(model, f"{prefix}time_embed")(
            (_compact(inputs.timesteps) * scale).flatten(), batch_size=batch_size, hidden_dtype=dtype
        )
        temb_prompt = None
        if model.prompt_modulation and model.config.use_prompt_adaln_single:  # LTX-2.3
            temb_prompt, _ = getattr(model, f"{prefix}prompt_adaln")(
                (inputs.sigma * scale).flatten(), batch_size=batch_size, hidden_dtype=dtype
            )
            temb_prompt = temb_prompt.view(batch_size, -1, temb_prompt.size(-1))

        context = inputs.context
        if model.config.use_prompt_embeddings:  # LTX-2.0 projects captions inside the transformer
            context = getattr(model, f"{prefix}caption_projection")(context).view(batch_size, -1, hidden.size(-1))
        context_bias = None
        if inputs.context_mask is not None:
            require_mask_support(self.attention_backend)
            context_bias = ((1 - inputs.context_mask.to(dtype)) * -10000.0).unsqueeze(1)

        rope = getattr(model, f"{prefix}rope")(inputs.positions, device=hidden.device)
        return hidden, _Stream(
            context=context,
            context_bias=context_bias,
            temb=temb.view(batch_size, -1, temb.size(-1)),
            embedded_timestep=embedded.view(batch_size, -1, embedded.size(-1)),
            temb_prompt=temb_prompt,
            rope=rope,
        )

    def _prepare_cross(
        self, video: ModalityInput, audio: ModalityInput, video_dtype: torch.dtype, audio_dtype: torch.dtype
    ) -> tuple:
        """AdaLN inputs and RoPE of the audio <-> video cross-attention, official semantics."""
        model = self.backbone
        batch_size = video.latent.shape[0]
        scale = model.config.timestep_scale_multiplier
        gate_factor = model.config.cross_attn_timestep_scale_multiplier / scale

        def adaln(module, timestep, dtype):
            out, _ = module(timestep.flatten(), batch_size=batch_size, hidden_dtype=dtype)
            return out.view(batch_size, -1, out.shape[-1])

        # scale/shift: the modality's own per-token timesteps; gate: the other modality's sigma.
        video_scale_shift = adaln(model.av_cross_attn_video_scale_shift, _compact(video.timesteps) * scale, video_dtype)
        video_gate = adaln(model.av_cross_attn_video_a2v_gate, (audio.sigma * scale) * gate_factor, video_dtype)
        audio_scale_shift = adaln(model.av_cross_attn_audio_scale_shift, _compact(audio.timesteps) * scale, audio_dtype)
        audio_gate = adaln(model.av_cross_attn_audio_v2a_gate, (video.sigma * scale) * gate_factor, audio_dtype)
        # Cross-modal attention sees time only.
        video_rope = model.cross_attn_rope(video.positions[:, 0:1, :], device=video.latent.device)
        audio_rope = model.cross_attn_audio_rope(audio.positions[:, 0:1, :], device=audio.latent.device)
        return video_scale_shift, audio_scale_shift, video_gate, audio_gate, video_rope, audio_rope

    def _output(self, hidden: torch.Tensor, stream: _Stream, prefix: str) -> torch.Tensor:
        model = self.backbone
        table = getattr(model, f"{prefix}scale_shift_table")
        values = table[None, None] + stream.embedded_timestep[:, :, None]
        shift, scale = values[:, :, 0], values[:, :, 1]
        hidden = getattr(model, f"{prefix}norm_out")(hidden)
        return getattr(model, f"{prefix}proj_out")(hidden * (1 + scale) + shift)


def _compact(timesteps: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, 1] when every token of each sample shares one timestep; otherwise unchanged."""
    if timesteps.ndim == 2 and timesteps.shape[1] > 1 and bool((timesteps == timesteps[:, :1]).all()):
        return timesteps[:, :1]
    return timesteps


def _attention_kwargs(block: nn.Module) -> dict:
    # 2.3 blocks use the STG-capable processor; without a perturbation it is plain attention.
    return {"perturbation_mask": None, "all_perturbed": False} if block.perturbed_attn else {}


def _single_stream_block(
    block: nn.Module, x: torch.Tensor, stream: _Stream, prefix: str, query_adaln: bool
) -> torch.Tensor:
    """One block of one stream alone: self-attention, text cross-attention, feed-forward. These are the ops of
    diffusers' block for that stream in the same order, so the result is bit-identical to isolated AV."""
    batch_size = x.size(0)
    params = block.get_mod_params(getattr(block, f"{prefix}scale_shift_table"), stream.temb, batch_size)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = params[:6]

    norm = getattr(block, f"{prefix}norm1")(x)
    norm = norm * (1 + scale_msa) + shift_msa
    attn = getattr(block, f"{prefix}attn1")(
        hidden_states=norm,
        encoder_hidden_states=None,
        query_rotary_emb=stream.rope,
        attention_mask=None,
        **_attention_kwargs(block),
    )
    x = x + attn * gate_msa

    # Text cross-attention; LTX-2.3 modulates the queries (per block table) and the text keys/values (prompt AdaLN).
    context = stream.context
    if block.cross_attn_adaln:
        table = getattr(block, f"{prefix}prompt_scale_shift_table")
        if stream.temb_prompt is not None:
            shift_kv, scale_kv = block.get_mod_params(table, stream.temb_prompt, batch_size)
        else:
            shift_kv, scale_kv = table[None, None].to(device=x.device, dtype=x.dtype).unbind(dim=2)
        context = context * (1 + scale_kv) + shift_kv
    norm = getattr(block, f"{prefix}norm2")(x)
    if query_adaln:
        shift_q, scale_q, gate_q = params[6:9]
        norm = norm * (1 + scale_q) + shift_q
    attn = getattr(block, f"{prefix}attn2")(
        norm, encoder_hidden_states=context, query_rotary_emb=None, attention_mask=stream.context_bias
    )
    if query_adaln:
        attn = attn * gate_q
    x = x + attn

    norm = getattr(block, f"{prefix}norm3")(x) * (1 + scale_mlp) + shift_mlp
    return x + getattr(block, f"{prefix}ff")(norm) * gate_mlp


def _video_block(block: nn.Module, hidden: torch.Tensor, stream: _Stream) -> torch.Tensor:
    return _single_stream_block(block, hidden, stream, "", block.video_cross_attn_adaln)


def _audio_block(block: nn.Module, hidden: torch.Tensor, stream: _Stream) -> torch.Tensor:
    return _single_stream_block(block, hidden, stream, "audio_", block.audio_cross_attn_adaln)


def _av_block(block, video_hidden, audio_hidden, video: _Stream, audio: _Stream, cross: tuple):
    video_ss, audio_ss, video_gate, audio_gate, video_rope, audio_rope = cross
    return block(
        hidden_states=video_hidden,
        audio_hidden_states=audio_hidden,
        encoder_hidden_states=video.context,
        audio_encoder_hidden_states=audio.context,
        temb=video.temb,
        temb_audio=audio.temb,
        temb_ca_scale_shift=video_ss,
        temb_ca_audio_scale_shift=audio_ss,
        temb_ca_gate=video_gate,
        temb_ca_audio_gate=audio_gate,
        temb_prompt=video.temb_prompt,
        temb_prompt_audio=audio.temb_prompt,
        video_rotary_emb=video.rope,
        audio_rotary_emb=audio.rope,
        ca_video_rotary_emb=video_rope,
        ca_audio_rotary_emb=audio_rope,
        encoder_attention_mask=video.context_bias,
        audio_encoder_attention_mask=audio.context_bias,
    )


def prune(backbone: nn.Module, mode: Mode) -> nn.Module:
    """Delete the modules and parameters a `mode` build does not have (do it on the meta device, before loading)."""
    top, per_block = excluded_names(mode)
    for name in top:
        if hasattr(backbone, name):
            delattr(backbone, name)
    for block in backbone.transformer_blocks:
        for name in per_block:
            if hasattr(block, name):
                delattr(block, name)
    return backbone


def load_transformer(
    checkpoint: str | os.PathLike | CheckpointInfo,
    mode: Mode = "av",
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    attention_backend: str = "native",
    gradient_checkpointing: bool = False,
    fp8: Fp8Storage | None = None,
) -> TransformerAdapter:
    """The transformer of an official checkpoint for training or sampling in `mode` ("av", "video" or "audio").

    Only the tensors of the chosen build are read. Weights are frozen and in eval mode; LoRA goes on
    `.backbone` (diffusers module names). `dtype` casts floating-point weights (e.g. torch.bfloat16). With `fp8`, the
    big Linear weights of the blocks are stored in float8 e4m3 and computed in `dtype` (models/fp8.py).
    """
    if mode not in MODES:
        raise ConfigError(f"--ltx_mode {mode!r} is not one of {', '.join(MODES)}")
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else read_checkpoint_info(checkpoint)
    backbone = prune(build_module(info, "transformer"), mode)
    fp8_layers = prepare_fp8(backbone, dtype or torch.bfloat16) if fp8 is not None else ()
    backbone = load_weights(
        info, "transformer", backbone, dtype, device, keep=lambda name: not is_excluded(name, mode),
        loader=Fp8Loader(fp8_layers, fp8, dtype),
    )  # fmt: skip
    adapter = TransformerAdapter(backbone, mode)
    if attention_backend != "native":  # diffusers' default is PyTorch SDPA already
        adapter.set_attention_backend(attention_backend, training=True)  # generation: set_attention_backend
    adapter.enable_gradient_checkpointing(gradient_checkpointing)
    return adapter.eval()
