"""One training step's inputs and loss, from a cached batch: noising, first-frame conditioning, masked losses.

Video: sigma per sample from the sampler (with the video token count), noise, per-token timesteps 0 on the first
latent frame of the samples drawn for first-frame conditioning (that frame stays clean and is left out of the loss).
LTX 2.5: the first latent frame of every sample is marked for the learned keyframe embedding, as ltx-core's
inference marks it (with or without first-frame conditioning; the official trainer marks nothing, so its inputs
differ from inference on those tokens); `first_frame_keyframe=False` leaves it unmarked. 2.0/2.3 ignore the mark.
Audio (AV): its own sigma (official; or the video's with --no-independent_audio_timestep) and noise; the loss
covers the latents of real audio only (`audio_lengths`). Loss = w_video L_video + w_audio L_audio per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ltx2_tuner.models import ModalityInput, audio_positions, patchify_audio, patchify_video, video_positions
from ltx2_tuner.models.keyframes import first_frame_keyframes_mask
from ltx2_tuner.training import flow_matching as fm


@dataclass(frozen=True)
class FlowSettings:
    sampler: str = "shifted_logit_normal"
    shift: float = 3.0
    sigmoid_scale: float = 1.0
    first_frame_p: float = 0.1
    independent_audio_sigma: bool = True
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    first_frame_keyframe: bool = True  # mark the first latent frame for LTX 2.5's keyframe embedding


@dataclass(frozen=True)
class StepInputs:
    video: ModalityInput | None
    audio: ModalityInput | None
    video_target: torch.Tensor | None
    audio_target: torch.Tensor | None
    video_loss_mask: torch.Tensor | None  # [B, N] True = in the loss; None = all
    audio_loss_mask: torch.Tensor | None
    video_sigma: torch.Tensor | None  # [B], for per-sigma logging
    audio_sigma: torch.Tensor | None


def _context_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    # After the connectors' registers the mask is all ones; passing None lets fast attention kernels run.
    return None if mask is None or bool(mask.all()) else mask


def _draw(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def prepare_inputs(
    batch: dict,
    mode: str,
    flow: FlowSettings,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> StepInputs:
    """Noised transformer inputs and targets for `batch` (CachedBatches layout); draws from `generator` only."""
    conditions = batch["conditions"]
    mask = _context_mask(conditions.get("prompt_attention_mask"))
    mask = mask.to(device) if mask is not None else None

    latents = batch["latents"]
    x0 = patchify_video(latents["latents"]).to(device=device, dtype=dtype)
    batch_size, num_tokens, _ = x0.shape
    frames, height, width = latents["num_frames"], latents["height"], latents["width"]
    sigma = fm.sample_sigmas(flow.sampler, batch_size, num_tokens, generator, flow.shift, flow.sigmoid_scale)
    conditioning = None
    if frames > 1 and flow.first_frame_p > 0:
        conditioning = fm.first_frame_conditioning(
            batch_size, height * width, num_tokens, flow.first_frame_p, generator
        )
    timesteps = fm.per_token_timesteps(sigma, conditioning, num_tokens)
    noise = _draw(x0.shape, generator, device, dtype)
    keyframes = None
    if flow.first_frame_keyframe:
        keyframes = first_frame_keyframes_mask(batch_size, height * width, num_tokens, device)
    video = ModalityInput(
        latent=fm.add_noise(x0, noise, timesteps.to(device)),
        sigma=sigma.to(device),
        timesteps=timesteps.to(device),
        positions=video_positions(batch_size, frames, height, width, latents["fps"], device=device),
        context=conditions["video_prompt_embeds"].to(device=device, dtype=dtype),
        context_mask=mask,
        keyframes_mask=keyframes,
    )
    video_mask = None if conditioning is None else ~conditioning.to(device)

    audio = audio_target = audio_mask = audio_sigma = None
    if mode == "av" and "audio_latents" in batch:
        a0 = patchify_audio(batch["audio_latents"]["latents"]).to(device=device, dtype=dtype)
        audio_tokens = a0.shape[1]
        audio_sigma = (
            fm.sample_sigmas(flow.sampler, batch_size, audio_tokens, generator, flow.shift, flow.sigmoid_scale)
            if flow.independent_audio_sigma
            else sigma
        )
        audio_timesteps = fm.per_token_timesteps(audio_sigma, None, audio_tokens)
        audio_noise = _draw(a0.shape, generator, device, dtype)
        audio = ModalityInput(
            latent=fm.add_noise(a0, audio_noise, audio_timesteps.to(device)),
            sigma=audio_sigma.to(device),
            timesteps=audio_timesteps.to(device),
            positions=audio_positions(batch_size, audio_tokens, device=device),
            context=conditions["audio_prompt_embeds"].to(device=device, dtype=dtype),
            context_mask=mask,
        )
        audio_target = fm.velocity_target(a0, audio_noise)
        audio_mask = fm.audio_loss_mask(batch["audio_latents"]["lengths"].to(device), audio_tokens)
    return StepInputs(
        video, audio, fm.velocity_target(x0, noise), audio_target, video_mask, audio_mask, sigma, audio_sigma
    )


def compute_loss(
    predictions: tuple[torch.Tensor | None, torch.Tensor | None], inputs: StepInputs, flow: FlowSettings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean weighted loss, per-sample parts {"video": [B], "audio": [B]})."""
    video_pred, audio_pred = predictions
    parts = {"video": fm.masked_mse(video_pred, inputs.video_target, inputs.video_loss_mask)}
    total = flow.video_loss_weight * parts["video"]
    if audio_pred is not None:
        parts["audio"] = fm.masked_mse(audio_pred, inputs.audio_target, inputs.audio_loss_mask)
        total = total + flow.audio_loss_weight * parts["audio"]
    return total.mean(), parts
