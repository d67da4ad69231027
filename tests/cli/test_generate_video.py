"""ltx2_generate_video.py end to end on the tiny LTX-2.3 checkpoint and tiny Gemma (CPU, float32, 64x64, 9 frames,
2 steps): T2AV, T2V, one frame, I2V, LoRAs, prompt caches, determinism, and the checks made before any model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.generate_video import main

ROOT = Path(__file__).parents[2]
FAST = ["--width", "64", "--height", "64", "--frames", "9", "--steps", "2", "--device", "cpu"]
FAST += ["--mixed_precision", "no"]
PROMPT = "a red fox runs through snow"


@pytest.fixture(scope="module")
def tiny23(tiny_checkpoints, tiny_gemma_dir):
    return {"checkpoint": tiny_checkpoints["2.3"].path, "gemma": tiny_gemma_dir}


def _generate(tiny23, output: Path, *flags: str, prompt: str | None = PROMPT, gemma=True) -> int:
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), *FAST, "--output", str(output), *flags]
    argv += ["--prompt", prompt] if prompt is not None else []
    argv += ["--gemma_root", str(tiny23["gemma"])] if gemma else []
    return run(main, argv)


def _read(path: Path) -> tuple[np.ndarray, dict]:
    """Decoded RGB frames [F, H, W, 3] and the container's streams."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "fps": float(video.average_rate),
            "audio_rate": container.streams.audio[0].rate if container.streams.audio else None,
        }
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    return frames, info


@pytest.fixture(scope="module")
def t2av(tiny23, tmp_path_factory):
    """The base T2AV run: its output and decoded frames."""
    output = tmp_path_factory.mktemp("t2av") / "fox.mp4"
    assert _generate(tiny23, output) == 0
    return output, _read(output)[0]


def test_t2av_writes_an_mp4_with_sound_and_is_deterministic(t2av, tiny23, tmp_path):
    output, frames = t2av
    _, info = _read(output)
    assert frames.shape == (9, 64, 64, 3) and info["fps"] == 24.0
    assert info["audio_rate"] == 48000  # the LTX-2.3 vocoder's rate
    assert frames.std() > 1.0  # not a blank clip
    repeat = tmp_path / "again.mp4"
    assert _generate(tiny23, repeat) == 0
    assert np.array_equal(_read(repeat)[0], frames)
    other_seed = tmp_path / "seed7.mp4"
    assert _generate(tiny23, other_seed, "--seed", "7") == 0
    assert not np.array_equal(_read(other_seed)[0], frames)


def test_t2v_with_a_video_only_build_has_no_audio(tiny23, tmp_path):
    output = tmp_path / "t2v.mp4"
    assert _generate(tiny23, output, "--ltx_mode", "video", "--fps", "25") == 0
    frames, info = _read(output)
    assert frames.shape == (9, 64, 64, 3) and info["fps"] == 25.0 and info["audio_rate"] is None


def test_one_frame_writes_a_png(tiny23, tmp_path):
    assert _generate(tiny23, tmp_path / "still.mp4", "--frames", "1", "--width", "96") == 0
    assert not (tmp_path / "still.mp4").exists()
    with Image.open(tmp_path / "still.png") as image:
        assert image.size == (96, 64) and image.mode == "RGB"


def test_i2v_conditions_on_the_image(t2av, tiny23, tmp_path):
    image = tmp_path / "first.png"
    gradient = np.linspace(0, 255, 80 * 120 * 3).reshape(80, 120, 3).astype(np.uint8)
    Image.fromarray(gradient).save(image)  # another aspect ratio: cover-resized and centre-cropped
    output = tmp_path / "i2v.mp4"
    assert _generate(tiny23, output, "--image", str(image)) == 0
    frames, info = _read(output)
    assert frames.shape == (9, 64, 64, 3) and info["audio_rate"] == 48000
    assert not np.array_equal(frames, t2av[1])  # same seed and prompt: the image made the difference


def test_lora_strength_zero_is_the_base_and_one_changes_the_video(t2av, tiny23, tmp_path):
    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.networks import lora_ltx2 as lora

    model = load_transformer(tiny23["checkpoint"], mode="av")
    spec = lora.LoraSpec(4, 4.0, 0.0, lora.select_targets(model.backbone, "av"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in lora.add_lora(model.backbone, spec):
            param.copy_(torch.randn(param.shape, generator=generator))
    file = tmp_path / "my_lora.safetensors"
    lora.save_lora(file, model.backbone, spec, {}, dtype=torch.float32)

    off, on = tmp_path / "off.mp4", tmp_path / "on.mp4"
    assert _generate(tiny23, off, "--lora_weight", f"{file}:0") == 0
    assert np.array_equal(_read(off)[0], t2av[1])
    assert _generate(tiny23, on, "--lora_weight", str(file), "--lora_weight", f"{file}:-0.5") == 0
    assert not np.array_equal(_read(on)[0], t2av[1])


def test_a_prompt_cache_replaces_gemma(t2av, tiny23, tmp_path):
    from ltx2_tuner.cache import sample_prompts as samples
    from ltx2_tuner.models import read_checkpoint_info
    from ltx2_tuner.models.text_embeddings import encode_prompts, load_text_embedder
    from ltx2_tuner.models.text_encoder import load_gemma

    info = read_checkpoint_info(tiny23["checkpoint"])
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text(f"{PROMPT} --w 64 --h 64 --f 9 --s 2\nsomething else --f 1\n")
    prompts = samples.read_sample_prompts(prompts_file)
    embedder = load_text_embedder(info, "av", torch.float32)
    gemma = load_gemma(tiny23["gemma"], torch.float32)
    cache = samples.sample_cache_path(prompts_file)
    fingerprint = {"connectors": {"file": info.fingerprint, "version": info.version}, "mode": "av"}
    samples.cache_sample_prompts(cache, prompts, lambda texts: encode_prompts(gemma, embedder, texts), fingerprint)

    output = tmp_path / "cached.mp4"
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), "--prompt_cache", str(cache), "--prompt_index", "0"]
    assert run(main, [*argv, "--device", "cpu", "--mixed_precision", "no", "--output", str(output)]) == 0
    # The line's own size, frames and steps; the same embeddings as Gemma's: the same clip as the --prompt run.
    assert np.array_equal(_read(output)[0], t2av[1])

    # Every prompt of the cache, numbered; flags override each line's options (the second line is one frame).
    every = tmp_path / "every.mp4"
    flags = ["--width", "64", "--height", "32", "--steps", "1", "--output", str(every)]
    assert run(main, [*argv[:4], "--device", "cpu", "--mixed_precision", "no", *flags]) == 0
    assert sorted(p.name for p in tmp_path.glob("every_*")) == ["every_00.mp4", "every_01.png"]
    assert _read(tmp_path / "every_00.mp4")[0].shape == (9, 32, 64, 3)


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--width", "100"], "--width 100: must be a positive multiple of 32 (the VAE's factor), e.g. 96"),
        (["--height", "0"], "--height 0: must be a positive multiple of 32"),
        (["--frames", "10"], "--frames 10: must be 8k+1 (1, 9, 17, ..., 121); e.g. 9"),
        (["--fps", "0"], "--fps 0.0: must be positive"),
        (["--steps", "0"], "--steps 0: must be at least 1"),
        (["--lora_weight", "missing.safetensors"], "--lora_weight missing.safetensors: file not found"),
        (["--image", "nowhere.png"], "--image nowhere.png: file not found"),
        (["--stg_blocks", "2"], "--stg_blocks 2: the transformer has blocks 0..1"),
        (["--rescale_scale", "1.5"], "--rescale_scale 1.5: must be in [0, 1]"),
    ],
)
def test_a_bad_flag_is_one_error_line_and_nothing_is_written(tiny23, tmp_path, capsys, flags, expected):
    output = tmp_path / "out.mp4"
    assert _generate(tiny23, output, *flags) == 2
    assert _errors(capsys) == [f"error: {expected}" + _rest(expected)]
    assert not list(tmp_path.iterdir())


def _rest(expected: str) -> str:
    """The fix each message ends with (the test pins the problem; the wording of the fix may grow)."""
    return {
        "--lora_weight missing.safetensors: file not found": "; pass an existing LoRA .safetensors file",
        "--image nowhere.png: file not found": "; pass the first-frame image",
        "--height 0: must be a positive multiple of 32": " (the VAE's factor), e.g. 32",
    }.get(expected, "")


def test_every_problem_is_reported_at_once_before_any_model_loads(tiny23, tmp_path, capsys):
    lora_file = tmp_path / "lora.safetensors"
    lora_file.write_bytes(b"not a lora")
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), "--prompt", PROMPT, "--width", "65", "--frames", "4"]
    argv += ["--lora_weight", f"{lora_file}:strong", "--output", str(tmp_path / "x.mp4")]
    assert run(main, argv) == 2
    lines = _errors(capsys)
    assert lines[0] == "error: 4 problems with the flags:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "--text_encoder",
        "--width 65",
        "--frames 4",
        "--lora_weight " + str(lora_file),
    ]
    assert "strength 'strong' is not a number" in lines[4]
    assert not (tmp_path / "x.mp4").exists()


def test_a_lora_for_another_model_stops_before_the_models_load(tiny23, tmp_path, capsys):
    from safetensors.torch import save_file

    other = tmp_path / "wan_lora.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.ones(2, 8),
            "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.ones(8, 2),
        },
        str(other),
    )
    assert _generate(tiny23, tmp_path / "x.mp4", "--lora_weight", str(other)) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"error: {other}: none of its 1 LoRA layers is a layer of this transformer")
    assert "another model" in line and not (tmp_path / "x.mp4").exists()


def test_prompt_sources_are_checked(tiny23, tmp_path, capsys):
    base = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), "--output", str(tmp_path / "x.mp4")]
    assert run(main, [*base, "--prompt", PROMPT]) == 2
    (line,) = _errors(capsys)
    assert line.startswith("error: --text_encoder: needed to encode --prompt; pass the Gemma text encoder")
    assert run(main, [*base, "--prompt", PROMPT, "--gemma_root", str(tmp_path / "no_gemma")]) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"error: {tmp_path / 'no_gemma'}: Gemma text encoder not found")
    assert run(main, [*base, "--prompt_cache", str(tmp_path / "none.safetensors"), "--prompt", PROMPT]) == 2
    (line,) = _errors(capsys)
    assert line.startswith("error: --prompt: the prompts come from --prompt_cache")
    assert run(main, [*base, "--prompt_cache", str(tmp_path / "none.safetensors")]) == 2
    (line,) = _errors(capsys)
    assert "not a sample-prompt cache (missing or damaged)" in line
    assert not (tmp_path / "x.mp4").exists()


def test_the_root_launcher_runs_the_command(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "ltx2_generate_video.py"), "--ltx2_checkpoint", str(tmp_path / "none.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert result.stderr.count("error:") == 1
