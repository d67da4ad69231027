"""Official LTX-2 checkpoints: reading, config translation, key maps and component builders."""

from ltx2_tuner.models.checkpoint import COMPONENTS, CheckpointInfo, read_checkpoint_info
from ltx2_tuner.models.loading import (
    load_audio_vae,
    load_component,
    load_text_connectors,
    load_transformer_backbone,
    load_video_vae,
    load_vocoder,
)

__all__ = [
    "COMPONENTS",
    "CheckpointInfo",
    "load_audio_vae",
    "load_component",
    "load_text_connectors",
    "load_transformer_backbone",
    "load_video_vae",
    "load_vocoder",
    "read_checkpoint_info",
]
