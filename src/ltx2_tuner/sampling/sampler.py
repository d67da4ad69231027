"""The sampling loop: Euler steps on guided x0 predictions, as the official validation runner does it.

Per step, for sigma σ and next sigma σ': each guidance pass runs the transformer (the passes batched together, up to
`max_batch` per forward), its velocities become x0 = x - t·v with the per-token timesteps t (σ, or 0 on clean
first-frame tokens), the passes combine into one x0 per modality (`guidance.guide`), the first-frame tokens of x0 are
reset to the image's latent, and x ← x + (x - x0)/σ · (σ' - σ), in float32, stored in the latent dtype.
The first latent frame is marked for LTX 2.5's keyframe embedding in every pass, T2V and I2V, as ltx-core's inference
marks it (reference ltx-2.5-and-conditioning-modes.md A2; 2.0/2.3 ignore the mark).
Noise, latent layout and RoPE positions are built as training builds them (training/step.py), so a LoRA sees at
sampling time what it saw in training. Facts: ../shared/reference/official-ltx-trainer.md §1.11.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import (
    ModalityInput,
    audio_latent_count,
    audio_positions,
    patchify_video,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)
from ltx2_tuner.models.keyframes import first_frame_keyframes_mask
from ltx2_tuner.sampling.defaults import GuidanceParams
from ltx2_tuner.sampling.guidance import GuidancePass, effective_params, guide, plan_passes
from ltx2_tuner.sampling.perturbations import perturbed
from ltx2_tuner.sampling.schedule import ltx2_sigmas

LATENT_CHANNELS = 128
SPATIAL_FACTOR, TEMPORAL_FACTOR = 32, 8


@dataclass(frozen=True)
class SampleRequest:
    """One sample to generate. Contexts are connector outputs [1, T, D]; a None negative = the positive prompt (CFG
    then has nothing to push away from and its pass is skipped); audio_context None = video only."""

    width: int
    height: int
    num_frames: int
    frame_rate: float
    seed: int
    steps: int
    video_context: torch.Tensor
    video_context_negative: torch.Tensor | None
    audio_context: torch.Tensor | None
    audio_context_negative: torch.Tensor | None
    video_guidance: GuidanceParams
    audio_guidance: GuidanceParams
    first_frame_latent: torch.Tensor | None = None  # [128, 1, H/32, W/32] normalized latent of the I2V image
    sigmas: torch.Tensor | None = None  # [steps + 1]; default ltx2_sigmas(steps)


@dataclass(frozen=True)
class SampleResult:
    video_latents: torch.Tensor  # [1, 128, F', H/32, W/32] normalized, float32 on the CPU
    audio_latents: torch.Tensor | None  # [1, 8, T, 16] normalized, float32 on the CPU


@dataclass
class _Stream:
    """One generated modality during sampling (tokens [1, N, 128] and what stays fixed across steps)."""

    latent: torch.Tensor
    positions: torch.Tensor
    contexts: tuple[torch.Tensor, torch.Tensor]  # (positive, negative)
    params: GuidanceParams
    clean: torch.Tensor | None = None  # [1, n, 128] first-frame tokens (the first n tokens), kept clean
    denoise: torch.Tensor | None = None  # [1, N] float32: 0 on clean tokens, 1 elsewhere
    keyframes: torch.Tensor | None = None  # [1, N] bool: tokens that get the keyframe embedding (video)

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        full = sigma.expand(1, self.latent.shape[1])
        return full if self.denoise is None else self.denoise * sigma


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

    Deterministic for `request.seed`: the noise is drawn on the CPU in float32 (video tokens, then audio tokens).
    The guidance passes of a step run `max_batch` at a time (1 = one after the other; same result). The model runs
    under no_grad in eval mode and is left in the train/eval mode it had.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    device = torch.device(device)
    frames, height, width = _latent_grid(request)
    sigmas = _sigmas(request)
    with_audio = request.audio_context is not None
    _check_model(model, with_audio)

    generator = torch.Generator().manual_seed(request.seed)
    noise = torch.randn((1, frames * height * width, LATENT_CHANNELS), generator=generator, dtype=torch.float32)
    video = _video_stream(request, noise, (frames, height, width), device, dtype)
    audio = None
    if with_audio:
        count = audio_latent_count(request.num_frames, request.frame_rate)
        if count < 1:
            raise ConfigError(
                f"{request.num_frames} frames at {request.frame_rate} fps hold no audio latent (25 per second); "
                "generate more frames or video only"
            )
        noise = torch.randn((1, count, LATENT_CHANNELS), generator=generator, dtype=torch.float32)
        contexts = _contexts(request.audio_context, request.audio_context_negative, device, dtype)
        params = effective_params(request.audio_guidance, other_modality_generated=True)
        audio = _Stream(noise.to(device, dtype), audio_positions(1, count, device=device), contexts, params)
    video.params = effective_params(request.video_guidance, other_modality_generated=with_audio)

    passes = plan_passes(
        video.params,
        audio.params if audio is not None else None,
        video_negative=request.video_context_negative is not None,
        audio_negative=with_audio and request.audio_context_negative is not None,
    )
    sigmas = sigmas.to(device)
    with _eval_no_grad(model):
        for step in tqdm(range(len(sigmas) - 1), desc="sampling", unit="step", disable=not progress, leave=False):
            sigma, sigma_next = sigmas[step], sigmas[step + 1]
            x0_video, x0_audio = _guided_x0(model, passes, video, audio, sigma, max_batch)
            video.latent = _euler(video.latent, x0_video, sigma, sigma_next)
            if audio is not None:
                audio.latent = _euler(audio.latent, x0_audio, sigma, sigma_next)

    video_latents = unpatchify_video(video.latent.float().cpu(), frames, height, width)
    audio_latents = unpatchify_audio(audio.latent.float().cpu()) if audio is not None else None
    return SampleResult(video_latents, audio_latents)


def _latent_grid(request: SampleRequest) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width), checking the pixel geometry the VAE can produce."""
    if request.width <= 0 or request.height <= 0 or request.width % SPATIAL_FACTOR or request.height % SPATIAL_FACTOR:
        raise ConfigError(
            f"sample size {request.width}x{request.height}: width and height must be positive multiples of 32"
        )
    if request.num_frames < 1 or (request.num_frames - 1) % TEMPORAL_FACTOR:
        raise ConfigError(f"sample length {request.num_frames} frames: use 8k + 1 frames (1, 9, 17, ..., 121)")
    if request.frame_rate <= 0:
        raise ConfigError(f"sample frame rate {request.frame_rate}: must be positive")
    return (
        (request.num_frames - 1) // TEMPORAL_FACTOR + 1,
        request.height // SPATIAL_FACTOR,
        request.width // SPATIAL_FACTOR,
    )


def _sigmas(request: SampleRequest) -> torch.Tensor:
    if request.sigmas is None:
        return ltx2_sigmas(request.steps)  # the official 4096-token anchor, whatever the size
    sigmas = torch.as_tensor(request.sigmas, dtype=torch.float32).cpu()
    if sigmas.ndim != 1 or len(sigmas) != request.steps + 1:
        raise ConfigError(f"sigma schedule of shape {list(sigmas.shape)} for {request.steps} steps: give steps + 1")
    if not bool((sigmas[:-1] > 0).all()) or not bool((sigmas[1:] <= sigmas[:-1]).all()):
        raise ConfigError(f"sigma schedule {sigmas.tolist()}: must decrease, and only the last sigma may be 0")
    return sigmas


def _check_model(model: nn.Module, with_audio: bool) -> None:
    mode = getattr(model, "mode", "av")
    if mode == "audio":
        raise ConfigError("the sampler generates video: load the transformer with --ltx_mode av or video")
    if with_audio and mode == "video":
        raise ConfigError(
            "audio was requested but the transformer was loaded with --ltx_mode video (no audio stream): "
            "load it with --ltx_mode av or sample video only"
        )


def _contexts(positive: torch.Tensor, negative: torch.Tensor | None, device, dtype) -> tuple[torch.Tensor, ...]:
    for context in (positive, negative):
        if context is not None and (context.ndim != 3 or context.shape[0] != 1):
            raise ValueError(f"text contexts are [1, T, D], not {list(context.shape)}")
    positive = positive.to(device, dtype)
    return positive, positive if negative is None else negative.to(device, dtype)


def _video_stream(request: SampleRequest, noise: torch.Tensor, grid: tuple[int, int, int], device, dtype) -> _Stream:
    frames, height, width = grid
    contexts = _contexts(request.video_context, request.video_context_negative, device, dtype)
    positions = video_positions(1, frames, height, width, request.frame_rate, device=device)
    stream = _Stream(noise.to(device, dtype), positions, contexts, request.video_guidance)
    stream.keyframes = first_frame_keyframes_mask(1, height * width, frames * height * width, device)
    image = request.first_frame_latent
    if image is not None:
        image = image[0] if image.ndim == 5 and image.shape[0] == 1 else image
        if tuple(image.shape) != (LATENT_CHANNELS, 1, height, width):
            raise ConfigError(
                f"first-frame latent of shape {list(image.shape)} for a {request.width}x{request.height} sample: "
                f"expected [{LATENT_CHANNELS}, 1, {height}, {width}] (encode the image at the sample's size)"
            )
        # The first latent frame's tokens come first (frame-major layout): they start clean and stay clean.
        stream.clean = patchify_video(image[None]).to(device, dtype)
        count = stream.clean.shape[1]
        stream.latent[:, :count] = stream.clean
        stream.denoise = torch.ones((1, stream.latent.shape[1]), dtype=torch.float32, device=device)
        stream.denoise[:, :count] = 0.0
    return stream


def _guided_x0(model, passes: list[GuidancePass], video: _Stream, audio: _Stream | None, sigma, max_batch: int):
    """(video x0, audio x0 | None), guided, float32; the video's clean tokens reset to the image latent."""
    predictions = [{}, {}]
    for chunk in _chunks(passes, video, audio, max_batch):
        inputs = [_batched_input(stream, chunk, sigma) if stream is not None else None for stream in (video, audio)]
        with perturbed(model, [p.perturbation for p in chunk]):
            velocities = model(inputs[0], inputs[1])
        for index, (stream, velocity) in enumerate(zip((video, audio), velocities, strict=True)):
            if stream is None:
                continue
            x0 = inputs[index].latent.float() - velocity.float() * inputs[index].timesteps.unsqueeze(-1)
            predictions[index].update({p.name: x0[i : i + 1] for i, p in enumerate(chunk)})

    x0_video = guide(predictions[0], video.params)
    if video.clean is not None:  # the official `_post_process_latent` with the denoise mask
        x0_video[:, : video.clean.shape[1]] = video.clean.float()
    x0_audio = guide(predictions[1], audio.params) if audio is not None else None
    return x0_video, x0_audio


def _chunks(passes, video: _Stream, audio: _Stream | None, max_batch: int) -> Iterator[list[GuidancePass]]:
    """Consecutive passes, at most `max_batch` per forward, their text contexts of one shape (so they stack)."""

    def shapes(p: GuidancePass):
        return tuple(s.contexts[p.negative].shape for s in (video, audio) if s is not None)

    for _, group in itertools.groupby(passes, key=shapes):
        group = list(group)
        for start in range(0, len(group), max_batch):
            yield group[start : start + max_batch]


def _batched_input(stream: _Stream, chunk: list[GuidancePass], sigma: torch.Tensor) -> ModalityInput:
    size = len(chunk)
    timesteps = stream.timesteps(sigma.float())
    return ModalityInput(
        latent=stream.latent.expand(size, -1, -1),
        sigma=sigma.float().expand(size),
        timesteps=timesteps.expand(size, -1),
        positions=stream.positions.expand(size, -1, -1, -1),
        context=torch.cat([stream.contexts[p.negative] for p in chunk]),
        keyframes_mask=stream.keyframes.expand(size, -1) if stream.keyframes is not None else None,
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
