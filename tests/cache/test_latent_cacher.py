"""ltx2_cache_latents.py end to end on synthetic media: names, keys, shapes, audio, staleness, interruption."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_latents import main
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.testing.synthetic_media import write_image, write_video


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _dataset(tmp_path: Path, extra: str = "", videos=(("clip_a", True), ("clip_b", True))) -> Path:
    clips, stills = tmp_path / "clips", tmp_path / "stills"
    clips.mkdir(exist_ok=True)
    stills.mkdir(exist_ok=True)
    for stem, with_audio in videos:
        if not (clips / f"{stem}.mp4").exists():
            write_video(clips / f"{stem}.mp4", num_frames=30, fps=24.0, width=80, height=48,
                        audio="tone" if with_audio else None)  # fmt: skip
    if not (stills / "photo.png").exists():
        write_image(stills / "photo.png", 50, 70)
    for media in [*clips.glob("*.mp4"), stills / "photo.png"]:
        if not media.with_suffix(".txt").exists():
            media.with_suffix(".txt").write_text(f"a caption of {media.stem}")
    config = tmp_path / "dataset.toml"
    config.write_text(
        '[general]\nresolution = [64, 32]\n'
        f'[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache/clips"\ntarget_frames = [9, 17]\n{extra}\n'
        '[[datasets]]\nimage_directory = "stills"\ncache_directory = "cache/stills"\nresolution = [32, 64]\n'
    )  # fmt: skip
    return config


def _cache(config, checkpoint, *flags, capsys=None) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint),
                      "--device", "cpu", *flags])  # fmt: skip


@pytest.fixture
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["2.3"].path


def test_names_keys_and_shapes(tmp_path, checkpoint, capsys):
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint, "--ltx_mode", "av") == 0
    out = capsys.readouterr().out
    assert "done: 5 cached, 0 reused, 0 failed" in out
    cache = tmp_path / "cache" / "clips"
    names = sorted(p.name for p in cache.iterdir())
    assert names == [
        "clip_a_00000-009_0080x0048_ltx2.safetensors", "clip_a_00000-009_ltx2_audio.safetensors",
        "clip_a_00000-017_0080x0048_ltx2.safetensors", "clip_a_00000-017_ltx2_audio.safetensors",
        "clip_b_00000-009_0080x0048_ltx2.safetensors", "clip_b_00000-009_ltx2_audio.safetensors",
        "clip_b_00000-017_0080x0048_ltx2.safetensors", "clip_b_00000-017_ltx2_audio.safetensors",
    ]  # fmt: skip
    video = _tensors(cache / "clip_a_00000-017_0080x0048_ltx2.safetensors")
    assert list(video) == ["latents_3x1x2_bfloat16"]  # the default --vae_dtype
    assert video["latents_3x1x2_bfloat16"].shape == (128, 1 + (17 - 1) // 8, 32 // 32, 64 // 32)
    audio = _tensors(cache / "clip_a_00000-017_ltx2_audio.safetensors")
    # 17 frames at 24 fps = 0.708 s = 34000 samples at 48 kHz -> 11334 at 16 kHz -> 71 mel frames -> 18 latents
    # (25/s, +1 causal first); audio latents are always float32
    assert set(audio) == {"audio_latents_18x16x8_float32", "audio_lengths_int32"}
    assert audio["audio_latents_18x16x8_float32"].shape == (8, 18, 16)
    assert audio["audio_lengths_int32"].tolist() == [18] and audio["audio_lengths_int32"].dtype == torch.int32
    image = _tensors(tmp_path / "cache" / "stills" / "photo_0050x0070_ltx2.safetensors")
    assert list(image) == ["latents_1x2x1_bfloat16"]  # an image is one frame: F=1 latents of a 32x64 bucket
    assert not list((tmp_path / "cache" / "stills").glob("*_ltx2_audio.safetensors"))


def test_latents_are_the_normalized_vae_means(tmp_path, checkpoint):
    from ltx2_tuner.data.images import load_image
    from ltx2_tuner.data.transforms import frames_to_model_input
    from ltx2_tuner.models import load_video_vae

    config = _dataset(tmp_path)
    assert _cache(config, checkpoint) == 0
    vae = load_video_vae(checkpoint, part="encoder")
    frames = frames_to_model_input(load_image(tmp_path / "stills" / "photo.png", size=(32, 64))[None])
    with torch.no_grad():
        means = vae.encode(frames[None]).latent_dist.mode()[0]
    expected = (means - vae.latents_mean.view(-1, 1, 1, 1)) / vae.latents_std.view(-1, 1, 1, 1)
    cached = _tensors(tmp_path / "cache" / "stills" / "photo_0050x0070_ltx2.safetensors")["latents_1x2x1_bfloat16"]
    torch.testing.assert_close(cached, expected.to(torch.bfloat16))  # computed in fp32 on the CPU, stored in bf16


def test_missing_audio_is_listed_not_skipped(tmp_path, checkpoint, capsys):
    config = _dataset(tmp_path, videos=(("loud", True), ("silent", False)))
    assert _cache(config, checkpoint, "--ltx_mode", "av") == 2
    err = capsys.readouterr().err
    assert "no audio track: " in err and "silent.mp4" in err and "--missing_audio skip" in err
    assert not (tmp_path / "cache" / "clips").exists() or not list((tmp_path / "cache" / "clips").iterdir())

    assert _cache(config, checkpoint, "--ltx_mode", "av", "--missing_audio", "skip") == 0
    captured = capsys.readouterr()
    assert "silent.mp4" in captured.err and "2 without audio" in captured.out
    datasets = load_dataset_config(config)
    _write_text_caches(datasets)
    with pytest.warns(UserWarning, match="silent_00000-009"):
        batches = CachedBatches(datasets[:1], "av")
    assert all(not key.startswith("silent") for i in range(len(batches)) for key in batches[i]["items"])


def _write_text_caches(datasets):
    from ltx2_tuner.cache import naming
    from ltx2_tuner.cache.store import write_cache
    from ltx2_tuner.data.items import list_media

    for dataset in datasets:
        for item in list_media(dataset):
            tensors = {"video_prompt_embeds_float32": torch.zeros(4, 2), "audio_prompt_embeds_float32": torch.zeros(4, 2),
                       "prompt_attention_mask": torch.ones(4, dtype=torch.int64)}  # fmt: skip
            item.caption_path.write_text("a caption")
            digest = hashlib.sha256(b"a caption").hexdigest()
            fingerprint = {"caption_sha256": digest, "mode": "av", "connectors": {"version": "2.3"}}
            write_cache(naming.text_cache_path(dataset.cache_directory, item.stem), tensors, fingerprint)


def _mtimes(tmp_path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")}


def test_skip_existing_recaches_exactly_the_affected_items(tmp_path, tiny_checkpoints, capsys):
    checkpoint = tiny_checkpoints["2.3"].path
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint, "--ltx_mode", "av") == 0
    before = _mtimes(tmp_path)
    capsys.readouterr()

    assert _cache(config, checkpoint, "--ltx_mode", "av", "--skip_existing") == 0
    assert "0 cached, 5 reused" in capsys.readouterr().out and _mtimes(tmp_path) == before

    time.sleep(0.01)
    write_video(tmp_path / "clips" / "clip_b.mp4", num_frames=30, fps=24.0, width=80, height=48, audio="tone", seed=7)
    assert _cache(config, checkpoint, "--ltx_mode", "av", "--skip_existing") == 0
    assert "2 cached, 3 reused" in capsys.readouterr().out
    after = _mtimes(tmp_path)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {n for n in after if n.startswith("clip_b")}  # both windows, video and audio

    config.write_text(config.read_text().replace("resolution = [32, 64]", "resolution = [64, 64]"))
    assert _cache(config, checkpoint, "--ltx_mode", "av", "--skip_existing") == 0
    assert "1 cached, 4 reused" in capsys.readouterr().out  # only the image dataset's bucket changed

    other = tiny_checkpoints["2.0"].path
    assert _cache(config, other, "--ltx_mode", "av", "--skip_existing") == 0
    assert "5 cached, 0 reused" in capsys.readouterr().out


def test_mode_change_adds_the_audio_caches(tmp_path, checkpoint, capsys):
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint) == 0
    assert not list((tmp_path / "cache" / "clips").glob("*_ltx2_audio.safetensors"))
    capsys.readouterr()
    assert _cache(config, checkpoint, "--ltx_mode", "av", "--skip_existing") == 0
    assert "4 cached, 1 reused" in capsys.readouterr().out  # the video windows gain audio; the image is reused
    assert len(list((tmp_path / "cache" / "clips").glob("*_ltx2_audio.safetensors"))) == 4


def test_stale_files_are_counted_and_pruned_on_request(tmp_path, checkpoint, capsys):
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint) == 0
    config.write_text(config.read_text().replace("target_frames = [9, 17]", "target_frames = [9]"))
    capsys.readouterr()
    assert _cache(config, checkpoint, "--skip_existing") == 0
    assert "2 stale cache file(s) left" in capsys.readouterr().out
    assert _cache(config, checkpoint, "--skip_existing", "--prune_cache") == 0
    assert "2 stale cache file(s) deleted" in capsys.readouterr().out
    assert not list((tmp_path / "cache" / "clips").glob("*-017_*"))
    assert (tmp_path / "clips" / "clip_a.mp4").exists()  # user files are never touched


def test_video_mode_pruning_keeps_the_av_audio_caches(tmp_path, checkpoint, capsys):
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint, "--ltx_mode", "av") == 0
    cache = tmp_path / "cache" / "clips"
    audio_files = sorted(cache.glob("*_ltx2_audio.safetensors"))
    assert len(audio_files) == 4
    capsys.readouterr()
    assert _cache(config, checkpoint, "--skip_existing", "--prune_cache") == 0  # video mode
    out = capsys.readouterr().out
    assert "stale" not in out and sorted(cache.glob("*_ltx2_audio.safetensors")) == audio_files

    # A window the dataset no longer has is unusable in every mode: its video and audio caches both go.
    config.write_text(config.read_text().replace("target_frames = [9, 17]", "target_frames = [9]"))
    assert _cache(config, checkpoint, "--skip_existing", "--prune_cache") == 0
    assert "4 stale cache file(s) deleted" in capsys.readouterr().out
    assert sorted(p.name for p in cache.glob("*_ltx2_audio.safetensors")) == [
        "clip_a_00000-009_ltx2_audio.safetensors", "clip_b_00000-009_ltx2_audio.safetensors",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_run_leaves_no_corrupt_file_and_a_rerun_completes(tmp_path, checkpoint):
    config = _dataset(tmp_path, videos=tuple((f"clip_{i}", True) for i in range(8)))
    command = [sys.executable, "-m", "ltx2_tuner.cli.cache_latents", "--dataset_config", str(config),
               "--ltx2_checkpoint", str(checkpoint), "--device", "cpu", "--ltx_mode", "av"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cache = tmp_path / "cache" / "clips"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*.safetensors"))) < 3:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = list(cache.glob("*.safetensors"))
    assert 0 < len(written) < 33
    for path in written:
        _tensors(path)  # every visible file is complete
    assert subprocess.run([*command, "--skip_existing"], capture_output=True).returncode == 0
    assert len(list(cache.glob("*_ltx2.safetensors"))) == 16 and len(list(cache.glob("*_ltx2_audio.safetensors"))) == 16
    assert not list(cache.glob(".*.tmp*"))
    for path in cache.glob("*.safetensors"):
        _tensors(path)


def test_vae_tiling_flags(tmp_path, checkpoint, capsys):
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.models import read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    frames = torch.rand(1, 3, 25, 128, 192) * 2 - 1
    plain = LatentEncoder(info, None, torch.device("cpu"), torch.float32, VaeTiling()).encode_video(frames)
    for tiling in (VaeTiling(spatial_tile_px=64), VaeTiling(temporal_tile_frames=16), VaeTiling(96, 16)):
        tiled = LatentEncoder(info, None, torch.device("cpu"), torch.float32, tiling).encode_video(frames)
        assert tiled.shape == plain.shape == (1, 128, 4, 4, 6) and torch.isfinite(tiled).all()
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint, "--vae_tile_size", "100") == 2
    assert "--vae_tile_size 100: use a multiple of 32" in capsys.readouterr().err
    assert _cache(config, checkpoint, "--vae_tile_size", "64", "--vae_tile_frames", "16") == 0


def test_cpu_video_vae_computes_in_fp32_and_stores_the_requested_dtype(tiny_checkpoints, capsys):
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.models import read_checkpoint_info

    info = read_checkpoint_info(tiny_checkpoints["2.3"].path)
    cpu = torch.device("cpu")
    frames = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bf16 = LatentEncoder(info, None, cpu, torch.bfloat16, VaeTiling())
    assert "runs in float32 on the CPU" in capsys.readouterr().out  # said once, when the encoder is built
    assert next(bf16.video_vae.parameters()).dtype == torch.float32
    latents = bf16.encode_video(frames)
    reference = LatentEncoder(info, None, cpu, torch.float32, VaeTiling()).encode_video(frames)
    assert latents.dtype == torch.bfloat16
    torch.testing.assert_close(latents, reference.to(torch.bfloat16), atol=0, rtol=0)
    assert "float32 on the CPU" not in capsys.readouterr().out  # nothing to say when fp32 was asked for


def test_audio_caches_from_another_preprocessing_are_recomputed(tmp_path, checkpoint, capsys, monkeypatch):
    from ltx2_tuner.data import audio

    config = _dataset(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(audio, "AUDIO_PREPROCESSING", "swresample-default")  # what caches recorded before
        assert _cache(config, checkpoint, "--ltx_mode", "av") == 0
    capsys.readouterr()
    assert _cache(config, checkpoint, "--ltx_mode", "av", "--skip_existing") == 0
    assert "4 cached, 1 reused" in capsys.readouterr().out  # every video window (with audio); the image is reused


def test_av_audio_latents_come_from_the_cut_then_resampled_window(tmp_path, checkpoint):
    # A 44.1 kHz sidecar: the cached latents are the audio VAE's encoding of the documented resampler's output.
    import numpy as np
    from safetensors import safe_open as open_file

    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.mel import log_mel_spectrogram
    from ltx2_tuner.models import read_checkpoint_info
    from ltx2_tuner.testing.audio_reference import decode_all, documented_resample
    from ltx2_tuner.testing.synthetic_media import write_audio

    config = _dataset(tmp_path, videos=(("clip_a", False),))
    rng = np.random.default_rng(5)
    wav = write_audio(tmp_path / "clips" / "clip_a.wav", (0.2 * rng.standard_normal((2, 44100 * 2))), 44100)
    assert _cache(config, checkpoint, "--ltx_mode", "av", "--ltx2_audio_source", "audio_files") == 0

    samples, rate = decode_all(wav)
    window = samples[:, : int(17 / 24.0 * rate)]  # the 17-frame window at 24 fps, cut at 44.1 kHz
    waveform = torch.from_numpy(np.stack([documented_resample(c, rate, 16000) for c in window])).float()
    info = read_checkpoint_info(checkpoint)
    encoder = LatentEncoder(info, info, torch.device("cpu"), torch.float32, VaeTiling())
    expected = encoder.encode_audio(log_mel_spectrogram(waveform, 16000))
    with open_file(str(tmp_path / "cache" / "clips" / "clip_a_00000-017_ltx2_audio.safetensors"), "pt") as f:
        cached = f.get_tensor(next(k for k in f.keys() if k.startswith("audio_latents_")))  # noqa: SIM118
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)


def test_missing_and_undecodable_captions_stop_latent_caching_as_text_caching_does(tmp_path, checkpoint, capsys):
    config = _dataset(tmp_path)
    (tmp_path / "clips" / "clip_a.txt").unlink()
    (tmp_path / "stills" / "photo.txt").write_bytes(b"\x81\x8d")
    assert _cache(config, checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 caption problems:\n") and "Traceback" not in err
    assert f"{tmp_path / 'clips' / 'clip_a.txt'}: caption file missing for clip_a.mp4" in err
    assert f"{tmp_path / 'stills' / 'photo.txt'}: not readable text" in err
    assert not (tmp_path / "cache").exists()  # stopped before any work


def test_latent_caches_follow_the_encoder_not_the_file(tmp_path, capsys):
    """A split pack's VAE files hold the unified file's encoders byte for byte: its caches are reused (LTX 2.5 keeps
    LTX-2.3's encoder the same way)."""
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
    from ltx2_tuner.testing.tiny_pack import write_tiny_pack

    unified = write_tiny_checkpoint(tmp_path / "unified", "2.5", seed=5)
    pack = write_tiny_pack(tmp_path / "pack", "2.5", seed=5, text_encoder=False)
    config = _dataset(tmp_path)
    assert _cache(config, unified, "--ltx_mode", "av") == 0
    capsys.readouterr()
    assert _cache(config, pack.transformer, "--ltx_mode", "av", "--skip_existing") == 0
    assert "0 cached, 5 reused" in capsys.readouterr().out
    from ltx2_tuner.cache.store import read_fingerprint

    fingerprint = read_fingerprint(next((tmp_path / "cache" / "clips").glob("*_ltx2.safetensors")))
    assert fingerprint["checkpoint"]["version"] == "2.3"  # the latent space LTX 2.5 shares with 2.3
