"""The media a sample is conditioned on, read and encoded once before the transformer loads: the I2V first-frame
image, the A2V audio (frozen audio latents) and the V2A video (frozen video latents).

Facts (reference ltx-2.5-and-conditioning-modes.md §C1 and part B; the official validation runner): A2V audio is read
from the start of the file for the video's duration (frames / fps) and encoded with the audio VAE encoder; V2A frames
are encoded with the video VAE encoder. Both are encoded as the latent cacher encodes training data (the same
LatentEncoder, stereo downmix, resampler and log-mel front end), so a LoRA sees its training distribution.

What the output shows of the condition: the source itself, not a VAE round trip. A2V muxes the source audio (read at
`OUTPUT_AUDIO_RATE`) into the generated video; V2A writes the source frames as read (cover-resized, centre-cropped) with
the generated sound.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

OUTPUT_AUDIO_RATE = 48000  # Hz: the A2V source audio in the output mp4 (AAC's usual rate; LTX-2.3's vocoder rate)
MAX_CONDITION_FRAMES = 257  # the longest default clip made from an --audio / --video file (about 10 s at 24 fps)


@dataclass(frozen=True)
class Condition:
    """What one sample is conditioned on (paths; None = not this kind) and the video geometry it is read at."""

    width: int
    height: int
    num_frames: int
    fps: float
    image: Path | None = None  # I2V first frame
    audio: Path | None = None  # A2V
    video: Path | None = None  # V2A


@dataclass(frozen=True)
class EncodedCondition:
    """The latents the sampler takes and the source media the output shows (all on the CPU)."""

    first_frame: torch.Tensor | None = None  # [128, 1, H/32, W/32] normalized (SampleRequest.first_frame_latent)
    frozen_video: torch.Tensor | None = None  # [1, 128, F', H/32, W/32] normalized (SampleRequest.frozen_video_latents)
    frozen_audio: torch.Tensor | None = None  # [1, 8, T, 16] normalized (SampleRequest.frozen_audio_latents)
    frames: torch.Tensor | None = None  # V2A: uint8 [F, H, W, 3], the source frames as encoded
    waveform: torch.Tensor | None = None  # A2V: float32 [2, S] in [-1, 1] at OUTPUT_AUDIO_RATE, the source audio


def largest_clip_frames(available_frames: int, cap: int = MAX_CONDITION_FRAMES) -> int:
    """The largest 8k+1 frame count within `available_frames` and `cap` (0 when not even one frame fits)."""
    frames = min(available_frames, cap)
    return (frames - 1) // 8 * 8 + 1 if frames >= 1 else 0


def read_frames(path: Path, width: int, height: int, num_frames: int, fps: float) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]: the frames on screen at k / fps from the start, cover-resized and
    centre-cropped to width x height."""
    from ltx2_tuner.data.video import read_video_frames

    return read_video_frames(path, [k / fps for k in range(num_frames)], size=(width, height))


def encode_conditions(conditions: list[Condition], video_vae, audio_vae, device: torch.device) -> list:
    """One `EncodedCondition` per entry (None where it has no media). `video_vae` / `audio_vae`: the checkpoint (path
    or CheckpointInfo) of each VAE; each encoder is loaded only when some condition needs it, in float32 (a few short
    clips), and freed before this returns."""
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling

    needs_video = any(c.image is not None or c.video is not None for c in conditions)
    needs_audio = any(c.audio is not None for c in conditions)
    if not needs_video and not needs_audio:
        return [None] * len(conditions)
    encoder = LatentEncoder(
        video_vae if needs_video else None, audio_vae if needs_audio else None, device, torch.float32, VaeTiling()
    )
    try:
        return [_encode(condition, encoder) for condition in conditions]
    finally:
        del encoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _encode(condition: Condition, encoder) -> EncodedCondition | None:
    from ltx2_tuner.data.audio import load_audio_clip
    from ltx2_tuner.data.images import load_image
    from ltx2_tuner.data.mel import log_mel_spectrogram
    from ltx2_tuner.data.transforms import frames_to_model_input

    found = {}
    if condition.image is not None:
        pixels = load_image(condition.image, size=(condition.width, condition.height))[None]  # [1, H, W, 3]
        found["first_frame"] = encoder.encode_video(frames_to_model_input(pixels)[None])[0].cpu()
    if condition.video is not None:
        frames = read_frames(condition.video, condition.width, condition.height, condition.num_frames, condition.fps)
        found["frozen_video"] = encoder.encode_video(frames_to_model_input(frames)[None]).float().cpu()
        found["frames"] = torch.from_numpy(np.ascontiguousarray(frames))
    if condition.audio is not None:
        seconds = condition.num_frames / condition.fps
        rate = encoder.audio_vae.config.sample_rate
        clip = load_audio_clip(condition.audio, 0.0, seconds, rate)
        found["frozen_audio"] = encoder.encode_audio(log_mel_spectrogram(clip.waveform, rate))[None].float().cpu()
        found["waveform"] = load_audio_clip(
            condition.audio, 0.0, seconds, OUTPUT_AUDIO_RATE, warn_padding=False
        ).waveform
    return EncodedCondition(**found) if found else None
