"""ltx2_generate_video.py on tiny LTX 2.5 models: from the split pack (text encoder and VAEs found beside the
transformer) and from the unified file with a Gemma 4 directory, the same weights give the same video and sound."""

from __future__ import annotations

import av
import numpy as np

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.generate_video import main
from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma4
from ltx2_tuner.testing.tiny_pack import write_tiny_pack

FAST = [
    "--width",
    "64",
    "--height",
    "64",
    "--frames",
    "9",
    "--steps",
    "2",
    "--device",
    "cpu",
    "--mixed_precision",
    "no",
]
SEED = 6


def _read(path) -> tuple[np.ndarray, np.ndarray, int]:
    with av.open(str(path)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    with av.open(str(path)) as container:
        sound = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=-1)
        rate = container.streams.audio[0].rate
    return frames, sound, rate


def test_a_pack_and_the_unified_file_generate_the_same_av_clip(tmp_path):
    pack = write_tiny_pack(tmp_path / "pack", "2.5", seed=SEED)
    unified = write_tiny_checkpoint(tmp_path / "unified", "2.5", seed=SEED)
    gemma = write_tiny_gemma4(tmp_path / "gemma4", seed=SEED)
    prompt = ["--prompt", "a red fox runs through snow"]
    conv = ["--video_vae", str(pack.video_vae)]  # the same decoder as the unified file's
    assert run(main, ["--ltx2_checkpoint", str(pack.transformer), *FAST, *prompt, *conv,
                      "--output", str(tmp_path / "pack.mp4")]) == 0  # fmt: skip
    assert run(main, ["--ltx2_checkpoint", str(unified), "--text_encoder", str(gemma), *FAST, *prompt,
                      "--output", str(tmp_path / "unified.mp4")]) == 0  # fmt: skip
    (frames, sound, rate), (frames_u, sound_u, rate_u) = _read(tmp_path / "pack.mp4"), _read(tmp_path / "unified.mp4")
    assert frames.shape == (9, 64, 64, 3) and rate == rate_u == 48000  # the 2.3 vocoder with bandwidth extension
    assert np.array_equal(frames, frames_u) and np.array_equal(sound, sound_u)


def test_the_pack_decodes_with_its_diffusion_decoder_by_default(tmp_path):
    pack = write_tiny_pack(tmp_path / "pack", "2.5", seed=SEED)
    outputs = {}
    for name, flags in (("default", []), ("conv", ["--video_vae", str(pack.video_vae)])):
        outputs[name] = tmp_path / f"{name}.mp4"
        argv = ["--ltx2_checkpoint", str(pack.transformer), *FAST, "--prompt", "a fox", "--ltx_mode", "video"]
        assert run(main, [*argv, *flags, "--output", str(outputs[name])]) == 0
    with av.open(str(outputs["default"])) as container:
        default = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    with av.open(str(outputs["conv"])) as container:
        conv = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert default.shape == conv.shape == (9, 64, 64, 3)
    assert not np.array_equal(default, conv)  # the same latents through another decoder
