"""`ltx2_cache_latents.py --ltx_mode audio`: audio datasets of any format, rate and channel count, duration
buckets, video soundtracks without the video VAE, and audio caches shared between audio and AV runs.

Expected latent lengths follow the official pipeline, computed here from the written files alone: the window is cut
at the source rate (int(bucket · rate) samples), resampled to 16 kHz (ceil(n · 16000 / rate) samples), the centred
STFT gives n // 160 + 1 mel frames and the VAE one latent per 4 of them plus the causal first, (mel - 1) // 4 + 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ltx2_tuner.cache.store import read_fingerprint
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_latents import main
from ltx2_tuner.testing.audio_reference import decode_all
from ltx2_tuner.testing.synthetic_media import write_audio, write_image, write_video

DURATION_S = 1.37  # 34.25 latents: not a whole number of them


def _latent_count(samples: int, rate: int) -> int:
    resampled = -(-samples * 16000 // rate)
    mel_frames = resampled // 160 + 1
    return (mel_frames - 1) // 4 + 1


def _expected(path: Path, bucket_s: float) -> tuple[int, int]:
    """(T, audio_lengths) of a file cached in a `bucket_s` window, from its plainly decoded samples."""
    samples, rate = decode_all(path)
    window = int(bucket_s * rate)
    return _latent_count(window, rate), _latent_count(min(samples.shape[1], window), rate)


def _read(path: Path) -> tuple[torch.Tensor, int]:
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        (latent_key,) = [k for k in keys if k.startswith("audio_latents_")]
        latents = f.get_tensor(latent_key)
        assert latent_key == f"audio_latents_{latents.shape[1]}x16x8_float32" and latents.shape[::2] == (8, 16)
        return latents, int(f.get_tensor("audio_lengths_int32")[0])


def _noise(channels: int, rate: int, duration_s: float = DURATION_S, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, (channels, int(duration_s * rate))).astype(np.float32)


def _captioned(path: Path) -> Path:
    path.with_suffix(".txt").write_text(f"the sound of {path.stem}")
    return path


def _config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "dataset.toml"
    config.write_text(text)
    return config


def _cache(config: Path, checkpoint: Path, *flags: str) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu",
                      "--ltx_mode", "audio", *flags])  # fmt: skip


@pytest.fixture
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["2.3"].path


# Every rate with every channel count in WAV; each other format at least once, at rates its encoder takes.
# Vorbis: FFmpeg's own encoder writes stereo only; Opus: 48 kHz (its encoders take no 44.1/22.05 kHz).
_SOURCES = [(".wav", rate, channels) for rate in (8000, 22050, 44100, 48000) for channels in (1, 2, 6)] + [
    (".flac", 22050, 6), (".mp3", 44100, 2), (".mp3", 8000, 1), (".ogg", 48000, 2), (".ogg", 22050, 2),
    (".m4a", 48000, 6), (".m4a", 22050, 1), (".opus", 48000, 1),
]  # fmt: skip


def test_formats_rates_and_channels_cache_to_the_official_lengths(tmp_path, checkpoint, capsys):
    voice = tmp_path / "voice"
    voice.mkdir()
    files = []
    for index, (suffix, rate, channels) in enumerate(_SOURCES):
        name = f"{index:02d}_{suffix[1:]}_{rate}_{channels}ch{suffix}"
        files.append(_captioned(write_audio(voice / name, _noise(channels, rate, seed=index), rate)))
    config = _config(tmp_path, '[[datasets]]\naudio_directory = "voice"\ncache_directory = "cache"\n'
                               "audio_bucket_interval = 0.5\n")  # fmt: skip
    assert _cache(config, checkpoint) == 0
    captured = capsys.readouterr()
    assert f"done: {len(files)} cached, 0 reused, 0 failed, 0 skipped" in captured.out
    assert "padded with silence" not in captured.err  # padding up to the bucket is by design
    bucket_s = math.ceil(DURATION_S / 0.5) * 0.5
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{path.stem}_ltx2_audio.safetensors" for path in files
    )
    for path in files:
        latents, length = _read(tmp_path / "cache" / f"{path.stem}_ltx2_audio.safetensors")
        assert (latents.shape[1], length) == _expected(path, bucket_s), path.name
        assert 0 < length < latents.shape[1] and torch.isfinite(latents).all()
        fingerprint = read_fingerprint(tmp_path / "cache" / f"{path.stem}_ltx2_audio.safetensors")
        assert fingerprint["window"] == [0, bucket_s] and fingerprint["fps"] is None


def test_pad_truncate_and_max_duration_buckets(tmp_path, checkpoint):
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.mel import log_mel_spectrogram
    from ltx2_tuner.models import read_checkpoint_info
    from ltx2_tuner.testing.audio_reference import documented_resample

    voice = tmp_path / "voice"
    voice.mkdir()
    durations = {"short": 0.3, "mid": DURATION_S, "long": 2.6}
    paths = {stem: _captioned(write_audio(voice / f"{stem}.wav", _noise(1, 22050, d), 22050))
             for stem, d in durations.items()}  # fmt: skip
    config = _config(tmp_path, (
        '[general]\naudio_bucket_interval = 0.5\n'
        '[[datasets]]\naudio_directory = "voice"\ncache_directory = "pad"\n'
        '[[datasets]]\naudio_directory = "voice"\ncache_directory = "truncate"\naudio_bucket_strategy = "truncate"\n'
        '[[datasets]]\naudio_directory = "voice"\ncache_directory = "capped"\nmax_audio_duration = 1.2\n'
    ))  # fmt: skip
    assert _cache(config, checkpoint) == 0
    buckets = {
        "pad": {stem: math.ceil(d / 0.5) * 0.5 for stem, d in durations.items()},
        "truncate": {stem: max(1, math.floor(d / 0.5)) * 0.5 for stem, d in durations.items()},
        "capped": {stem: min(math.ceil(d / 0.5) * 0.5, 1.2) for stem, d in durations.items()},
    }
    assert buckets["truncate"]["short"] == 0.5 and buckets["capped"]["long"] == 1.2
    for folder, by_stem in buckets.items():
        for stem, bucket_s in by_stem.items():
            latents, length = _read(tmp_path / folder / f"{stem}_ltx2_audio.safetensors")
            assert (latents.shape[1], length) == _expected(paths[stem], bucket_s), (folder, stem)
    # Cut clips are real to the end; padded ones are not.
    assert _read(tmp_path / "truncate" / "mid_ltx2_audio.safetensors")[1] == _read(
        tmp_path / "truncate" / "mid_ltx2_audio.safetensors")[0].shape[1]  # fmt: skip
    assert _read(tmp_path / "capped" / "long_ltx2_audio.safetensors")[1] == _latent_count(int(1.2 * 22050), 22050)

    # The padded clip's latents are the VAE's encoding of the source, zero-padded at its own rate, then resampled.
    samples, rate = decode_all(paths["mid"])
    window = np.zeros((2, int(1.5 * rate)))
    window[:, : samples.shape[1]] = samples[0]  # mono, duplicated
    waveform = torch.from_numpy(np.stack([documented_resample(c, rate, 16000) for c in window])).float()
    info = read_checkpoint_info(checkpoint)
    expected = LatentEncoder(None, info, torch.device("cpu"), torch.float32, VaeTiling()).encode_audio(
        log_mel_spectrogram(waveform, 16000)
    )
    torch.testing.assert_close(
        _read(tmp_path / "pad" / "mid_ltx2_audio.safetensors")[0], expected, atol=1e-5, rtol=1e-5
    )


def test_jsonl_audio_dataset_and_skip_existing(tmp_path, checkpoint, capsys):
    media = tmp_path / "media"
    media.mkdir()
    write_audio(media / "hello.flac", _noise(2, 44100), 44100)
    write_audio(media / "world.mp3", _noise(1, 22050, 2.2), 22050)
    (tmp_path / "list.jsonl").write_text(
        '{"audio_path": "media/hello.flac", "caption": "a voice says hello"}\n'
        '{"audio_path": "media/world.mp3", "caption": "a voice says world"}\n'
    )  # no caption files: the JSONL has them
    config = _config(tmp_path, '[[datasets]]\naudio_jsonl_file = "list.jsonl"\ncache_directory = "cache"\n'
                               "audio_bucket_interval = 1.0\n")  # fmt: skip
    assert _cache(config, checkpoint) == 0
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["hello_ltx2_audio.safetensors", "world_ltx2_audio.safetensors"]
    latents, length = _read(cache / "world_ltx2_audio.safetensors")
    assert (latents.shape[1], length) == _expected(media / "world.mp3", 3.0)
    capsys.readouterr()

    assert _cache(config, checkpoint, "--skip_existing") == 0
    assert "0 cached, 2 reused" in capsys.readouterr().out
    write_audio(media / "hello.flac", _noise(2, 44100, seed=9), 44100)  # an edited source is cached again
    assert _cache(config, checkpoint, "--skip_existing") == 0
    assert "1 cached, 1 reused" in capsys.readouterr().out
    config.write_text(config.read_text().replace("1.0", "0.5"))  # other buckets: every item
    assert _cache(config, checkpoint, "--skip_existing") == 0
    assert "2 cached, 0 reused" in capsys.readouterr().out
    assert _read(cache / "world_ltx2_audio.safetensors")[0].shape[1] == _expected(media / "world.mp3", 2.5)[0]

    (media / "world.mp3").unlink()
    (tmp_path / "list.jsonl").write_text('{"audio_path": "media/hello.flac", "caption": "a voice says hello"}\n')
    assert _cache(config, checkpoint, "--skip_existing", "--prune_cache") == 0
    assert "1 stale cache file(s) deleted" in capsys.readouterr().out
    assert [p.name for p in cache.iterdir()] == ["hello_ltx2_audio.safetensors"]


def _video_dataset(tmp_path: Path, videos=(("clip_a", True), ("clip_b", True))) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir(exist_ok=True)
    for stem, with_audio in videos:
        write_video(clips / f"{stem}.mp4", num_frames=30, fps=24.0, width=80, height=48,
                    audio="tone" if with_audio else None)  # fmt: skip
        _captioned(clips / f"{stem}.mp4")
    return _config(tmp_path, '[general]\nresolution = [64, 32]\n[[datasets]]\nvideo_directory = "clips"\n'
                             'cache_directory = "cache"\ntarget_frames = [9, 17]\n')  # fmt: skip


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_video_soundtracks_without_the_video_vae_serve_av_training_and_back(tmp_path, capsys):
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
    from ltx2_tuner.testing.tiny_pack import write_tiny_pack

    pack = write_tiny_pack(tmp_path / "pack", "2.3", seed=5, text_encoder=False)
    for path in (pack.video_vae, pack.diffusion_vae):
        if path is not None:
            path.unlink()  # audio mode must not need it
    config = _video_dataset(tmp_path)
    assert _cache(config, pack.transformer) == 0
    assert "done: 4 cached, 0 reused, 0 failed" in capsys.readouterr().out
    cache = tmp_path / "cache"
    audio_names = [f"clip_{c}_00000-{n:03d}_ltx2_audio.safetensors" for c in "ab" for n in (9, 17)]
    assert sorted(p.name for p in cache.iterdir()) == audio_names  # no video latents
    latents, length = _read(cache / "clip_a_00000-017_ltx2_audio.safetensors")
    assert latents.shape[1] == length == 18  # as an AV run caches the window (test_latent_cacher)
    audio_written = _mtimes(cache)

    # An AV run of the same model (the unified file) makes only the video latents.
    unified = write_tiny_checkpoint(tmp_path / "unified", "2.3", seed=5)
    assert run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(unified), "--device", "cpu",
                      "--ltx_mode", "av", "--skip_existing"]) == 0  # fmt: skip
    assert "done: 4 cached, 0 reused" in capsys.readouterr().out
    after = _mtimes(cache)
    assert {name: after[name] for name in audio_names} == audio_written
    assert sorted(set(after) - set(audio_names)) == sorted(
        f"clip_{c}_00000-{n:03d}_0080x0048_ltx2.safetensors" for c in "ab" for n in (9, 17)
    )
    # ... and an audio run after it reuses everything, and keeps (does not prune) the video latents.
    assert _cache(config, unified, "--skip_existing", "--prune_cache") == 0
    out = capsys.readouterr().out
    assert "done: 0 cached, 4 reused" in out and "stale" not in out and _mtimes(cache) == after


def test_videos_without_sound_in_audio_mode(tmp_path, checkpoint, capsys):
    config = _video_dataset(tmp_path, videos=(("loud", True), ("silent", False)))
    assert _cache(config, checkpoint) == 2
    err = capsys.readouterr().err
    assert "no audio track: " in err and "silent.mp4" in err and "--ltx_mode audio" in err
    assert _cache(config, checkpoint, "--missing_audio", "skip") == 0
    assert "2 without audio" in capsys.readouterr().out
    for frames in (9, 17):
        latents, length = _read(tmp_path / "cache" / f"silent_00000-{frames:03d}_ltx2_audio.safetensors")
        assert latents.shape == (8, 0, 16) and length == 0  # training drops these
        assert _read(tmp_path / "cache" / f"loud_00000-{frames:03d}_ltx2_audio.safetensors")[1] > 0


def test_dataset_kinds_that_do_not_fit_the_mode_stop_before_any_work(tmp_path, checkpoint, capsys):
    (tmp_path / "stills").mkdir()
    _captioned(write_image(tmp_path / "stills" / "photo.png", 32, 32))
    (tmp_path / "voice").mkdir()
    _captioned(write_audio(tmp_path / "voice" / "hum.wav", _noise(1, 16000), 16000))
    config = _config(tmp_path, '[[datasets]]\nimage_directory = "stills"\ncache_directory = "cache/stills"\n'
                               '[[datasets]]\naudio_directory = "voice"\ncache_directory = "cache/voice"\n')  # fmt: skip
    assert _cache(config, checkpoint) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "(stills): an image dataset has no sound; remove it from the dataset config for --ltx_mode audio" in err
    assert run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu",
                      "--ltx_mode", "av"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "(voice): audio datasets train with --ltx_mode audio" in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists()
