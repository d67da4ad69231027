"""The sampling loop: Euler steps on guided x0 predictions, as the official validation runner does it.

Per step, for sigma σ and next sigma σ': each guidance pass runs the transformer (the passes batched together, up to
`max_batch` per forward), its velocities become x0 = x - t·v with the per-token timesteps t (σ, or 0 on clean
tokens), the passes combine into one x0 per modality (`guidance.guide`), the clean tokens of x0 are reset to their
conditioning latents, and x ← x + (x - x0)/σ · (σ' - σ), in float32, stored in the latent dtype. Clean tokens (the
I2V first frame, an extension's prefix or suffix, the kept part of an inpainting or outpainting source: any per-token
mask, per modality) therefore equal their conditioning latents at every step; a reference clip (IC-LoRA) is
prepended to its modality's tokens in every pass, clean, and cut from the output (sampling/condition_tokens.py).
The first latent frame is marked for LTX 2.5's keyframe embedding in every pass, T2V and I2V, as ltx-core's inference
marks it (reference ltx-2.5-and-conditioning-modes.md A2; 2.0/2.3 ignore the mark).
Noise, latent layout and RoPE positions are built as training builds them (training/step.py), so a LoRA sees at
sampling time what it saw in training. Facts: ../shared/reference/official-ltx-trainer.md §1.11.

Modes (roles.py): a request without video is T2A (a transformer built with mode "audio" suffices); a request with
frozen audio latents is A2V, with frozen video latents V2A. A frozen modality is what the official validation runner
makes of it (reference ltx-2.5-and-conditioning-modes.md §C1 and part B): its clean latents enter every pass with
sigma 0 and timestep 0 on every token, with its positive prompt in every pass, the neutral guider, and no Euler step;
it conditions the generated modality through the audio <-> video cross-attention, so the generated one keeps its
modality guidance. Its latents come back unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ltx2_tuner.conditioning.tokens import prepend_reference
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import (
    ModalityInput,
    audio_positions,
    patchify_audio,
    patchify_video,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)
from ltx2_tuner.models.keyframes import first_frame_keyframes_mask
from ltx2_tuner.roles import ABSENT, FROZEN, GENERATED, ModalityRoles
from ltx2_tuner.sampling import request_checks
from ltx2_tuner.sampling.condition_tokens import (
    CleanTokens,
    ReferenceTokens,
    audio_clean_tokens,
    audio_reference_tokens,
    video_clean_tokens,
    video_reference_tokens,
)
from ltx2_tuner.sampling.defaults import GuidanceParams
from ltx2_tuner.sampling.guidance import GuidancePass, effective_params, guide, plan_passes
from ltx2_tuner.sampling.perturbations import perturbed

LATENT_CHANNELS = 128
AUDIO_CHANNELS, AUDIO_MEL_BINS = 8, 16  # audio latents [1, 8, T, 16]


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One sample to generate. Contexts are connector outputs [1, T, D]; a None negative = the positive prompt (CFG
    then has nothing to push away from and its pass is skipped).

    Each modality's role (roles.py) follows from the fields: video is absent when `video_context` is None (T2A),
    frozen when `frozen_video_latents` is given (V2A), else generated; audio likewise with `audio_context` and
    `frozen_audio_latents` (A2V). A frozen modality still needs its (positive) context. width, height, num_frames and
    frame_rate are the video's geometry (frozen video included) and are not read without video. Generated audio
    lasts num_frames / frame_rate beside video, `audio_duration_s` without it (T2A); frozen audio has its own length.
    """

    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    frame_rate: float | None = None
    seed: int
    steps: int
    video_context: torch.Tensor | None
    video_context_negative: torch.Tensor | None = None
    audio_context: torch.Tensor | None
    audio_context_negative: torch.Tensor | None = None
    video_guidance: GuidanceParams
    audio_guidance: GuidanceParams
    first_frame_latent: torch.Tensor | None = None  # [128, 1, H/32, W/32] normalized latent of the I2V image
    sigmas: torch.Tensor | None = None  # [steps + 1]; default ltx2_sigmas(steps)
    audio_duration_s: float | None = None  # T2A only: round(25 · seconds) audio latents (ltx-core AudioLatentShape)
    frozen_video_latents: torch.Tensor | None = None  # V2A: [1, 128, F', H/32, W/32] normalized (video VAE encoder)
    frozen_audio_latents: torch.Tensor | None = None  # A2V: [1, 8, T, 16] normalized (audio VAE encoder)
    # Clean tokens of a generated modality (extension, inpainting, outpainting): the latents [1, 128, F', H/32, W/32]
    # / [1, 8, T, 16] and a mask [N] / [T] bool in token order (frame, row, column), True = kept clean.
    video_clean_latents: torch.Tensor | None = None
    video_clean_mask: torch.Tensor | None = None
    audio_clean_latents: torch.Tensor | None = None
    audio_clean_mask: torch.Tensor | None = None
    # IC-LoRA reference clips, placed beside the generated target: video [1, 128, F_r, H_r, W_r] with
    # H_r = H/32 / spatial factor and F_r - 1 = (F' - 1) / temporal factor, at `reference_fps` (default:
    # frame_rate / temporal factor); audio [1, 8, T_r, 16].
    video_reference_latents: torch.Tensor | None = None
    reference_fps: float | None = None
    reference_spatial_factor: int = 1
    reference_temporal_factor: int = 1
    audio_reference_latents: torch.Tensor | None = None

    @property
    def roles(self) -> ModalityRoles:
        """What this request does with video and audio; ConfigError for a combination no mode has."""
        roles = []
        for name, context, frozen in (
            ("video", self.video_context, self.frozen_video_latents),
            ("audio", self.audio_context, self.frozen_audio_latents),
        ):
            if frozen is not None and context is None:
                raise ConfigError(f"frozen {name} latents need the {name} text context (the frozen {name} reads it)")
            roles.append(ABSENT if context is None else FROZEN if frozen is not None else GENERATED)
        try:
            return ModalityRoles(*roles)
        except ValueError:
            raise ConfigError(
                f"a sample with video {roles[0]} and audio {roles[1]}: generate at least one modality, and freeze "
                "at most one (A2V: frozen audio; V2A: frozen video)"
            ) from None


@dataclass(frozen=True)
class SampleResult:
    video_latents: torch.Tensor | None  # [1, 128, F', H/32, W/32] normalized, float32 on the CPU; None in T2A
    audio_latents: torch.Tensor | None  # [1, 8, T, 16] normalized, float32 on the CPU; None without audio


@dataclass
class _Stream:
    """One modality during sampling (tokens [1, N, 128] and what stays fixed across steps)."""

    latent: torch.Tensor
    positions: torch.Tensor
    contexts: tuple[torch.Tensor, torch.Tensor]  # (positive, negative); a frozen stream has (positive, positive)
    params: GuidanceParams
    frozen: bool = False  # clean: sigma 0 and timestep 0 in every pass, never stepped
    clean: torch.Tensor | None = None  # [1, N, 128] conditioning latents, kept where `clean_mask` is set
    clean_mask: torch.Tensor | None = None  # [1, N, 1] bool: the clean tokens
    denoise: torch.Tensor | None = None  # [1, N] float32: 0 on clean tokens, 1 elsewhere
    reference: ReferenceTokens | None = None  # prepended in every pass, never stepped, not in the output
    keyframes: torch.Tensor | None = None  # [1, N] bool: tokens that get the keyframe embedding (video)

    def sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(sigma) if self.frozen else sigma

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        full = self.sigma(sigma).expand(1, self.latent.shape[1])
        return full if self.denoise is None else self.denoise * full


def sample(
    model: nn.Module,
    request: SampleRequest,
    *,
    device: torch.device,
    dtype: torch.dtype,
    max_batch: int = 4,
    progress: bool = False,
) -> SampleResult:
    """Generate `request` with `model` (a TransformerAdapter or anything with its call signature).

    Deterministic for `request.seed`: the noise is drawn on the CPU in float32 (generated video tokens, then
    generated audio tokens). The guidance passes of a step run `max_batch` at a time (1 = one after the other; same
    result). The model runs under no_grad in eval mode and is left in the train/eval mode it had. A frozen modality's
    latents are returned as given (float32, CPU).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    device = torch.device(device)
    roles = request.roles
    request_checks.check_request(request, roles)
    request_checks.check_model(model, roles)
    sigmas = request_checks.sigmas(request)

    generator = torch.Generator().manual_seed(request.seed)
    grid = request_checks.latent_grid(request) if roles.present("video") else None
    video = _video_stream(request, roles, generator, grid, device, dtype) if grid is not None else None
    audio = _audio_stream(request, roles, generator, device, dtype) if roles.present("audio") else None

    passes = plan_passes(
        video.params if video is not None else None,
        audio.params if audio is not None else None,
        video_negative=roles.generated("video") and request.video_context_negative is not None,
        audio_negative=roles.generated("audio") and request.audio_context_negative is not None,
    )
    streams = (video, audio)
    sigmas = sigmas.to(device)
    with _eval_no_grad(model):
        for step in tqdm(range(len(sigmas) - 1), desc="sampling", unit="step", disable=not progress, leave=False):
            sigma, sigma_next = sigmas[step], sigmas[step + 1]
            guided = _guided_x0(model, passes, video, audio, sigma, max_batch)
            for stream, x0 in zip(streams, guided, strict=True):
                if stream is not None and not stream.frozen:
                    stream.latent = _euler(stream.latent, x0, sigma, sigma_next)

    return SampleResult(_video_result(request, roles, video, grid), _audio_result(request, roles, audio))


def _video_result(request: SampleRequest, roles: ModalityRoles, video: _Stream | None, grid) -> torch.Tensor | None:
    if video is None:
        return None
    if roles.frozen("video"):
        return request.frozen_video_latents.float().cpu()
    return unpatchify_video(video.latent.float().cpu(), *grid)


def _audio_result(request: SampleRequest, roles: ModalityRoles, audio: _Stream | None) -> torch.Tensor | None:
    if audio is None:
        return None
    if roles.frozen("audio"):
        return request.frozen_audio_latents.float().cpu()
    return unpatchify_audio(audio.latent.float().cpu())


def _contexts(positive: torch.Tensor, negative: torch.Tensor | None, device, dtype) -> tuple[torch.Tensor, ...]:
    for context in (positive, negative):
        if context is not None and (context.ndim != 3 or context.shape[0] != 1):
            raise ValueError(f"text contexts are [1, T, D], not {list(context.shape)}")
    positive = positive.to(device, dtype)
    return positive, positive if negative is None else negative.to(device, dtype)


def _stream_contexts(positive, negative, frozen: bool, device, dtype) -> tuple[torch.Tensor, ...]:
    # The official runner gives a frozen modality its positive prompt in the negative-prompt pass too.
    return _contexts(positive, None if frozen else negative, device, dtype)


def _params(guidance: GuidanceParams, role: str, roles: ModalityRoles) -> GuidanceParams:
    return GuidanceParams() if role == FROZEN else effective_params(guidance, other_modality_present=roles.both_present)


def _video_stream(request: SampleRequest, roles: ModalityRoles, generator, grid, device, dtype) -> _Stream:
    frames, height, width = grid
    frozen = roles.frozen("video")
    contexts = _stream_contexts(request.video_context, request.video_context_negative, frozen, device, dtype)
    positions = video_positions(1, frames, height, width, request.frame_rate, device=device)
    if frozen:
        latents = request.frozen_video_latents
        if latents.ndim != 5 or tuple(latents.shape) != (1, LATENT_CHANNELS, frames, height, width):
            raise ConfigError(
                f"frozen video latents of shape {list(latents.shape)} for a {request.width}x{request.height}x"
                f"{request.num_frames} sample: expected [1, {LATENT_CHANNELS}, {frames}, {height}, {width}] (encode "
                "the video at the sample's size and frame count)"
            )
        tokens = patchify_video(latents.float())
    else:
        tokens = torch.randn((1, frames * height * width, LATENT_CHANNELS), generator=generator, dtype=torch.float32)
    stream = _Stream(tokens.to(device, dtype), positions, contexts, _params(request.video_guidance, roles.video, roles))
    stream.frozen = frozen
    stream.keyframes = first_frame_keyframes_mask(1, height * width, frames * height * width, device)
    if not frozen:
        _keep_clean(stream, video_clean_tokens(request, grid), device, dtype)
        stream.reference = _on_device(video_reference_tokens(request, grid, device), device, dtype)
    return stream


def _keep_clean(stream: _Stream, clean: CleanTokens | None, device, dtype) -> None:
    """Clean tokens start equal to their latents and get timestep 0 (denoise mask 0)."""
    if clean is None:
        return
    stream.clean = clean.tokens.to(device, dtype)
    stream.clean_mask = clean.mask.to(device).view(1, -1, 1)
    stream.latent = torch.where(stream.clean_mask, stream.clean, stream.latent)
    stream.denoise = (~clean.mask).to(device, torch.float32).view(1, -1)


def _on_device(reference: ReferenceTokens | None, device, dtype) -> ReferenceTokens | None:
    if reference is None:
        return None
    return ReferenceTokens(reference.tokens.to(device, dtype), reference.positions.to(device))


def _audio_stream(request: SampleRequest, roles: ModalityRoles, generator, device, dtype) -> _Stream:
    frozen = roles.frozen("audio")
    if frozen:
        latents = request.frozen_audio_latents
        if latents.ndim != 4 or latents.shape[0] != 1 or tuple(latents.shape[1::2]) != (AUDIO_CHANNELS, AUDIO_MEL_BINS):
            raise ConfigError(
                f"frozen audio latents of shape {list(latents.shape)}: expected [1, {AUDIO_CHANNELS}, T, "
                f"{AUDIO_MEL_BINS}] (the audio VAE encoder's output)"
            )
        tokens = patchify_audio(latents.float())
    else:
        count = request_checks.audio_count(request, roles)
        tokens = torch.randn((1, count, LATENT_CHANNELS), generator=generator, dtype=torch.float32)
    contexts = _stream_contexts(request.audio_context, request.audio_context_negative, frozen, device, dtype)
    positions = audio_positions(1, tokens.shape[1], device=device)
    stream = _Stream(tokens.to(device, dtype), positions, contexts, _params(request.audio_guidance, roles.audio, roles))
    stream.frozen = frozen
    if not frozen:
        _keep_clean(stream, audio_clean_tokens(request, tokens.shape[1]), device, dtype)
        stream.reference = _on_device(audio_reference_tokens(request, device), device, dtype)
    return stream


def _guided_x0(model, passes: list[GuidancePass], video: _Stream | None, audio: _Stream | None, sigma, max_batch):
    """(video x0 | None, audio x0 | None), guided, float32, for the generated streams, over the target tokens (a
    reference's are cut); clean tokens reset to their conditioning latents."""
    streams = (video, audio)
    predictions = [{}, {}]
    for chunk in _chunks(passes, streams, max_batch):
        inputs = [_batched_input(stream, chunk, sigma) if stream is not None else None for stream in streams]
        with perturbed(model, [p.perturbation for p in chunk]):
            velocities = model(inputs[0], inputs[1])
        for index, (stream, velocity) in enumerate(zip(streams, velocities, strict=True)):
            if stream is None or stream.frozen:
                continue
            x0 = inputs[index].latent.float() - velocity.float() * inputs[index].timesteps.unsqueeze(-1)
            x0 = x0[:, x0.shape[1] - stream.latent.shape[1] :]  # the target tokens: a reference comes first
            predictions[index].update({p.name: x0[i : i + 1] for i, p in enumerate(chunk)})

    guided = [
        guide(found, stream.params) if stream is not None and not stream.frozen else None
        for stream, found in zip(streams, predictions, strict=True)
    ]
    for index, stream in enumerate(streams):  # the official `_post_process_latent` with the denoise mask
        if guided[index] is not None and stream.clean is not None:
            guided[index] = torch.where(stream.clean_mask, stream.clean.float(), guided[index])
    return guided


def _chunks(passes, streams, max_batch: int) -> Iterator[list[GuidancePass]]:
    """Consecutive passes, at most `max_batch` per forward, their text contexts of one shape (so they stack)."""

    def shapes(p: GuidancePass):
        return tuple(s.contexts[p.negative].shape for s in streams if s is not None)

    for _, group in itertools.groupby(passes, key=shapes):
        group = list(group)
        for start in range(0, len(group), max_batch):
            yield group[start : start + max_batch]


def _batched_input(stream: _Stream, chunk: list[GuidancePass], sigma: torch.Tensor) -> ModalityInput:
    size = len(chunk)
    timesteps = stream.timesteps(sigma.float())
    inputs = ModalityInput(
        latent=stream.latent.expand(size, -1, -1),
        sigma=stream.sigma(sigma.float()).expand(size),
        timesteps=timesteps.expand(size, -1),
        positions=stream.positions.expand(size, -1, -1, -1),
        context=torch.cat([stream.contexts[p.negative] for p in chunk]),
        keyframes_mask=stream.keyframes.expand(size, -1) if stream.keyframes is not None else None,
    )
    if stream.reference is None:
        return inputs
    reference = stream.reference  # the same construction as training (conditioning.tokens)
    return prepend_reference(
        inputs, reference.tokens.expand(size, -1, -1), reference.positions.expand(size, -1, -1, -1)
    )


def _euler(latent: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow from σ to σ' given the x0 prediction (velocity (x - x0)/σ), in float32."""
    x = latent.float()
    return (x + (x - x0) / sigma * (sigma_next - sigma)).to(latent.dtype)


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training
