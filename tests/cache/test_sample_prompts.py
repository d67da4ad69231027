"""Sample prompt files: parsing, the precached embeddings, and staleness."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ltx2_tuner.cache.sample_prompts import (
    DEFAULT_NEGATIVE_PROMPT,
    SamplePrompt,
    load_sample_prompt_cache,
    parse_prompt_line,
    read_sample_prompts,
)
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_text_encoder_outputs import main
from ltx2_tuner.errors import CacheError, DatasetError

PROMPTS = """\
# previews of the fox LoRA

a red fox runs through deep snow --w 256 --h 128 --f 9 --d 7 --s 20 --g 4.5 --fs 25 --n blurry, static --w2 x
"""


def test_options_negative_prompt_and_defaults():
    line = "a red fox -- running --w 256 --h 128 --f 9 --d 7 --s 20 --g 4.5 --fs 25 --n blurry, static"
    assert parse_prompt_line(line, "p.txt:1") == SamplePrompt(
        prompt="a red fox -- running",  # "--" not followed by a letter is prompt text
        negative_prompt="blurry, static",
        width=256,
        height=128,
        num_frames=9,
        frame_rate=25.0,
        seed=7,
        steps=20,
        guidance_scale=4.5,
    )
    plain = parse_prompt_line("  a cat  ", "p.txt:2")
    assert plain == SamplePrompt("a cat") and plain.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert parse_prompt_line("a cat --n  --d 3", "p.txt:3").negative_prompt == ""  # an empty negative prompt


def test_fps_alias_audio_guidance_image_and_version_defaults(tmp_path):
    (tmp_path / "frames").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "frames" / "fox.png")
    path = tmp_path / "prompts.txt"
    path.write_text("a fox --fps 25 --ga 6.5 --i frames/fox.png\na cat --fs 30\n", encoding="utf-8")
    fox, cat = read_sample_prompts(path)
    assert (fox.frame_rate, fox.audio_guidance_scale, cat.frame_rate) == (25.0, 6.5, 30.0)
    assert fox.image == str(tmp_path / "frames" / "fox.png")  # relative to the prompt file's folder
    # Steps and CFG scales left unset are the model version's defaults, filled in when sampling.
    assert cat.steps is None and cat.guidance_scale is None and cat.audio_guidance_scale is None and cat.image is None
    # The official trainer's long default negative prompt.
    assert (
        DEFAULT_NEGATIVE_PROMPT.startswith("blurry, out of focus, overexposed") and len(DEFAULT_NEGATIVE_PROMPT) > 900
    )
    assert DEFAULT_NEGATIVE_PROMPT.endswith("stylized filters, or AI artifacts.")

    path.write_text("# header\na fox --i frames/wolf.png\n", encoding="utf-8")
    missing = re.escape(f"{path}:2: --i frames/wolf.png: image not found at {tmp_path / 'frames' / 'wolf.png'}")
    with pytest.raises(DatasetError, match=rf"^{missing}; fix the path"):
        read_sample_prompts(path)
    for line, message in (
        ("a --fs 24 --fps 25", r"^p:1: --fps is given twice \(as --fs\)$"),
        ("a --ga -1", r"^p:1: --ga -1.0 must not be negative$"),
        ("a --g nan", r"^p:1: --g nan must not be negative$"),
        ("a --s 0", r"^p:1: --fs and --s must be positive$"),
        ("a --i", r"^p:1: --i needs a path to the image"),
    ):
        with pytest.raises(DatasetError, match=message):
            parse_prompt_line(line, "p:1")


def test_comments_blank_lines_and_errors_with_line_numbers(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\n\n  # indented comment\nfirst --d 1\nsecond\n", encoding="utf-8")
    assert [p.prompt for p in read_sample_prompts(path)] == ["first", "second"]

    path.write_text(PROMPTS, encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: unknown option --w2; the options are --w --h"):
        read_sample_prompts(path)
    for line, message in (
        ("a --w wide", r"p:1: --w needs an integer, not 'wide'"),
        ("a --g", r"p:1: --g needs a number, not ''"),
        ("a --f 10", r"p:1: --f 10 must be 8k\+1 .* e\.g\. 9"),
        ("a --w 100", r"p:1: --w 100 must be a positive multiple of 32"),
        ("a --d 1 --d 2", r"p:1: --d is given twice"),
        ("--w 256", r"p:1: the line has options but no prompt"),
    ):
        with pytest.raises(DatasetError, match=message):
            parse_prompt_line(line, "p:1")
    path.write_text("# only comments\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no prompts"):
        read_sample_prompts(path)


def _dataset(tmp_path: Path) -> Path:
    (tmp_path / "stills").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "stills" / "fox.png")
    (tmp_path / "stills" / "fox.txt").write_text("a red fox", encoding="utf-8")
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\nimage_directory = "stills"\ncache_directory = "cache"\nresolution = [64, 32]\n')
    return config


def _cache(config, checkpoint, gemma, *flags) -> int:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu", *flags]
    return run(main, argv + (["--gemma_root", str(gemma)] if gemma else []))


def test_cache_round_trip_and_staleness(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    config, checkpoint = _dataset(tmp_path), tiny_checkpoints["2.3"].path
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# previews\na red fox --n a cat --f 9\na cat --n a cat\n", encoding="utf-8")
    assert _cache(config, checkpoint, tiny_gemma_dir, "--ltx_mode", "av", "--sample_prompts", str(prompts)) == 0
    cache = tmp_path / "prompts_ltx2_sample_te.safetensors"
    assert f"sample prompts: 2 prompt(s) in {cache} (written)" in capsys.readouterr().out

    with safe_open(str(cache), framework="pt") as f:
        assert sorted(f.keys()) == sorted(
            f"{neg}{name}_{i}" for i in (0, 1) for neg in ("", "negative_")
            for name in ("video_prompt_embeds", "audio_prompt_embeds", "prompt_attention_mask")
        )  # fmt: skip
    embeds = load_sample_prompt_cache(cache, prompts, mode="av", version="2.3")
    assert [e.sample.prompt for e in embeds] == ["a red fox", "a cat"] and embeds[0].sample.num_frames == 9
    with safe_open(str(tmp_path / "cache" / "fox_ltx2_te.safetensors"), framework="pt") as f:
        caption_video = f.get_tensor("video_prompt_embeds_bfloat16")  # the same text in the dataset cache
        caption_audio = f.get_tensor("audio_prompt_embeds_bfloat16")
    assert torch.equal(embeds[0].video, caption_video) and torch.equal(embeds[0].audio, caption_audio)
    assert embeds[0].video.shape == (1024, 32) and embeds[0].audio.shape == (1024, 16)
    assert torch.equal(embeds[0].negative_video, embeds[1].video) and embeds[1].mask.eq(1).all()

    # Comments do not matter; a changed option does. Current caches need no Gemma with --skip_existing.
    prompts.write_text("a red fox --n a cat --f 9\n# new comment\na cat --n a cat\n", encoding="utf-8")
    load_sample_prompt_cache(cache, prompts)
    assert (
        _cache(config, checkpoint, None, "--ltx_mode", "av", "--sample_prompts", str(prompts), "--skip_existing") == 0
    )
    assert "(current, reused)" in capsys.readouterr().out
    prompts.write_text("a red fox --n a cat --f 17\na cat --n a cat\n", encoding="utf-8")
    with pytest.raises(
        CacheError,
        match=rf"{re.escape(str(cache))}: stale, .*prompts\.txt changed .* ltx2_cache_text_encoder_outputs\.py",
    ):
        load_sample_prompt_cache(cache, prompts)
    prompts.write_text("a red fox --n a cat --f 9\na cat --n a cat\n", encoding="utf-8")
    with pytest.raises(CacheError, match=r"LTX-2\.3 connectors, not LTX-2\.0"):
        load_sample_prompt_cache(cache, prompts, version="2.0")


def test_video_only_cache_does_not_serve_av_previews(tmp_path, tiny_checkpoints, tiny_gemma_dir):
    config = _dataset(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n", encoding="utf-8")
    custom = tmp_path / "elsewhere" / "samples.safetensors"
    flags = ("--sample_prompts", str(prompts), "--sample_prompts_cache", str(custom))
    assert _cache(config, tiny_checkpoints["2.0"].path, tiny_gemma_dir, *flags) == 0
    embeds = load_sample_prompt_cache(custom, prompts, mode="video")
    assert embeds[0].audio is None and embeds[0].video.shape == (1024, 32)
    with pytest.raises(
        CacheError, match=r"in video mode; av-mode previews need video and audio embeddings; run .* --ltx_mode av"
    ):
        load_sample_prompt_cache(custom, prompts, mode="av")
    with pytest.raises(CacheError, match=r"in video mode; audio-mode previews need audio embeddings"):
        load_sample_prompt_cache(custom, prompts, mode="audio")
    with pytest.raises(CacheError, match=r"no sample prompt embeddings for .*p\.txt; run `python ltx2_cache_text"):
        load_sample_prompt_cache(tmp_path / "missing.safetensors", prompts)


def test_audio_mode_caches_hold_no_video_and_an_av_cache_serves_every_mode(tmp_path, tiny_checkpoints, tiny_gemma_dir):
    from ltx2_tuner.cache.sample_prompts import cache_sample_prompts, sample_cache_path
    from ltx2_tuner.models import read_checkpoint_info
    from ltx2_tuner.models.text_embeddings import encode_prompts, load_text_embedder
    from ltx2_tuner.models.text_encoder import load_gemma

    info = read_checkpoint_info(tiny_checkpoints["2.3"].path)
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("rain on a tin roof --du 1.5\n", encoding="utf-8")
    prompts = read_sample_prompts(prompts_file)
    gemma = load_gemma(tiny_gemma_dir, torch.float32)
    found = {}
    for mode in ("audio", "av"):
        embedder = load_text_embedder(info, mode, torch.float32)
        path = tmp_path / mode / sample_cache_path(prompts_file).name
        fingerprint = {"connectors": {"file": info.fingerprint, "version": info.version}, "mode": mode}
        cache_sample_prompts(path, prompts, lambda texts, e=embedder: encode_prompts(gemma, e, texts), fingerprint)
        found[mode] = path

    (audio_only,) = load_sample_prompt_cache(found["audio"], prompts_file, mode="audio", version="2.3")
    assert audio_only.video is None and audio_only.negative_video is None and audio_only.audio.shape == (1024, 16)
    assert audio_only.sample.duration_s == 1.5 and audio_only.sample.audio_seconds == 1.5
    with safe_open(str(found["audio"]), framework="pt") as f:
        assert not any("video" in key for key in f.keys())  # noqa: SIM118
    with pytest.raises(CacheError, match=r"in audio mode; video-mode previews need video embeddings"):
        load_sample_prompt_cache(found["audio"], prompts_file, mode="video")
    with pytest.raises(CacheError, match=r"in audio mode; av-mode previews need video and audio embeddings"):
        load_sample_prompt_cache(found["audio"], prompts_file, mode="av")
    for mode in ("audio", "av", "video"):  # an AV cache serves them all, with the same audio context
        (embeds,) = load_sample_prompt_cache(found["av"], prompts_file, mode=mode)
        assert torch.equal(embeds.audio, audio_only.audio) and embeds.video is not None


def test_audio_and_video_condition_options(tmp_path):
    (tmp_path / "media").mkdir()
    for name in ("voice.wav", "clip.mp4", "first.png"):
        (tmp_path / "media" / name).write_bytes(b"")  # only their existence is checked when parsing
    path = tmp_path / "prompts.txt"
    path.write_text("a dog barks --a media/voice.wav --f 17\nwaves --v media/clip.mp4 --fs 25\nrain\n", "utf-8")
    a2v, v2a, t2a = read_sample_prompts(path)
    assert a2v.audio == str(tmp_path / "media" / "voice.wav") and a2v.video is None and a2v.num_frames == 17
    assert v2a.video == str(tmp_path / "media" / "clip.mp4") and v2a.audio is None
    assert t2a.duration_s is None and t2a.audio_seconds == 49 / 24  # the default length: --f / --fs
    for line, message in (
        ("a --a media/none.wav", r"^p:1: --a media/none.wav: audio file not found at .*none.wav; fix the path"),
        ("a --v", r"^p:1: --v needs a path to the video file"),
        ("a --a media/voice.wav --v media/clip.mp4", r"^p:1: --a and --v together; --v gives the whole video"),
        ("a --i media/first.png --v media/clip.mp4", r"^p:1: --i and --v together"),
        ("a --du 0.01", r"^p:1: --du 0.01 must be at least 0.04 seconds$"),
        ("a --du 2 --a media/voice.wav", r"^p:1: --du sets the length of audio-only previews"),
    ):
        with pytest.raises(DatasetError, match=message):
            parse_prompt_line(line, "p:1", tmp_path)


def test_conditioned_run_options_resolve_paths_and_keep_old_digests(tmp_path):
    import dataclasses
    import hashlib
    import json

    from ltx2_tuner.cache.sample_prompts import prompts_digest

    (tmp_path / "media").mkdir()
    for name in ("clip.mp4", "ref.mp4", "voice.wav", "mask.png"):
        (tmp_path / "media" / name).write_bytes(b"")
    path = tmp_path / "prompts.txt"
    path.write_text(
        "a fox --x media/clip.mp4 --r media/ref.mp4 --ra media/voice.wav\n"
        "a cat --src media/clip.mp4 --m media/mask.png\n"
        "a dog --f 17\n",
        "utf-8",
    )
    extend, inpaint, plain = read_sample_prompts(path)
    media = tmp_path / "media"
    assert (extend.extend, extend.reference, extend.reference_audio) == tuple(
        str(media / n) for n in ("clip.mp4", "ref.mp4", "voice.wav")
    )
    assert (inpaint.source, inpaint.mask) == (str(media / "clip.mp4"), str(media / "mask.png"))
    # A prompt without the new options digests as before they existed: the fields of the older SamplePrompt only.
    new = {"reference", "reference_audio", "extend", "source", "mask"}
    older = {k: v for k, v in dataclasses.asdict(plain).items() if k not in new}
    assert prompts_digest([plain]) == hashlib.sha256(json.dumps([older], sort_keys=True).encode()).hexdigest()
    assert prompts_digest([extend]) != prompts_digest([dataclasses.replace(extend, extend=None)])
    for line, message in (
        ("a --x media/none.mp4", r"^p:1: --x media/none.mp4: clip to extend not found at .*none.mp4; fix the path"),
        ("a --r media/none.mp4", r"^p:1: --r media/none.mp4: reference clip not found"),
        ("a --src media/clip.mp4 --m none.png", r"^p:1: --m none.png: mask not found"),
        ("a --m media/mask.png", r"^p:1: --m is the inpainting mask of a source clip; give --src PATH too$"),
        ("a --x media/clip.mp4 --src media/clip.mp4", r"^p:1: --x and --src together"),
    ):
        with pytest.raises(DatasetError, match=message) as caught:
            parse_prompt_line(line, "p:1", tmp_path)
        assert "\n" not in str(caught.value)
