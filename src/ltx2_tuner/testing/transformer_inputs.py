"""Random transformer inputs and the matching plain-diffusers call, for tests and benchmarks."""

from __future__ import annotations

import torch

from ltx2_tuner.models import ModalityInput, audio_positions, context_dims, video_positions

FRAMES, HEIGHT, WIDTH, AUDIO_LEN = 3, 2, 3, 13


def make_inputs(config, seed=0, sigma=(0.3, 0.8), audio_sigma=None, first_frame_clean=False, dtype=torch.float32):
    """(video, audio) ModalityInputs of a 3x2x3-latent clip and 13 audio latents for a transformer `config`."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(sigma)
    video_dim, audio_dim = context_dims(config)
    sigma = torch.tensor(sigma)
    audio_sigma = sigma if audio_sigma is None else torch.tensor(audio_sigma)
    tokens = FRAMES * HEIGHT * WIDTH
    timesteps = sigma[:, None].repeat(1, tokens)
    if first_frame_clean:
        timesteps[:, : HEIGHT * WIDTH] = 0.0  # first latent frame is clean conditioning
    video = ModalityInput(
        latent=torch.randn(batch, tokens, 128, generator=generator).to(dtype),
        sigma=sigma,
        timesteps=timesteps,
        positions=video_positions(batch, FRAMES, HEIGHT, WIDTH, fps=24.0),
        context=torch.randn(batch, 7, video_dim, generator=generator).to(dtype),
    )
    audio = ModalityInput(
        latent=torch.randn(batch, AUDIO_LEN, 128, generator=generator).to(dtype),
        sigma=audio_sigma,
        timesteps=audio_sigma[:, None].repeat(1, AUDIO_LEN),
        positions=audio_positions(batch, AUDIO_LEN),
        context=torch.randn(batch, 7, audio_dim, generator=generator).to(dtype),
    )
    return video, audio


def diffusers_forward(model, video, audio, uniform=False, **kwargs):
    """The plain diffusers call on the same inputs (`uniform`: one timestep per sample, as pipelines pass it)."""
    scale = model.config.timestep_scale_multiplier
    return model(
        hidden_states=video.latent,
        audio_hidden_states=audio.latent,
        encoder_hidden_states=video.context,
        audio_encoder_hidden_states=audio.context,
        timestep=video.sigma * scale if uniform else video.timesteps * scale,
        audio_timestep=audio.sigma * scale if uniform else audio.timesteps * scale,
        sigma=video.sigma * scale,
        audio_sigma=audio.sigma * scale,
        video_coords=video.positions,
        audio_coords=audio.positions,
        return_dict=False,
        **kwargs,
    )
