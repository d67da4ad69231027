"""One training step (training/step.py): first-frame conditioning, loss weights, the audio length mask, audio sigma,
LTX 2.5's first-frame keyframe mark.

Facts: ../shared/reference/official-ltx-trainer.md §1.5-1.8. Batches are built in the CachedBatches layout, in
float32 on the CPU; the transformer is the tiny official-format LTX-2.3 from the factory (2.5 for the keyframe mark).
"""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.models import load_transformer, patchify_audio, patchify_video
from ltx2_tuner.testing.keyframe_probe import expected_addition, keyframe_probe
from ltx2_tuner.training import flow_matching as fm
from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs

CONTEXT_DIMS = (32, 16)  # the tiny LTX-2.3's (video, audio) text widths
FRAMES, HEIGHT, WIDTH = 3, 2, 3  # latent frames x height x width
TOKENS_PER_FRAME = HEIGHT * WIDTH
VIDEO_TOKENS = FRAMES * TOKENS_PER_FRAME
AUDIO_TOKENS = 12
CPU = torch.device("cpu")


def _batch(batch_size=2, frames=FRAMES, audio_lengths=None, seed=0) -> dict:
    """A cached batch (CachedBatches layout) of random latents and text embeddings."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [AUDIO_TOKENS] * batch_size if audio_lengths is None else list(audio_lengths)
    return {
        "latents": {
            "latents": torch.randn(batch_size, 128, frames, HEIGHT, WIDTH, generator=generator),
            "num_frames": frames,
            "height": HEIGHT,
            "width": WIDTH,
            "fps": torch.full((batch_size,), 24.0),
        },
        "audio_latents": {
            "latents": torch.randn(batch_size, 8, AUDIO_TOKENS, 16, generator=generator),
            "lengths": torch.tensor(lengths, dtype=torch.long),
        },
        "conditions": {
            "video_prompt_embeds": torch.randn(batch_size, 8, CONTEXT_DIMS[0], generator=generator),
            "audio_prompt_embeds": torch.randn(batch_size, 8, CONTEXT_DIMS[1], generator=generator),
            "prompt_attention_mask": torch.ones(batch_size, 8, dtype=torch.long),
        },
        "items": [f"item{i}" for i in range(batch_size)],
    }


def _prepare(batch, flow, seed=0, mode="av"):
    return prepare_inputs(batch, mode, flow, torch.Generator().manual_seed(seed), CPU, torch.float32)


def _random_predictions(inputs, seed=1):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(inputs.video_target.shape, generator=generator)
    audio = None if inputs.audio_target is None else torch.randn(inputs.audio_target.shape, generator=generator)
    return video, audio


@pytest.fixture(scope="module")
def transformer(tiny_checkpoints):
    return load_transformer(tiny_checkpoints["2.3"].path, mode="av")  # float32


def test_first_frame_condition_reaches_the_model_clean_at_timestep_0_and_is_left_out_of_the_loss(transformer):
    flow = FlowSettings(sampler="uniform", first_frame_p=1.0)
    batch = _batch()
    inputs = _prepare(batch, flow, seed=3)
    video, audio = inputs.video, inputs.audio  # what the trainer passes to the model
    with torch.no_grad():
        video_pred, audio_pred = transformer(video, audio)
    first, rest = slice(0, TOKENS_PER_FRAME), slice(TOKENS_PER_FRAME, VIDEO_TOKENS)
    x0 = patchify_video(batch["latents"]["latents"])
    sigma = inputs.video_sigma
    assert sigma.shape == (2,) and (sigma > 0).all()

    # The model sees the first latent frame clean, with timestep 0; every other token at the sample's sigma.
    assert torch.equal(video.timesteps[:, first], torch.zeros(2, TOKENS_PER_FRAME))
    assert torch.equal(video.timesteps[:, rest], sigma[:, None].expand(-1, VIDEO_TOKENS - TOKENS_PER_FRAME))
    assert torch.equal(video.sigma, sigma)  # the sample's sigma (prompt AdaLN, cross-modal gates) stays sigma
    assert torch.equal(video.latent[:, first], x0[:, first])
    noise = inputs.video_target + x0  # target = noise - x0
    torch.testing.assert_close(video.latent[:, rest], fm.add_noise(x0, noise, sigma)[:, rest], rtol=0, atol=1e-6)
    assert (video.latent[:, rest] - x0[:, rest]).abs().amin(dim=(1, 2)).gt(0).all()  # really noised
    # Audio is not conditioned: all its tokens are at the audio sigma.
    assert torch.equal(audio.timesteps, inputs.audio_sigma[:, None].expand(-1, AUDIO_TOKENS))

    # The first frame is out of the loss: changing the prediction there changes nothing, elsewhere it does.
    assert (
        inputs.video_loss_mask.tolist() == [[False] * TOKENS_PER_FRAME + [True] * (VIDEO_TOKENS - TOKENS_PER_FRAME)] * 2
    )
    base, base_parts = compute_loss((video_pred, audio_pred), inputs, flow)
    changed = video_pred.clone()
    changed[:, first] += 100.0
    assert torch.equal(compute_loss((changed, audio_pred), inputs, flow)[0], base)
    changed = video_pred.clone()
    changed[:, TOKENS_PER_FRAME] += 1.0
    assert compute_loss((changed, audio_pred), inputs, flow)[0] != base
    # ... and the video loss is the mean over the generated tokens only.
    expected = ((video_pred[:, rest] - inputs.video_target[:, rest]) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(base_parts["video"], expected, rtol=1e-6, atol=0)


def test_first_frame_conditioning_with_probability_0_and_on_images_keeps_every_token():
    for flow, frames in ((FlowSettings(first_frame_p=0.0), FRAMES), (FlowSettings(first_frame_p=1.0), 1)):
        inputs = _prepare(_batch(frames=frames), flow)
        assert inputs.video_loss_mask is None
        tokens = frames * TOKENS_PER_FRAME
        assert torch.equal(inputs.video.timesteps, inputs.video_sigma[:, None].expand(-1, tokens))


def test_loss_weights_scale_the_parts_of_the_weighted_sum():
    # Documented (docs/training.md): loss = video_loss_weight x MSE(video) + audio_loss_weight x MSE(audio), each a
    # per-sample masked mean, then the mean over the batch. Manual computation from the predictions and targets.
    batch = _batch(batch_size=3, audio_lengths=(AUDIO_TOKENS, 7, 1))
    base_flow = FlowSettings(first_frame_p=0.0)
    inputs = _prepare(batch, base_flow)
    video_pred, audio_pred = _random_predictions(inputs)
    video_mse = ((video_pred - inputs.video_target) ** 2).mean(dim=(1, 2))
    audio_mse = torch.stack([
        ((audio_pred[i, :n] - inputs.audio_target[i, :n]) ** 2).mean() for i, n in enumerate((AUDIO_TOKENS, 7, 1))
    ])  # fmt: skip
    for video_weight, audio_weight in ((1.0, 1.0), (2.0, 0.25), (0.5, 0.0), (0.0, 3.0)):
        flow = FlowSettings(first_frame_p=0.0, video_loss_weight=video_weight, audio_loss_weight=audio_weight)
        total, parts = compute_loss((video_pred, audio_pred), inputs, flow)
        # The parts are the unweighted per-sample losses (they are what gets logged).
        torch.testing.assert_close(parts["video"], video_mse, rtol=1e-6, atol=0)
        torch.testing.assert_close(parts["audio"], audio_mse, rtol=1e-6, atol=0)
        expected = (video_weight * video_mse + audio_weight * audio_mse).mean()
        torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    # Weights 1 and 1 are the official unweighted sum video + audio.
    total = compute_loss((video_pred, audio_pred), inputs, base_flow)[0]
    torch.testing.assert_close(total, (video_mse + audio_mse).mean(), rtol=1e-6, atol=0)
    # Video mode: no audio prediction, the total is the weighted video loss.
    video_inputs = _prepare(batch, base_flow, mode="video")
    assert video_inputs.audio is None and video_inputs.audio_target is None
    flow = FlowSettings(first_frame_p=0.0, video_loss_weight=2.0, audio_loss_weight=5.0)
    total, parts = compute_loss((video_pred, None), video_inputs, flow)
    assert parts.keys() == {"video"}
    expected = 2.0 * ((video_pred - video_inputs.video_target) ** 2).mean(dim=(1, 2)).mean()
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)


def test_audio_beyond_its_length_is_out_of_the_loss_and_the_mean_is_over_real_audio():
    flow = FlowSettings(first_frame_p=0.0)
    inputs = _prepare(_batch(audio_lengths=(AUDIO_TOKENS, 5)), flow)
    assert inputs.audio_loss_mask.tolist() == [[True] * AUDIO_TOKENS, [True] * 5 + [False] * (AUDIO_TOKENS - 5)]
    video_pred, audio_pred = _random_predictions(inputs)
    base, parts = compute_loss((video_pred, audio_pred), inputs, flow)

    changed = audio_pred.clone()
    changed[1, 5:] += 100.0  # the padding of sample 1
    changed_total, changed_parts = compute_loss((video_pred, changed), inputs, flow)
    assert torch.equal(changed_total, base) and torch.equal(changed_parts["audio"], parts["audio"])
    for sample, token in ((1, 4), (0, AUDIO_TOKENS - 1)):  # real audio, of either sample
        changed = audio_pred.clone()
        changed[sample, token] += 1.0
        assert compute_loss((video_pred, changed), inputs, flow)[1]["audio"][sample] != parts["audio"][sample]

    # Mean over the real tokens only: padding neither adds error nor dilutes it.
    error = (audio_pred - inputs.audio_target) ** 2
    torch.testing.assert_close(parts["audio"][1], error[1, :5].mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(parts["audio"][0], error[0].mean(), rtol=1e-6, atol=0)
    # A sample without real audio contributes 0 (not NaN).
    silent = _prepare(_batch(audio_lengths=(0, AUDIO_TOKENS)), flow)
    assert compute_loss(_random_predictions(silent), silent, flow)[1]["audio"][0] == 0


def _expected_draws(batch, flow, seed, independent):
    """What prepare_inputs must draw, in its order, from a generator seeded with `seed` (first_frame_p = 0)."""
    generator = torch.Generator().manual_seed(seed)
    x0 = patchify_video(batch["latents"]["latents"])
    a0 = patchify_audio(batch["audio_latents"]["latents"])
    size = x0.shape[0]
    sigma = fm.sample_sigmas(flow.sampler, size, x0.shape[1], generator, flow.shift, flow.sigmoid_scale)
    noise = torch.randn(x0.shape, generator=generator)
    audio_sigma = sigma
    if independent:  # the audio sampler runs on the audio token count (official §1.5)
        audio_sigma = fm.sample_sigmas(flow.sampler, size, a0.shape[1], generator, flow.shift, flow.sigmoid_scale)
    audio_noise = torch.randn(a0.shape, generator=generator)
    return x0, a0, sigma, noise, audio_sigma, audio_noise


@pytest.mark.parametrize("independent", [True, False])
def test_audio_sigma_independent_or_shared_and_the_noising_it_drives(independent):
    batch_size = 6
    batch = _batch(batch_size=batch_size)
    flow = FlowSettings(first_frame_p=0.0, independent_audio_sigma=independent)  # the official sampler
    inputs = _prepare(batch, flow, seed=11)
    x0, a0, sigma, noise, audio_sigma, audio_noise = _expected_draws(batch, flow, 11, independent)

    assert torch.equal(inputs.video_sigma, sigma) and torch.equal(inputs.audio_sigma, audio_sigma)
    assert torch.equal(inputs.audio.sigma, audio_sigma)
    assert torch.equal(inputs.audio.timesteps, audio_sigma[:, None].expand(-1, AUDIO_TOKENS))
    if independent:
        assert (inputs.audio_sigma != inputs.video_sigma).all()  # drawn separately, per sample
    else:
        assert torch.equal(inputs.audio_sigma, inputs.video_sigma)  # the video's, sample by sample
    # x_t = (1 - sigma) x0 + sigma eps, target eps - x0, for each modality with its own sigma and noise.
    s, sa = sigma[:, None, None], audio_sigma[:, None, None]
    torch.testing.assert_close(inputs.video.latent, (1 - s) * x0 + s * noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs.video_target, noise - x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs.audio.latent, (1 - sa) * a0 + sa * audio_noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs.audio_target, audio_noise - a0, rtol=0, atol=1e-6)
    # Independent noise as well (the noise each modality was given: target + x0).
    video_noise, given_audio_noise = inputs.video_target + x0, inputs.audio_target + a0
    assert not torch.allclose(given_audio_noise, video_noise[:, :AUDIO_TOKENS])


def test_the_independent_audio_sigma_uses_the_audio_token_count():
    # The official sampler's mean depends on the sequence length of the modality it is drawn for (§1.5).
    flow = FlowSettings(first_frame_p=0.0, independent_audio_sigma=True)
    inputs = _prepare(_batch(batch_size=64), flow, seed=5)
    generator = torch.Generator().manual_seed(5)
    fm.sample_sigmas(flow.sampler, 64, VIDEO_TOKENS, generator)  # the video sigma
    torch.randn(64, VIDEO_TOKENS, 128, generator=generator)  # the video noise
    state = generator.get_state()
    by_audio_length = fm.sample_sigmas(flow.sampler, 64, AUDIO_TOKENS, generator)
    generator.set_state(state)
    by_video_length = fm.sample_sigmas(flow.sampler, 64, VIDEO_TOKENS, generator)
    assert torch.equal(inputs.audio_sigma, by_audio_length)
    assert not torch.equal(inputs.audio_sigma, by_video_length)


@pytest.fixture(scope="module")
def transformer25(tiny_checkpoints):
    return load_transformer(tiny_checkpoints["2.5"].path, mode="av")  # its keyframe embedding is random, not 0


@pytest.mark.parametrize("first_frame_keyframe", [True, False])
def test_ltx25_step_adds_the_keyframe_embedding_to_the_first_latent_frame_of_each_sample(
    transformer25, first_frame_keyframe
):
    # ltx-core's inference marks the target's first latent frame, whether or not it is a clean condition, and on
    # single images too (reference A2); --no-first_frame_keyframe marks nothing, as the official trainer.
    embedding = transformer25.backbone.keyframes_abs_pos_embedding
    for first_frame_p, frames in ((0.0, FRAMES), (1.0, FRAMES), (1.0, 1)):
        flow = FlowSettings(sampler="uniform", first_frame_p=first_frame_p, first_frame_keyframe=first_frame_keyframe)
        inputs = _prepare(_batch(batch_size=3, frames=frames), flow, seed=4)
        with keyframe_probe(transformer25.backbone) as added, torch.no_grad():
            transformer25(inputs.video, inputs.audio)
        tokens = frames * TOKENS_PER_FRAME
        first_frame = torch.zeros(3, tokens, dtype=torch.bool)
        first_frame[:, :TOKENS_PER_FRAME] = first_frame_keyframe
        torch.testing.assert_close(added[0], expected_addition(first_frame, embedding), rtol=0, atol=1e-6)


def test_the_keyframe_mark_draws_nothing_and_changes_no_other_input():
    batch = _batch()
    marked = _prepare(batch, FlowSettings(first_frame_p=0.5), seed=7)
    unmarked = _prepare(batch, FlowSettings(first_frame_p=0.5, first_frame_keyframe=False), seed=7)
    assert unmarked.video.keyframes_mask is None and marked.audio.keyframes_mask is None
    for name in ("latent", "sigma", "timesteps", "positions", "context"):
        assert torch.equal(getattr(marked.video, name), getattr(unmarked.video, name))
        assert torch.equal(getattr(marked.audio, name), getattr(unmarked.audio, name))
    assert torch.equal(marked.video_target, unmarked.video_target)
