"""Checks of a SampleRequest against its modes and the model, and the geometry it asks for (sampler.py): one
ConfigError line per problem, before anything runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import audio_latent_count
from ltx2_tuner.models.latent_layout import AUDIO_LATENTS_PER_SECOND
from ltx2_tuner.roles import ModalityRoles
from ltx2_tuner.sampling.schedule import ltx2_sigmas

if TYPE_CHECKING:
    from ltx2_tuner.sampling.sampler import SampleRequest

SPATIAL_FACTOR, TEMPORAL_FACTOR = 32, 8


def check_request(request: SampleRequest, roles: ModalityRoles) -> None:
    if request.first_frame_latent is not None and not roles.generated("video"):
        raise ConfigError("a first-frame image conditions generated video: drop it for audio-only or V2A samples")
    for modality, fields in (
        ("video", ("video_clean_latents", "video_clean_mask", "video_reference_latents")),
        ("audio", ("audio_clean_latents", "audio_clean_mask", "audio_reference_latents")),
    ):
        given = [name for name in fields if getattr(request, name) is not None]
        if given and not roles.generated(modality):
            raise ConfigError(
                f"{given[0]}: conditions generated {modality}, and this sample's {modality} is "
                f"{getattr(roles, modality)}; drop it or generate {modality}"
            )
    if roles.present("video") and request.audio_duration_s is not None:
        raise ConfigError(
            f"audio_duration_s {request.audio_duration_s}: sets the length of audio-only samples; beside video the "
            "audio lasts num_frames / frame_rate"
        )


def latent_grid(request: SampleRequest) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width), checking the pixel geometry the VAE can produce."""
    width, height, num_frames, frame_rate = request.width, request.height, request.num_frames, request.frame_rate
    if (
        width is None
        or height is None
        or width <= 0
        or height <= 0
        or width % SPATIAL_FACTOR
        or height % SPATIAL_FACTOR
    ):
        raise ConfigError(f"sample size {width}x{height}: width and height must be positive multiples of 32")
    if num_frames is None or num_frames < 1 or (num_frames - 1) % TEMPORAL_FACTOR:
        raise ConfigError(f"sample length {num_frames} frames: use 8k + 1 frames (1, 9, 17, ..., 121)")
    if frame_rate is None or not frame_rate > 0:
        raise ConfigError(f"sample frame rate {frame_rate}: must be positive")
    return (num_frames - 1) // TEMPORAL_FACTOR + 1, height // SPATIAL_FACTOR, width // SPATIAL_FACTOR


def sigmas(request: SampleRequest) -> torch.Tensor:
    if request.sigmas is None:
        return ltx2_sigmas(request.steps)  # the official 4096-token anchor, whatever the size
    sigmas = torch.as_tensor(request.sigmas, dtype=torch.float32).cpu()
    if sigmas.ndim != 1 or len(sigmas) != request.steps + 1:
        raise ConfigError(f"sigma schedule of shape {list(sigmas.shape)} for {request.steps} steps: give steps + 1")
    if not bool((sigmas[:-1] > 0).all()) or not bool((sigmas[1:] <= sigmas[:-1]).all()):
        raise ConfigError(f"sigma schedule {sigmas.tolist()}: must decrease, and only the last sigma may be 0")
    return sigmas


def check_model(model: nn.Module, roles: ModalityRoles) -> None:
    mode = getattr(model, "mode", "av")
    if roles.present("video") and mode == "audio":
        raise ConfigError(
            "video was requested but the transformer was loaded with --ltx_mode audio (no video stream): "
            "load it with --ltx_mode av or video, or sample audio only"
        )
    if roles.present("audio") and mode == "video":
        raise ConfigError(
            "audio was requested but the transformer was loaded with --ltx_mode video (no audio stream): "
            "load it with --ltx_mode av or sample video only"
        )


def audio_count(request: SampleRequest, roles: ModalityRoles) -> int:
    """Generated audio latents: as long as the video, or `audio_duration_s` (T2A); 25 per second."""
    if roles.present("video"):
        count = audio_latent_count(request.num_frames, request.frame_rate)
        if count < 1:
            raise ConfigError(
                f"{request.num_frames} frames at {request.frame_rate} fps hold no audio latent (25 per second); "
                "generate more frames or video only"
            )
        return count
    seconds = request.audio_duration_s
    if seconds is None or not round(seconds * AUDIO_LATENTS_PER_SECOND) >= 1:
        raise ConfigError(
            f"audio-only sample of {seconds} seconds: give audio_duration_s of at least 0.04 s (25 audio latents "
            "per second)"
        )
    return round(seconds * AUDIO_LATENTS_PER_SECOND)
