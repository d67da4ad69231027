"""Conditioned sampling on the real tiny transformer: clean tokens of any per-token mask (prefix, suffix, inpainting
mask, outpainting crop; video and audio) equal their conditioning latents at every step, with timestep 0, while the
other tokens move; an IC-LoRA reference is prepended in every pass (clean, timestep 0, positions rescaled by its
factors) and cut from the output; bad requests name the problem."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.conditioning.spec import Condition
from ltx2_tuner.conditioning.tokens import TokenGrid, condition_token_mask
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import (
    audio_latent_count,
    context_dims,
    load_transformer,
    patchify_audio,
    patchify_video,
    video_positions,
)
from ltx2_tuner.sampling import GuidanceParams, SampleRequest, ltx2_sigmas, sample

CPU = torch.device("cpu")
ALL_ON = GuidanceParams(cfg=3.0, stg=1.0, rescale=0.7, modality=3.0, stg_blocks=(1,))
GRID = TokenGrid(frames=3, height=2, width=3)  # 96x64 pixels, 17 frames
AUDIO_STEPS = audio_latent_count(17, 24.0)


@pytest.fixture(scope="module")
def av25(tiny_checkpoints):
    return load_transformer(tiny_checkpoints["2.5"].path, mode="av")


def _request(model, **changes) -> SampleRequest:
    video_dim, audio_dim = context_dims(model.config)
    g = torch.Generator().manual_seed(0)
    fields = dict(
        width=96, height=64, num_frames=17, frame_rate=24.0, seed=3, steps=3,
        video_context=torch.randn(1, 5, video_dim, generator=g),
        video_context_negative=torch.randn(1, 5, video_dim, generator=g),
        audio_context=torch.randn(1, 5, audio_dim, generator=g),
        audio_context_negative=torch.randn(1, 5, audio_dim, generator=g),
        video_guidance=ALL_ON, audio_guidance=ALL_ON,
    )  # fmt: skip
    fields.update(changes)
    return SampleRequest(**fields)


def _sample_seeing_inputs(model, request, max_batch=4):
    """(result, [(video ModalityInput, audio ModalityInput) per forward])."""
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args))
    try:
        result = sample(model, request, device=CPU, dtype=torch.float32, max_batch=max_batch)
    finally:
        handle.remove()
    return result, seen


def _video_latents(seed: int) -> torch.Tensor:
    return torch.randn(1, 128, GRID.frames, GRID.height, GRID.width, generator=torch.Generator().manual_seed(seed))


def _audio_latents(seed: int) -> torch.Tensor:
    return torch.randn(1, 8, AUDIO_STEPS, 16, generator=torch.Generator().manual_seed(seed))


_STORED_MASK = torch.zeros(GRID.frames, GRID.height, GRID.width)
_STORED_MASK[:, 0, 1:] = 1.0  # keep the top-right of every frame, regenerate the rest (1 = condition)
VIDEO_CONDITIONS = {
    "prefix": (Condition("prefix", temporal_boundary=2), None),
    "suffix": (Condition("suffix", temporal_boundary=1), None),
    "mask": (Condition("mask"), _STORED_MASK),
    "spatial_crop": (Condition("spatial_crop", region=(0, 32, 64, 96)), None),
}


def _assert_clean_at_every_step(seen, index, clean_tokens, mask, steps, offset=0):
    """Forward `seen[k][index]` holds `clean_tokens` exactly on `mask` (timestep 0) and sigma_k elsewhere."""
    sigmas = ltx2_sigmas(steps)
    assert len(seen) == steps  # max_batch 4: one forward per step
    for step, inputs in enumerate(seen):
        inputs = inputs[index]
        latent, timesteps = inputs.latent[:, offset:], inputs.timesteps[:, offset:]
        assert all(torch.equal(rows[mask], clean_tokens[0][mask]) for rows in latent)
        assert bool((timesteps[:, mask] == 0).all())
        assert bool((timesteps[:, ~mask] == sigmas[step]).all())


@pytest.mark.parametrize("name", list(VIDEO_CONDITIONS))
def test_video_clean_tokens_equal_their_latents_at_every_step(av25, name):
    condition, stored = VIDEO_CONDITIONS[name]
    mask = condition_token_mask(condition, GRID, stored)
    assert 0 < int(mask.sum()) < GRID.num_tokens
    clean = _video_latents(5)
    request = _request(av25, video_clean_latents=clean, video_clean_mask=mask)
    result, seen = _sample_seeing_inputs(av25, request)

    tokens = patchify_video(clean)
    _assert_clean_at_every_step(seen, 0, tokens, mask, request.steps)
    out = patchify_video(result.video_latents)[0]
    assert torch.equal(out[mask], tokens[0][mask])  # and in the output
    first_state = seen[0][0].latent[0]
    assert (out[~mask] - first_state[~mask]).abs().mean() > 1e-2  # the rest was generated


@pytest.mark.parametrize("kind", ["prefix", "suffix"])
def test_audio_clean_tokens_equal_their_latents_at_every_step(av25, kind):
    mask = condition_token_mask(Condition(kind, modality="audio", temporal_boundary=4), TokenGrid(AUDIO_STEPS))
    clean = _audio_latents(6)
    request = _request(av25, audio_clean_latents=clean, audio_clean_mask=mask)
    result, seen = _sample_seeing_inputs(av25, request)

    tokens = patchify_audio(clean)
    _assert_clean_at_every_step(seen, 1, tokens, mask, request.steps)
    out = patchify_audio(result.audio_latents)[0]
    assert torch.equal(out[mask], tokens[0][mask])
    assert (out[~mask] - seen[0][1].latent[0][~mask]).abs().mean() > 1e-2


def test_first_frame_composes_with_a_clean_suffix(av25):
    image = torch.randn(128, 1, GRID.height, GRID.width, generator=torch.Generator().manual_seed(2))
    suffix = condition_token_mask(Condition("suffix", temporal_boundary=1), GRID)
    clean = _video_latents(7)
    request = _request(av25, first_frame_latent=image, video_clean_latents=clean, video_clean_mask=suffix)
    result, seen = _sample_seeing_inputs(av25, request)

    expected = patchify_video(clean).clone()
    per_frame = GRID.tokens_per_frame
    expected[:, :per_frame] = patchify_video(image[None])
    mask = suffix.clone()
    mask[:per_frame] = True
    _assert_clean_at_every_step(seen, 0, expected, mask, request.steps)
    assert torch.equal(result.video_latents[0, :, :1], image)
    assert torch.equal(result.video_latents[:, :, -1:], clean[:, :, -1:])


@pytest.mark.parametrize(("spatial", "temporal"), [(1, 1), (2, 1), (1, 2)])
def test_video_reference_is_prepended_clean_with_rescaled_positions_and_cut_from_the_output(av25, spatial, temporal):
    # Target: 64x64 (2x2 latent), 17 frames (3 latent frames); the reference at 1/spatial size, frames / temporal.
    frames, side = 3, 2
    ref_frames, ref_side = (frames - 1) // temporal + 1, side // spatial
    reference = torch.randn(1, 128, ref_frames, ref_side, ref_side, generator=torch.Generator().manual_seed(8))
    request = _request(av25, width=64, video_reference_latents=reference, reference_spatial_factor=spatial,
                       reference_temporal_factor=temporal)  # fmt: skip
    result, seen = _sample_seeing_inputs(av25, request)

    count = ref_frames * ref_side * ref_side
    tokens = patchify_video(reference)[0]
    # Hand-computed positions: the reference's own grid at fps / temporal, time shifted back by (temporal - 1)
    # target frames and clamped at 0, height and width times the spatial factor.
    expected = video_positions(1, ref_frames, ref_side, ref_side, 24.0 / temporal)[0]
    expected[0] = (expected[0] - (temporal - 1) / 24.0).clamp(min=0)
    expected[1:] *= spatial
    sigmas = ltx2_sigmas(request.steps)
    for step, (video, _) in enumerate(seen):
        assert video.latent.shape[1] == count + frames * side * side
        assert all(torch.equal(rows[:count], tokens) for rows in video.latent)
        assert bool((video.timesteps[:, :count] == 0).all()) and bool(
            (video.timesteps[:, count:] == sigmas[step]).all()
        )
        torch.testing.assert_close(video.positions[0, :, :count], expected, rtol=0, atol=1e-6)
        assert not bool(video.keyframes_mask[:, :count].any())  # reference tokens are never keyframes
        assert bool(video.keyframes_mask[:, count : count + side * side].all())  # the target's first frame is
    assert result.video_latents.shape == (1, 128, frames, side, side)


def test_the_reference_changes_the_result(av25):
    base = sample(av25, _request(av25, width=64, steps=2), device=CPU, dtype=torch.float32)
    reference = torch.randn(1, 128, 3, 2, 2, generator=torch.Generator().manual_seed(8))
    with_ref = sample(av25, _request(av25, width=64, steps=2, video_reference_latents=reference), device=CPU,
                      dtype=torch.float32)  # fmt: skip
    assert (with_ref.video_latents - base.video_latents).abs().max() > 1e-3
    assert base.video_latents.shape == with_ref.video_latents.shape


def test_audio_reference_is_prepended_clean_from_time_zero(av25):
    reference = torch.randn(1, 8, 7, 16, generator=torch.Generator().manual_seed(9))
    result, seen = _sample_seeing_inputs(av25, _request(av25, audio_reference_latents=reference))
    tokens = patchify_audio(reference)[0]
    for _, audio in seen:
        assert audio.latent.shape[1] == 7 + AUDIO_STEPS
        assert all(torch.equal(rows[:7], tokens) for rows in audio.latent)
        assert bool((audio.timesteps[:, :7] == 0).all())
        # positions from 0, as the target's own: the first 7 reference bounds equal the target's first 7
        torch.testing.assert_close(audio.positions[:, :, :7], audio.positions[:, :, 7:14], rtol=0, atol=0)
    assert result.audio_latents.shape == (1, 8, AUDIO_STEPS, 16)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"video_clean_latents": torch.zeros(1, 128, 3, 2, 3)}, "go together"),
        (
            {
                "video_clean_latents": torch.zeros(1, 128, 2, 2, 3),
                "video_clean_mask": torch.zeros(18, dtype=torch.bool),
            },
            "video clean latents of shape",
        ),
        (
            {
                "video_clean_latents": torch.zeros(1, 128, 3, 2, 3),
                "video_clean_mask": torch.zeros(17, dtype=torch.bool),
            },
            "video clean mask of 17",
        ),
        (
            {"audio_clean_latents": torch.zeros(1, 8, 3, 16), "audio_clean_mask": torch.zeros(3, dtype=torch.bool)},
            "audio clean latents of shape",
        ),
        ({"video_reference_latents": torch.zeros(1, 128, 2, 2, 3)}, "2 .temporal., not the 1, 1 asked for"),
        (
            {"video_reference_latents": torch.zeros(1, 128, 3, 1, 3), "reference_spatial_factor": 2},
            "do not scale uniformly",
        ),
        (
            {"frozen_audio_latents": torch.zeros(1, 8, 4, 16), "audio_reference_latents": torch.zeros(1, 8, 4, 16)},
            "audio_reference_latents: conditions generated audio",
        ),
    ],
)
def test_bad_conditioned_requests_name_the_problem(av25, changes, words):
    with pytest.raises(ConfigError, match=words):
        sample(av25, _request(av25, **changes), device=CPU, dtype=torch.float32)
