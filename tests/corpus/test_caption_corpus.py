"""Captions and file names through both caching commands (docs/bad-input.md "Captions and names")."""

from __future__ import annotations

import pytest
from _corpus import VIDEO_TABLE, Outcome, cache_names, caption_everything, write_dataset
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.testing import bad_inputs
from ltx2_tuner.testing.synthetic_media import write_image

IMAGE_TABLE = '[[datasets]]\nimage_directory = "clips"\ncache_directory = "cache"\n'


@pytest.fixture
def cache_text(checkpoint, tiny_gemma_dir, capsys):
    """Run `ltx2_cache_text_encoder_outputs.py` with the tiny checkpoint and Gemma on the CPU."""
    from ltx2_tuner.cli.cache_text_encoder_outputs import main

    def call(config, *flags: str) -> Outcome:
        capsys.readouterr()
        code = run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint),
                          "--gemma_root", str(tiny_gemma_dir), "--device", "cpu", *flags])  # fmt: skip
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call


def _stills(tmp_path, *stems: str):
    config = write_dataset(tmp_path, IMAGE_TABLE)
    for stem in stems:
        write_image(tmp_path / "clips" / f"{stem}.png", 64, 64)
    return config


def test_a_missing_caption_stops_both_commands_before_work(tmp_path, cache_latents, cache_text):
    config = _stills(tmp_path, "fox", "owl")
    (tmp_path / "clips" / "fox.txt").write_text("a fox", encoding="utf-8")
    for outcome in (cache_latents(config), cache_text(config)):
        assert outcome.code == 2
        line = outcome.error_line()
        assert line.startswith(f"error: {tmp_path / 'clips' / 'owl.txt'}: caption file missing for owl.png; write one")
    assert cache_names(tmp_path / "cache") == []


@pytest.mark.parametrize("content", [bad_inputs.EMPTY_CAPTION, bad_inputs.BLANK_CAPTION], ids=["empty", "blank"])
def test_an_empty_caption_stops_text_caching_unless_allowed(tmp_path, cache_latents, cache_text, content):
    config = _stills(tmp_path, "owl")
    (tmp_path / "clips" / "owl.txt").write_bytes(content)
    assert cache_latents(config).code == 0  # the latents do not depend on the caption
    outcome = cache_text(config)
    assert outcome.code == 2 and "owl.txt: caption is empty" in outcome.error_line()
    assert cache_names(tmp_path / "cache") == ["owl_0064x0064_ltx2.safetensors"]
    assert cache_text(config, "--allow_empty_captions").code == 0
    assert "owl_ltx2_te.safetensors" in cache_names(tmp_path / "cache")


def test_crlf_bom_and_utf16_captions_encode_like_the_clean_text(tmp_path, cache_text):
    variants = bad_inputs.CAPTION_VARIANTS
    config = _stills(tmp_path, "clean", *variants)
    (tmp_path / "clips" / "clean.txt").write_text(bad_inputs.CAPTION, encoding="utf-8")
    for name, data in variants.items():
        (tmp_path / "clips" / f"{name}.txt").write_bytes(data)
    outcome = cache_text(config)
    assert outcome.code == 0 and "warning" not in outcome.err.lower()
    clean = load_file(tmp_path / "cache" / "clean_ltx2_te.safetensors")
    for name in variants:
        tensors = load_file(tmp_path / "cache" / f"{name}_ltx2_te.safetensors")
        assert all((tensors[key] == value).all() for key, value in clean.items()), name


def test_a_windows_1252_caption_is_read_with_a_warning_and_undecodable_bytes_stop(tmp_path, cache_text):
    config = _stills(tmp_path, "cafe")
    caption = tmp_path / "clips" / "cafe.txt"
    caption.write_bytes(bad_inputs.CP1252_CAPTION)
    with pytest.warns(UserWarning, match=rf"{caption}: not UTF-8 .* read as Windows-1252: 'café rouge'"):
        assert cache_text(config).code == 0
    assert "cafe_ltx2_te.safetensors" in cache_names(tmp_path / "cache")

    caption.write_bytes(bad_inputs.UNDECODABLE_CAPTION)
    outcome = cache_text(config)
    assert outcome.code == 2
    assert outcome.error_line() == (f"error: {caption}: not readable text (charmap cannot decode byte 0x81 at "
                                    "position 3); re-save it as UTF-8")  # fmt: skip


def test_unicode_and_spaces_in_file_names_cache_and_train(tmp_path, cache_latents, cache_text):
    from ltx2_tuner.cache.cached_dataset import CachedBatches
    from ltx2_tuner.data.config import load_dataset_config

    config = write_dataset(tmp_path, VIDEO_TABLE)
    stems = ["my clip", "café ☕ 日本", "take [2] *final*"]
    for seed, stem in enumerate(stems):
        bad_inputs.good_video(tmp_path / "clips" / f"{stem}.mp4", audio=False, seed=seed)
    caption_everything(tmp_path / "clips")
    assert cache_latents(config).code == 0 and cache_text(config).code == 0
    names = cache_names(tmp_path / "cache")
    assert names == sorted([f"{stem}_00000-009_0064x0064_ltx2.safetensors" for stem in stems]
                           + [f"{stem}_ltx2_te.safetensors" for stem in stems]
                           + ["ltx2_empty_prompt_te.safetensors"])  # fmt: skip
    batches = CachedBatches(load_dataset_config(config), "video")
    assert sorted(key for i in range(len(batches)) for key in batches[i]["items"]) == sorted(
        f"{stem}_00000-009" for stem in stems
    )


@pytest.mark.parametrize(("first", "second"), [("a.mkv", "a.mp4"), ("a.JPG", "a.png")], ids=["video", "image"])
def test_two_files_with_one_stem_stop_before_work(tmp_path, cache_latents, first, second):
    kind = "video" if first.endswith(".mkv") else "image"
    config = write_dataset(tmp_path, VIDEO_TABLE if kind == "video" else IMAGE_TABLE)
    for name in (first, second):
        if kind == "video":
            bad_inputs.good_video(tmp_path / "clips" / name, audio=False)
        else:
            write_image(tmp_path / "clips" / name, 64, 64)
    caption_everything(tmp_path / "clips")
    outcome = cache_latents(config)
    assert outcome.code == 2
    line = outcome.error_line()
    assert f"{tmp_path / 'clips' / first} and {tmp_path / 'clips' / second} share the name 'a'" in line
    assert line.endswith("rename one of them") and cache_names(tmp_path / "cache") == []
