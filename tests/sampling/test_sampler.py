"""The sampler loop: exact integration of a known flow, batched == sequential passes on the real tiny transformer,
STG / modality guidance effects, I2V first-frame conditioning, seeding, video-only builds, a model left as found;
T2A on an audio-only build, and the frozen modality of A2V / V2A (clean, sigma 0, timestep 0, returned unchanged)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import (
    audio_latent_count,
    context_dims,
    load_transformer,
    patchify_audio,
    patchify_video,
)
from ltx2_tuner.sampling import GuidanceParams, SampleRequest, ltx2_sigmas, sample
from ltx2_tuner.testing.keyframe_probe import expected_addition, keyframe_probe

CPU = torch.device("cpu")
ALL_ON = GuidanceParams(cfg=3.0, stg=1.0, rescale=0.7, modality=3.0, stg_blocks=(1,))
OFF = GuidanceParams()


def _contexts(model, seed: int = 0, length: int = 6) -> dict:
    video_dim, audio_dim = context_dims(model.config)
    g = torch.Generator().manual_seed(seed)
    return {
        "video_context": torch.randn(1, length, video_dim, generator=g),
        "video_context_negative": torch.randn(1, length, video_dim, generator=g),
        "audio_context": torch.randn(1, length, audio_dim, generator=g),
        "audio_context_negative": torch.randn(1, length, audio_dim, generator=g),
    }


def _request(model, *, audio=True, video_guidance=ALL_ON, audio_guidance=ALL_ON, **changes) -> SampleRequest:
    contexts = _contexts(model)
    if not audio:
        contexts.update(audio_context=None, audio_context_negative=None)
    fields = dict(width=64, height=64, num_frames=17, frame_rate=24.0, seed=3, steps=3, **contexts,
                  video_guidance=video_guidance, audio_guidance=audio_guidance)  # fmt: skip
    fields.update(changes)
    return SampleRequest(**fields)


@pytest.fixture(scope="module")
def av23(tiny_checkpoints):
    return load_transformer(tiny_checkpoints["2.3"].path, mode="av")


# --- a known flow, integrated exactly ----------------------------------------------------------------------------


class PointFlow(nn.Module):
    """All noise flows onto one point x*: x_t = (1 - σ) x* + σ ε, so ε - x* = (x_t - x*)/σ is the velocity, and the
    x0 prediction x_t - σ v is exactly x*. Euler on x0 then keeps every state on the line:
    x_k = x* + (x_0 - x*) σ_k / σ_0, and reaches x* at σ = 0, whatever the schedule."""

    mode = "av"

    def __init__(self, video_target, audio_target):
        super().__init__()
        self.targets = (video_target, audio_target)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, video, audio):
        self.seen.append((video.latent.clone(), audio.latent.clone()))
        return tuple(
            (inputs.latent - target) / inputs.timesteps.unsqueeze(-1)
            for inputs, target in zip((video, audio), self.targets, strict=True)
        )


@pytest.mark.parametrize("steps", [8, 30])
def test_integrates_a_point_flow_exactly(steps):
    frames, fps = 17, 24.0
    num_video, num_audio = 3 * 2 * 2, audio_latent_count(frames, fps)
    g = torch.Generator().manual_seed(9)
    targets = torch.randn(1, num_video, 128, generator=g), torch.randn(1, num_audio, 128, generator=g)
    flow = PointFlow(*targets)
    request = SampleRequest(
        width=64, height=64, num_frames=frames, frame_rate=fps, seed=5, steps=steps,
        video_context=torch.zeros(1, 2, 8), video_context_negative=None,
        audio_context=torch.zeros(1, 2, 8), audio_context_negative=None,
        video_guidance=OFF, audio_guidance=OFF,
    )  # fmt: skip
    result = sample(flow, request, device=CPU, dtype=torch.float32)

    assert len(flow.seen) == steps  # neutral guidance: one pass per step
    noise = torch.Generator().manual_seed(5)  # the documented draw: video tokens, then audio tokens, float32
    starts = torch.randn(1, num_video, 128, generator=noise), torch.randn(1, num_audio, 128, generator=noise)
    sigmas = ltx2_sigmas(steps)  # the shifted default schedule
    for k, seen in enumerate(flow.seen):
        for state, start, target in zip(seen, starts, targets, strict=True):
            expected = target + (start - target) * (sigmas[k] / sigmas[0])
            torch.testing.assert_close(state, expected, rtol=0, atol=1e-5)  # measured max 8.3e-7
    # endpoint: measured max 3e-8
    torch.testing.assert_close(result.video_latents.flatten(2).transpose(1, 2), targets[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(result.audio_latents.permute(0, 2, 1, 3).flatten(2), targets[1], rtol=0, atol=1e-4)
    assert result.video_latents.shape == (1, 128, 3, 2, 2) and result.audio_latents.shape == (1, 8, num_audio, 16)


# --- the real tiny transformer -----------------------------------------------------------------------------------


def _model_state(model: nn.Module) -> dict:
    return {
        "params": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        "processors": [id(m.processor) for m in model.modules() if hasattr(m, "processor")],
        "training": [m.training for m in model.modules()],
    }


def test_batched_passes_equal_sequential_passes_and_model_is_left_as_found(av23):
    request = _request(av23, first_frame_latent=torch.randn(128, 1, 2, 2))
    av23.train()  # sampling runs in eval mode and must give the mode back
    before = _model_state(av23)
    batched = sample(av23, request, device=CPU, dtype=torch.float32, max_batch=4)
    middle = _model_state(av23)
    sequential = sample(av23, request, device=CPU, dtype=torch.float32, max_batch=1)
    pairs = sample(av23, request, device=CPU, dtype=torch.float32, max_batch=3)
    after = _model_state(av23)
    av23.eval()

    # Batched matmuls round differently from single ones; 3 steps with CFG 3/7 and rescale: 1e-4 (measured 5.5e-6
    # on latents of magnitude ~5).
    for other in (sequential, pairs):
        torch.testing.assert_close(other.video_latents, batched.video_latents, rtol=0, atol=1e-4)
        torch.testing.assert_close(other.audio_latents, batched.audio_latents, rtol=0, atol=1e-4)
    for state in (middle, after):
        assert all(torch.equal(state["params"][k], v) for k, v in before["params"].items())
        assert state["hooks"] == before["hooks"] and state["processors"] == before["processors"]
        assert state["training"] == before["training"] and all(before["training"])


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_stg_changes_the_result_only_when_its_block_exists(tiny_checkpoints, version):
    model = load_transformer(tiny_checkpoints[version].path, mode="av")  # two blocks: 0 and 1

    def run(stg: float, blocks: tuple[int, ...]):
        params = GuidanceParams(stg=stg, stg_blocks=blocks)
        request = _request(model, video_guidance=params, audio_guidance=params, steps=2)
        # one pass per forward, so an STG pass that perturbs nothing is bit-identical to the cond pass
        return sample(model, request, device=CPU, dtype=torch.float32, max_batch=1)

    base = run(0.0, ())
    missing = run(1.0, (7,))
    present = run(1.0, (1,))
    assert torch.equal(missing.video_latents, base.video_latents)
    assert torch.equal(missing.audio_latents, base.audio_latents)
    assert (present.video_latents - base.video_latents).abs().max() > 1e-3
    assert (present.audio_latents - base.audio_latents).abs().max() > 1e-3


def test_modality_guidance_acts_only_when_both_modalities_are_generated(av23):
    def run(modality: float, audio: bool):
        params = GuidanceParams(modality=modality)
        return sample(av23, _request(av23, audio=audio, video_guidance=params, audio_guidance=params, steps=2),
                      device=CPU, dtype=torch.float32, max_batch=1)  # fmt: skip

    assert torch.equal(run(3.0, audio=False).video_latents, run(1.0, audio=False).video_latents)
    on, off = run(3.0, audio=True), run(1.0, audio=True)
    assert (on.video_latents - off.video_latents).abs().max() > 1e-3
    assert (on.audio_latents - off.audio_latents).abs().max() > 1e-3


def test_first_frame_stays_the_image_latent_at_every_step(av23):
    image = torch.randn(128, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    clean = patchify_video(image[None])  # [1, 4, 128]: the first latent frame's tokens
    seen = []
    handle = av23.register_forward_pre_hook(lambda module, args: seen.append((args[0].latent.clone(), args[0])))
    try:
        result = sample(av23, _request(av23, first_frame_latent=image, steps=4), device=CPU, dtype=torch.float32)
    finally:
        handle.remove()

    sigmas = ltx2_sigmas(4)
    assert len(seen) == 4  # max_batch 4: one forward per step
    for step, (latent, inputs) in enumerate(seen):
        assert all(torch.equal(sample_latent[:4], clean[0]) for sample_latent in latent)
        assert bool((inputs.timesteps[:, :4] == 0).all())  # clean tokens: timestep 0
        assert bool((inputs.timesteps[:, 4:] == sigmas[step]).all()) and bool((inputs.sigma == sigmas[step]).all())
    assert torch.equal(result.video_latents[0, :, :1], image)
    later = patchify_video(result.video_latents)[0, 4:]  # the other frames moved away from their noise
    assert (later - seen[0][0][0, 4:]).abs().mean() > 1e-2
    assert all((b[0][0, 4:] - a[0][0, 4:]).abs().mean() > 1e-3 for a, b in itertools.pairwise(seen))  # at every step


def test_seeded_sampling_is_reproducible_bit_for_bit(av23):
    request = _request(av23, steps=2)
    first, again = (sample(av23, request, device=CPU, dtype=torch.float32) for _ in range(2))
    other = sample(av23, dataclasses.replace(request, seed=4), device=CPU, dtype=torch.float32)
    assert torch.equal(first.video_latents, again.video_latents)
    assert torch.equal(first.audio_latents, again.audio_latents)
    assert not torch.equal(first.video_latents, other.video_latents)
    assert not torch.equal(first.audio_latents, other.audio_latents)


def test_video_only_request_on_a_video_build(tiny_checkpoints, capsys):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    request = _request(model, audio=False, num_frames=9, width=96, height=32)
    result = sample(model, request, device=CPU, dtype=torch.float32, progress=True)
    assert result.audio_latents is None and result.video_latents.shape == (1, 128, 2, 1, 3)
    assert bool(torch.isfinite(result.video_latents).all())
    assert "sampling" in capsys.readouterr().err  # the tqdm bar
    with pytest.raises(ConfigError, match="--ltx_mode video"):
        sample(model, _request(model), device=CPU, dtype=torch.float32)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"width": 70}, "multiples of 32"),
        ({"num_frames": 16}, "16 frames"),
        ({"first_frame_latent": torch.zeros(128, 1, 3, 2)}, "first-frame latent"),
        ({"sigmas": torch.tensor([1.0, 0.0])}, "for 3 steps"),
        ({"steps": 2, "sigmas": torch.tensor([1.0, 0.0, 0.5])}, "decrease"),
    ],
)
def test_bad_requests_name_the_problem(av23, changes, words):
    with pytest.raises(ConfigError, match=words):
        sample(av23, _request(av23, **changes), device=CPU, dtype=torch.float32)


@pytest.mark.parametrize("with_image", [False, True])
def test_every_guidance_pass_marks_the_first_latent_frame_for_the_ltx25_keyframe_embedding(
    tiny_checkpoints, with_image
):
    # ltx-core's inference marks the target's first latent frame, T2V and I2V (reference ltx-2.5 A2); CFG, STG and
    # modality passes are all the same target, so they all get the same mark.
    model = load_transformer(tiny_checkpoints["2.5"].path, mode="av")
    image = torch.randn(128, 1, 2, 2, generator=torch.Generator().manual_seed(4)) if with_image else None
    request = _request(model, first_frame_latent=image, steps=2)  # 64x64x17: 3 latent frames of 2x2 tokens
    masks = []
    handle = model.register_forward_pre_hook(lambda module, args: masks.append(args[0].keyframes_mask.clone()))
    try:
        with keyframe_probe(model.backbone) as added:
            sample(model, request, device=CPU, dtype=torch.float32, max_batch=3)
    finally:
        handle.remove()

    first_frame = torch.zeros(1, 12, dtype=torch.bool)
    first_frame[:, :4] = True
    assert sum(rows.shape[0] for rows in added) == 2 * 4  # 2 steps x (cond, negative, STG, modality) passes
    assert all(torch.equal(mask, first_frame.expand(mask.shape[0], -1)) for mask in masks)
    embedding = model.backbone.keyframes_abs_pos_embedding
    for rows in added:
        expected = expected_addition(first_frame.expand(rows.shape[0], -1), embedding)
        torch.testing.assert_close(rows, expected, rtol=0, atol=1e-6)


# --- T2A, A2V, V2A -----------------------------------------------------------------------------------------------


def _forward_inputs(model) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    """Every (video, audio) ModalityInput pair the model is called with."""
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args))
    return seen, handle


def _t2a_request(model, **changes) -> SampleRequest:
    contexts = _contexts(model)
    fields = dict(seed=3, steps=3, video_context=None, audio_context=contexts["audio_context"],
                  audio_context_negative=contexts["audio_context_negative"], video_guidance=ALL_ON,
                  audio_guidance=ALL_ON, audio_duration_s=0.9)  # fmt: skip
    fields.update(changes)
    return SampleRequest(**fields)


def test_t2a_runs_on_an_audio_build_and_never_touches_a_video_module(tiny_checkpoints, av23):
    audio_build = load_transformer(tiny_checkpoints["2.3"].path, mode="audio")
    request = _t2a_request(audio_build)
    seen, handle = _forward_inputs(audio_build)
    try:
        result = sample(audio_build, request, device=CPU, dtype=torch.float32, max_batch=1)
    finally:
        handle.remove()
    assert result.video_latents is None
    assert result.audio_latents.shape == (1, 8, round(0.9 * 25), 16)  # ltx-core AudioLatentShape.from_duration
    assert bool(torch.isfinite(result.audio_latents).all())
    # cond, negative prompt and STG per step; no modality pass without video (its scale is on but has no effect).
    assert len(seen) == 3 * 3 and all(video is None for video, _ in seen)

    # The full AV build, asked for audio only, runs no video module at all and gives the same audio.
    called = []
    video_modules = [module for name, module in av23.backbone.named_modules() if _is_video_module(name)]
    handles = [module.register_forward_hook(lambda *_: called.append(1)) for module in video_modules]
    try:
        same = sample(av23, request, device=CPU, dtype=torch.float32, max_batch=1)
    finally:
        for hook in handles:
            hook.remove()
    assert video_modules and not called
    torch.testing.assert_close(same.audio_latents, result.audio_latents, rtol=0, atol=1e-5)


def _is_video_module(name: str) -> bool:
    """Modules of the video stream and of the audio <-> video cross-attention (diffusers names)."""
    top = ("proj_in", "time_embed", "proj_out", "norm_out", "rope", "cross_attn_rope", "caption_projection")
    parts = name.split(".")
    if parts[0] == "transformer_blocks" and len(parts) > 2:
        return parts[2] in ("attn1", "attn2", "ff", "audio_to_video_attn", "video_to_audio_attn")
    return parts[0] in top


def test_frozen_audio_enters_every_pass_clean_and_comes_back_unchanged(av23):
    frozen = torch.randn(1, 8, 11, 16, generator=torch.Generator().manual_seed(8))
    request = _request(av23, steps=3, frozen_audio_latents=frozen)  # A2V, every guidance scale on
    seen, handle = _forward_inputs(av23)
    try:
        result = sample(av23, request, device=CPU, dtype=torch.float32, max_batch=4)
    finally:
        handle.remove()

    assert torch.equal(result.audio_latents, frozen)
    assert result.video_latents.shape == (1, 128, 3, 2, 2)
    positive = request.audio_context[0]
    for video, audio in seen:
        # cond, negative prompt, STG, modality: the audio's own scales add no pass, the video's modality term does
        assert video.latent.shape[0] == audio.latent.shape[0] == 4
        assert all(torch.equal(rows, patchify_audio(frozen)[0]) for rows in audio.latent)
        assert bool((audio.timesteps == 0).all()) and bool((audio.sigma == 0).all())
        assert all(torch.equal(rows, positive) for rows in audio.context)  # its positive prompt in every pass
        assert bool((video.sigma > 0).all())
    # The audio conditions the video, and modality guidance acts on it because audio exists.
    t2av = sample(av23, _request(av23, steps=3), device=CPU, dtype=torch.float32)
    no_modality = sample(av23, dataclasses.replace(request, video_guidance=dataclasses.replace(ALL_ON, modality=1.0)),
                         device=CPU, dtype=torch.float32)  # fmt: skip
    assert (result.video_latents - t2av.video_latents).abs().max() > 1e-3
    assert (result.video_latents - no_modality.video_latents).abs().max() > 1e-3


def test_frozen_video_enters_every_pass_clean_and_comes_back_unchanged(av23):
    frozen = torch.randn(1, 128, 3, 2, 2, generator=torch.Generator().manual_seed(9))
    request = _request(av23, steps=2, frozen_video_latents=frozen)  # V2A
    seen, handle = _forward_inputs(av23)
    try:
        result = sample(av23, request, device=CPU, dtype=torch.float32, max_batch=1)
    finally:
        handle.remove()

    assert torch.equal(result.video_latents, frozen)
    assert result.audio_latents.shape == (1, 8, audio_latent_count(17, 24.0), 16)
    assert len(seen) == 2 * 4  # cond, negative prompt, STG (audio), modality (audio) per step
    for video, audio in seen:
        assert torch.equal(video.latent[0], patchify_video(frozen)[0])
        assert bool((video.timesteps == 0).all()) and bool((video.sigma == 0).all())
        assert torch.equal(video.context[0], request.video_context[0])
        assert bool((audio.sigma > 0).all())
    # The noise draw skips frozen video: the audio starts from the seed's first draw.
    first = seen[0][1].latent[0]
    assert torch.equal(first, torch.randn(first.shape, generator=torch.Generator().manual_seed(request.seed)))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"frozen_audio_latents": torch.zeros(1, 8, 4, 8)}, "frozen audio latents of shape"),
        ({"frozen_video_latents": torch.zeros(1, 128, 2, 2, 2)}, "frozen video latents of shape"),
        (
            {"frozen_video_latents": torch.zeros(1, 128, 3, 2, 2), "frozen_audio_latents": torch.zeros(1, 8, 4, 16)},
            "freeze at most one",
        ),
        (
            {"frozen_video_latents": torch.zeros(1, 128, 3, 2, 2), "first_frame_latent": torch.zeros(128, 1, 2, 2)},
            "first-frame image",
        ),
        ({"audio_duration_s": 2.0}, "beside video"),
        ({"audio_context": None, "frozen_audio_latents": torch.zeros(1, 8, 4, 16)}, "need the audio text context"),
    ],
)
def test_bad_mode_requests_name_the_problem(av23, changes, words):
    with pytest.raises(ConfigError, match=words):
        sample(av23, _request(av23, **changes), device=CPU, dtype=torch.float32)


def test_audio_only_requests_need_a_length_and_an_audio_stream(tiny_checkpoints, av23):
    with pytest.raises(ConfigError, match="audio_duration_s of at least"):
        sample(av23, _t2a_request(av23, audio_duration_s=None), device=CPU, dtype=torch.float32)
    audio_build = load_transformer(tiny_checkpoints["2.3"].path, mode="audio")
    with pytest.raises(ConfigError, match="--ltx_mode audio"):
        sample(audio_build, _request(audio_build), device=CPU, dtype=torch.float32)
