"""ltx2_generate_video.py in the modality modes end to end (tiny checkpoints and Gemma, CPU, float32, 1-2 steps):
T2A (--ltx_mode audio: wav / mp3, no video VAE), A2V (--audio: the source sound muxed, no vocoder) and V2A (--video:
the source frames with new sound, no video decoder), and the one-line checks of the flag combinations."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.generate_video import main
from ltx2_tuner.sampling.conditions import read_frames
from ltx2_tuner.testing.synthetic_media import tone, write_audio, write_video

PROMPT = "a dog barks twice"
FAST = ["--steps", "1", "--device", "cpu", "--mixed_precision", "no", "--prompt", PROMPT]


def _generate(checkpoint: Path, gemma: Path, output: Path, *flags: str) -> int:
    argv = ["--ltx2_checkpoint", str(checkpoint), "--gemma_root", str(gemma), *FAST, "--output", str(output)]
    return run(main, [*argv, *flags])


def _audio_stream(path: Path) -> tuple[np.ndarray, int]:
    """float [C, S] samples of the first audio stream (AAC decodes to planar float) and its rate."""
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        chunks = [frame.to_ndarray() for frame in container.decode(audio=0)]
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    mono = samples.mean(0) if samples.ndim == 2 else samples
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.fft.rfftfreq(len(mono), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(("version", "suffix", "rate"), [("2.3", ".wav", 48000), ("2.0", ".mp3", 24000)])
def test_t2a_writes_sound_at_the_vocoder_rate_and_never_loads_the_video_vae(
    tiny_checkpoints, tiny_gemma_dir, tmp_path, loaded_decoders, version, suffix, rate
):
    output = tmp_path / f"bark{suffix}"
    flags = ("--ltx_mode", "audio", "--duration", "0.6")
    assert _generate(tiny_checkpoints[version].path, tiny_gemma_dir, output, *flags) == 0
    with av.open(str(output)) as container:
        stream = container.streams.audio[0]
        assert stream.rate == rate and stream.channels == 2
        assert stream.codec_context.name.startswith("pcm_s16le" if suffix == ".wav" else "mp3")
        samples = sum(frame.samples for frame in container.decode(audio=0))
    latents = round(0.6 * 25)  # ltx-core AudioLatentShape.from_duration
    expected = (4 * latents - 3) * rate // 100  # 4 mel frames of 10 ms per latent, less the causal 3
    if suffix == ".wav":
        assert samples == expected
    else:  # the mp3 decoder may keep the encoder's padding: within one MP3 frame
        assert expected <= samples <= expected + 1152
    assert ("load_video_vae", "decoder") not in loaded_decoders and ("load_video_vae", "encoder") not in loaded_decoders
    assert ("load_vocoder", "") in loaded_decoders


@pytest.fixture(scope="module")
def tone_file(tmp_path_factory) -> Path:
    # 0.5 s at 24 fps covers 12 frames: the default clip is 9 frames. 660 Hz, as nothing else in the tiny model.
    return write_audio(tmp_path_factory.mktemp("a2v") / "tone.wav", tone(0.5, 44100, (660.0, 660.0)), 44100)


def test_a2v_makes_video_for_the_audio_and_muxes_that_audio(tiny_checkpoints, tiny_gemma_dir, tmp_path, tone_file,
                                                            loaded_decoders):  # fmt: skip
    output = tmp_path / "a2v.mp4"
    flags = ("--audio", str(tone_file), "--width", "64", "--height", "64")
    assert _generate(tiny_checkpoints["2.3"].path, tiny_gemma_dir, output, *flags) == 0
    with av.open(str(output)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)  # the largest 8k+1 the 0.5 s cover at 24 fps
    samples, rate = _audio_stream(output)
    assert rate == 48000 and samples.shape[0] == 2
    assert abs(samples.shape[1] / rate - 9 / 24) <= 1 / 24  # the video's duration, within a frame
    assert abs(_dominant_hz(samples, rate) - 660.0) < 10.0  # the source tone, not a vocoder re-synthesis
    rms = float(np.sqrt((samples**2).mean()))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.05  # the source's level (a 0.5 sine)
    assert not any(name == "load_vocoder" for name, _ in loaded_decoders)  # the audio is not decoded
    assert ("load_audio_vae", "encoder") in loaded_decoders and ("load_audio_vae", "decoder") not in loaded_decoders


def test_v2a_makes_sound_for_the_clip_and_keeps_its_frames(tiny_checkpoints, tiny_gemma_dir, tmp_path, loaded_decoders):
    clip = write_video(tmp_path / "clip.mp4", 14, 25, 96, 64)  # 14 frames at 25 fps: 9 by default, at 25 fps
    output = tmp_path / "v2a.mp4"
    flags = ("--video", str(clip), "--width", "64", "--height", "64")
    assert _generate(tiny_checkpoints["2.3"].path, tiny_gemma_dir, output, *flags) == 0
    with av.open(str(output)) as container:
        video = container.streams.video[0]
        assert float(video.average_rate) == 25.0
        written = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    source = read_frames(clip, 64, 64, 9, 25.0)  # what the encoder saw: cover-resized, centre-cropped
    assert written.shape == source.shape == (9, 64, 64, 3)
    assert np.abs(written.astype(float) - source.astype(float)).mean() < 4.0  # H.264 at CRF 18
    samples, rate = _audio_stream(output)
    assert rate == 48000 and abs(samples.shape[1] / rate - 9 / 25) <= 1 / 25
    assert ("load_video_vae", "encoder") in loaded_decoders and ("load_video_vae", "decoder") not in loaded_decoders
    assert ("load_vocoder", "") in loaded_decoders


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--ltx_mode", "video", "--audio", "{tone}"], "--audio: audio-to-video needs both modalities; use --ltx_mode"),
        (["--ltx_mode", "av", "--audio", "{tone}", "--video", "{tone}"], "--audio and --video together: give one"),
        (["--ltx_mode", "av", "--image", "{png}", "--video", "{clip}"], "--image: the frames come from --video"),
        (["--ltx_mode", "av", "--duration", "2"], "--duration: sets the length of audio-only generation"),
        (["--ltx_mode", "audio", "--duration", "0.01"], "--duration 0.01: must be at least 0.04 seconds"),
        (["--ltx_mode", "audio", "--cfg_scale", "2"], "--cfg_scale: --ltx_mode audio generates sound only; drop"),
        (["--ltx_mode", "audio", "--modality_scale", "2"], "--modality_scale: --ltx_mode audio generates sound only"),
        (["--ltx_mode", "audio", "--output", "{out}.mp4"], "--output {out}.mp4: audio-only output is a .wav"),
        (["--ltx_mode", "av", "--audio", "{tone}", "--audio_cfg_scale", "5"],
         "--audio_cfg_scale: the audio comes from --audio and is not generated"),
        (["--ltx_mode", "av", "--video", "{clip}", "--stg_scale", "0"],
         "--stg_scale: the video comes from --video and is not generated"),
        (["--ltx_mode", "av", "--audio", "{tone}", "--frames", "17"], "--frames 17: --audio {tone} holds 0.50 s"),
        (["--ltx_mode", "av", "--video", "{clip}", "--frames", "17"], "--frames 17: --video {clip} holds 14 frames"),
        (["--ltx_mode", "av", "--audio", "{out}.wav"], "--audio {out}.wav: file not found"),
    ],
)  # fmt: skip
def test_bad_mode_combinations_are_one_line_each_before_any_model_loads(
    tiny_checkpoints, tiny_gemma_dir, tmp_path, tone_file, capsys, monkeypatch, flags, line
):
    from ltx2_tuner import models

    monkeypatch.setattr(models, "load_transformer", lambda *a, **k: pytest.fail("a model was loaded"))
    from PIL import Image

    clip = write_video(tmp_path / "clip.mp4", 14, 25, 64, 64)
    Image.new("RGB", (64, 64)).save(tmp_path / "first.png")
    names = {"tone": tone_file, "clip": clip, "png": tmp_path / "first.png", "out": tmp_path / "out"}
    argv = ["--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--gemma_root", str(tiny_gemma_dir)]
    assert run(main, [*argv, "--prompt", PROMPT, *[flag.format(**names) for flag in flags]]) == 2
    err = [row for row in capsys.readouterr().err.splitlines() if row.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {line.format(**names)}"), err
