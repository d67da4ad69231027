"""Official LTX-2 checkpoints: reading, config translation, key maps and component builders."""

from ltx2_tuner.models.checkpoint import COMPONENTS, CheckpointInfo, read_checkpoint_info
from ltx2_tuner.models.latent_layout import (
    audio_latent_count,
    audio_positions,
    patchify_audio,
    patchify_video,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)
from ltx2_tuner.models.loading import (
    load_audio_vae,
    load_component,
    load_text_connectors,
    load_transformer_backbone,
    load_video_vae,
    load_vocoder,
)
from ltx2_tuner.models.transformer import MODES, ModalityInput, TransformerAdapter, context_dims, load_transformer

__all__ = [
    "COMPONENTS",
    "MODES",
    "CheckpointInfo",
    "ModalityInput",
    "TransformerAdapter",
    "audio_latent_count",
    "audio_positions",
    "context_dims",
    "load_audio_vae",
    "load_component",
    "load_text_connectors",
    "load_transformer",
    "load_transformer_backbone",
    "load_video_vae",
    "load_vocoder",
    "patchify_audio",
    "patchify_video",
    "read_checkpoint_info",
    "unpatchify_audio",
    "unpatchify_video",
    "video_positions",
]
