"""ltx2_train_network.py --ltx_mode av with [[conditions]] on video datasets: an AV2AV IC-LoRA (a reference on both
modalities: the reference clips and their soundtracks) and an audio-inpainting LoRA (cached audio masks over each
window's audio) learn on real cached clips with tone soundtracks.

Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md B2 (AV2AV), B3 (reference audio, audio masks).
"""

from __future__ import annotations

import pytest
import torch
from _fixed_loss import fixed_batch_loss

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_latents import main as cache_latents
from ltx2_tuner.cli.train_network import main as train
from ltx2_tuner.conditioning.spec import load_conditions
from ltx2_tuner.testing.synthetic_caches import write_synthetic_text_caches
from ltx2_tuner.testing.synthetic_media import write_video


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from ltx2_tuner.testing import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("small"), "2.3", size="small")


def _clips(root, dataset_keys: str, conditions: str):
    """Two 17-frame 128 x 64 clips with tone soundtracks, their reference clips (other pictures, with sound), audio
    masks keeping the first half of each window's audio, and the dataset TOML."""
    for folder in ("clips", "refs", "amasks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, stem in enumerate(("a", "b")):
        write_video(root / "clips" / f"{stem}.mp4", 17, 24.0, 128, 64, audio="tone", seed=index)
        (root / "clips" / f"{stem}.txt").write_text(f"clip {stem}")
        write_video(root / "refs" / f"{stem}.mp4", 17, 24.0, 128, 64, audio="tone", seed=10 + index)
        torch.save(torch.cat([torch.ones(50), torch.zeros(50)]), root / "amasks" / f"{stem}.pt")
    config = root / "dataset.toml"
    config.write_text(
        f'[general]\nresolution = [128, 64]\n[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\n'
        f"target_frames = [17]\n{dataset_keys}\n{conditions}"
    )
    return config


def _learned(checkpoint, config, output) -> tuple[float, float]:
    assert run(cache_latents, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint),
                               "--device", "cpu", "--ltx_mode", "av"]) == 0  # fmt: skip
    write_synthetic_text_caches(config, "av", context_dims=(128, 128))
    assert run(train, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av",
                       "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4", "--output_dir",
                       str(output), "--max_data_loader_n_workers", "0", "--log_with", "none", "--max_train_steps",
                       "100", "--learning_rate", "3e-3"]) == 0  # fmt: skip
    conditions = load_conditions(config)
    before = fixed_batch_loss(checkpoint, config, "av", conditions=conditions)
    after = fixed_batch_loss(checkpoint, config, "av", output / "ltx2_lora.safetensors", conditions=conditions)
    return before, after


def test_an_av2av_ic_lora_with_soundtrack_references_learns(small_checkpoint, tmp_path):
    config = _clips(tmp_path, 'reference_directory = "refs"\n',
                    '[[conditions]]\ntype = "reference"\n[[conditions]]\ntype = "reference"\nmodality = "audio"\n')  # fmt: skip
    before, after = _learned(small_checkpoint, config, tmp_path / "out")
    print(f"av2av ic-lora: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_an_audio_inpainting_lora_on_video_windows_learns(small_checkpoint, tmp_path):
    config = _clips(
        tmp_path, 'audio_mask_directory = "amasks"\n', '[[conditions]]\ntype = "mask"\nmodality = "audio"\n'
    )
    before, after = _learned(small_checkpoint, config, tmp_path / "out")
    print(f"audio inpainting on video windows: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)
