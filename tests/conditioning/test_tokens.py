"""Condition tokens against hand-computed values: which tokens are clean, reference positions, scale factors."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.conditioning.spec import Condition
from ltx2_tuner.conditioning.tokens import (
    TokenGrid,
    audio_reference_positions,
    condition_token_mask,
    prepend_reference,
    reference_positions,
    reference_scale_factors,
)
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import ModalityInput

VIDEO = TokenGrid(frames=3, height=2, width=3)  # 18 tokens, 6 per frame; token (f, r, c) is 6f + 3r + c
AUDIO = TokenGrid(frames=10)


def _clean_indices(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def test_grid_sizes():
    assert (VIDEO.num_tokens, VIDEO.tokens_per_frame, AUDIO.num_tokens, AUDIO.tokens_per_frame) == (18, 6, 10, 1)


@pytest.mark.parametrize(
    ("condition", "grid", "clean"),
    [
        (Condition("first_frame"), VIDEO, [0, 1, 2, 3, 4, 5]),
        (Condition("prefix", temporal_boundary=2), VIDEO, list(range(12))),
        (Condition("suffix", temporal_boundary=1), VIDEO, [12, 13, 14, 15, 16, 17]),
        (Condition("prefix", temporal_boundary=5), VIDEO, list(range(18))),  # longer than the clip: all of it
        (Condition("suffix", temporal_boundary=5), VIDEO, list(range(18))),
        (Condition("prefix", "audio", temporal_boundary=3), AUDIO, [0, 1, 2]),
        (Condition("suffix", "audio", temporal_boundary=4), AUDIO, [6, 7, 8, 9]),
    ],
    ids=["first_frame", "prefix", "suffix", "long_prefix", "long_suffix", "audio_prefix", "audio_suffix"],
)
def test_temporal_conditions(condition, grid, clean):
    mask = condition_token_mask(condition, grid)
    assert mask.dtype == torch.bool and mask.shape == (grid.num_tokens,)
    assert _clean_indices(mask) == clean


def _box_tokens(rows, columns) -> list[int]:
    return sorted(6 * f + 3 * r + c for f in range(3) for r in rows for c in columns)


@pytest.mark.parametrize(
    ("region", "rows", "columns"),
    [
        ((0, 32, 64, 96), [0, 1], [1, 2]),  # whole latent cells
        ((16, 40, 63, 200), [0], [1, 2]),  # floor on both ends: y 16->0, 63->1; x 40->1, 200->6 clamped to 3
        ((0, 0, 31, 96), [], [0, 1, 2]),  # under one cell tall: floor makes it empty, as the official
        ((64, 96, 640, 960), [], []),  # starts past the grid: clamped to the edge, empty
    ],
)
def test_spatial_crop_floors_pixels_to_latents_clamps_and_tiles_over_frames(region, rows, columns):
    mask = condition_token_mask(Condition("spatial_crop", region=region), VIDEO)
    assert _clean_indices(mask) == _box_tokens(rows, columns)


def test_spatial_crop_pixel_scale():
    mask = condition_token_mask(Condition("spatial_crop", region=(0, 0, 16, 16)), VIDEO, pixel_scale=16)
    assert _clean_indices(mask) == _box_tokens([0], [0])


def test_stored_masks_of_both_shapes_are_thresholded_above_half():
    stored = torch.zeros(3, 2, 3)
    stored[1, 0, 2] = 0.51  # token 6 + 2 = 8
    stored[2, 1, 0] = 1.0  # token 12 + 3 = 15
    stored[0, 1, 1] = 0.5  # exactly 0.5 stays generated
    mask = Condition("mask")
    assert _clean_indices(condition_token_mask(mask, VIDEO, stored)) == [8, 15]
    assert _clean_indices(condition_token_mask(mask, VIDEO, stored.flatten())) == [8, 15]
    batched = torch.stack([stored, 1 - stored])
    assert condition_token_mask(mask, VIDEO, batched).shape == (2, 18)
    assert _clean_indices(condition_token_mask(mask, VIDEO, batched)[1]) == [
        i for i in range(18) if i not in (4, 8, 15)
    ]
    audio = torch.tensor([0.0, 0.9, 0.2, 0.7, 0, 0, 0, 0, 0, 1])
    assert _clean_indices(condition_token_mask(Condition("mask", "audio"), AUDIO, audio)) == [1, 3, 9]


def test_stored_mask_of_another_grid_or_missing_is_refused():
    with pytest.raises(ValueError, match="does not fit the latent grid"):
        condition_token_mask(Condition("mask"), VIDEO, torch.zeros(3, 3, 2))
    with pytest.raises(ValueError, match="needs the sample's stored mask"):
        condition_token_mask(Condition("mask"), VIDEO)
    with pytest.raises(ValueError, match="not an intrinsic condition"):
        condition_token_mask(Condition("reference"), VIDEO)


REF = TokenGrid(frames=3, height=2, width=2)


def _expected_positions(times, fps, cell) -> torch.Tensor:
    """[3, 12, 2] from per-frame pixel-frame bounds `times`, divided by `fps`, and `cell` pixels per latent row/col."""
    rows = []
    for f in range(3):
        for r in range(2):
            for c in range(2):
                rows.append([[t / fps for t in times[f]], [cell * r, cell * (r + 1)], [cell * c, cell * (c + 1)]])
    return torch.tensor(rows).permute(1, 0, 2)


# Latent frame f spans pixel frames [8f - 7, 8f + 1), clamped at 0: [0, 1), [1, 9), [9, 17).
REF_TIMES = [(0, 1), (1, 9), (9, 17)]


def test_reference_positions_without_factors_are_the_references_own():
    positions = reference_positions(REF, ref_fps=12.0, target_fps=24.0, batch_size=2)
    assert positions.shape == (2, 3, 12, 2)
    torch.testing.assert_close(positions[1], _expected_positions(REF_TIMES, 12.0, 32))


def test_reference_positions_scaled_spatially_and_temporally():
    # S = 2 at 12 fps for a 24 fps target: shifted by (2 - 1) / 24 s, i.e. half a pixel frame at 12 fps, clamped.
    positions = reference_positions(REF, 12.0, 24.0, spatial_factor=2, temporal_factor=2)
    shifted = [(max(0, a - 0.5), b - 0.5) for a, b in REF_TIMES]
    torch.testing.assert_close(positions[0], _expected_positions(shifted, 12.0, 64))
    # The reference's last frame ends where the target's (2 * (3 - 1) + 1 = 5 latent frames at 24 fps) does.
    assert positions[0, 0, -1, 1].item() == pytest.approx((8 * 4 + 1) / 24.0)


def test_reference_positions_per_sample_fps():
    positions = reference_positions(REF, torch.tensor([12.0, 15.0]), torch.tensor([24.0, 30.0]), temporal_factor=2,
                                    batch_size=2)  # fmt: skip
    torch.testing.assert_close(
        positions[1, 0, :, 1], _expected_positions([(0, 0.5), (0.5, 8.5), (8.5, 16.5)], 15.0, 32)[0, :, 1]
    )


def test_audio_reference_positions_start_at_zero():
    # Latent k spans mel frames [4k - 3, 4k + 1), clamped at 0, at 100 mel frames per second.
    expected = torch.tensor([[0.0, 0.01], [0.01, 0.05], [0.05, 0.09]])
    positions = audio_reference_positions(3, batch_size=2)
    assert positions.shape == (2, 1, 3, 2)
    torch.testing.assert_close(positions[1, 0], expected)


def _inputs(keyframes):
    return ModalityInput(
        latent=torch.randn(2, 4, 3),
        sigma=torch.tensor([0.4, 0.6]),
        timesteps=torch.full((2, 4), 0.5),
        positions=torch.randn(2, 3, 4, 2),
        context=torch.randn(2, 5, 8),
        keyframes_mask=keyframes,
    )


@pytest.mark.parametrize("keyframes_shape", [None, (2, 4), (2, 4, 1)])
def test_prepend_reference(keyframes_shape):
    keyframes = None if keyframes_shape is None else torch.ones(keyframes_shape)
    inputs = _inputs(keyframes)
    ref_tokens, ref_positions = torch.randn(2, 3, 3), torch.randn(2, 3, 3, 2)
    out = prepend_reference(inputs, ref_tokens, ref_positions)
    assert torch.equal(out.latent, torch.cat([ref_tokens, inputs.latent], dim=1))
    assert out.timesteps.tolist() == [[0.0] * 3 + [0.5] * 4] * 2
    assert torch.equal(out.positions, torch.cat([ref_positions, inputs.positions], dim=2))
    assert out.sigma is inputs.sigma and out.context is inputs.context
    if keyframes is None:
        assert out.keyframes_mask is None
    else:
        assert out.keyframes_mask.shape == (2, 7, *keyframes_shape[2:])
        assert out.keyframes_mask.flatten(1).tolist() == [[0.0] * 3 + [1.0] * 4] * 2


def test_prepend_reference_refuses_another_batch():
    with pytest.raises(ValueError, match="do not match"):
        prepend_reference(_inputs(None), torch.randn(1, 3, 3), torch.randn(1, 3, 3, 2))


@pytest.mark.parametrize(
    ("target", "ref", "factors"),
    [
        ((5, 4, 6), (5, 4, 6), (1, 1)),
        ((5, 4, 6), (3, 2, 3), (2, 2)),  # (5 - 1) / (3 - 1) = 2 frame groups per reference group
        ((9, 4, 4), (3, 4, 4), (1, 4)),
        ((9, 4, 4), (1, 4, 4), (1, 1)),  # a one-frame reference has no groups: 1, as the official
    ],
)
def test_reference_scale_factors(target, ref, factors):
    assert reference_scale_factors(TokenGrid(*target), TokenGrid(*ref), "clip.mp4") == factors


@pytest.mark.parametrize(
    ("target", "ref"),
    [
        ((5, 4, 6), (5, 2, 2)),  # height x2, width x3
        ((5, 5, 4), (5, 2, 2)),  # 5 // 2 = 2 but not exact
        ((5, 2, 2), (5, 4, 4)),  # reference larger than the target
        ((6, 4, 4), (3, 4, 4)),  # (6 - 1) / (3 - 1) is not whole
    ],
)
def test_reference_scale_factors_refuse_uneven_scales(target, ref):
    with pytest.raises(ConfigError, match=r"^clip\.mp4: .*cache references at the target's size"):
        reference_scale_factors(TokenGrid(*target), TokenGrid(*ref), "clip.mp4")
