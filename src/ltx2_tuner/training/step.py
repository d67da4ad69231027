"""One training step's inputs and loss, from a cached batch: noising, first-frame conditioning, masked losses.

The modality roles (roles.py) decide what happens to each modality. A generated one is noised with its own sigma
and enters the loss; a frozen one goes in clean with sigma 0 and timestep 0 on every token and no loss (official
flexible strategy, reference ltx-2.5-and-conditioning-modes.md B2); an absent one is not there.
Video (generated): sigma per sample from the sampler (with the video token count), noise, per-token timesteps 0 on
the first latent frame of the samples drawn for first-frame conditioning (that frame stays clean and is left out of
the loss). LTX 2.5: the first latent frame of every sample is marked for the learned keyframe embedding, as ltx-core's
inference marks it (with or without first-frame conditioning, generated or frozen; the official trainer marks
nothing, so its inputs differ from inference on those tokens); `first_frame_keyframe=False` leaves it unmarked.
2.0/2.3 ignore the mark. Audio (generated): its own sigma from its own token count (official; or the video's with
--no-independent_audio_timestep) and noise; the loss covers the latents of real audio only (`audio_lengths`).
Loss = w_video L_video + w_audio L_audio per sample, over the generated modalities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ltx2_tuner.conditioning.spec import Condition
from ltx2_tuner.conditioning.tokens import TokenGrid
from ltx2_tuner.models import ModalityInput, audio_positions, patchify_audio, patchify_video, video_positions
from ltx2_tuner.models.keyframes import first_frame_keyframes_mask
from ltx2_tuner.roles import ModalityRoles, roles_for
from ltx2_tuner.training import flow_matching as fm
from ltx2_tuner.training.conditioned import intrinsic_clean_mask, with_reference


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
    conditions: tuple[Condition, ...] = ()  # the dataset config's [[conditions]] (first_frame: first_frame_p instead)
    fixed_sigma: float | None = None  # every sample at this sigma instead of a draw (the validation loss)


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
    roles: ModalityRoles | str,
    flow: FlowSettings,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> StepInputs:
    """Transformer inputs and targets for `batch` (CachedBatches layout) under `roles`; draws from `generator` only
    (video sigma, first-frame draw, video noise, then audio sigma and noise; a frozen modality draws nothing).
    `roles` may be an --ltx_mode string (video, av, audio)."""
    roles = roles_for(roles) if isinstance(roles, str) else roles
    conditions = batch["conditions"]
    mask = _context_mask(conditions.get("prompt_attention_mask"))
    mask = mask.to(device) if mask is not None else None
    video = audio = None
    video_part = audio_part = _Part()
    if roles.present("video") and "latents" in batch:
        context = conditions["video_prompt_embeds"].to(device=device, dtype=dtype)
        video, video_part = _video_input(batch, roles.generated("video"), context, mask, flow, generator,
                                         device, dtype)  # fmt: skip
    if roles.present("audio") and "audio_latents" in batch:
        context = conditions["audio_prompt_embeds"].to(device=device, dtype=dtype)
        shared_sigma = None if flow.independent_audio_sigma else video_part.sigma
        audio, audio_part = _audio_input(batch, roles.generated("audio"), context, mask, flow,
                                         generator, shared_sigma, device, dtype)  # fmt: skip
    return StepInputs(
        video, audio, video_part.target, audio_part.target, video_part.loss_mask, audio_part.loss_mask,
        video_part.sigma, audio_part.sigma,
    )  # fmt: skip


@dataclass(frozen=True)
class _Part:
    """What the loss needs of one modality; all None for a frozen or missing one."""

    target: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    sigma: torch.Tensor | None = None


def _frozen(latents: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma [B], timesteps [B, N]) of a frozen modality: 0 everywhere, so its clean latents condition the other."""
    batch_size, num_tokens = latents.shape[:2]
    return torch.zeros(batch_size, device=device), torch.zeros(batch_size, num_tokens, device=device)


def _video_input(batch: dict, generated: bool, context, mask, flow: FlowSettings, generator, device, dtype):
    latents = batch["latents"]
    x0 = patchify_video(latents["latents"]).to(device=device, dtype=dtype)
    batch_size, num_tokens, _ = x0.shape
    frames, height, width = latents["num_frames"], latents["height"], latents["width"]
    keyframes = None
    if flow.first_frame_keyframe:  # marked whatever the role, as ltx-core's inference marks a frozen video too
        keyframes = first_frame_keyframes_mask(batch_size, height * width, num_tokens, device)
    positions = video_positions(batch_size, frames, height, width, latents["fps"], device=device)
    if not generated:
        sigma, timesteps = _frozen(x0, device)
        return ModalityInput(x0, sigma, timesteps, positions, context, mask, keyframes), _Part()
    sigma = _sigmas(flow, batch_size, num_tokens, generator)
    conditioning = None
    if frames > 1 and flow.first_frame_p > 0:
        conditioning = fm.first_frame_conditioning(
            batch_size, height * width, num_tokens, flow.first_frame_p, generator
        )
    grid = TokenGrid(frames, height, width)
    conditioning = _union(conditioning, intrinsic_clean_mask(flow.conditions, "video", grid, batch, batch_size,
                                                             generator))  # fmt: skip
    timesteps = fm.per_token_timesteps(sigma, conditioning, num_tokens).to(device)  # clean tokens: timestep 0
    noise = _draw(x0.shape, generator, device, dtype)
    video = ModalityInput(
        fm.add_noise(x0, noise, timesteps), sigma.to(device), timesteps, positions, context, mask, keyframes
    )
    video = with_reference(flow.conditions, "video", video, grid, batch, generator)
    loss_mask = None if conditioning is None else ~conditioning.to(device)
    return video, _Part(fm.velocity_target(x0, noise), loss_mask, sigma)


def _sigmas(flow: FlowSettings, batch_size: int, num_tokens: int, generator) -> torch.Tensor:
    if flow.fixed_sigma is not None:
        return torch.full((batch_size,), flow.fixed_sigma)
    return fm.sample_sigmas(flow.sampler, batch_size, num_tokens, generator, flow.shift, flow.sigmoid_scale)


def _union(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    if first is None or second is None:
        return second if first is None else first
    return first | second


def _audio_input(batch: dict, generated: bool, context, mask, flow: FlowSettings, generator, shared_sigma,
                 device, dtype):  # fmt: skip
    latents = batch["audio_latents"]
    a0 = patchify_audio(latents["latents"]).to(device=device, dtype=dtype)
    batch_size, num_tokens, _ = a0.shape
    positions = audio_positions(batch_size, num_tokens, device=device)
    if not generated:
        sigma, timesteps = _frozen(a0, device)
        return ModalityInput(a0, sigma, timesteps, positions, context, mask), _Part()
    sigma = shared_sigma
    if sigma is None:  # its own sigma, from its own token count (official)
        sigma = _sigmas(flow, batch_size, num_tokens, generator)
    grid = TokenGrid(num_tokens)
    conditioning = intrinsic_clean_mask(flow.conditions, "audio", grid, batch, batch_size, generator)
    timesteps = fm.per_token_timesteps(sigma, conditioning, num_tokens).to(device)
    noise = _draw(a0.shape, generator, device, dtype)
    audio = ModalityInput(fm.add_noise(a0, noise, timesteps), sigma.to(device), timesteps, positions, context, mask)
    audio = with_reference(flow.conditions, "audio", audio, grid, batch, generator)
    loss_mask = fm.audio_loss_mask(latents["lengths"].to(device), num_tokens)
    if conditioning is not None:
        loss_mask = loss_mask & ~conditioning.to(device)
    return audio, _Part(fm.velocity_target(a0, noise), loss_mask, sigma)


def compute_loss(
    predictions: tuple[torch.Tensor | None, torch.Tensor | None], inputs: StepInputs, flow: FlowSettings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean weighted loss, per-sample parts {"video": [B], "audio": [B]} of the generated modalities; a frozen
    modality's prediction is not part of the loss)."""
    parts, total = {}, 0
    for name, prediction, target, mask, weight in (
        ("video", predictions[0], inputs.video_target, inputs.video_loss_mask, flow.video_loss_weight),
        ("audio", predictions[1], inputs.audio_target, inputs.audio_loss_mask, flow.audio_loss_weight),
    ):
        if prediction is not None and target is not None:
            # Only the target's tokens: prepended reference tokens are never in the loss (official).
            parts[name] = fm.masked_mse(prediction[:, -target.shape[1] :], target, mask)
            total = total + weight * parts[name]
    if not parts:
        raise ValueError("the batch has no generated modality to train on")
    return total.mean(), parts
