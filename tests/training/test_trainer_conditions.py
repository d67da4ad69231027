"""ltx2_train_network.py with [[conditions]]: an IC-LoRA on real cached reference pairs (downscaled references, whose
factors the LoRA file records) and an inpainting + extension LoRA on cached masks learn on a fixed batch.

Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md B (flexible strategy, LoRA metadata).
"""

from __future__ import annotations

import json

import pytest
from _fixed_loss import fixed_batch_loss
from PIL import Image
from safetensors import safe_open

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


def _pairs(root, dataset_keys: str, conditions: str, with_refs=False, with_masks=False):
    """Two 17-frame clips of 128 x 64 (latent grid 3 x 2 x 4) with captions, their partner files, a dataset TOML."""
    for folder in ("clips", "refs", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, stem in enumerate(("a", "b")):
        write_video(root / "clips" / f"{stem}.mp4", 17, 24.0, 128, 64, seed=index)
        (root / "clips" / f"{stem}.txt").write_text(f"clip {stem}")
        if with_refs:  # another moving pattern: the LoRA learns to map each reference to its target
            write_video(root / "refs" / f"{stem}.mp4", 17, 24.0, 128, 64, seed=10 + index)
        if with_masks:  # white = kept clean: the left half; the right half is regenerated (and in the loss)
            mask = Image.new("L", (128, 64), 0)
            mask.paste(255, (0, 0, 64, 64))
            mask.save(root / "masks" / f"{stem}.png")
    config = root / "dataset.toml"
    config.write_text(
        f'[general]\nresolution = [128, 64]\n[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\n'
        f"target_frames = [17]\n{dataset_keys}\n{conditions}"
    )
    return config


def _cache_and_train(checkpoint, config, output, steps=100):
    assert run(cache_latents, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint),
                               "--device", "cpu"]) == 0  # fmt: skip
    write_synthetic_text_caches(config, "video", context_dims=(128, 128))
    assert run(train, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision",
                       "no", "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                       "--max_data_loader_n_workers", "0", "--log_with", "none", "--max_train_steps", str(steps),
                       "--learning_rate", "3e-3"]) == 0  # fmt: skip
    return output / "ltx2_lora.safetensors"


def _learned(checkpoint, config, lora) -> tuple[float, float]:
    conditions = [c for c in load_conditions(config) if c.type != "first_frame"]
    before = fixed_batch_loss(checkpoint, config, "video", conditions=conditions)
    after = fixed_batch_loss(checkpoint, config, "video", lora, conditions=conditions)
    return before, after


def test_an_ic_lora_on_half_size_references_learns_and_its_file_carries_the_factors(small_checkpoint, tmp_path):
    config = _pairs(tmp_path, 'reference_directory = "refs"\nreference_downscale_factor = 2\n',
                    '[[conditions]]\ntype = "reference"\n[[conditions]]\ntype = "first_frame"\nprobability = 0.2\n',
                    with_refs=True)  # fmt: skip
    lora = _cache_and_train(small_checkpoint, config, tmp_path / "out")
    with safe_open(str(lora), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["reference_downscale_factor"] == "2" and metadata["reference_spatial_scale_factor"] == "2"
    assert "reference_temporal_scale_factor" not in metadata  # written only when != 1, as the official trainer
    assert json.loads(metadata["trained_conditions"]) == ["video:reference", "video:first_frame"]
    before, after = _learned(small_checkpoint, config, lora)
    print(f"ic-lora: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_an_inpainting_and_extension_lora_learns_on_cached_masks(small_checkpoint, tmp_path):
    config = _pairs(tmp_path, 'mask_directory = "masks"\n',
                    '[[conditions]]\ntype = "mask"\n[[conditions]]\ntype = "prefix"\ntemporal_boundary = 1\n'
                    "probability = 0.5\n", with_masks=True)  # fmt: skip
    lora = _cache_and_train(small_checkpoint, config, tmp_path / "out")
    before, after = _learned(small_checkpoint, config, lora)
    print(f"inpainting + prefix: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_an_outpainting_and_backward_extension_lora_learns(small_checkpoint, tmp_path):
    config = _pairs(tmp_path, "", '[[conditions]]\ntype = "spatial_crop"\nregion = [0, 32, 64, 96]\n'
                    '[[conditions]]\ntype = "suffix"\ntemporal_boundary = 1\nprobability = 0.5\n')  # fmt: skip
    lora = _cache_and_train(small_checkpoint, config, tmp_path / "out")
    before, after = _learned(small_checkpoint, config, lora)
    print(f"outpainting + suffix: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_an_audio_to_audio_ic_lora_with_extension_learns(small_checkpoint, tmp_path):
    from ltx2_tuner.testing.synthetic_media import tone, write_audio

    for folder in ("voice", "refs"):
        (tmp_path / folder).mkdir()
    for stem, pitch in (("low", 220.0), ("high", 660.0)):
        write_audio(tmp_path / "voice" / f"{stem}.wav", tone(1.2, 16000, (pitch, pitch * 1.5)), 16000)
        write_audio(tmp_path / "refs" / f"{stem}.wav", tone(1.2, 16000, (pitch / 2, pitch * 0.75)), 16000)
        (tmp_path / "voice" / f"{stem}.txt").write_text(f"a {stem} tone")
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\naudio_directory = "voice"\ncache_directory = "cache"\naudio_bucket_interval = 1.0\n'
                      'reference_audio_directory = "refs"\n[[conditions]]\ntype = "reference"\nmodality = "audio"\n'
                      '[[conditions]]\ntype = "prefix"\nmodality = "audio"\ntemporal_boundary = 8\n')  # fmt: skip
    assert run(cache_latents, ["--dataset_config", str(config), "--ltx2_checkpoint", str(small_checkpoint),
                               "--device", "cpu", "--ltx_mode", "audio"]) == 0  # fmt: skip
    write_synthetic_text_caches(config, "audio", context_dims=(128, 128))
    assert run(train, ["--dataset_config", str(config), "--ltx2_checkpoint", str(small_checkpoint), "--ltx_mode",
                       "audio", "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4",
                       "--output_dir", str(tmp_path / "out"), "--max_data_loader_n_workers", "0", "--log_with",
                       "none", "--max_train_steps", "100", "--learning_rate", "3e-3"]) == 0  # fmt: skip
    conditions = load_conditions(config)
    lora = tmp_path / "out" / "ltx2_lora.safetensors"
    before = fixed_batch_loss(small_checkpoint, config, "audio", conditions=conditions)
    after = fixed_batch_loss(small_checkpoint, config, "audio", lora, conditions=conditions)
    print(f"a2a ic-lora + audio prefix: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_a_condition_without_its_partner_files_stops_before_training_in_one_line(small_checkpoint, tmp_path, capsys):
    config = _pairs(tmp_path, "", '[[conditions]]\ntype = "mask"\n')  # no mask_directory
    assert run(cache_latents, ["--dataset_config", str(config), "--ltx2_checkpoint", str(small_checkpoint),
                               "--device", "cpu"]) == 0  # fmt: skip
    write_synthetic_text_caches(config, "video", context_dims=(128, 128))
    capsys.readouterr()
    assert run(train, ["--dataset_config", str(config), "--ltx2_checkpoint", str(small_checkpoint), "--output_dir",
                       str(tmp_path / "out"), "--max_data_loader_n_workers", "0", "--mixed_precision", "no"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert 'the video "mask" condition needs a mask cache per item, 2 item(s) have none' in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "ltx2_lora.safetensors").exists()
