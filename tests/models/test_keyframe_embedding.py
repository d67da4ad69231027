"""LTX 2.5's learned keyframe embedding in the adapter: parity with diffusers' `video_keyframes_mask` and with the
embedding read from the checkpoint file, a no-op on 2.0/2.3. Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md
A2 (ltx-core adds it after `patchify_proj` to tokens whose mask is > 0)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from ltx2_tuner.models import load_transformer, load_transformer_backbone
from ltx2_tuner.models.keyframes import first_frame_keyframes_mask
from ltx2_tuner.testing.keyframe_probe import expected_addition, keyframe_probe
from ltx2_tuner.testing.transformer_inputs import FRAMES, HEIGHT, WIDTH, diffusers_forward, make_inputs

TOKENS_PER_FRAME, TOKENS = HEIGHT * WIDTH, FRAMES * HEIGHT * WIDTH


def _masks() -> dict[str, torch.Tensor | None]:
    """No mask, the first latent frame of both samples, and a mask that differs per sample with values around 0."""
    scattered = torch.zeros(2, TOKENS)
    scattered[0, :TOKENS_PER_FRAME] = 1.0
    scattered[1, TOKENS_PER_FRAME : 2 * TOKENS_PER_FRAME] = 0.5
    scattered[1, -1], scattered[0, -1] = 2.0, -1.0  # only > 0 marks a token
    return {
        "none": None,
        "first_frame": first_frame_keyframes_mask(2, TOKENS_PER_FRAME, TOKENS),
        "scattered": scattered,
    }


def _file_embedding(path) -> torch.Tensor:
    with safe_open(str(path), "pt") as handle:
        return handle.get_tensor("model.diffusion_model.keyframes_abs_pos_embedding")


@pytest.fixture(scope="module")
def tiny25(tiny_checkpoints):
    return tiny_checkpoints["2.5"]


@torch.no_grad()
@pytest.mark.parametrize("mask_name", ["none", "first_frame", "scattered"])
def test_adapter_equals_diffusers_forward_given_the_same_keyframes_mask(tiny25, mask_name):
    ours = load_transformer(tiny25.path, mode="av")
    plain = load_transformer_backbone(tiny25.path)
    assert ours.has_keyframes_embedding and plain.config.use_keyframes_abs_pos_embedding
    mask = _masks()[mask_name]
    video, audio = make_inputs(ours.config)
    marked = dataclasses.replace(video, keyframes_mask=mask)
    theirs = diffusers_forward(plain, video, audio, uniform=True,
                               video_keyframes_mask=None if mask is None else mask[..., None])  # fmt: skip
    for ours_out, theirs_out in zip(ours(marked, audio), theirs, strict=True):
        torch.testing.assert_close(ours_out, theirs_out, rtol=0, atol=1e-6)
    if mask is not None:  # the embedding is not zero in the tiny model, so the mark must show in the output
        assert (ours(marked, audio)[0] - ours(video, audio)[0]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("mode", ["av", "video"])
def test_embedding_from_the_file_is_added_to_exactly_the_marked_tokens(tiny25, mode):
    model = load_transformer(tiny25.path, mode=mode)
    embedding = _file_embedding(tiny25.path)
    assert embedding.shape == (1, model.config.num_attention_heads * model.config.attention_head_dim)
    assert embedding.abs().max() > 0
    video, audio = make_inputs(model.config, first_frame_clean=True)
    audio = audio if mode == "av" else None
    for mask in _masks().values():
        with keyframe_probe(model.backbone) as added:
            model(dataclasses.replace(video, keyframes_mask=mask), audio)
        expected = (
            torch.zeros(2, TOKENS, embedding.shape[1]) if mask is None else expected_addition(mask > 0, embedding)
        )
        assert len(added) == 1
        torch.testing.assert_close(added[0], expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_keyframes_mask_is_a_no_op_on_models_without_the_embedding(tiny):  # 2.0 and 2.3
    model = load_transformer(tiny.path, mode="av")
    assert not model.has_keyframes_embedding
    video, audio = make_inputs(model.config)
    unmarked = model(video, audio)
    with keyframe_probe(model.backbone) as added:
        marked = model(dataclasses.replace(video, keyframes_mask=_masks()["first_frame"]), audio)
    assert torch.equal(added[0], torch.zeros_like(added[0]))
    assert all(torch.equal(a, b) for a, b in zip(marked, unmarked, strict=True))


def test_a_keyframes_mask_of_the_wrong_shape_is_refused(tiny25):
    model = load_transformer(tiny25.path, mode="video")
    video, _ = make_inputs(model.config)
    with pytest.raises(ValueError, match="keyframes_mask of shape"):
        model(dataclasses.replace(video, keyframes_mask=torch.ones(2, TOKENS - 1)))
