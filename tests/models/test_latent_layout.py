"""Patchify/unpatchify and RoPE positions match diffusers' own helpers and the official formulas."""

from __future__ import annotations

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2 import LTX2Pipeline

from ltx2_tuner.models import (
    audio_latent_count,
    audio_positions,
    patchify_audio,
    patchify_video,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)


@pytest.fixture(scope="module")
def rope_modules():
    model = LTX2VideoTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, caption_channels=16, rope_type="split",
    )  # fmt: skip
    return model.rope, model.audio_rope


def test_video_positions_equal_diffusers(rope_modules):
    rope, _ = rope_modules
    for fps in (24.0, 25.0, 29.97, 8.0):
        expected = rope.prepare_video_coords(2, 3, 4, 5, torch.device("cpu"), fps=fps)
        assert torch.equal(video_positions(2, 3, 4, 5, fps), expected)


def test_video_positions_follow_the_causal_first_frame():
    positions = video_positions(1, 3, 1, 2, fps=24.0)
    frames = positions[0, 0, ::2] * 24  # pixel-frame bounds of latent frames 0, 1, 2
    assert frames.tolist() == [[0.0, 1.0], [1.0, 9.0], [9.0, 17.0]]
    assert positions[0, 2, :2].tolist() == [[0.0, 32.0], [32.0, 64.0]]  # width in pixels
    per_sample = video_positions(2, 2, 1, 1, fps=torch.tensor([24.0, 12.0]))
    assert per_sample[1, 0, 1, 1] == 2 * per_sample[0, 0, 1, 1]


def test_audio_positions_equal_diffusers(rope_modules):
    _, audio_rope = rope_modules
    expected = audio_rope.prepare_audio_coords(3, 26, torch.device("cpu"))
    assert torch.equal(audio_positions(3, 26), expected)
    # official: token 0 = [0, 0.01) s, token k >= 1 = [0.04k - 0.03, 0.04k + 0.01) s
    torch.testing.assert_close(audio_positions(1, 3)[0, 0], torch.tensor([[0.0, 0.01], [0.01, 0.05], [0.05, 0.09]]))


def test_patchify_matches_the_pipeline_and_round_trips():
    video = torch.randn(2, 128, 3, 4, 5)
    tokens = patchify_video(video)
    assert torch.equal(tokens, LTX2Pipeline._pack_latents(video, 1, 1))
    assert torch.equal(unpatchify_video(tokens, 3, 4, 5), video)
    audio = torch.randn(2, 8, 26, 16)
    audio_tokens = patchify_audio(audio)
    assert torch.equal(audio_tokens, LTX2Pipeline._pack_audio_latents(audio))
    assert torch.equal(unpatchify_audio(audio_tokens), audio)


def test_audio_latent_count_is_25_per_second():
    assert audio_latent_count(121, 24.0) == round(121 / 24 * 25)
    assert audio_latent_count(48, 24.0) == 50
