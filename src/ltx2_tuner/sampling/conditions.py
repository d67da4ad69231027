"""The media a sample is conditioned on, read and encoded once before the transformer loads: the I2V first-frame
image, the A2V audio (frozen audio latents), the V2A video (frozen video latents), and the clean tokens and reference
of extension, inpainting, outpainting and IC-LoRA (see "Conditions on generated tokens" below).

Facts (reference ltx-2.5-and-conditioning-modes.md §C1 and part B; the official validation runner): A2V audio is read
from the start of the file for the video's duration (frames / fps) and encoded with the audio VAE encoder; V2A frames
are encoded with the video VAE encoder. Both are encoded as the latent cacher encodes training data (the same
LatentEncoder, stereo downmix, resampler and log-mel front end), so a LoRA sees its training distribution.

What the output shows of the condition: the source itself, not a VAE round trip. A2V muxes the source audio (read at
`OUTPUT_AUDIO_RATE`) into the generated video; V2A writes the source frames as read (cover-resized, centre-cropped) with
the generated sound.

Conditions on generated tokens (reference ltx-2.5-and-conditioning-modes.md §C1, the official validation runner; the
token masks come from `conditioning.tokens.condition_token_mask`, as in training):
- extension forward: the clip's latent frames are the clean prefix of the output; backward: the clip is encoded whole
  and its latent frames after the first (which holds one pixel frame, the others eight) are the clean suffix, so the
  output ends with the clip's last 8k frames (the official suffix encodes the full clip and keeps its last latents);
- audio extension: the clip's latents are the clean first (forward) or last (backward) audio latents;
- IC-LoRA reference: read at the output size / spatial factor N, frames subsampled keeping frame 0 and then every S-th
  (the official `_preprocess_reference`), at fps / S;
- outpainting: the source, read at the box's size, is pasted into a mid-grey canvas; the tokens inside the box
  (floor-divided by 32, like training's spatial_crop) are clean;
- inpainting: the mask file (data.masks: white = keep, black = regenerate, the official convention) gives the clean
  tokens of the source read at the output size;
- audio inpainting: the source's sound, read from its start for the output's length like --audio, is kept where the
  audio mask (data.masks: a tensor or an envelope, nearest-resampled over the output's latent steps, > 0.5, as the
  cacher does for training) is set;
- A2A / AV2AV reference (B2): the reference sound, read like --audio for the output's length, prepended as clean
  tokens at audio positions from 0 (the sampler's `audio_reference_latents`).
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltx2_tuner.conditioning.spec import Condition as TokenCondition
from ltx2_tuner.conditioning.tokens import TokenGrid, condition_token_mask
from ltx2_tuner.errors import ConfigError

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
    extend: Path | None = None  # video extension clip, `extend_frames` frames (8k+1) read at fps
    extend_frames: int = 0
    extend_audio: Path | None = None  # audio extension clip
    direction: str = "forward"  # extension: "forward" (clean prefix) or "backward" (clean suffix)
    audio_latents: int = 0  # generated audio latents (needed by --extend_audio)
    reference: Path | None = None  # IC-LoRA reference clip
    reference_factors: tuple[int, int] = (1, 1)  # (spatial N, temporal S)
    source: Path | None = None  # outpainting / inpainting source clip
    outpaint_crop: tuple[int, int, int, int] | None = None  # (x, y, w, h) pixels: where the source goes
    mask: Path | None = None  # inpainting mask image or video (white = keep)
    reference_audio: Path | None = None  # A2A / AV2AV IC-LoRA reference sound
    audio_mask: Path | None = None  # audio inpainting mask over the source's sound (> 0.5 = keep)

    @property
    def needs_video_vae(self) -> bool:
        video_source = self.source is not None and (self.mask is not None or self.outpaint_crop is not None)
        return video_source or any(p is not None for p in (self.image, self.video, self.extend, self.reference))

    @property
    def needs_audio_vae(self) -> bool:
        return any(p is not None for p in (self.audio, self.extend_audio, self.reference_audio, self.audio_mask))


@dataclass(frozen=True)
class EncodedCondition:
    """The latents the sampler takes and the source media the output shows (all on the CPU)."""

    first_frame: torch.Tensor | None = None  # [128, 1, H/32, W/32] normalized (SampleRequest.first_frame_latent)
    frozen_video: torch.Tensor | None = None  # [1, 128, F', H/32, W/32] normalized (SampleRequest.frozen_video_latents)
    frozen_audio: torch.Tensor | None = None  # [1, 8, T, 16] normalized (SampleRequest.frozen_audio_latents)
    frames: torch.Tensor | None = None  # V2A: uint8 [F, H, W, 3], the source frames as encoded
    waveform: torch.Tensor | None = None  # A2V: float32 [2, S] in [-1, 1] at OUTPUT_AUDIO_RATE, the source audio
    video_clean: torch.Tensor | None = None  # [1, 128, F', H/32, W/32] (SampleRequest.video_clean_latents)
    video_clean_mask: torch.Tensor | None = None  # [N] bool (SampleRequest.video_clean_mask)
    audio_clean: torch.Tensor | None = None  # [1, 8, T, 16] (SampleRequest.audio_clean_latents)
    audio_clean_mask: torch.Tensor | None = None  # [T] bool (SampleRequest.audio_clean_mask)
    video_reference: torch.Tensor | None = None  # [1, 128, F_r, H_r, W_r] (SampleRequest.video_reference_latents)
    audio_reference: torch.Tensor | None = None  # [1, 8, T_r, 16] (SampleRequest.audio_reference_latents)
    reference_fps: float | None = None
    reference_factors: tuple[int, int] = (1, 1)


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

    needs_video = any(c.needs_video_vae for c in conditions)
    needs_audio = any(c.needs_audio_vae for c in conditions)
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
    found.update(_encode_token_conditions(condition, encoder))
    return EncodedCondition(**found) if found else None


def _encode_token_conditions(condition: Condition, encoder) -> dict:
    """The clean tokens and the reference (EncodedCondition fields) of extension, inpainting, outpainting, IC-LoRA."""
    from ltx2_tuner.data.transforms import frames_to_model_input

    def encode(frames: np.ndarray) -> torch.Tensor:
        return encoder.encode_video(frames_to_model_input(frames)[None]).float().cpu()

    width, height, fps = condition.width, condition.height, condition.fps
    grid = TokenGrid((condition.num_frames - 1) // 8 + 1, height // 32, width // 32)
    found = {}
    if condition.extend is not None:
        clip = encode(read_frames(condition.extend, width, height, condition.extend_frames, fps))
        found.update(_temporal_clean(clip, grid, condition.direction, "--extend"))
    if condition.source is not None and condition.outpaint_crop is not None:
        x, y, w, h = condition.outpaint_crop
        canvas = np.full((condition.num_frames, height, width, 3), 128, dtype=np.uint8)  # mid-grey: 0 in [-1, 1]
        canvas[:, y : y + h, x : x + w] = read_frames(condition.source, w, h, condition.num_frames, fps)
        box = TokenCondition("spatial_crop", region=(y, x, y + h, x + w))
        found.update(video_clean=encode(canvas), video_clean_mask=condition_token_mask(box, grid))
    elif condition.source is not None and condition.mask is not None:
        from ltx2_tuner.data.masks import load_video_mask

        frames = read_frames(condition.source, width, height, condition.num_frames, fps)
        times = [k / fps for k in range(condition.num_frames)]
        stored = load_video_mask(condition.mask, times, (width, height))
        found.update(
            video_clean=encode(frames),
            video_clean_mask=condition_token_mask(TokenCondition("mask"), grid, stored),
        )
    if condition.reference is not None:
        spatial, temporal = condition.reference_factors
        frames = read_frames(condition.reference, width // spatial, height // spatial, condition.num_frames, fps)
        keep = [0, *range(1, condition.num_frames, temporal)]  # frame 0, then every S-th (official)
        found.update(
            video_reference=encode(frames[keep]), reference_fps=fps / temporal, reference_factors=(spatial, temporal)
        )
    if condition.extend_audio is not None:
        found.update(_audio_extension(condition, encoder))
    if condition.audio_mask is not None:
        found.update(_audio_inpainting(condition, encoder))
    if condition.reference_audio is not None:
        found["audio_reference"] = _output_long_audio(condition.reference_audio, condition.audio_latents, encoder)
    return found


def _output_long_audio(path: Path, total: int, encoder) -> torch.Tensor:
    """[1, 8, total, 16]: the sound of `path` from its start for the output's `total` audio latents (25 a second),
    encoded like --audio (silence pads a short file; the plan refuses one shorter than the output)."""
    from ltx2_tuner.data.audio import load_audio_clip
    from ltx2_tuner.data.mel import log_mel_spectrogram

    rate = encoder.audio_vae.config.sample_rate
    clip = load_audio_clip(path, 0.0, total / 25, rate, warn_padding=False)
    latents = encoder.encode_audio(log_mel_spectrogram(clip.waveform, rate))[None].float().cpu()
    fitted = torch.zeros(*latents.shape[:2], total, *latents.shape[3:])
    fitted[:, :, : min(total, latents.shape[2])] = latents[:, :, :total]
    return fitted


def _audio_inpainting(condition: Condition, encoder) -> dict:
    """The --source sound as the output's audio, clean where the --audio_mask is set (as EncodedCondition fields)."""
    from ltx2_tuner.data.masks import read_audio_mask_signal, resample_audio_mask

    total = condition.audio_latents
    stored = resample_audio_mask(read_audio_mask_signal(condition.audio_mask), total)
    mask = condition_token_mask(TokenCondition("mask", modality="audio"), TokenGrid(total), stored)
    return {"audio_clean": _output_long_audio(condition.source, total, encoder), "audio_clean_mask": mask}


def _temporal_clean(clip: torch.Tensor, grid: TokenGrid, direction: str, flag: str) -> dict:
    """A video clip's latents [1, C, L, H, W] as the clean prefix (forward) or suffix (backward, without its first
    latent) of a `grid`-long output, as EncodedCondition fields."""
    kept = clip if direction == "forward" else clip[:, :, 1:]
    clean, boundary = _placed(kept, grid.frames, direction, flag, "latent frame(s)", "more --frames")
    return {"video_clean": clean, "video_clean_mask": condition_token_mask(boundary, grid)}


def _audio_extension(condition: Condition, encoder) -> dict:
    """The --extend_audio clip (shorter than the output, checked by the plan) encoded whole, as the clean first
    (forward) or last (backward) audio latents."""
    from ltx2_tuner.data.audio import load_audio_clip, probe_audio
    from ltx2_tuner.data.mel import log_mel_spectrogram

    rate = encoder.audio_vae.config.sample_rate
    seconds = probe_audio(condition.extend_audio).duration_s
    clip = load_audio_clip(condition.extend_audio, 0.0, seconds, rate, warn_padding=False)
    latents = encoder.encode_audio(log_mel_spectrogram(clip.waveform, rate))[None].float().cpu()  # [1, 8, T_c, 16]
    total, flag = condition.audio_latents, f"--extend_audio {condition.extend_audio}"
    clean, boundary = _placed(latents, total, condition.direction, flag, "audio latent(s)", "a longer output")
    boundary = dataclasses.replace(boundary, modality="audio")
    return {"audio_clean": clean, "audio_clean_mask": condition_token_mask(boundary, TokenGrid(total))}


def _placed(kept: torch.Tensor, total: int, direction: str, flag: str, unit: str, fix: str):
    """(`kept` [1, C, L, ...] at the start (forward) or end (backward) of zeros [1, C, total, ...], the prefix or
    suffix condition of length L); ConfigError unless 1 <= L < total."""
    length = kept.shape[2]
    if not 1 <= length < total:
        raise ConfigError(f"{flag}: the clip gives {length} {unit}, the output has {total}; generate {fix}")
    clean = torch.zeros(*kept.shape[:2], total, *kept.shape[3:])
    if direction == "forward":
        clean[:, :, :length] = kept
    else:
        clean[:, :, total - length :] = kept
    kind = "prefix" if direction == "forward" else "suffix"
    return clean, TokenCondition(kind, temporal_boundary=length)
