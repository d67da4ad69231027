"""Sampling: sigma schedules, multi-modal guidance, the Euler sampler loop (previews and ltx2_generate_video.py)."""

from ltx2_tuner.sampling.decode import Decoders
from ltx2_tuner.sampling.defaults import (
    OFFICIAL_NEGATIVE_PROMPT,
    GuidanceParams,
    SamplingDefaults,
    sampling_defaults,
)
from ltx2_tuner.sampling.guidance import GuidancePass, guide, plan_passes
from ltx2_tuner.sampling.media_writers import write_audio, write_media, write_wav
from ltx2_tuner.sampling.perturbations import Perturbation, perturbed
from ltx2_tuner.sampling.sampler import SampleRequest, SampleResult, sample
from ltx2_tuner.sampling.schedule import DISTILLED_SIGMAS, ltx2_sigmas

__all__ = [
    "DISTILLED_SIGMAS",
    "OFFICIAL_NEGATIVE_PROMPT",
    "Decoders",
    "GuidanceParams",
    "GuidancePass",
    "Perturbation",
    "SampleRequest",
    "SampleResult",
    "SamplingDefaults",
    "guide",
    "ltx2_sigmas",
    "perturbed",
    "plan_passes",
    "sample",
    "sampling_defaults",
    "write_audio",
    "write_media",
    "write_wav",
]
