"""Dataset TOML mistakes through `ltx2_cache_latents.py` (docs/bad-input.md "Dataset config")."""

from __future__ import annotations

import pytest
from _corpus import cache_names, caption_everything, write_dataset

from ltx2_tuner.testing import bad_inputs

TABLE = '[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\n'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("resolutin = [64, 64]", 'unknown key "resolutin" (did you mean "resolution"?)'),
        ('batch_size = "2"', "key \"batch_size\" must be int, not str '2'"),
        ("enable_bucket = 1", 'key "enable_bucket" must be bool, not int 1'),
        ("resolution = [100, 64]", "resolution 100x64 must be a multiple of 32 without enable_bucket = true"),
    ],
    ids=["unknown-key", "wrong-type-str", "wrong-type-int", "resolution-not-32"],
)
def test_a_config_mistake_is_one_line_naming_the_file_and_the_key_before_work(tmp_path, cache_latents, line, problem):
    config = write_dataset(tmp_path, TABLE + line + "\n", general="")
    bad_inputs.good_video(tmp_path / "clips" / "ok.mp4", audio=False)
    caption_everything(tmp_path / "clips")
    outcome = cache_latents(config)
    assert outcome.code == 2
    assert outcome.error_line() == f"error: {config} [[datasets]] #1: {problem}"
    assert cache_names(tmp_path / "cache") == []


def test_every_mistake_of_the_file_is_named_at_once(tmp_path, cache_latents):
    config = write_dataset(tmp_path, TABLE + 'resolutin = [64, 64]\nbatch_size = "2"\n', general="")
    outcome = cache_latents(config)
    assert outcome.code == 2
    line = outcome.error_line()
    assert 'unknown key "resolutin"' in line and 'key "batch_size" must be int' in line


def test_broken_toml_syntax_is_one_line(tmp_path, cache_latents):
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]\nvideo_directory = "clips"\n', encoding="utf-8")
    outcome = cache_latents(config)
    assert outcome.code == 2
    line = outcome.error_line()
    assert line.startswith(f"error: {config}: not valid TOML (") and line.endswith("fix the syntax")


def test_frame_counts_that_are_not_8k_plus_1_are_snapped_down_with_a_warning(tmp_path, cache_latents):
    config = write_dataset(tmp_path, TABLE + "target_frames = [10, 16]\n")
    bad_inputs.good_video(tmp_path / "clips" / "ok.mp4", audio=False)
    caption_everything(tmp_path / "clips")
    with pytest.warns(UserWarning, match=rf"{config} \[\[datasets\]\] #1: target_frames \[10, 16\] snapped down to "
                                         r"\[9\] \(the video VAE encodes 8k\+1 frames\)"):  # fmt: skip
        outcome = cache_latents(config)
    assert outcome.code == 0 and cache_names(tmp_path / "cache") == ["ok_00000-009_0064x0064_ltx2.safetensors"]
