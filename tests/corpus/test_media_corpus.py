"""Bad and unusual videos and images through `ltx2_cache_latents.py` (docs/bad-input.md "Media").

Each dataset holds one good clip beside the case, so a test also shows that one bad file does not stop the others.
"""

from __future__ import annotations

import pytest
import torch
from _corpus import VIDEO_TABLE, cache_names, caption_everything, write_dataset
from safetensors.torch import load_file

from ltx2_tuner.testing import bad_inputs
from ltx2_tuner.testing.synthetic_media import write_image

GOOD = ["ok_00000-009_0064x0064_ltx2.safetensors"]


def _with_good_clip(tmp_path, make):
    config = write_dataset(tmp_path, VIDEO_TABLE)
    bad_inputs.good_video(tmp_path / "clips" / "ok.mp4", audio=False, seed=1)  # another scene than the cases
    bad = make(tmp_path / "clips")
    caption_everything(tmp_path / "clips")
    return config, bad


def _latents(path) -> torch.Tensor:
    (tensor,) = load_file(path).values()
    return tensor.float()


def _assert_same_picture(cache, name, twin, other) -> None:
    """The latents of `name` are close to its `twin`'s (two lossy encodings of one picture): much closer than to
    `other`, a different picture (what a wrong turn or bit depth would look like)."""
    case, twin, other = (_latents(cache / f"{stem}_ltx2.safetensors") for stem in (name, twin, other))
    assert (case - twin).abs().mean() < 0.3 * (other - twin).abs().mean()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda clips: bad_inputs.empty_file(clips / "zero.mp4"), id="zero-byte"),
        pytest.param(lambda clips: bad_inputs.truncate(bad_inputs.good_video(clips / "cut.mp4")), id="truncated"),
        pytest.param(lambda clips: bad_inputs.text_named_video(clips / "note.mp4"), id="text-named-mp4"),
    ],
)
def test_unopenable_videos_are_skipped_with_a_summary_entry(tmp_path, cache_latents, make):
    config, bad = _with_good_clip(tmp_path, make)
    outcome = cache_latents(config)
    assert outcome.code == 0
    assert f"warning: skipped unreadable media: {bad}: cannot open as a video" in outcome.err
    assert "done: 1 cached, 0 reused, 0 failed, 1 skipped" in outcome.out and "Traceback" not in outcome.err
    assert cache_names(tmp_path / "cache") == GOOD


def test_a_truncated_video_whose_index_survives_fails_the_windows_past_the_cut(tmp_path, cache_latents):
    # The index is written first, so the cut file still opens and promises 40 frames; only about 20 decode.
    config = write_dataset(tmp_path, VIDEO_TABLE.replace("[9]", '[9]\nframe_extraction = "chunk"'))
    source = bad_inputs.good_video(tmp_path / "source.mp4", 40, audio=False)
    cut = bad_inputs.truncate_between_packets(bad_inputs.remux(source, tmp_path / "clips" / "cut.mp4", faststart=True))
    caption_everything(tmp_path / "clips")
    outcome = cache_latents(config)
    assert outcome.code == 1
    failed = [line for line in outcome.err.splitlines() if line.startswith("  failed: ")]
    assert failed and all(f"failed: {cut}: the frames stop at" in line and "truncated" in line for line in failed)
    cached = cache_names(tmp_path / "cache")
    assert "cut_00000-009_0064x0064_ltx2.safetensors" in cached  # the windows before the cut are good
    assert len(cached) + len(failed) == 4  # 40 frames: chunks at 0, 9, 18, 27


def test_a_clip_shorter_than_every_target_frame_count_is_skipped(tmp_path, cache_latents):
    config, bad = _with_good_clip(tmp_path, lambda clips: bad_inputs.good_video(clips / "short.mp4", 5))
    outcome = cache_latents(config)
    assert outcome.code == 0
    assert f"warning: skipped, shorter than every target_frames: {bad} (5 frames < 9)" in outcome.err
    assert "1 skipped" in outcome.out and cache_names(tmp_path / "cache") == GOOD


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda clips: bad_inputs.good_video(clips / "vfr.mp4", vfr=True), "vfr_00000-009_0064x0064_ltx2"),
        # Stored 96x64 and turned by the display matrix: cached at the size a player shows, 64 wide and 96 high.
        (
            lambda clips: bad_inputs.good_video(clips / "rot.mp4", height=96, rotation=90),
            "rot_00000-009_0064x0096_ltx2",
        ),
        (lambda clips: bad_inputs.good_video(clips / "odd.mp4", width=65, height=67), "odd_00000-009_0065x0067_ltx2"),
    ],
    ids=["variable-frame-rate", "rotated", "odd-sized"],
)
def test_unusual_but_valid_videos_are_cached(tmp_path, cache_latents, make, name):
    config, _ = _with_good_clip(tmp_path, make)
    outcome = cache_latents(config)
    assert outcome.code == 0 and "done: 2 cached, 0 reused, 0 failed, 0 skipped" in outcome.out
    assert cache_names(tmp_path / "cache") == sorted([*GOOD, f"{name}.safetensors"])
    assert _latents(tmp_path / "cache" / f"{name}.safetensors").shape == (128, 2, 2, 2)  # the 64x64 bucket


def test_a_rotated_video_caches_upright(tmp_path, cache_latents):
    def make(clips):
        bad_inputs.good_video(clips / "upright.mp4", height=96, audio=False)
        return bad_inputs.good_video(clips / "turned.mp4", height=96, rotation=90, audio=False)

    config, _ = _with_good_clip(tmp_path, make)
    assert cache_latents(config).code == 0
    names = ("turned_00000-009_0064x0096", "upright_00000-009_0064x0096", "ok_00000-009_0064x0064")
    _assert_same_picture(tmp_path / "cache", *names)


def test_a_10_bit_video_caches_like_its_8_bit_source(tmp_path, cache_latents):
    def make(clips):
        return bad_inputs.ten_bit_copy(bad_inputs.good_video(clips / "eight.mp4", audio=False), clips / "ten.mp4")

    config, _ = _with_good_clip(tmp_path, make)
    assert cache_latents(config).code == 0
    names = ("ten_00000-009_0064x0064", "eight_00000-009_0064x0064", "ok_00000-009_0064x0064")
    _assert_same_picture(tmp_path / "cache", *names)


def test_images_of_every_pixel_format_and_orientation_are_cached(tmp_path, cache_latents):
    config = write_dataset(
        tmp_path, '[[datasets]]\nimage_directory = "stills"\ncache_directory = "cache"\n'
    )  # fmt: skip
    stills = tmp_path / "stills"
    stills.mkdir()
    for stem, mode, suffix in [("gray", "L", ".png"), ("rgba", "RGBA", ".png"), ("deep", "I;16", ".png"),
                               ("cmyk", "CMYK", ".jpg")]:  # fmt: skip
        write_image(stills / f"{stem}{suffix}", 64, 64, mode=mode)
    write_image(stills / "upright.jpg", 64, 96)
    write_image(stills / "other.jpg", 64, 96, seed=1)
    write_image(stills / "turned.jpg", 64, 96, exif_orientation=6)  # stored 96x64, shown 64 wide and 96 high
    caption_everything(stills)
    outcome = cache_latents(config)
    assert outcome.code == 0 and "done: 7 cached, 0 reused, 0 failed, 0 skipped" in outcome.out
    sizes = {"gray": 64, "rgba": 64, "deep": 64, "cmyk": 64, "upright": 96, "turned": 96, "other": 96}
    assert cache_names(tmp_path / "cache") == sorted(f"{stem}_0064x00{h}_ltx2.safetensors" for stem, h in sizes.items())
    _assert_same_picture(tmp_path / "cache", "turned_0064x0096", "upright_0064x0096", "other_0064x0096")
