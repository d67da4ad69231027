"""ltx2_generate_video.py with conditions on generated tokens, end to end on the tiny LTX-2.3 checkpoint (CPU,
float32, 64x64, 1-2 steps): extension keeps the clip's latents exactly (forward and backward, video and audio), an
IC-LoRA reference is read at the size and positions its LoRA's metadata gives without a flag, outpainting and
inpainting keep the tokens they should; bad combinations are one line before any model loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.generate_video import main
from ltx2_tuner.models import patchify_video, video_positions
from ltx2_tuner.testing.synthetic_media import tone, write_audio, write_video

FAST = ["--width", "64", "--height", "64", "--steps", "1", "--device", "cpu", "--mixed_precision", "no"]
FAST += ["--ltx_mode", "video"]
PROMPT = "a red fox runs through snow"


@pytest.fixture(scope="module")
def tiny23(tiny_checkpoints, tiny_gemma_dir):
    return {"checkpoint": tiny_checkpoints["2.3"].path, "gemma": tiny_gemma_dir}


@pytest.fixture
def sampled(monkeypatch):
    """Every (request, result, first video ModalityInput) the generator samples."""
    import ltx2_tuner.sampling as sampling

    calls, real = [], sampling.sample

    def recording(model, request, **kwargs):
        seen = []
        handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            result = real(model, request, **kwargs)
        finally:
            handle.remove()
        calls.append((request, result, seen[0]))
        return result

    monkeypatch.setattr(sampling, "sample", recording)
    return calls


def _generate(tiny23, tmp_path, *flags: str, fast=FAST) -> int:
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), *fast, "--output", str(tmp_path / "out.mp4")]
    argv += ["--prompt", PROMPT, "--gemma_root", str(tiny23["gemma"]), *flags]
    return run(main, argv)


def _encode_frames(tiny23, path, width: int, height: int, frames: int, fps: float = 24.0) -> torch.Tensor:
    """The clip encoded independently of the generator: its frames read and put through the video VAE encoder."""
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.transforms import frames_to_model_input
    from ltx2_tuner.data.video import read_video_frames
    from ltx2_tuner.models.model_files import model_files

    pixels = read_video_frames(path, [k / fps for k in range(frames)], size=(width, height))
    vae = model_files(tiny23["checkpoint"], None, None, None).video_vae()
    encoder = LatentEncoder(vae, None, torch.device("cpu"), torch.float32, VaeTiling())
    return encoder.encode_video(frames_to_model_input(pixels)[None]).float()


def test_forward_extension_keeps_the_first_half_of_a_clip_exactly(tiny23, tmp_path, sampled):
    # The first 17 frames of a 33-frame clip (its own file: the codec compresses a cut clip differently).
    half = write_video(tmp_path / "half.mp4", 17, 24.0, 64, 64, seed=1)
    assert _generate(tiny23, tmp_path, "--extend", str(half), "--frames", "33") == 0

    (request, result, _), = sampled  # fmt: skip
    expected = _encode_frames(tiny23, half, 64, 64, 17)  # 3 latent frames
    assert result.video_latents.shape == (1, 128, 5, 2, 2)
    assert torch.equal(result.video_latents[:, :, :3], expected)
    assert (result.video_latents[:, :, 3:] - expected[:, :, -1:]).abs().mean() > 1e-2  # the rest is generated
    assert int(request.video_clean_mask.sum()) == 3 * 4


def test_backward_extension_ends_with_the_clip(tiny23, tmp_path, sampled):
    clip = write_video(tmp_path / "clip.mp4", 17, 24.0, 64, 64, seed=2)
    assert _generate(tiny23, tmp_path, "--extend", str(clip), "--direction", "backward", "--frames", "33") == 0

    (_, result, first), = sampled  # fmt: skip
    expected = _encode_frames(tiny23, clip, 64, 64, 17)
    # the clip's latents after its first (one pixel frame) end the output: its last 16 frames
    assert torch.equal(result.video_latents[:, :, -2:], expected[:, :, 1:])
    assert bool((first.timesteps[:, -8:] == 0).all()) and bool((first.timesteps[:, :-8] > 0).all())


def _reference_lora(tmp_path, tiny23, name: str, metadata: dict):
    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.networks import lora_ltx2 as lora

    model = load_transformer(tiny23["checkpoint"], mode="video")
    spec = lora.LoraSpec(2, 2.0, 0.0, lora.select_targets(model.backbone, "video"))
    lora.add_lora(model.backbone, spec)
    path = tmp_path / name
    lora.save_lora(path, model.backbone, spec, metadata, dtype=torch.float32)
    return path


def test_a_lora_whose_metadata_says_2_gets_a_half_size_reference_with_rescaled_positions(tiny23, tmp_path, sampled):
    reference = write_video(tmp_path / "depth.mp4", 9, 24.0, 128, 128, seed=3)
    lora = _reference_lora(tmp_path, tiny23, "ic.safetensors", {"reference_downscale_factor": "2"})
    fast = ["--width", "128", "--height", "128", *FAST[4:]]
    assert _generate(tiny23, tmp_path, "--reference", str(reference), "--lora_weight", str(lora), "--frames", "9",
                     fast=fast) == 0  # fmt: skip

    (request, result, first), = sampled  # fmt: skip
    assert request.reference_spatial_factor == 2 and request.reference_temporal_factor == 1
    expected = _encode_frames(tiny23, reference, 64, 64, 9)  # read at half the 128x128 output
    torch.testing.assert_close(request.video_reference_latents, expected, rtol=0, atol=0)
    count = 2 * 2 * 2  # 2 latent frames of 2x2 reference tokens
    positions = video_positions(1, 2, 2, 2, 24.0)[0]
    positions[1:] *= 2  # height and width in the target's pixels
    torch.testing.assert_close(first.positions[0, :, :count], positions, rtol=0, atol=1e-6)
    assert torch.equal(first.latent[0, :count], patchify_video(expected)[0])
    assert result.video_latents.shape == (1, 128, 2, 4, 4)

    sampled.clear()  # --reference_downscale overrides the metadata
    assert _generate(tiny23, tmp_path, "--reference", str(reference), "--lora_weight", str(lora), "--frames", "9",
                     "--reference_downscale", "1", fast=fast) == 0  # fmt: skip
    assert sampled[0][0].video_reference_latents.shape == (1, 128, 2, 4, 4)


def test_conflicting_reference_factors_in_two_loras_are_one_line(tiny23, tmp_path, capsys):
    reference = write_video(tmp_path / "depth.mp4", 9, 24.0, 64, 64, seed=3)
    two = _reference_lora(tmp_path, tiny23, "two.safetensors", {"reference_downscale_factor": "2"})
    three = _reference_lora(tmp_path, tiny23, "three.safetensors", {"reference_downscale_factor": "3"})
    flags = ["--reference", str(reference), "--lora_weight", str(two), "--lora_weight", str(three), "--frames", "9"]
    assert _generate(tiny23, tmp_path, *flags) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "spatial reference factor 3" in lines[0] and "two.safetensors with 2" in lines[0]


def test_outpainting_keeps_the_source_inside_its_box(tiny23, tmp_path, sampled):
    source = write_video(tmp_path / "source.mp4", 9, 24.0, 32, 64, seed=4)
    assert _generate(tiny23, tmp_path, "--source", str(source), "--outpaint_crop", "32,0,32,64", "--frames", "9") == 0

    (request, result, _), = sampled  # fmt: skip
    box = torch.tensor([False, True, False, True] * 2)  # 2 latent frames of 2x2: the right column
    assert torch.equal(request.video_clean_mask, box)
    tokens = patchify_video(result.video_latents)[0]
    assert torch.equal(tokens[box], patchify_video(request.video_clean_latents)[0][box])


def test_inpainting_keeps_what_the_mask_marks_white(tiny23, tmp_path, sampled):
    source = write_video(tmp_path / "source.mp4", 9, 24.0, 64, 64, seed=5)
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[:32] = 255  # keep the top half, regenerate the bottom
    mask_file = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_file)
    assert _generate(tiny23, tmp_path, "--source", str(source), "--mask", str(mask_file), "--frames", "9") == 0

    (request, result, _), = sampled  # fmt: skip
    top = torch.tensor([True, True, False, False] * 2)
    assert torch.equal(request.video_clean_mask, top)
    expected = patchify_video(_encode_frames(tiny23, source, 64, 64, 9))[0]
    assert torch.equal(patchify_video(result.video_latents)[0][top], expected[top])


def test_audio_extension_keeps_the_clip_latents(tiny23, tmp_path, sampled):
    clip = write_audio(tmp_path / "start.wav", tone(0.4, 16000), 16000)
    fast = ["--steps", "1", "--device", "cpu", "--mixed_precision", "no", "--ltx_mode", "audio"]
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), *fast, "--output", str(tmp_path / "out.wav")]
    argv += ["--prompt", PROMPT, "--gemma_root", str(tiny23["gemma"]), "--duration", "1", "--extend_audio", str(clip)]
    assert run(main, argv) == 0

    (request, result, _), = sampled  # fmt: skip
    mask = request.audio_clean_mask
    length = int(mask.sum())
    assert 5 <= length < 25 and bool(mask[:length].all())  # a prefix of about 0.4 s of 25 latents per second
    assert result.audio_latents.shape == (1, 8, 25, 16)
    assert torch.equal(result.audio_latents[:, :, :length], request.audio_clean_latents[:, :, :length])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--direction", "backward"], "--direction: says which way --extend / --extend_audio goes"),
        (["--outpaint_crop", "0,0,32,32"], "--outpaint_crop: needs --source FILE"),
        (
            ["--source", "{clip}"],
            "--source: give --outpaint_crop x,y,w,h (outpainting), --mask FILE (inpainting) or --audio_mask FILE",
        ),
        (["--source", "{clip}", "--outpaint_crop", "0,0,32"], "--outpaint_crop 0,0,32: give four whole numbers"),
        (["--source", "{clip}", "--outpaint_crop", "8,0,32,32"], "--outpaint_crop 8,0,32,32: x, y, w, h must be"),
        (["--source", "{clip}", "--outpaint_crop", "0,0,64,64"], "--outpaint_crop 0,0,64,64: the box must lie"),
        (["--extend", "{clip}", "--source", "{clip}", "--mask", "{clip}"], "--extend and --source: both give"),
        (["--extend", "{clip}", "--frames", "17"], "--frames 17: the --extend clip gives 17 frames"),
        (["--reference_downscale", "2"], "--reference_downscale: sets how --reference is read"),
        (["--reference", "{clip}", "--reference_downscale", "4"], "--reference: read at 1/4 of 64x64"),
        (["--extend", "nowhere.mp4"], "--extend nowhere.mp4: file not found"),
        (["--extend", "{broken}"], "{broken}"),  # unreadable: the media reader's own line, naming the file
        (["--extend_audio", "{clip}", "--ltx_mode", "video"], "--extend_audio: extends generated sound"),
        (["--extend", "{clip}", "--ltx_mode", "audio"], "--extend: conditions video; --ltx_mode audio"),
        (["--reference_audio", "{clip}", "--ltx_mode", "video"], "--reference_audio: is the reference of generated"),
        (["--audio_mask", "{clip}", "--ltx_mode", "av"], "--audio_mask: needs --source FILE"),
        (
            ["--source", "{clip}", "--audio_mask", "{clip}", "--extend_audio", "{clip}", "--ltx_mode", "av"],
            "--extend_audio and --audio_mask: both give the kept audio tokens",
        ),
        (["--source", "{clip}", "--audio_mask", "{clip}", "--ltx_mode", "av"], "--source {clip}: has no sound"),
        (["--reference_audio", "{clip}", "--ltx_mode", "av"], "--reference_audio {clip}: has no sound"),
        (
            ["--source", "{clip}", "--mask", "{clip}", "--ltx_mode", "audio", "--duration", "1"],
            "--source: conditions video; --ltx_mode audio",
        ),
    ],
)
def test_a_bad_condition_flag_is_one_line_before_any_model_loads(tiny23, tmp_path, capsys, flags, expected):
    clip = write_video(tmp_path / "clip.mp4", 17, 24.0, 64, 64, seed=6)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    flags = [flag.format(clip=clip, broken=broken) for flag in flags]
    expected = expected.format(broken=broken, clip=clip)
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), "--width", "64", "--height", "64", "--frames", "33"]
    argv += ["--prompt", PROMPT, "--gemma_root", str(tiny23["gemma"]), "--output", str(tmp_path / "x.mp4"), *flags]
    assert run(main, argv) == 2
    lines = [line.removeprefix("error: ").strip() for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert any(line.startswith(expected) for line in lines), lines  # one line per problem
    assert len(lines) == 1 or lines[0].endswith("problems with the flags:")
    assert not (tmp_path / "x.mp4").exists()


def test_a_temporal_factor_in_the_metadata_subsamples_the_reference_frames(tiny23, tmp_path, sampled):
    reference = write_video(tmp_path / "pose.mp4", 17, 24.0, 64, 64, seed=7)
    lora = _reference_lora(tmp_path, tiny23, "t2.safetensors", {"reference_temporal_scale_factor": "2"})
    assert _generate(tiny23, tmp_path, "--reference", str(reference), "--lora_weight", str(lora), "--frames", "17") == 0

    (request, _, first), = sampled  # fmt: skip
    assert (request.reference_spatial_factor, request.reference_temporal_factor) == (1, 2)
    assert request.reference_fps == 12.0
    # frames 0, 1, 3, ..., 15 of the clip: 9 frames, 2 latent frames
    assert request.video_reference_latents.shape == (1, 128, 2, 2, 2)
    positions = video_positions(1, 2, 2, 2, 12.0)[0]
    positions[0] = (positions[0] - 1 / 24.0).clamp(min=0)  # shifted back one target frame
    torch.testing.assert_close(first.positions[0, :, :8], positions, rtol=0, atol=1e-6)


def _metadata_file(path, metadata: dict):
    from safetensors.torch import save_file

    save_file({"diffusion_model.x.lora_A.weight": torch.zeros(1, 1)}, str(path), metadata=metadata)
    return path


def test_reference_factors_read_from_lora_metadata(tmp_path):
    from ltx2_tuner.networks.lora_files import LoraFileError, reference_factors

    plain = _metadata_file(tmp_path / "plain.safetensors", {})
    newer = _metadata_file(tmp_path / "newer.safetensors", {"reference_spatial_scale_factor": "2"})
    both = _metadata_file(tmp_path / "both.safetensors", {"reference_downscale_factor": "2",
                                                           "reference_temporal_scale_factor": "4"})  # fmt: skip
    assert (reference_factors([]).spatial, reference_factors([plain]).temporal) == (1, 1)
    found = reference_factors([plain, newer, both])
    assert (found.spatial, found.temporal) == (2, 4) and found.source == str(newer)

    keys_disagree = _metadata_file(tmp_path / "odd.safetensors", {"reference_downscale_factor": "2",
                                                                   "reference_spatial_scale_factor": "3"})  # fmt: skip
    with pytest.raises(LoraFileError, match="disagree"):
        reference_factors([keys_disagree])
    with pytest.raises(LoraFileError, match="not a whole number"):
        reference_factors([_metadata_file(tmp_path / "half.safetensors", {"reference_downscale_factor": "1.5"})])
    other = _metadata_file(tmp_path / "other.safetensors", {"reference_temporal_scale_factor": "2"})
    with pytest.raises(LoraFileError, match="temporal reference factor 2"):
        reference_factors([both, other])


def _audio_calls(monkeypatch):
    """Every audio ModalityInput the transformer is given, per sampling call."""
    import ltx2_tuner.sampling as sampling

    calls, real = [], sampling.sample

    def recording(model, request, **kwargs):
        seen = []
        handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
        try:
            result = real(model, request, **kwargs)
        finally:
            handle.remove()
        calls.append((request, result, seen))
        return result

    monkeypatch.setattr(sampling, "sample", recording)
    return calls


def _encode_sound(tiny23, path, seconds: float) -> torch.Tensor:
    """The sound encoded independently of the generator: read from its start, log-mel, the audio VAE encoder."""
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.audio import load_audio_clip
    from ltx2_tuner.data.mel import log_mel_spectrogram
    from ltx2_tuner.models.model_files import model_files

    vae = model_files(tiny23["checkpoint"], None, None, None).audio_vae()
    encoder = LatentEncoder(None, vae, torch.device("cpu"), torch.float32, VaeTiling())
    rate = encoder.audio_vae.config.sample_rate
    clip = load_audio_clip(path, 0.0, seconds, rate, warn_padding=False)
    return encoder.encode_audio(log_mel_spectrogram(clip.waveform, rate))[None].float()


def _generate_sound(tiny23, tmp_path, *flags: str) -> int:
    fast = ["--steps", "3", "--device", "cpu", "--mixed_precision", "no", "--ltx_mode", "audio", "--duration", "1"]
    argv = ["--ltx2_checkpoint", str(tiny23["checkpoint"]), *fast, "--output", str(tmp_path / "out.wav")]
    return run(main, [*argv, "--prompt", PROMPT, "--gemma_root", str(tiny23["gemma"]), *flags])


def test_audio_inpainting_keeps_the_masked_source_sound_exactly_at_every_step(tiny23, tmp_path, monkeypatch):
    from ltx2_tuner.models import patchify_audio

    calls = _audio_calls(monkeypatch)
    source = write_audio(tmp_path / "source.wav", tone(1.2, 16000, (330.0, 495.0)), 16000)
    torch.save(torch.cat([torch.ones(40), torch.zeros(60)]), tmp_path / "keep.pt")  # keep the first 40%
    assert _generate_sound(tiny23, tmp_path, "--source", str(source), "--audio_mask", str(tmp_path / "keep.pt")) == 0

    ((request, result, inputs),) = calls
    # 25 latent steps; nearest resampling of 100 mask values: step i takes value floor(i * 100 / 25), kept if > 0.5.
    keep = torch.tensor([float(i * 100 // 25 < 40) for i in range(25)]).bool()
    assert torch.equal(request.audio_clean_mask, keep) and int(keep.sum()) == 10
    expected = _encode_sound(tiny23, source, 1.0)[:, :, :25]
    torch.testing.assert_close(request.audio_clean_latents, expected, rtol=0, atol=1e-6)
    clean = patchify_audio(request.audio_clean_latents)[0][keep]
    assert len(inputs) == 3  # one model call per step, the kept tokens clean in each (timestep 0)
    for audio in inputs:
        assert torch.equal(audio.latent[0][keep].float(), clean)
        assert bool((audio.timesteps[0][keep] == 0).all()) and bool((audio.timesteps[0][~keep] > 0).all())
    out = patchify_audio(result.audio_latents)[0]
    assert torch.equal(out[keep], clean)
    assert (out[~keep] - patchify_audio(expected)[0][~keep]).abs().mean() > 1e-2  # the rest is generated


def test_a_reference_sound_is_prepended_at_positions_from_zero(tiny23, tmp_path, monkeypatch):
    from ltx2_tuner.conditioning.tokens import audio_reference_positions
    from ltx2_tuner.models import patchify_audio

    calls = _audio_calls(monkeypatch)
    reference = write_audio(tmp_path / "ref.wav", tone(1.5, 16000, (220.0, 330.0)), 16000)
    assert _generate_sound(tiny23, tmp_path, "--reference_audio", str(reference)) == 0

    ((request, result, inputs),) = calls
    expected = _encode_sound(tiny23, reference, 1.0)[:, :, :25]  # read like --audio: the output's 1 s from the start
    torch.testing.assert_close(request.audio_reference_latents, expected, rtol=0, atol=1e-6)
    assert result.audio_latents.shape == (1, 8, 25, 16)  # the reference is not part of the output
    tokens = patchify_audio(request.audio_reference_latents)[0]
    for audio in inputs:
        assert audio.latent.shape[1] == 50  # 25 reference tokens, then the 25 generated ones
        assert torch.equal(audio.latent[0, :25].float(), tokens)
        assert bool((audio.timesteps[0, :25] == 0).all())
        torch.testing.assert_close(
            audio.positions[:, :, :25], audio_reference_positions(25, audio.positions.shape[0]), rtol=0, atol=0
        )
        torch.testing.assert_close(
            audio.positions[:, :, 25:], audio_reference_positions(25, audio.positions.shape[0]), rtol=0, atol=0
        )
