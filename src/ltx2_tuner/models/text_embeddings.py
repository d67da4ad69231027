"""Packed Gemma hidden states -> the transformer's text context: feature extraction, projection, connectors.

On top of diffusers' `LTX2TextConnectors`:
- LTX-2.0: per-layer masked mean/range norm (x8) over valid tokens, one shared projection (`text_proj_in`).
- LTX-2.3: per-token RMS norm per layer, per-modality projections scaled by sqrt(D / hidden) (with bias).
- Then each modality's 1D connector: valid tokens moved to the front, 128 learnable registers fill the rest, RoPE,
  N transformer blocks. The resulting mask is all ones, so the transformer needs no context mask.
Video mode runs only the video projection and connector, audio mode only the audio ones (the other modality's
weights need not exist in the file and are never read), in the same op order as diffusers' `forward`, so their
output is bit-identical to the same half of the audio-video call's. LTX-2.0 shares one projection between both
modalities; LTX-2.3 and 2.5 have one per modality (2.5's split pack keeps them in the packed Gemma 4 file,
model_files.connectors merges them in).
Facts: ../shared/reference/diffusers-ltx2-and-peers.md §1.6, §5 "Text path"; official-ltx-trainer.md §4.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import nn

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import configs
from ltx2_tuner.models.checkpoint import CheckpointInfo, read_checkpoint_info
from ltx2_tuner.models.key_maps import CONNECTOR_PREFIXES
from ltx2_tuner.models.loading import construct_module, load_text_connectors, load_weights
from ltx2_tuner.models.safetensors_io import read_header

MODES = ("video", "av", "audio")
_CONNECTOR = {
    "video": "model.diffusion_model.video_embeddings_connector.",
    "audio": "model.diffusion_model.audio_embeddings_connector.",
}
_PROJECTION = {  # LTX-2.3 and 2.5: one projection per modality
    "video": "text_embedding_projection.video_aggregate_embed.",
    "audio": "text_embedding_projection.audio_aggregate_embed.",
}
_SHARED_PROJECTION = "text_embedding_projection.aggregate_embed."  # LTX-2.0: one for both modalities
# diffusers names of each modality's own modules: a one-modality embedder neither keeps nor reads the other's.
_MODULES = {"video": ("video_connector.", "video_text_proj_in."), "audio": ("audio_connector.", "audio_text_proj_in.")}
TEXT_ENCODER_FLAG = "--ltx2_text_encoder_checkpoint"


def modalities(mode: str) -> tuple[str, ...]:
    """The modalities whose text context `mode` computes: ("video",), ("video", "audio") or ("audio",)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    return ("video", "audio") if mode == "av" else (mode,)


def required_prefixes(info: CheckpointInfo, mode: str) -> tuple[str, ...]:
    """Official tensor-name prefixes `mode` needs: each of its modalities' connector and projection."""
    wanted = modalities(mode)
    connectors = tuple(_CONNECTOR[m] for m in wanted)
    if info.version == "2.0":
        return (*connectors, _SHARED_PROJECTION)
    return (*connectors, *(_PROJECTION[m] for m in wanted))


def require_connector_weights(info: CheckpointInfo, mode: str) -> None:
    """CheckpointError naming every missing prefix and the flag that points at another file."""
    names = info.tensor_names.get("text_connectors", ())
    missing = [prefix for prefix in required_prefixes(info, mode) if not any(n.startswith(prefix) for n in names)]
    if missing:
        need = "for the text embeddings" if mode == "video" else f"for --ltx_mode {mode}"
        raise CheckpointError(
            f"{info.path}: has no {', '.join(p + '*' for p in missing)} weights (needed {need}); pass the "
            f"checkpoint that holds the text connectors with {TEXT_ENCODER_FLAG}"
        )


def connector_checkpoint(
    ltx2_checkpoint: str | os.PathLike, text_encoder_checkpoint: str | os.PathLike | None = None
) -> CheckpointInfo:
    """Where the connectors come from: `ltx2_checkpoint`, or another file with their tensors.

    The other file may be an official unified checkpoint (its own metadata is used; same model family required)
    or a bare component file with official tensor names, configured by `ltx2_checkpoint`'s metadata.
    """
    main = read_checkpoint_info(ltx2_checkpoint)
    if text_encoder_checkpoint is None:
        return main
    path = Path(text_encoder_checkpoint)
    header = read_header(path)
    if "config" in header.metadata:
        other = read_checkpoint_info(path)
        if other.version != main.version:
            raise CheckpointError(
                f"{path}: holds LTX-{other.version} text connectors but {main.path} is LTX-{main.version}; "
                f"pass matching files"
            )
        return other
    names = tuple(name for name in header.tensors if name.startswith(CONNECTOR_PREFIXES))
    if not names:
        raise CheckpointError(
            f"{path}: has no text connector weights ({', '.join(p + '*' for p in CONNECTOR_PREFIXES)}); pass the "
            f"file that holds them with {TEXT_ENCODER_FLAG}"
        )
    return dataclasses.replace(
        main, path=path, header=header, components=("text_connectors",), tensor_names={"text_connectors": names}
    )


def check_text_encoder(connectors: CheckpointInfo, transformer: CheckpointInfo, text_encoder, mode: str):
    """Cheap checks (headers and configs only) that `text_encoder` (a Gemma directory or packed file) and the
    connectors can encode prompts for `transformer` in `mode`; return the text encoder's GemmaInfo."""
    from ltx2_tuner.models.model_files import check_gemma_pair
    from ltx2_tuner.models.text_encoder import check_gemma_fits, inspect_text_encoder

    require_connector_weights(connectors, mode)
    gemma = inspect_text_encoder(text_encoder)
    check_gemma_pair(transformer, gemma)
    check_gemma_fits(gemma, *connector_input(connectors), connectors.path)
    return gemma


def _shapes(info: CheckpointInfo) -> dict[str, tuple[int, ...]]:
    return {name: info.header.tensors[name].shape for name in info.tensor_names.get("text_connectors", ())}


def connector_input(info: CheckpointInfo) -> tuple[int, int]:
    """(caption_channels, layer factor) the projection expects: Gemma's hidden size and its layers + 1."""
    config = configs.connectors_config(info.configs["transformer"], _one_modality_shapes(info), str(info.path))
    return config["caption_channels"], config["text_proj_in_factor"]


def _one_modality_shapes(info: CheckpointInfo) -> dict[str, tuple[int, ...]]:
    shapes = _shapes(info)
    # The config translation sizes both LTX-2.3 projections from their tensors; a one-modality file may lack one.
    # Any shape will do for the missing one: a one-modality embedder drops that module before loading.
    # The bias too: its presence says whether the projections have one.
    for suffix in ("weight", "bias"):
        video_proj, audio_proj = (_PROJECTION[m] + suffix for m in ("video", "audio"))
        if video_proj in shapes:
            shapes.setdefault(audio_proj, shapes[video_proj])
        elif audio_proj in shapes:
            shapes[video_proj] = shapes[audio_proj]
    return shapes


class TextEmbedder:
    """Runs the connectors of one mode: packed Gemma states [B, T, H x L] + mask [B, T] -> text context.

    mode "av": diffusers' `LTX2TextConnectors.forward(packed, mask, padding_side="left")`.
    mode "video" / "audio": that modality's projection and connector only (same ops, same order: bit-identical to
    the same output of the "av" call).
    """

    def __init__(self, connectors: nn.Module, mode: str):
        for modality in modalities(mode):
            if getattr(connectors, f"{modality}_connector") is None:
                raise ValueError(f"{mode} mode needs connectors loaded with their {modality} part")
        self.connectors, self.mode = connectors, mode

    @property
    def dtype(self) -> torch.dtype:
        return next(self.connectors.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.connectors.parameters()).device

    @torch.no_grad()
    def __call__(
        self, packed: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(video [B, T, Dv] or None in audio mode, audio [B, T, Da] or None in video mode, mask [B, T] int64: all
        ones after registers).

        packed: [B, T, H x L] left-padded Gemma features, cast to the connectors' dtype and device here.
        """
        packed = packed.to(self.device, self.dtype)
        mask = mask.to(self.device)
        if self.mode == "av":
            return self.connectors(packed, mask, padding_side="left")
        context, context_mask = self._one_modality(packed, mask, self.mode)
        return (context, None, context_mask) if self.mode == "video" else (None, context, context_mask)

    def _one_modality(self, packed: torch.Tensor, mask: torch.Tensor, modality: str):
        from diffusers.pipelines.ltx2.connectors import per_layer_masked_mean_norm, per_token_rms_norm

        connectors, config = self.connectors, self.connectors.config
        states = packed.unflatten(2, (config.caption_channels, -1))  # [B, T, H, L]
        if config.per_modality_projections:  # LTX-2.3, 2.5
            normed = per_token_rms_norm(states).flatten(2, 3)
            normed = torch.where(mask.bool().unsqueeze(-1), normed, torch.zeros_like(normed))
            width = getattr(config, f"{modality}_hidden_dim")
            projection = getattr(connectors, f"{modality}_text_proj_in")
            projected = projection(normed * math.sqrt(width / config.caption_channels))
        else:  # LTX-2.0: one projection feeds both connectors
            normed = per_layer_masked_mean_norm(
                text_hidden_states=states,
                sequence_lengths=mask.sum(dim=-1),
                device=states.device,
                padding_side="left",
                scale_factor=8,
            )
            projected = connectors.text_proj_in(normed)
        # Additive mask [B, 1, 1, T] as the connectors take it; registers then make every position valid.
        additive = (mask.to(torch.int64) - 1).to(projected.dtype)
        additive = additive.reshape(additive.shape[0], 1, -1, additive.shape[-1]) * torch.finfo(projected.dtype).max
        context, connector_mask = getattr(connectors, f"{modality}_connector")(projected, additive)
        binary = (connector_mask < 1e-6).to(torch.int64).reshape(context.shape[0], context.shape[1], 1)
        if modality == "video":
            # diffusers masks the video context only; the audio context of the AV call is returned unmasked.
            context = context * binary
        return context, binary.squeeze(-1)


def load_text_embedder(
    info: CheckpointInfo, mode: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> TextEmbedder:
    """The connectors `mode` needs, from `info` (see `connector_checkpoint`), in `dtype` on `device`.

    Video and audio mode keep and read only their own connector and projection (LTX-2.0's shared projection is
    both's): a file without the other modality's connector works, and fewer parameters are loaded (video mode:
    LTX-2.3 ~0.8 B of 3.2 B, LTX-2.0 ~0.35 B of 1.4 B). The other connector exists only on the meta device
    between construction and its removal here: it is never allocated nor read.
    """
    require_connector_weights(info, mode)
    if mode == "av":
        return TextEmbedder(load_text_connectors(info, dtype, device), mode)
    (other,) = (m for m in ("video", "audio") if m != mode)
    module = construct_module(
        "text_connectors", info.configs["transformer"], _one_modality_shapes(info), str(info.path)
    )
    setattr(module, f"{other}_connector", None)
    if module.config.per_modality_projections:
        setattr(module, f"{other}_text_proj_in", None)

    def keep(name: str) -> bool:
        return not name.startswith(_MODULES[other])

    return TextEmbedder(load_weights(info, "text_connectors", module, dtype, device, keep), mode)


def encode_prompts(
    gemma, embedder: TextEmbedder, texts: list[str]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Captions -> (video [B, 1024, Dv] or None, audio [B, 1024, Da] or None, mask [B, 1024] int64), on the CPU.

    Video mode gives no audio, audio mode no video. gemma: a `GemmaTextEncoder`. The packed features
    ([B, 1024, 188160] for Gemma 3 12B, 385 MB per caption in bf16) stay on the device only for this call.
    """
    packed, mask = gemma(texts)
    video, audio, out_mask = embedder(packed, mask)
    del packed
    return (
        None if video is None else video.cpu(),
        None if audio is None else audio.cpu(),
        out_mask.to(torch.int64).cpu(),
    )
