"""Conditions in the training step (training/conditioned.py): which tokens are clean, their timesteps, the loss mask,
and the prepended reference tokens with their positions; the draws leave unconditioned runs unchanged.

Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md B1-B2 (official flexible strategy).
"""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.conditioning.spec import Condition
from ltx2_tuner.models import patchify_audio, patchify_video, video_positions
from ltx2_tuner.roles import roles_for
from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs

CPU = torch.device("cpu")
F, H, W = 3, 2, 3  # latent frames x rows x columns
N = F * H * W


def _batch(batch_size=2, reference_shape=None, audio_tokens=10, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "latents": {
            "latents": torch.randn(batch_size, 128, F, H, W, generator=generator),
            "num_frames": F,
            "height": H,
            "width": W,
            "fps": torch.full((batch_size,), 24.0),
        },
        "audio_latents": {
            "latents": torch.randn(batch_size, 8, audio_tokens, 16, generator=generator),
            "lengths": torch.full((batch_size,), audio_tokens),
        },
        "conditions": {
            "video_prompt_embeds": torch.randn(batch_size, 8, 32, generator=generator),
            "audio_prompt_embeds": torch.randn(batch_size, 8, 16, generator=generator),
        },
        "items": [f"item{i}" for i in range(batch_size)],
    }
    if reference_shape is not None:
        batch["reference_latents"] = {
            "latents": torch.randn(batch_size, 128, *reference_shape, generator=generator),
            "fps": torch.full((batch_size,), 24.0),
        }
    return batch


def _prepare(batch, conditions, mode="video", first_frame_p=0.0, seed=0):
    flow = FlowSettings(first_frame_p=first_frame_p, conditions=tuple(conditions))
    return prepare_inputs(batch, roles_for(mode), flow, torch.Generator().manual_seed(seed), CPU, torch.float32)


def test_prefix_and_suffix_keep_their_frames_clean_at_timestep_0_and_out_of_the_loss():
    batch = _batch()
    x0 = patchify_video(batch["latents"]["latents"])
    for kind, frames in (("prefix", slice(0, 2 * H * W)), ("suffix", slice((F - 1) * H * W, N))):
        inputs = _prepare(batch, [Condition(kind, "video", 1.0, temporal_boundary=2 if kind == "prefix" else 1)])
        clean = torch.zeros(N, dtype=torch.bool)
        clean[frames] = True
        assert torch.equal(inputs.video.latent[:, clean], x0[:, clean])  # exactly the clean latents
        assert not inputs.video.timesteps[:, clean].any() and inputs.video.timesteps[:, ~clean].gt(0).all()
        assert torch.equal(inputs.video_loss_mask, ~clean.expand(2, -1))


def test_a_condition_with_probability_0_draws_but_changes_nothing_else_and_no_condition_draws_nothing():
    batch = _batch()
    plain = _prepare(batch, [])
    never = _prepare(batch, [Condition("prefix", "video", 0.0, temporal_boundary=1)])
    assert never.video_loss_mask is not None and never.video_loss_mask.all()
    assert torch.equal(plain.video.timesteps, never.video.timesteps)  # same sigmas: drawn before the condition
    # Without conditions the inputs are those of the plain step, bit for bit (first-frame draw order kept).
    again = _prepare(batch, [], first_frame_p=0.5)
    reference = prepare_inputs(batch, "video", FlowSettings(first_frame_p=0.5), torch.Generator().manual_seed(0),
                               CPU, torch.float32)  # fmt: skip
    assert torch.equal(again.video.latent, reference.video.latent)


def test_the_stored_mask_makes_its_tokens_clean_per_sample():
    batch = _batch()
    masks = torch.zeros(2, F, H, W)
    masks[0, :, 0, 0] = 1.0  # sample 0: the top-left token of every frame is a condition
    masks[1, 1] = 1.0  # sample 1: the whole middle frame
    batch["video_mask"] = masks
    inputs = _prepare(batch, [Condition("mask", "video", 1.0)])
    clean = masks.flatten(1) > 0.5
    assert torch.equal(inputs.video_loss_mask, ~clean)
    assert not inputs.video.timesteps[clean].any() and inputs.video.timesteps[~clean].gt(0).all()


def test_spatial_crop_keeps_the_box_clean_in_every_frame():
    inputs = _prepare(_batch(), [Condition("spatial_crop", "video", 1.0, region=(0, 0, 32, 64))])
    clean = torch.zeros(F, H, W, dtype=torch.bool)
    clean[:, 0, :2] = True  # rows [0, 32) px = latent row 0; columns [0, 64) px = latent columns 0, 1
    assert torch.equal(inputs.video_loss_mask[0], ~clean.flatten())


@pytest.mark.parametrize(("reference_shape", "spatial"), [((F, H, W), 1), ((F, 1, 1), 2)])
def test_a_reference_is_prepended_clean_with_its_positions_and_never_in_the_loss(reference_shape, spatial):
    if spatial == 2:  # a half-size reference of a 2 x 2 target grid
        batch = _batch(reference_shape=reference_shape)
        batch["latents"]["latents"] = batch["latents"]["latents"][:, :, :, :2, :2]
        batch["latents"]["height"] = batch["latents"]["width"] = 2
    else:
        batch = _batch(reference_shape=reference_shape)
    target_tokens = patchify_video(batch["latents"]["latents"]).shape[1]
    ref = patchify_video(batch["reference_latents"]["latents"])
    inputs = _prepare(batch, [Condition("reference", "video", 1.0)])
    video = inputs.video
    assert video.latent.shape[1] == ref.shape[1] + target_tokens
    assert torch.equal(video.latent[:, : ref.shape[1]], ref)  # first, clean
    assert not video.timesteps[:, : ref.shape[1]].any() and video.timesteps[:, ref.shape[1] :].gt(0).all()
    expected = video_positions(2, *reference_shape, 24.0)
    expected[:, 1:] *= spatial  # rows and columns in the target's pixels
    assert torch.equal(video.positions[:, :, : ref.shape[1]], expected)
    # The loss reads the target's predictions only: any value on the reference tokens gives the same loss.
    prediction = torch.randn(2, video.latent.shape[1], 128)
    loss = compute_loss((prediction, None), inputs, FlowSettings())[0]
    prediction[:, : ref.shape[1]] = 1e3
    assert torch.equal(compute_loss((prediction, None), inputs, FlowSettings())[0], loss)


def test_audio_prefix_is_clean_and_masked_with_the_padding():
    batch = _batch()
    batch["audio_latents"]["lengths"] = torch.tensor([10, 7])
    inputs = _prepare(batch, [Condition("prefix", "audio", 1.0, temporal_boundary=3)], mode="audio")
    a0 = patchify_audio(batch["audio_latents"]["latents"])
    assert torch.equal(inputs.audio.latent[:, :3], a0[:, :3]) and not inputs.audio.timesteps[:, :3].any()
    expected = torch.zeros(2, 10, dtype=torch.bool)
    expected[0, 3:] = True
    expected[1, 3:7] = True
    assert torch.equal(inputs.audio_loss_mask, expected)


def test_a_prefix_as_long_as_the_window_is_not_applied():
    inputs = _prepare(_batch(), [Condition("prefix", "video", 1.0, temporal_boundary=F)])
    assert inputs.video_loss_mask is None and inputs.video.timesteps.gt(0).all()
