"""The README's main command: the demo runs end to end and writes an official-format AV LoRA and an AV preview."""

from __future__ import annotations

import re
import subprocess
import sys

import av
import pytest
from safetensors import safe_open


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_tuner.cli.demo", "--out", str(out), "--steps", "80"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for command in (
        "make_tiny",
        "ltx2_cache_latents.py",
        "ltx2_cache_text_encoder_outputs.py",
        "ltx2_train_network.py",
    ):
        assert f"$ python {'-m ltx2_tuner.testing.' if command == 'make_tiny' else ''}{command}" in result.stdout
    assert "done: 4 cached" in result.stdout and "done: 4 encoded" in result.stdout
    lora = out / "lora" / "demo_av_lora.safetensors"
    with safe_open(str(lora), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert any(".audio_attn1." in k for k in keys) and any(".audio_to_video_attn." in k for k in keys)
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", result.stdout).groups())
    assert last < first
    preview = out / "lora" / "sample" / "demo_av_lora_step000080_00.mp4"
    assert f"demo: AV preview at step 80: {preview}" in result.stdout
    with av.open(str(preview)) as container:  # 17 frames of 96x64 with a stereo AAC track
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height, video.frames) == (96, 64, 17)
        assert audio.codec_context.name == "aac" and audio.channels == 2
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_runs_ltx_2_5_from_its_split_pack(tmp_path):
    """`./demo.sh --version 2.5`: the same commands on a tiny LTX 2.5 split pack, the packed Gemma 4 and the VAE
    files found beside the transformer, and a LoRA that says it was trained on 2.5."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_tuner.cli.demo", "--out", str(out), "--steps", "40", "--version", "2.5"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "split pack: transformer; text encoder 'gemma4-12b-ltx-v1'" in result.stdout
    assert "done: 4 cached" in result.stdout and "done: 4 encoded" in result.stdout
    assert "--text_encoder" not in result.stdout and "--gemma_root" not in result.stdout
    with safe_open(str(out / "lora" / "demo_av_lora.safetensors"), framework="pt") as f:
        assert f.metadata()["ltx_version"] == "2.5"
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", result.stdout).groups())
    assert last < first
    assert (out / "lora" / "sample" / "demo_av_lora_step000040_00.mp4").is_file()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_t2a_trains_an_audio_lora_from_captioned_tones(tmp_path):
    """`./demo.sh --mode t2a`: an audio dataset cached with --ltx_mode audio (audio VAE and audio connector only), an
    audio-only LoRA (audio layers, the T2A preset), and a wav preview at the vocoder's rate."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_tuner.cli.demo", "--out", str(out), "--steps", "60", "--mode", "t2a"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 4 cached" in result.stdout and "done: 4 encoded" in result.stdout
    assert result.stdout.count("--ltx_mode audio") == 3  # both caches and the training
    lora = out / "lora" / "demo_t2a_lora.safetensors"
    with safe_open(str(lora), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert metadata["training_mode"] == "t2a"
    layers = {key.split(".")[3] for key in keys}
    assert layers == {"audio_attn1", "audio_attn2", "audio_ff"}
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", result.stdout).groups())
    assert last < first
    preview = out / "lora" / "sample" / "demo_t2a_lora_step000060_00.wav"
    assert f"demo: T2A preview at step 60: {preview}" in result.stdout
    with av.open(str(preview)) as container:  # 1 s of stereo 16-bit audio from the LTX-2.3 vocoder (48 kHz)
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        assert (stream.rate, stream.channels, stream.codec_context.name) == (48000, 2, "pcm_s16le")
        assert abs(samples / 48000 - 1.0) < 0.05
    assert not container.streams.video
    assert "Traceback" not in result.stderr
