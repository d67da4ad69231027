"""The validation loss: fixed noise and sigmas, no effect on training, logged per modality and sigma bucket."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import config as training_config
from ltx2_tuner.training import trainer
from ltx2_tuner.training.validation import VALIDATION_SIGMAS


def _dataset_with_validation(root):
    """Training clips a, b and held-out clips v1..v3 (their own caches), in one dataset config."""
    write_synthetic_dataset(root / "train")
    write_synthetic_dataset(root / "held_out", stems=("v1", "v2", "v3"), seed=1)
    config = root / "dataset.toml"
    config.write_text(
        '[general]\ntarget_frames = [17]\n\n[[datasets]]\nvideo_directory = "train/clips"\n'
        'cache_directory = "train/cache"\n\n[[validation_datasets]]\nvideo_directory = "held_out/clips"\n'
        'cache_directory = "held_out/cache"\n'
    )
    return config


def _flags(checkpoint, config, output, *flags) -> list[str]:
    return ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
            "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output), "--learning_rate", "1e-2",
            "--max_data_loader_n_workers", "0", "--log_with", "none", "--network_dropout", "0.1", *flags]  # fmt: skip


def _records(output) -> list[dict]:
    return [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _dataset_with_validation(tmp_path_factory.mktemp("validation"))


def test_a_run_with_validation_trains_the_same_lora_as_one_without(tiny_checkpoints, data, tmp_path):
    checkpoint = tiny_checkpoints["2.3"].path
    assert run(main, _flags(checkpoint, data, tmp_path / "plain", "--max_train_steps", "3")) == 0
    assert run(main, _flags(checkpoint, data, tmp_path / "validated", "--max_train_steps", "3",
                            "--validate_every_n_steps", "2")) == 0  # fmt: skip
    plain = load_file(tmp_path / "plain" / "ltx2_lora.safetensors")
    validated = load_file(tmp_path / "validated" / "ltx2_lora.safetensors")
    assert all(torch.equal(plain[key], validated[key]) for key in plain)

    records = [r for r in _records(tmp_path / "validated") if "val_loss" in r]
    assert [r["step"] for r in records] == [0, 2, 3]  # the base model, every 2 steps, and the last step
    buckets = {f"val_loss_sigma_{low:.2f}-{low + 0.25:.2f}" for low in (0.0, 0.25, 0.5, 0.75)}
    assert records[0].keys() == {"step", "val_loss", "val_loss_video"} | buckets  # --ltx_mode video
    assert records[-1]["val_loss"] != records[0]["val_loss"]  # the LoRA changed it
    # The total is the mean over the buckets (as many samples in each).
    first = records[0]
    assert first["val_loss"] == pytest.approx(sum(first[b] for b in buckets) / len(buckets))


def test_an_av_validation_loss_has_both_parts_and_their_weighted_sum(tiny_checkpoints, data, tmp_path):
    output = tmp_path / "av"
    assert run(main, _flags(tiny_checkpoints["2.3"].path, data, output, "--ltx_mode", "av", "--max_train_steps", "1",
                            "--validate_every_n_steps", "1", "--audio_loss_weight", "0.5")) == 0  # fmt: skip
    first = next(r for r in _records(output) if "val_loss" in r)
    assert first["val_loss"] == pytest.approx(first["val_loss_video"] + 0.5 * first["val_loss_audio"])


def test_two_evaluations_of_the_same_weights_agree_and_leave_the_random_streams(tiny_checkpoints, data, tmp_path):
    args = training_config.parse_args(_flags(tiny_checkpoints["2.3"].path, data, tmp_path, "--validate_every_n_steps",
                                             "1", "--seed", "7"))  # fmt: skip
    setup = trainer.setup(args)
    generator_state, global_state = setup.generator.get_state(), torch.get_rng_state()
    first = setup.validation.evaluate(setup.model, setup.accelerator, setup.weight_dtype)
    second = setup.validation.evaluate(setup.model, setup.accelerator, setup.weight_dtype)
    assert first == second
    assert torch.equal(setup.generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert setup.model.training  # back in training mode
    assert len(VALIDATION_SIGMAS) == 4

    # Another --seed: the same batches, noise and sigmas, so the same value for the same (base) weights.
    other = trainer.setup(training_config.parse_args(_flags(tiny_checkpoints["2.3"].path, data, tmp_path,
                                                            "--validate_every_n_steps", "1", "--seed", "8")))  # fmt: skip
    assert other.validation.evaluate(other.model, other.accelerator, other.weight_dtype) == first


def test_validation_without_validation_datasets_is_one_line(tiny_checkpoints, tmp_path, capsys):
    config = write_synthetic_dataset(tmp_path / "data")
    assert run(main, _flags(tiny_checkpoints["2.3"].path, config, tmp_path / "out", "--validate_every_n_steps",
                            "1")) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "[[validation_datasets]]" in err and err.count("\n") == 1
