"""Previews during training (--sample_prompts): files, audio, schedule, setup, and no effect on the trained LoRA;
the T2A (wav), A2V (--a) and V2A (--v) previews of the modality modes.

Tiny LTX-2.3 checkpoint and tiny Gemma, fp32 on the CPU, 64x64 previews of 9 frames with 2 denoising steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ltx2_tuner.cache.sample_prompts import load_sample_prompt_cache, parse_prompt_line, sample_cache_path
from ltx2_tuner.cli import cache_text_encoder_outputs
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import read_checkpoint_info
from ltx2_tuner.models.model_files import model_files
from ltx2_tuner.roles import roles_for
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import trainer
from ltx2_tuner.training.config import parse_args

AV_PROMPTS = "# one AV preview\na red fox barks in the snow --w 64 --h 64 --f 9 --fps 24 --s 2 --d 3\n"
# A still image (written as a png) and an image-to-video prompt.
MIXED_PROMPTS = "a lighthouse --w 64 --h 32 --f 1 --s 2\na red fox runs --w 64 --h 64 --f 9 --s 2 --i first.png\n"


def _train(data: dict, output: Path, *flags) -> int:
    return run(main, ["--dataset_config", str(data["config"]), "--ltx2_checkpoint", str(data["checkpoint"]),
                      "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4", "--output_dir",
                      str(output), "--max_data_loader_n_workers", "0", "--log_with", "none",
                      "--save_precision", "fp32", *flags])  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_checkpoints, tiny_gemma_dir) -> dict:
    """Synthetic caches and two prompt files whose sample-prompt caches exist (made as a user makes them)."""
    root = tmp_path_factory.mktemp("previews")
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(root / "data", stems=("a", "b"), frames=9)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(root / "first.png")
    files = {"av": root / "av.txt", "mixed": root / "mixed.txt"}
    files["av"].write_text(AV_PROMPTS, encoding="utf-8")
    files["mixed"].write_text(MIXED_PROMPTS, encoding="utf-8")
    for prompts in files.values():
        argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--gemma_root",
                str(tiny_gemma_dir), "--ltx_mode", "av", "--mixed_precision", "no", "--device", "cpu",
                "--sample_prompts", str(prompts), "--skip_existing"]  # fmt: skip
        assert run(cache_text_encoder_outputs.main, argv) == 0
    return {"root": root, "config": config, "checkpoint": checkpoint, **files}


def _probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        info = {"frames": len(frames), "fps": Fraction(video.average_rate), "size": frames[0].shape[1::-1]}
        if container.streams.audio:
            container.seek(0)
            audio = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(audio=0))
            info.update(audio_rate=audio.rate, audio_channels=audio.channels, audio_s=samples / audio.rate)
    return info


def test_av_previews_at_first_and_every_n_steps(data, tmp_path):
    from ltx2_tuner.sampling.decode import Decoders

    out = tmp_path / "out"
    assert _train(data, out, "--ltx_mode", "av", "--max_train_steps", "2", "--sample_prompts", str(data["av"]),
                  "--sample_every_n_steps", "2", "--sample_at_first", "--log_with", "tensorboard") == 0  # fmt: skip
    assert sorted(p.name for p in (out / "sample").iterdir()) == [
        "ltx2_lora_step000000_00.mp4", "ltx2_lora_step000002_00.mp4"]  # fmt: skip
    rate = Decoders.load(read_checkpoint_info(data["checkpoint"]), with_audio=True).audio_sample_rate
    info = _probe(out / "sample" / "ltx2_lora_step000002_00.mp4")
    assert info["frames"] == 9 and info["fps"] == 24 and info["size"] == (64, 64)
    assert info["audio_rate"] == rate and info["audio_channels"] == 2
    assert abs(info["audio_s"] - 9 / 24) <= 1 / 24, info  # the clip's duration, within one video frame

    # TensorBoard has the preview (the middle frame without moviepy) and its audio, at their steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs"), size_guidance={"images": 0, "audio": 0}).Reload()
    kind = "images" if "preview/00" in events.Tags()["images"] else "tensors"  # add_video is stored as an image too
    assert [e.step for e in getattr(events, "Images" if kind == "images" else "Tensors")("preview/00")] == [0, 2]
    assert [e.step for e in events.Audio("preview/00_audio")] == [0, 2]


def test_video_mode_writes_video_only_a_png_for_one_frame_and_runs_i2v(data, tmp_path):
    out = tmp_path / "out"
    assert _train(data, out, "--ltx_mode", "video", "--max_train_steps", "1", "--sample_prompts",
                  str(data["mixed"]), "--sample_every_n_steps", "1") == 0  # fmt: skip
    still = out / "sample" / "ltx2_lora_step000001_00.png"
    assert np.asarray(Image.open(still)).shape == (32, 64, 3)
    info = _probe(out / "sample" / "ltx2_lora_step000001_01.mp4")
    assert info["frames"] == 9 and info["size"] == (64, 64) and "audio_rate" not in info


def test_the_i2v_request_carries_the_encoded_image(data):
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.images import load_image
    from ltx2_tuner.data.transforms import frames_to_model_input
    from ltx2_tuner.training.previews import PreviewRunner

    args = parse_args(["--dataset_config", str(data["config"]), "--ltx2_checkpoint", str(data["checkpoint"]),
                       "--sample_prompts", str(data["mixed"]), "--sample_at_first", "--sample_steps", "5"])  # fmt: skip
    info = read_checkpoint_info(data["checkpoint"])
    runner = PreviewRunner.prepare(args, model_files(info), _MainProcess(), torch.float32)
    still, i2v = runner.request(0), runner.request(1)
    assert still.first_frame_latent is None and still.steps == i2v.steps == 5  # --sample_steps over the default
    assert still.audio_context is None and still.video_context.shape == (1, 1024, 32)  # video mode: no audio
    encoder = LatentEncoder(info, None, torch.device("cpu"), torch.float32, VaeTiling())
    pixels = frames_to_model_input(load_image(data["root"] / "first.png", size=(64, 64))[None])
    assert torch.equal(i2v.first_frame_latent, encoder.encode_video(pixels[None])[0])
    assert i2v.first_frame_latent.shape == (128, 1, 2, 2)


def test_guidance_comes_from_the_prompt_and_the_version_defaults(data, tmp_path):
    from ltx2_tuner.sampling.defaults import sampling_defaults
    from ltx2_tuner.training.previews import PreviewRunner

    cached = load_sample_prompt_cache(sample_cache_path(data["av"]), data["av"])[0]
    lines = ("a fox --w 64 --h 64 --f 9 --g 4.5 --ga 6", "a cat --w 64 --h 64 --f 9 --s 7")
    prompts = [dataclasses.replace(cached, sample=parse_prompt_line(line, "p:1")) for line in lines]
    info = read_checkpoint_info(data["checkpoint"])
    runner = PreviewRunner(_MainProcess(), info, roles_for("av"), torch.float32, tmp_path, "x", prompts, [None, None],
                           None, None)  # fmt: skip
    defaults = sampling_defaults("2.3")
    first, second = runner.request(0), runner.request(1)
    assert first.video_guidance.cfg == 4.5 and first.audio_guidance.cfg == 6.0
    assert first.video_guidance.stg == defaults.video.stg and first.audio_guidance.modality == defaults.audio.modality
    assert second.video_guidance == defaults.video and second.audio_guidance == defaults.audio
    assert first.steps == defaults.steps == 30 and second.steps == 7
    assert first.audio_context.shape == (1, 1024, 16) and torch.equal(first.audio_context[0], cached.audio)
    assert torch.equal(first.video_context_negative[0], cached.negative_video) and first.seed == 42


class _MainProcess:
    """What PreviewRunner.prepare asks of an Accelerator, for a single CPU process."""

    is_main_process, device = True, torch.device("cpu")


def test_previews_do_not_change_the_trained_lora(data, tmp_path):
    common = ("--ltx_mode", "av", "--max_train_steps", "3", "--network_dropout", "0.2", "--learning_rate", "1e-3")
    assert _train(data, tmp_path / "plain", *common) == 0
    assert _train(data, tmp_path / "previews", *common, "--sample_prompts", str(data["av"]), "--sample_at_first",
                  "--sample_every_n_steps", "1", "--sample_every_n_epochs", "1") == 0  # fmt: skip
    # Before step 1 and after each step; the epoch's end (step 2: two batches per epoch) adds none to step 2's.
    assert sorted(p.name for p in (tmp_path / "previews" / "sample").iterdir()) == [
        f"ltx2_lora_step{step:06d}_00.mp4" for step in range(4)]  # fmt: skip
    plain = load_file(tmp_path / "plain" / "ltx2_lora.safetensors")
    with_previews = load_file(tmp_path / "previews" / "ltx2_lora.safetensors")
    assert plain.keys() == with_previews.keys()
    assert all(torch.equal(plain[key], with_previews[key]) for key in plain)
    assert any(plain[key].abs().sum() > 0 for key in plain if "lora_B" in key)  # it did train


def test_without_a_cache_gemma_encodes_the_prompts_at_setup(data, tmp_path, tiny_gemma_dir, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(AV_PROMPTS, encoding="utf-8")
    loaded = []
    real_load = trainer.load_transformer
    monkeypatch.setattr(trainer, "load_transformer", lambda *a, **k: loaded.append(a) or real_load(*a, **k))
    from ltx2_tuner.models import text_encoder

    real_gemma = text_encoder.load_gemma
    order = []
    monkeypatch.setattr(text_encoder, "load_gemma", lambda *a, **k: order.append(len(loaded)) or real_gemma(*a, **k))
    assert _train(data, tmp_path / "out", "--ltx_mode", "av", "--max_train_steps", "1", "--sample_prompts",
                  str(prompts), "--sample_every_n_steps", "1", "--gemma_root", str(tiny_gemma_dir)) == 0  # fmt: skip
    assert order == [0]  # Gemma was loaded, before the transformer
    assert sample_cache_path(prompts).is_file()  # written as the text cacher would: the next run needs no Gemma
    assert (tmp_path / "out" / "sample" / "ltx2_lora_step000001_00.mp4").is_file()


def test_no_cache_and_no_gemma_is_one_line_before_the_model_loads(data, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(AV_PROMPTS, encoding="utf-8")
    monkeypatch.setattr(trainer, "load_transformer", lambda *a, **k: pytest.fail("the transformer was loaded"))
    assert _train(data, tmp_path / "out", "--ltx_mode", "av", "--sample_prompts", str(prompts),
                  "--sample_every_n_steps", "1") == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"no sample prompt embeddings for {prompts}" in err and "pass --text_encoder" in err


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--sample_every_n_steps", "5"], "--sample_every_n_steps: previews need --sample_prompts FILE"),
        (["--sample_at_first", "--sample_steps", "4"], "--sample_at_first, --sample_steps: previews need --sample_pr"),
        (["--sample_prompts", "{bad}", "--sample_at_first"], "--sample_prompts: {bad}:2: unknown option --zz"),
        (["--sample_prompts", "{good}"], "--sample_prompts: no preview is scheduled; add --sample_every_n_steps"),
        (
            ["--sample_prompts", "{good}", "--sample_at_first", "--sample_every_n_epochs", "0"],
            "--sample_every_n_epochs 0",
        ),
    ],
)
def test_preview_flags_fail_in_one_line_before_anything_loads(tmp_path, flags, line):
    (tmp_path / "bad.txt").write_text("# fine\na fox --zz 1\n")
    (tmp_path / "good.txt").write_text("a fox\n")
    names = {"bad": tmp_path / "bad.txt", "good": tmp_path / "good.txt"}
    flags = [flag.format(**names) for flag in flags]
    with pytest.raises(ConfigError) as caught:
        parse_args(["--dataset_config", "missing.toml", "--ltx2_checkpoint", "missing.safetensors", *flags])
    assert str(caught.value).startswith(line.format(**names)) and "\n" not in str(caught.value)


# --- T2A, A2V and V2A previews (PreviewRunner on its own: the trainer passes args.ltx_mode and --frozen_modality) ---


class _Accelerator(_MainProcess):
    """What PreviewRunner.run asks of an Accelerator too."""

    @staticmethod
    def unwrap_model(model):
        return model

    @staticmethod
    def autocast():
        return contextlib.nullcontext()

    @staticmethod
    def wait_for_everyone():
        return None


@pytest.fixture(scope="module")
def mode_prompts(data, tmp_path_factory, tiny_gemma_dir) -> dict:
    """A prompt file with an A2V, a V2A and a plain prompt, its AV sample-prompt cache (which serves every mode),
    and the tone and clip its --a / --v name."""
    from ltx2_tuner.cache.sample_prompts import cache_sample_prompts, read_sample_prompts
    from ltx2_tuner.models.text_embeddings import encode_prompts, load_text_embedder
    from ltx2_tuner.models.text_encoder import load_gemma
    from ltx2_tuner.testing.synthetic_media import tone, write_audio, write_video

    root = tmp_path_factory.mktemp("mode_previews")
    write_audio(root / "tone.wav", tone(0.5, 44100, (660.0, 660.0)), 44100)
    write_video(root / "clip.mp4", 12, 24, 64, 64)
    prompts_file = root / "prompts.txt"
    prompts_file.write_text(
        "a dog barks --a tone.wav --w 64 --h 64 --f 9 --s 1\n"
        "waves on rocks --v clip.mp4 --w 64 --h 64 --f 9 --s 1\n"
        "rain on a roof --w 64 --h 64 --f 9 --s 1 --du 0.6\n",
        encoding="utf-8",
    )
    info = read_checkpoint_info(data["checkpoint"])
    embedder, gemma = load_text_embedder(info, "av", torch.float32), load_gemma(tiny_gemma_dir, torch.float32)
    fingerprint = {"connectors": {"file": info.fingerprint, "version": info.version}, "mode": "av"}
    cache_sample_prompts(sample_cache_path(prompts_file), read_sample_prompts(prompts_file),
                         lambda texts: encode_prompts(gemma, embedder, texts), fingerprint)  # fmt: skip
    return {"file": prompts_file, "root": root, "info": info}


def _runner(mode_prompts, tmp_path, ltx_mode: str, frozen: str | None):
    from types import SimpleNamespace

    from ltx2_tuner.training.previews import PreviewRunner

    args = SimpleNamespace(sample_prompts=mode_prompts["file"], ltx_mode=ltx_mode, frozen_modality=frozen,
                           output_dir=tmp_path, output_name="lora", sample_steps=None)  # fmt: skip
    return PreviewRunner.prepare(args, model_files(mode_prompts["info"]), _Accelerator(), torch.float32)


def test_t2a_previews_write_wavs_and_load_no_video_vae(mode_prompts, tmp_path, loaded_decoders):
    from ltx2_tuner.models import load_transformer

    runner = _runner(mode_prompts, tmp_path, "audio", None)
    assert runner.request(2).video_context is None and runner.request(2).audio_duration_s == 0.6
    assert runner.request(0).audio_duration_s == 9 / 24  # without --du: --f / --fs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ltx2_tuner.training.metrics import MetricLogger

    model = load_transformer(mode_prompts["info"], mode="audio")
    logger = MetricLogger(tmp_path / "logs", "tensorboard", {})
    paths = runner.run(model, 5, logger)
    logger.close()
    assert [p.name for p in paths] == [f"lora_step000005_{i:02d}.wav" for i in range(3)]
    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"audio": 0}).Reload()
    assert [e.step for e in events.Audio("preview/02_audio")] == [5]  # audio-only previews are logged too
    rate = 48000  # the LTX-2.3 vocoder
    with av.open(str(paths[2])) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        assert stream.rate == rate and stream.channels == 2 and stream.codec_context.name == "pcm_s16le"
    assert samples == (4 * round(0.6 * 25) - 3) * rate // 100  # latents of 4 mel frames of 10 ms, less 3
    assert not any(name == "load_video_vae" for name, _ in loaded_decoders)


def test_a2v_and_v2a_previews_use_the_prompts_media_and_sample_the_others_jointly(mode_prompts, tmp_path, capsys):
    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.sampling.conditions import read_frames

    model = load_transformer(mode_prompts["info"], mode="av")
    a2v = _runner(mode_prompts, tmp_path / "a2v", "av", "audio")
    assert capsys.readouterr().out.count("sampled as joint audio and video (T2AV)") == 1  # said once, for 1 and 2
    request = a2v.request(0)
    assert request.frozen_audio_latents.shape[:2] == (1, 8) and request.frozen_video_latents is None
    assert a2v.request(1).frozen_video_latents is None and a2v.request(1).audio_context is not None  # joint T2AV
    first = a2v.run(model, 1)[0]
    with av.open(str(first)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        container.seek(0)
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    spectrum = np.abs(np.fft.rfft(audio.mean(0)))
    assert frames == 9 and abs(np.fft.rfftfreq(audio.shape[1], 1 / 48000)[spectrum.argmax()] - 660) < 10  # the tone

    v2a = _runner(mode_prompts, tmp_path / "v2a", "av", "video")
    assert v2a.request(1).frozen_video_latents.shape == (1, 128, 2, 2, 2)
    second = v2a.run(model, 1)[1]
    with av.open(str(second)) as container:
        written = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert container.streams.audio[0].rate == 48000
    source = read_frames(mode_prompts["root"] / "clip.mp4", 64, 64, 9, 24.0)
    assert np.abs(written.astype(float) - source.astype(float)).mean() < 4.0  # the clip's frames, H.264 CRF 18


# --- previews of a run with [[conditions]] (issue 14): the prompts' --x / --r / --src media ---


@pytest.fixture(scope="module")
def conditioned_prompts(data, tmp_path_factory) -> dict:
    """A prompt file with an extension, a plain, a reference and an outpainting prompt, and its sample-prompt cache
    (random text embeddings of the tiny model's widths: the conditions, not the text, are under test)."""
    from ltx2_tuner.cache.sample_prompts import cache_sample_prompts, read_sample_prompts
    from ltx2_tuner.testing.synthetic_media import write_video

    root = tmp_path_factory.mktemp("conditioned_previews")
    write_video(root / "clip.mp4", 24, 24, 64, 64)
    prompts_file = root / "prompts.txt"
    prompts_file.write_text(
        "a fox runs on --x clip.mp4 --w 64 --h 64 --f 17 --s 2\n"
        "a plain fox --w 64 --h 64 --f 17 --s 2\n"
        "a fox like the reference --r clip.mp4 --w 64 --h 64 --f 17 --s 2\n"
        "a wider fox --src clip.mp4 --w 64 --h 64 --f 9 --s 2\n",
        encoding="utf-8",
    )
    info = read_checkpoint_info(data["checkpoint"])
    generator = torch.Generator().manual_seed(0)

    def encode(texts):
        size = (len(texts), 1024)
        return (
            torch.randn(*size, 32, generator=generator),
            torch.randn(*size, 16, generator=generator),
            torch.ones(size),
        )

    fingerprint = {"connectors": {"file": info.fingerprint, "version": info.version}, "mode": "av"}
    cache_sample_prompts(sample_cache_path(prompts_file), read_sample_prompts(prompts_file), encode, fingerprint)
    return {"file": prompts_file, "root": root, "info": info}


def _conditioned_runner(conditioned_prompts, tmp_path, *conditions):
    from types import SimpleNamespace

    from ltx2_tuner.training.previews import PreviewRunner

    args = SimpleNamespace(sample_prompts=conditioned_prompts["file"], ltx_mode="video", frozen_modality=None,
                           output_dir=tmp_path, output_name="lora", sample_steps=None)  # fmt: skip
    files = model_files(conditioned_prompts["info"])
    return PreviewRunner.prepare(args, files, _Accelerator(), torch.float32, conditions)


def _encode_frames(info, frames: np.ndarray) -> torch.Tensor:
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.transforms import frames_to_model_input

    encoder = LatentEncoder(info, None, torch.device("cpu"), torch.float32, VaeTiling())
    return encoder.encode_video(frames_to_model_input(frames)[None]).float()


def test_a_prefix_run_previews_keep_the_clips_latent_frames(conditioned_prompts, tmp_path, capsys):
    from ltx2_tuner.conditioning.spec import Condition
    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.sampling import sample
    from ltx2_tuner.sampling.conditions import read_frames

    runner = _conditioned_runner(conditioned_prompts, tmp_path, Condition("prefix", temporal_boundary=1))
    note = [line for line in capsys.readouterr().out.splitlines() if "lack the media" in line]
    assert len(note) == 1 and "prompt(s) 1 (no --x), 2 (no --x), 3 (no --x)" in note[0]  # one note per run
    request = runner.request(0)
    # The run trains a 1-latent-frame prefix: the clip's first 8 * (1 - 1) + 1 frames, encoded alone.
    expected = _encode_frames(conditioned_prompts["info"], read_frames(conditioned_prompts["root"] / "clip.mp4",
                                                                       64, 64, 1, 24.0))  # fmt: skip
    tokens_per_frame = 2 * 2
    assert request.video_clean_mask.tolist() == [True] * tokens_per_frame + [False] * 2 * tokens_per_frame
    assert torch.allclose(request.video_clean_latents[:, :, :1], expected, atol=1e-5)
    model = load_transformer(conditioned_prompts["info"], mode="video")
    result = sample(model, request, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.allclose(result.video_latents[:, :, :1], expected, atol=1e-5)  # kept through every step
    assert not torch.allclose(result.video_latents[:, :, 1:], request.video_clean_latents[:, :, 1:], atol=1e-3)
    plain = runner.request(1)  # no --x: sampled without the condition
    assert plain.video_clean_latents is None and plain.video_clean_mask is None
    assert runner.request(2).video_reference_latents is None  # --r in a run without a reference condition


def test_a_reference_run_reads_the_reference_at_the_measured_factors(conditioned_prompts, tmp_path, capsys):
    from ltx2_tuner.conditioning.spec import Condition
    from ltx2_tuner.sampling.conditions import read_frames

    runner = _conditioned_runner(conditioned_prompts, tmp_path, Condition("reference"))
    assert "0 (no --r), 1 (no --r), 3 (no --r)" in capsys.readouterr().out
    assert runner.request(2).video_reference_latents is None  # until the trainer has measured the factors
    runner.encode_references({"reference_spatial_scale_factor": "2", "reference_temporal_scale_factor": "2"})
    request = runner.request(2)
    assert (request.reference_spatial_factor, request.reference_temporal_factor, request.reference_fps) == (2, 2, 12)
    frames = read_frames(conditioned_prompts["root"] / "clip.mp4", 32, 32, 17, 24.0)[[0, *range(1, 17, 2)]]
    expected = _encode_frames(conditioned_prompts["info"], frames)  # 32x32, 9 frames: [1, 128, 2, 1, 1]
    assert request.video_reference_latents.shape == (1, 128, 2, 1, 1)
    assert torch.allclose(request.video_reference_latents, expected, atol=1e-5)
    for plain in (runner.request(0), runner.request(1)):
        assert plain.video_reference_latents is None and plain.reference_spatial_factor == 1


def test_an_outpainting_run_keeps_the_source_inside_the_trained_box(conditioned_prompts, tmp_path):
    from ltx2_tuner.conditioning.spec import Condition

    box = Condition("spatial_crop", region=(0, 0, 64, 32))  # y1, x1, y2, x2: the left half of the 64x64 preview
    request = _conditioned_runner(conditioned_prompts, tmp_path, box).request(3)
    left_column = [True, False] * 2  # 2x2 tokens per latent frame, in (row, column) order
    assert request.video_clean_mask.tolist() == left_column * 2 and request.video_clean_latents.shape == (
        1,
        128,
        2,
        2,
        2,
    )


def test_a_missing_condition_clip_is_one_line_at_flag_check(tmp_path):
    (tmp_path / "prompts.txt").write_text("a fox --x clips/missing.mp4\n")
    with pytest.raises(ConfigError) as caught:
        parse_args(["--dataset_config", "missing.toml", "--ltx2_checkpoint", "missing.safetensors",
                    "--sample_prompts", str(tmp_path / "prompts.txt"), "--sample_at_first"])  # fmt: skip
    message = str(caught.value)
    assert message.startswith(f"--sample_prompts: {tmp_path / 'prompts.txt'}:1: --x clips/missing.mp4: clip to extend")
    assert str(tmp_path / "clips" / "missing.mp4") in message and "\n" not in message
