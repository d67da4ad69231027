"""Damaged and mismatched caches, LoRA files and partner files (docs/bad-input.md "Caches, LoRAs, references").

The trainer cases run `ltx2_train_network.py` on caches written by `testing.synthetic_caches` (the layout and
fingerprints the caching commands write); each stops before the first step unless the case says otherwise.
"""

from __future__ import annotations

import pytest
import torch
from _corpus import VIDEO_TABLE, Outcome, cache_names, caption_everything, write_dataset
from safetensors import safe_open
from safetensors.torch import save_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.testing import bad_inputs
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.testing.synthetic_media import write_image


@pytest.fixture
def train(checkpoint, capsys, tmp_path):
    """Run two steps of `ltx2_train_network.py` on the tiny 2.3 checkpoint, writing to tmp_path/out."""
    from ltx2_tuner.cli.train_network import main

    def call(config, *flags: str) -> Outcome:
        capsys.readouterr()
        code = run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint),
                          "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4",
                          "--output_dir", str(tmp_path / "out"), "--max_data_loader_n_workers", "0",
                          "--log_with", "none", "--max_train_steps", "2", *flags])  # fmt: skip
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call


def _saved_loras(tmp_path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "out").rglob("*.safetensors"))


@pytest.mark.parametrize(
    "pattern", ["a_*_0640x0360_ltx2.safetensors", "a_*_ltx2_audio.safetensors", "a_ltx2_te.safetensors"]
)
def test_a_truncated_cache_is_named_before_training(tmp_path, train, pattern):
    config = write_synthetic_dataset(tmp_path / "data")
    (cut,) = (tmp_path / "data" / "cache").glob(pattern)
    bad_inputs.truncate(cut)
    outcome = train(config, "--ltx_mode", "av")
    assert outcome.code == 2
    line = outcome.error_line()
    assert line.startswith(f"error: {cut}: unreadable cache file (file is truncated (") and "--skip_existing" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", ["0", "2"])  # in the main process, and raised in a DataLoader worker
def test_a_cache_holding_nan_stops_training_naming_the_file(tmp_path, train, workers):
    config = write_synthetic_dataset(tmp_path / "data")
    (poisoned,) = (tmp_path / "data" / "cache").glob("a_*_0640x0360_ltx2.safetensors")
    with safe_open(str(poisoned), framework="pt") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    save_file({key: torch.full_like(value, float("nan")) for key, value in tensors.items()}, str(poisoned), metadata)
    outcome = train(config, "--max_grad_norm", "0", "--max_data_loader_n_workers", workers)
    assert outcome.code == 2
    assert outcome.error_line() == (
        f"error: {poisoned}: holds NaN or Inf values (nothing was trained on it); delete it and cache it again "
        "(ltx2_cache_latents.py / ltx2_cache_text_encoder_outputs.py --skip_existing)"
    )
    assert _saved_loras(tmp_path) == []  # nothing was saved from the poisoned step


@pytest.mark.slow  # ~10 s: caches and trains twice
def test_caches_of_another_model_version_are_listed_before_training(tmp_path, train):
    config = write_synthetic_dataset(tmp_path / "data", version="2.0")
    outcome = train(config, "--ltx_mode", "av")
    assert outcome.code == 2 and outcome.error_line()
    for stem in ("a", "b"):
        assert (
            f"{stem}_00000-017_0640x0360_ltx2.safetensors: cached with an LTX-2.0 VAE but training uses LTX-2.3"
            in outcome.err
        )
        assert f"{stem}_ltx2_te.safetensors: made with LTX-2.0 connectors but training uses LTX-2.3" in outcome.err
    assert not (tmp_path / "out").exists()


def test_caches_of_another_mode_are_listed_before_training(tmp_path, train):
    config = write_synthetic_dataset(tmp_path / "data", with_audio=False)  # cached for --ltx_mode video
    outcome = train(config, "--ltx_mode", "av")
    assert outcome.code == 2 and outcome.error_line()
    for stem in ("a", "b"):
        assert f"{stem}_ltx2_te.safetensors: made with --ltx_mode video (no audio embeddings)" in outcome.err
        assert (
            f"{stem}_00000-017_ltx2_audio.safetensors: audio latent cache missing for {stem}_00000-017" in outcome.err
        )
    assert "--ltx_mode av --skip_existing" in outcome.err and not (tmp_path / "out").exists()


def test_caches_of_another_checkpoint_are_made_again(tmp_path, tiny_checkpoints, cache_latents, capsys):
    from ltx2_tuner.cli.cache_latents import main
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint

    config = write_dataset(tmp_path, VIDEO_TABLE)
    bad_inputs.good_video(tmp_path / "clips" / "ok.mp4", audio=False)
    caption_everything(tmp_path / "clips")
    assert cache_latents(config).code == 0
    retrained = write_tiny_checkpoint(tmp_path / "other", "2.3", seed=99)  # same model, other VAE weights
    capsys.readouterr()
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(retrained), "--device", "cpu", "--skip_existing"]
    assert run(main, argv) == 0
    assert "done: 1 cached, 0 reused" in capsys.readouterr().out


def _lora(path, stem: str, features: int, names=(".lora_A.weight", ".lora_B.weight")):
    down, up = names
    save_file({stem + down: torch.ones(4, features), stem + up: torch.ones(features, 4)}, str(path))
    return path


@pytest.mark.parametrize(
    ("stem", "features", "names", "problem"),
    [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320,
         (".lora_down.weight", ".lora_up.weight"), "is not an LTX-2 transformer module ltx2-tuner knows"),
        ("diffusion_model.transformer_blocks.0.attn1.to_q", 4096, (".lora_A.weight", ".lora_B.weight"),
         "maps 4096 -> 4096 features in the file but 32 -> 32 in the model; the file is for another model"),
    ],
    ids=["stable-diffusion", "full-size-ltx"],
)  # fmt: skip
def test_a_lora_for_another_model_stops_before_training(tmp_path, train, stem, features, names, problem):
    config = write_synthetic_dataset(tmp_path / "data")
    lora = _lora(tmp_path / "other.safetensors", stem, features, names)
    outcome = train(config, "--network_weights", str(lora))
    assert outcome.code == 2
    line = outcome.error_line()
    assert line.startswith(f"error: {lora}: ") and problem in line
    assert _saved_loras(tmp_path) == []


def _partnered(tmp_path, partner_key: str):
    config = write_dataset(tmp_path, VIDEO_TABLE + f'{partner_key} = "partners"\n')
    (tmp_path / "partners").mkdir()
    bad_inputs.good_video(tmp_path / "clips" / "clip.mp4", audio=False)
    caption_everything(tmp_path / "clips")
    return config, tmp_path / "partners"


@pytest.mark.parametrize(
    ("partner_key", "make", "problem"),
    [
        ("reference_directory", lambda d: bad_inputs.good_video(d / "clip.mp4", 5, audio=False),
         "the reference of clip.mp4 ends at 0.208 s, its window clip_00000-009 needs frames up to 0.333 s"),
        ("mask_directory", lambda d: bad_inputs.good_video(d / "clip.mp4", 5, audio=False),
         "the mask of clip.mp4 ends at 0.208 s"),
        ("mask_directory", lambda d: bad_inputs.good_video(d / "clip.mp4", width=128, audio=False),
         "the mask is 128x64 but clip.mp4 is 64x64, so it would mark other pixels than it shows"),
        # An image mask marks every frame; it must have its clip's shape too.
        ("mask_directory", lambda d: write_image(d / "clip.png", 64, 96),
         "the mask is 64x96 but clip.mp4 is 64x64, so it would mark other pixels than it shows"),
    ],
    ids=["short-reference", "short-mask", "mask-of-another-shape", "image-mask-of-another-shape"],
)  # fmt: skip
def test_a_reference_or_mask_that_does_not_fit_its_target_stops_before_work(
    tmp_path, cache_latents, partner_key, make, problem
):
    config, partners = _partnered(tmp_path, partner_key)
    partner = make(partners)
    outcome = cache_latents(config)
    assert outcome.code == 2
    line = outcome.error_line()
    assert line.startswith(f"error: {partner}: {problem}") and line.endswith(
        ("its clip", "make it as long as its clip")
    )
    assert cache_names(tmp_path / "cache") == []


def test_a_vae_that_overflows_to_nan_writes_no_cache(tmp_path, cache_latents, monkeypatch):
    # As the video VAE can in float16 on a GPU: the item fails with a summary entry instead of leaving a NaN cache
    # that would only show up later as a NaN loss.
    from ltx2_tuner.cache.latent_cacher import LatentEncoder

    encode = LatentEncoder.encode_video
    monkeypatch.setattr(LatentEncoder, "encode_video", lambda self, frames: encode(self, frames) * float("nan"))
    config = write_dataset(tmp_path, VIDEO_TABLE)
    clip = bad_inputs.good_video(tmp_path / "clips" / "clip.mp4", audio=False)
    caption_everything(tmp_path / "clips")
    outcome = cache_latents(config)
    assert outcome.code == 1 and "done: 0 cached, 0 reused, 1 failed" in outcome.out
    assert f"  failed: {clip} (clip_00000-009): the video VAE gave NaN or Inf latents, nothing was written; rerun " \
           "with --vae_dtype fp32 (or bf16)" in outcome.err  # fmt: skip
    assert cache_names(tmp_path / "cache") == []
