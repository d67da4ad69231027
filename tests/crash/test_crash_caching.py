"""SIGKILL during latent and text caching, between items and inside a cache write: every visible cache file is complete,
a rerun with --skip_existing encodes only what is missing, removes the temporary file and ends with the same caches as
an uninterrupted run, byte for byte."""

from __future__ import annotations

import shutil

import pytest
from _crash import assert_all_readable, assert_same_caches, cache_contents, hidden, run_killed

from ltx2_tuner.cli import cache_latents, cache_text_encoder_outputs
from ltx2_tuner.cli._common import run
from ltx2_tuner.testing.demo_data import write_captioned_stills
from ltx2_tuner.testing.synthetic_media import write_video

CLIPS = ("clip_a", "clip_b", "clip_c")  # one video and one audio cache each (--ltx_mode av)


@pytest.fixture(scope="module")
def latent_setup(tiny_checkpoints, tmp_path_factory):
    """(argv, cache folder, the caches of an uninterrupted run by name)."""
    root = tmp_path_factory.mktemp("latents")
    (root / "clips").mkdir()
    for stem in CLIPS:
        write_video(root / "clips" / f"{stem}.mp4", num_frames=9, fps=24.0, width=64, height=32, audio="tone")
        (root / "clips" / f"{stem}.txt").write_text(f"a caption of {stem}")
    config = root / "dataset.toml"
    config.write_text('[general]\nresolution = [64, 32]\n[[datasets]]\nvideo_directory = "clips"\n'
                      'cache_directory = "cache"\ntarget_frames = [9]\n')  # fmt: skip
    argv = ["--dataset_config", config, "--ltx2_checkpoint", tiny_checkpoints["2.3"].path, "--device", "cpu",
            "--ltx_mode", "av"]  # fmt: skip
    argv = [str(arg) for arg in argv]
    assert run(cache_latents.main, argv) == 0
    reference = cache_contents(root / "cache")
    assert len(reference) == 2 * len(CLIPS)
    return argv, root / "cache", reference


@pytest.fixture(scope="module")
def text_setup(tiny_checkpoints, tiny_gemma_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    config = write_captioned_stills(root, {"fox": "a red fox in snow", "cat": "a cat", "sea": "waves at night"})
    argv = ["--dataset_config", config, "--ltx2_checkpoint", tiny_checkpoints["2.3"].path, "--gemma_root",
            tiny_gemma_dir, "--device", "cpu", "--ltx_mode", "av", "--mixed_precision", "no"]  # fmt: skip
    argv = [str(arg) for arg in argv]
    assert run(cache_text_encoder_outputs.main, argv) == 0
    reference = cache_contents(root / "cache")
    assert len([name for name in reference if name.endswith("_ltx2_te.safetensors")]) == 3
    return argv, root / "cache", reference


# Latent caching ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_latent_caching_killed_between_items_resumes_where_it_stopped(latent_setup, capsys):
    argv, cache, reference = latent_setup
    shutil.rmtree(cache)
    run_killed("ltx2_tuner.cli.cache_latents", argv, "before_write", 3, match="_ltx2")  # clip_a done, clip_b not
    assert sorted(p.name for p in cache.iterdir()) == [
        "clip_a_00000-009_0064x0032_ltx2.safetensors",
        "clip_a_00000-009_ltx2_audio.safetensors",
    ]
    assert_all_readable(cache)
    capsys.readouterr()
    assert run(cache_latents.main, [*argv, "--skip_existing"]) == 0
    assert "done: 2 cached, 1 reused, 0 failed" in capsys.readouterr().out  # only the missing items are encoded
    assert hidden(cache) == []
    assert_same_caches(cache, reference)


@pytest.mark.slow
def test_latent_caching_killed_inside_a_cache_write_leaves_only_a_temporary_file(latent_setup, capsys):
    argv, cache, reference = latent_setup
    shutil.rmtree(cache)
    run_killed("ltx2_tuner.cli.cache_latents", argv, "inside_write", 4, match="_ltx2")  # clip_b's audio, half done
    leftovers = hidden(cache)
    assert len(leftovers) == 1 and leftovers[0].startswith(".clip_b_00000-009_ltx2_audio.safetensors.tmp")
    assert len(cache_contents(cache)) == 3
    assert_all_readable(cache)
    capsys.readouterr()
    assert run(cache_latents.main, [*argv, "--skip_existing"]) == 0
    assert "done: 2 cached, 1 reused, 0 failed" in capsys.readouterr().out
    assert hidden(cache) == []  # the temporary file is gone
    assert_same_caches(cache, reference)


# Text caching --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_text_caching_killed_between_captions_resumes_where_it_stopped(text_setup, capsys):
    argv, cache, reference = text_setup
    shutil.rmtree(cache)
    run_killed("ltx2_tuner.cli.cache_text_encoder_outputs", argv, "before_write", 2, match="_ltx2_te")
    assert [p.name for p in cache.iterdir()] == ["cat_ltx2_te.safetensors"]  # captions are cached sorted by stem
    assert_all_readable(cache)
    capsys.readouterr()
    assert run(cache_text_encoder_outputs.main, [*argv, "--skip_existing"]) == 0
    assert "encoding 2 of 3 caption(s)" in capsys.readouterr().out
    assert hidden(cache) == []
    assert_same_caches(cache, reference)


@pytest.mark.slow
def test_text_caching_killed_inside_a_cache_write_leaves_only_a_temporary_file(text_setup, capsys):
    argv, cache, reference = text_setup
    shutil.rmtree(cache)
    run_killed("ltx2_tuner.cli.cache_text_encoder_outputs", argv, "inside_write", 2, match="_ltx2_te")
    assert len(hidden(cache)) == 1 and hidden(cache)[0].startswith(".fox_ltx2_te.safetensors.tmp")
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == ["cat_ltx2_te.safetensors"]
    assert_all_readable(cache)
    capsys.readouterr()
    assert run(cache_text_encoder_outputs.main, [*argv, "--skip_existing"]) == 0
    assert "encoding 2 of 3 caption(s)" in capsys.readouterr().out
    assert hidden(cache) == []
    assert_same_caches(cache, reference)
