"""Packed Gemma hidden states -> the transformer's text context: feature extraction, projection, connectors.

On top of diffusers' `LTX2TextConnectors`:
- LTX-2.0: per-layer masked mean/range norm (x8) over valid tokens, one shared projection (`text_proj_in`).
- LTX-2.3: per-token RMS norm per layer, per-modality projections scaled by sqrt(D / hidden) (with bias).
- Then each modality's 1D connector: valid tokens moved to the front, 128 learnable registers fill the rest, RoPE,
  N transformer blocks. The resulting mask is all ones, so the transformer needs no context mask.
Video mode runs only the video projection and connector (the audio weights need not exist in the file) in the same
op order as diffusers' `forward`, so its video output is bit-identical to the audio-video call's.
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

MODES = ("video", "av")
_VIDEO_CONNECTOR = "model.diffusion_model.video_embeddings_connector."
_AUDIO_CONNECTOR = "model.diffusion_model.audio_embeddings_connector."
_AUDIO_MODULES = ("audio_connector.", "audio_text_proj_in.")  # diffusers names that video mode does not load
TEXT_ENCODER_FLAG = "--ltx2_text_encoder_checkpoint"


def _projections(info: CheckpointInfo, mode: str) -> tuple[str, ...]:
    if info.version == "2.0":  # one projection shared by both modalities
        return ("text_embedding_projection.aggregate_embed.",)
    video = "text_embedding_projection.video_aggregate_embed."
    return (video, "text_embedding_projection.audio_aggregate_embed.") if mode == "av" else (video,)


def required_prefixes(info: CheckpointInfo, mode: str) -> tuple[str, ...]:
    """Official tensor-name prefixes `mode` needs: video connector (+ audio connector for AV) and projection."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    connectors = (_VIDEO_CONNECTOR, _AUDIO_CONNECTOR) if mode == "av" else (_VIDEO_CONNECTOR,)
    return (*connectors, *_projections(info, mode))


def require_connector_weights(info: CheckpointInfo, mode: str) -> None:
    """CheckpointError naming every missing prefix and the flag that points at another file."""
    names = info.tensor_names.get("text_connectors", ())
    missing = [prefix for prefix in required_prefixes(info, mode) if not any(n.startswith(prefix) for n in names)]
    if missing:
        need = "for --ltx_mode av" if mode == "av" else "for the text embeddings"
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
    config = configs.connectors_config(info.configs["transformer"], _video_only_shapes(info), str(info.path))
    return config["caption_channels"], config["text_proj_in_factor"]


def _video_only_shapes(info: CheckpointInfo) -> dict[str, tuple[int, ...]]:
    shapes = _shapes(info)
    # The config translation sizes the LTX-2.3 audio projection from its tensor; a video-only file may lack it.
    # Any shape will do there: video mode drops that module before loading.
    video_proj = "text_embedding_projection.video_aggregate_embed.weight"
    audio_proj = "text_embedding_projection.audio_aggregate_embed.weight"
    if video_proj in shapes:
        shapes.setdefault(audio_proj, shapes[video_proj])
    return shapes


class TextEmbedder:
    """Runs the connectors of one mode: packed Gemma states [B, T, H x L] + mask [B, T] -> text context.

    mode "av": diffusers' `LTX2TextConnectors.forward(packed, mask, padding_side="left")`.
    mode "video": the video projection and connector only (same ops, same order: bit-identical video output).
    """

    def __init__(self, connectors: nn.Module, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "av" and connectors.audio_connector is None:
            raise ValueError("audio-video mode needs connectors loaded with their audio part")
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
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(video [B, T, Dv], audio [B, T, Da] or None in video mode, mask [B, T] int64: all ones after registers).

        packed: [B, T, H x L] left-padded Gemma features, cast to the connectors' dtype and device here.
        """
        packed = packed.to(self.device, self.dtype)
        mask = mask.to(self.device)
        if self.mode == "av":
            return self.connectors(packed, mask, padding_side="left")
        return self._video_only(packed, mask)

    def _video_only(self, packed: torch.Tensor, mask: torch.Tensor):
        from diffusers.pipelines.ltx2.connectors import per_layer_masked_mean_norm, per_token_rms_norm

        connectors, config = self.connectors, self.connectors.config
        states = packed.unflatten(2, (config.caption_channels, -1))  # [B, T, H, L]
        if config.per_modality_projections:  # LTX-2.3
            normed = per_token_rms_norm(states).flatten(2, 3)
            normed = torch.where(mask.bool().unsqueeze(-1), normed, torch.zeros_like(normed))
            projected = connectors.video_text_proj_in(
                normed * math.sqrt(config.video_hidden_dim / config.caption_channels)
            )
        else:  # LTX-2.0
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
        video, connector_mask = connectors.video_connector(projected, additive)
        binary = (connector_mask < 1e-6).to(torch.int64).reshape(video.shape[0], video.shape[1], 1)
        return video * binary, None, binary.squeeze(-1)


def load_text_embedder(
    info: CheckpointInfo, mode: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> TextEmbedder:
    """The connectors `mode` needs, from `info` (see `connector_checkpoint`), in `dtype` on `device`.

    Video mode builds and reads only the video connector and projection: an LTX-2.3 file without the audio
    connector works, and fewer parameters are loaded (LTX-2.3: ~0.8 B of 3.2 B; LTX-2.0: ~0.35 B of 1.4 B).
    """
    require_connector_weights(info, mode)
    if mode == "av":
        return TextEmbedder(load_text_connectors(info, dtype, device), mode)
    module = construct_module("text_connectors", info.configs["transformer"], _video_only_shapes(info), str(info.path))
    module.audio_connector = None
    if module.config.per_modality_projections:
        module.audio_text_proj_in = None

    def keep(name: str) -> bool:
        return not name.startswith(_AUDIO_MODULES)

    return TextEmbedder(load_weights(info, "text_connectors", module, dtype, device, keep), mode)


def encode_prompts(
    gemma, embedder: TextEmbedder, texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Captions -> (video [B, 1024, Dv], audio [B, 1024, Da] or None, mask [B, 1024] int64), on the CPU.

    gemma: a `GemmaTextEncoder`. The packed features ([B, 1024, 188160] for Gemma 3 12B, 385 MB per caption in
    bf16) stay on the device only for this call.
    """
    packed, mask = gemma(texts)
    video, audio, out_mask = embedder(packed, mask)
    del packed
    return video.cpu(), None if audio is None else audio.cpu(), out_mask.to(torch.int64).cpu()
