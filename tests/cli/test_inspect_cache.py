"""`python -m ltx2_tuner.cli.inspect_cache`: the per-dataset table, each kind of bad cache reported with exit code 1,
`--decode` to playable media, and the entry points."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from fractions import Fraction
from importlib import import_module
from pathlib import Path

import av
import pytest
import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.store import read_fingerprint, write_cache
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.inspect_cache import main
from ltx2_tuner.models.safetensors_io import read_header, read_tensors
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset, write_synthetic_text_caches
from ltx2_tuner.testing.synthetic_media import write_video

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).parents[2]


def _inspect(config: Path, *flags: str) -> int:
    return run(main, ["--dataset_config", str(config), *flags])


@pytest.fixture
def synthetic(tmp_path) -> Path:
    """Three cached 17-frame windows with audio (a, b, c), their text caches and the empty prompt's."""
    return write_synthetic_dataset(tmp_path, stems=("a", "b", "c"))


def _cache(config: Path) -> Path:
    return config.parent / "cache"


def _rewrite(path: Path, change) -> None:
    """Write `path` again with `change(tensors, fingerprint)` applied (the same layout otherwise)."""
    header = read_header(path)
    tensors = dict(read_tensors(header, list(header.tensors)))
    fingerprint = read_fingerprint(path)
    change(tensors, fingerprint)
    write_cache(path, tensors, fingerprint)


def test_the_table_counts_items_windows_buckets_audio_and_text(synthetic, capsys):
    (synthetic.parent / "clips" / "d.mp4").write_bytes(b"d")  # a media file never cached
    (synthetic.parent / "clips" / "d.txt").write_text("clip d")
    assert _inspect(synthetic, "--ltx_mode", "av") == 1
    out = capsys.readouterr().out
    assert "mode t2av (video, audio), checked against no model" in out
    assert "items (media files)       4" in out
    assert "cached windows            3 (3 usable)" in out
    assert "buckets (W x H x frames)  64x64x17: 3" in out
    assert "frames per window         17: 3" in out
    assert "audio coverage            3/3 usable windows with an audio cache, 3 cover the clip" in out
    assert "text caches               3/4 media files" in out
    assert "empty prompt cache        current" in out
    assert "NaN/Inf files             0" in out
    assert "stale or missing          1" in out
    assert f"{synthetic.parent / 'clips' / 'd.mp4'}: no latent cache in" in out
    assert "1 of 1 dataset(s) have missing, stale or non-finite caches" in out


def test_current_caches_exit_0_and_video_mode_shows_no_audio_row(synthetic, capsys):
    assert _inspect(synthetic) == 0
    out = capsys.readouterr().out
    assert "audio coverage" not in out
    assert "all caches of 1 dataset(s) are current" in out


def test_a_deleted_audio_cache_is_reported_in_av_mode_only(synthetic, capsys):
    audio = naming.audio_cache_path(_cache(synthetic), "b_00000-017")
    audio.unlink()
    assert _inspect(synthetic, "--ltx_mode", "av") == 1
    out = capsys.readouterr().out
    assert f"{audio}: audio latent cache missing for b_00000-017; run `python ltx2_cache_latents.py" in out
    assert "--ltx_mode av --skip_existing`" in out
    assert "cached windows            3 (2 usable)" in out
    assert _inspect(synthetic) == 0  # video training does not need it


def test_short_audio_is_counted_as_not_covering_the_clip(synthetic, capsys):
    audio = naming.audio_cache_path(_cache(synthetic), "a_00000-017")
    _rewrite(audio, lambda tensors, _: tensors.update(audio_lengths_int32=torch.tensor([5], dtype=torch.int32)))
    assert _inspect(synthetic, "--ltx_mode", "av") == 0  # padded audio trains: shown, not an error
    assert "3/3 usable windows with an audio cache, 2 cover the clip" in capsys.readouterr().out


def test_a_cache_from_another_version_is_reported(tmp_path, tiny_checkpoints, capsys):
    config = write_synthetic_dataset(tmp_path, version="2.0")
    assert _inspect(config, "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path)) == 1
    out = capsys.readouterr().out
    assert "checked against LTX-2.3" in out
    assert "cached with an LTX-2.0 VAE but training uses LTX-2.3" in out
    assert "made with LTX-2.0 connectors but training uses LTX-2.3" in out


def test_nan_and_inf_files_are_counted_and_named(synthetic, capsys):
    cache = _cache(synthetic)
    latent = naming.latent_cache_path(cache, "a_00000-017", 640, 360)
    text = naming.text_cache_path(cache, "c")

    def poison(tensors, _fingerprint, value):
        key = next(k for k, t in tensors.items() if t.is_floating_point())
        tensors[key].view(-1)[3] = value

    _rewrite(latent, lambda t, f: poison(t, f, float("nan")))
    _rewrite(text, lambda t, f: poison(t, f, float("inf")))
    assert _inspect(synthetic) == 1
    out = capsys.readouterr().out
    assert f"NaN/Inf files             2: {latent.name}, {text.name}" in out
    assert "stale or missing          0" in out


def test_a_missing_text_cache_and_a_changed_caption_are_reported(synthetic, capsys):
    cache = _cache(synthetic)
    naming.text_cache_path(cache, "a").unlink()
    (synthetic.parent / "clips" / "b.txt").write_text("a new caption")
    assert _inspect(synthetic) == 1
    out = capsys.readouterr().out
    assert f"{naming.text_cache_path(cache, 'a')}: text encoder cache missing for a.mp4" in out
    assert "python ltx2_cache_text_encoder_outputs.py" in out
    assert "stale, the caption of b.mp4 changed" in out
    assert "text caches               2/3 media files" in out


def test_the_empty_prompt_cache_is_needed_only_when_captions_drop(synthetic, capsys):
    naming.empty_prompt_cache_path(_cache(synthetic)).unlink()
    assert _inspect(synthetic) == 0
    assert "empty prompt cache        absent (needed only for caption dropout)" in capsys.readouterr().out
    synthetic.write_text(synthetic.read_text() + "caption_dropout_rate = 0.1\n")
    assert _inspect(synthetic) == 1
    assert "empty prompt cache missing (" in capsys.readouterr().out


def test_validation_datasets_get_their_own_table(tmp_path, capsys):
    config = write_synthetic_dataset(tmp_path, stems=("a",))
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    (held_out / "v.mp4").write_bytes(b"v")
    (held_out / "v.txt").write_text("a held-out clip")
    config.write_text(
        config.read_text() + '[[validation_datasets]]\nvideo_directory = "held_out"\ncache_directory = "vcache"\n'
    )
    assert _inspect(config) == 1
    out = capsys.readouterr().out
    assert "[[validation_datasets]] #1 (held_out): video" in out
    assert "empty prompt cache        -" in out
    assert f"{held_out / 'v.mp4'}: no latent cache in {tmp_path / 'vcache'}" in out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert _inspect(tmp_path / "missing.toml") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing.toml" in err
    assert _inspect(tmp_path / "missing.toml", "--decode", "1") == 2
    assert "--decode needs --output_dir" in capsys.readouterr().err


def _av_dataset(tmp_path: Path) -> Path:
    """A real clip with sound (25 frames at 24 fps, 80x48) in a dataset cached at 64x32, 17 frames."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "talk.mp4", num_frames=25, fps=24.0, width=80, height=48, audio="tone")
    (clips / "talk.txt").write_text("a tone")
    config = tmp_path / "dataset.toml"
    config.write_text(
        '[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\nresolution = [64, 32]\n'
        "target_frames = [17]\n"
    )
    return config


@pytest.mark.slow  # ~1 s alone, far more on a loaded machine (VAE decodes on the CPU)
def test_decode_writes_playable_mp4_with_sound(tmp_path, tiny_checkpoints, capsys):
    from ltx2_tuner.cli.cache_latents import main as cache_latents

    checkpoint = tiny_checkpoints["2.3"].path
    config = _av_dataset(tmp_path)
    flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av"]
    assert run(cache_latents, [*flags, "--device", "cpu"]) == 0
    write_synthetic_text_caches(config, mode="av")
    out_dir = tmp_path / "decoded"
    assert _inspect(config, *flags[2:], "--decode", "1", "--output_dir", str(out_dir), "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "cached windows            1 (1 usable)" in out
    assert "buckets (W x H x frames)  64x32x17: 1" in out
    mp4 = out_dir / "dataset1_talk_00000-017.mp4"
    assert f"wrote {mp4}" in out
    with av.open(str(mp4)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height) == (64, 32)
        frames = sum(1 for _ in container.decode(video))
        assert frames == 17 and video.average_rate == Fraction(24)
        assert audio.channels == 2
        duration_s = float(audio.duration * audio.time_base)
        assert abs(duration_s - 17 / 24) < 0.1


@pytest.mark.slow
def test_decode_writes_wav_for_audio_items(tmp_path, tiny_checkpoints, capsys):
    from ltx2_tuner.cli.cache_latents import main as cache_latents
    from ltx2_tuner.testing.synthetic_media import tone, write_audio

    checkpoint = tiny_checkpoints["2.3"].path
    voices = tmp_path / "voices"
    voices.mkdir()
    write_audio(voices / "hum.wav", tone(1.0, 16000), 16000)
    (voices / "hum.txt").write_text("a hum")
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\naudio_directory = "voices"\ncache_directory = "cache"\n')
    flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "audio"]
    assert run(cache_latents, [*flags, "--device", "cpu"]) == 0
    write_synthetic_text_caches(config, mode="audio")
    out_dir = tmp_path / "decoded"
    assert _inspect(config, *flags[2:], "--decode", "3", "--output_dir", str(out_dir), "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "audio coverage            1/1 usable windows with an audio cache" in out
    with av.open(str(out_dir / "dataset1_hum.wav")) as container:
        (stream,) = container.streams
        assert stream.type == "audio"
        samples = sum(frame.samples for frame in container.decode(stream))
        assert abs(samples / stream.rate - 1.0) < 0.05  # the 1 s of sound, not its 2 s bucket's padding


def test_python_m_runs_the_command(synthetic):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "ltx2_tuner.cli.inspect_cache", "--dataset_config", str(synthetic)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "all caches of 1 dataset(s) are current" in result.stdout


def test_the_root_launcher_runs_the_command(synthetic, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ltx2_inspect_cache.py", "--dataset_config", str(synthetic)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "ltx2_inspect_cache.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "all caches of 1 dataset(s) are current" in capsys.readouterr().out


def test_the_console_script_runs_the_command(synthetic, monkeypatch, capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["ltx2-inspect-cache"].split(":")
    entry = getattr(import_module(module), function)
    monkeypatch.setattr(sys, "argv", ["ltx2-inspect-cache", "--dataset_config", str(synthetic)])
    assert entry() == 0
    monkeypatch.setattr(sys, "argv", ["ltx2-inspect-cache", "--dataset_config", str(synthetic.parent / "no.toml")])
    assert entry() == 2
    assert "no.toml" in capsys.readouterr().err


def test_missing_partner_caches_are_counted_and_reported(synthetic, capsys):
    masks = synthetic.parent / "masks"
    masks.mkdir()
    for stem in ("a", "b", "c"):
        (masks / f"{stem}.png").write_bytes(b"")  # found by name; never decoded by the inspection
    synthetic.write_text(synthetic.read_text() + 'mask_directory = "masks"\n')
    assert _inspect(synthetic) == 1
    out = capsys.readouterr().out
    assert "partner caches            mask 0/3" in out
    path = naming.partner_cache_path(_cache(synthetic), "a_00000-017", "mask")
    assert f"{path}: mask cache missing for a_00000-017; run `python ltx2_cache_latents.py" in out


def test_caches_of_another_mode_are_reported(tmp_path, capsys):
    config = write_synthetic_dataset(tmp_path, stems=("a",), with_audio=False)  # cached for video training
    assert _inspect(config, "--ltx_mode", "av") == 1
    out = capsys.readouterr().out
    assert "audio latent cache missing for a_00000-017" in out
    assert "made with --ltx_mode video (no audio embeddings) but training needs them (--ltx_mode av)" in out
