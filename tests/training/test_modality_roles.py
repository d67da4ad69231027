"""Modality roles (roles.py) and the step inputs they produce: T2A builds no video, a frozen modality (A2V, V2A) goes
in clean with sigma and timestep 0 on every token and stays out of the loss.

Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md B1-B2 (the official flexible strategy).
"""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import load_transformer, patchify_audio, patchify_video
from ltx2_tuner.roles import ABSENT, FROZEN, GENERATED, roles_by_name, roles_for
from ltx2_tuner.training import flow_matching as fm
from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs

CPU = torch.device("cpu")


def _batch(batch_size=2, frames=3, audio_tokens=12, seed=0, video=True, audio=True) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "conditions": {
            "video_prompt_embeds": torch.randn(batch_size, 8, 32, generator=generator),
            "audio_prompt_embeds": torch.randn(batch_size, 8, 16, generator=generator),
            "prompt_attention_mask": torch.ones(batch_size, 8, dtype=torch.long),
        },
        "items": [f"item{i}" for i in range(batch_size)],
    }
    if video:
        batch["latents"] = {
            "latents": torch.randn(batch_size, 128, frames, 2, 3, generator=generator),
            "num_frames": frames,
            "height": 2,
            "width": 3,
            "fps": torch.full((batch_size,), 24.0),
        }
    if audio:
        batch["audio_latents"] = {
            "latents": torch.randn(batch_size, 8, audio_tokens, 16, generator=generator),
            "lengths": torch.full((batch_size,), audio_tokens, dtype=torch.long),
        }
    return batch


HALF_FIRST_FRAMES = FlowSettings(first_frame_p=0.5)


def _prepare(batch, roles, flow=HALF_FIRST_FRAMES, seed=0):
    return prepare_inputs(batch, roles, flow, torch.Generator().manual_seed(seed), CPU, torch.float32)


def test_the_roles_table_and_bad_combinations():
    table = {
        ("video", None): ("t2v", GENERATED, ABSENT, "video", "video_attn"),
        ("av", None): ("t2av", GENERATED, GENERATED, "av", "av_attn"),
        ("audio", None): ("t2a", ABSENT, GENERATED, "audio", "audio"),
        ("av", "audio"): ("a2v", GENERATED, FROZEN, "av", "a2v"),
        ("av", "video"): ("v2a", FROZEN, GENERATED, "av", "v2a"),
    }
    for (mode, frozen), (name, video, audio, build, preset) in table.items():
        roles = roles_for(mode, frozen)
        assert (roles.name, roles.video, roles.audio, roles.build, roles.default_preset) == (
            name, video, audio, build, preset,
        )  # fmt: skip
        assert roles_by_name(name) == roles
        assert roles.generated_modalities == tuple(m for m in ("video", "audio") if roles.role(m) == GENERATED)
    assert roles_for("audio").primary == "audio" and roles_for("av", "video").primary == "audio"
    assert roles_for("av", "audio").primary == "video" and roles_for("av").both_present
    for mode in ("video", "audio"):
        with pytest.raises(ConfigError, match="--frozen_modality audio needs both modalities: use --ltx_mode av"):
            roles_for(mode, "audio")
    with pytest.raises(ConfigError, match="--ltx_mode music: choose one of video, av, audio"):
        roles_for("music")
    with pytest.raises(ConfigError, match="--frozen_modality text: choose video"):
        roles_for("av", "text")


@pytest.mark.parametrize("name", ["a2v", "v2a"])
def test_the_frozen_modality_goes_in_clean_at_timestep_0_and_out_of_the_loss(name):
    batch = _batch()
    roles = roles_by_name(name)
    inputs = _prepare(batch, roles)
    frozen = "audio" if name == "a2v" else "video"
    generated = "video" if name == "a2v" else "audio"
    clean = {
        "video": patchify_video(batch["latents"]["latents"]),
        "audio": patchify_audio(batch["audio_latents"]["latents"]),
    }
    frozen_input = getattr(inputs, frozen)
    assert torch.equal(frozen_input.latent, clean[frozen])  # unchanged, bit for bit
    assert torch.equal(frozen_input.timesteps, torch.zeros_like(frozen_input.timesteps))
    assert torch.equal(frozen_input.sigma, torch.zeros(2))
    assert getattr(inputs, f"{frozen}_target") is None and getattr(inputs, f"{frozen}_sigma") is None
    generated_input = getattr(inputs, generated)
    assert not torch.equal(generated_input.latent, clean[generated])  # noised
    assert (generated_input.sigma > 0).all() and getattr(inputs, f"{generated}_target") is not None

    predictions = [torch.randn(2, clean[m].shape[1], 128) for m in ("video", "audio")]
    loss, parts = compute_loss(tuple(predictions), inputs, FlowSettings())
    assert set(parts) == {generated}
    # The frozen modality's prediction does not matter: any other value gives the same loss.
    other = list(predictions)
    other[("video", "audio").index(frozen)] = torch.full_like(predictions[0 if frozen == "video" else 1], 1e3)
    assert torch.equal(compute_loss(tuple(other), inputs, FlowSettings())[0], loss)


def test_a_frozen_video_gets_no_first_frame_condition_but_keeps_the_keyframe_mark():
    inputs = _prepare(_batch(), roles_by_name("v2a"), FlowSettings(first_frame_p=1.0))
    assert inputs.video_loss_mask is None and torch.equal(inputs.video.timesteps, torch.zeros(2, 18))
    assert inputs.video.keyframes_mask[:, :6].all() and not inputs.video.keyframes_mask[:, 6:].any()


def test_generated_modalities_draw_as_before_whatever_is_frozen():
    """A2V's video inputs equal T2V's (the frozen audio draws nothing), and V2A's audio equals T2A's."""
    batch = _batch()
    t2v, a2v = _prepare(batch, roles_for("video")), _prepare(batch, roles_for("av", "audio"))
    assert t2v.audio is None and torch.equal(t2v.video.latent, a2v.video.latent)
    assert torch.equal(t2v.video.timesteps, a2v.video.timesteps) and torch.equal(t2v.video_target, a2v.video_target)
    audio_only = {key: value for key, value in batch.items() if key != "latents"}
    t2a, v2a = _prepare(audio_only, roles_for("audio")), _prepare(batch, roles_for("av", "video"))
    assert t2a.video is None and t2a.video_target is None
    assert torch.equal(t2a.audio.latent, v2a.audio.latent) and torch.equal(t2a.audio_target, v2a.audio_target)


def test_t2a_inputs_use_the_audio_token_count_and_mask_padding():
    batch = _batch(video=False, audio_tokens=40)
    batch["audio_latents"]["lengths"] = torch.tensor([40, 25])
    inputs = _prepare(batch, roles_for("audio"))
    expected_sigma = fm.sample_sigmas("shifted_logit_normal", 2, 40, torch.Generator().manual_seed(0))
    assert torch.equal(inputs.audio_sigma, expected_sigma)  # the shift follows the 40 audio tokens
    assert inputs.audio_loss_mask[1, :25].all() and not inputs.audio_loss_mask[1, 25:].any()
    _, parts = compute_loss((None, torch.zeros(2, 40, 128)), inputs, FlowSettings())
    assert set(parts) == {"audio"}


def test_the_audio_build_runs_without_video_and_the_frozen_audio_conditions_the_video(tiny_checkpoints):
    path = tiny_checkpoints["2.3"].path
    audio_model = load_transformer(path, mode="audio")
    assert not any(name.startswith(("proj_in", "time_embed")) for name, _ in audio_model.backbone.named_parameters())
    inputs = _prepare(_batch(video=False), roles_for("audio"))
    video_out, audio_out = audio_model(inputs.video, inputs.audio)
    assert video_out is None and audio_out.shape == (2, 12, 128)

    av_model = load_transformer(path, mode="av")
    batch = _batch()
    a2v = _prepare(batch, roles_by_name("a2v"))
    other_audio = _batch(seed=5)["audio_latents"]
    batch["audio_latents"] = other_audio
    changed = _prepare(batch, roles_by_name("a2v"))
    with torch.no_grad():
        first, second = av_model(a2v.video, a2v.audio)[0], av_model(changed.video, changed.audio)[0]
    assert (first - second).abs().max() > 1e-4  # the video prediction depends on the frozen audio


def test_dataset_kinds_each_mode_refuses_in_one_line():
    expected = {  # (image, video, audio) datasets: which are refused
        "t2v": (False, False, True),
        "t2av": (False, False, True),
        "t2a": (True, False, False),
        "a2v": (True, False, True),
        "v2a": (True, False, True),
    }
    for name, refused in expected.items():
        roles = roles_by_name(name)
        problems = [roles.dataset_problem(kind) for kind in ("image", "video", "audio")]
        assert [p is not None for p in problems] == list(refused), name
        assert all("\n" not in p and "remove it from the dataset config" in p for p in problems if p)
