"""Each known optimizer trains the tiny model through ltx2_train_network.py; a schedule-free run saves its averaged
weights as the LoRA and resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training.optim import KNOWN_OPTIMIZERS

LEARNING_RATES = {
    "AdamW": "1e-3",
    "AdamW8bit": "1e-3",
    "Prodigy": "1",
    "Adafactor": "1e-3",
    "AdamWScheduleFree": "1e-3",
}


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", "--save_precision", "fp32",
                      *flags])  # fmt: skip


@pytest.fixture
def tiny_run(tiny_checkpoints, tmp_path):
    """(checkpoint, dataset config) of the smallest model and data."""
    return tiny_checkpoints["2.3"].path, write_synthetic_dataset(tmp_path / "data")


@pytest.mark.slow
@pytest.mark.parametrize("name", KNOWN_OPTIMIZERS)
def test_each_optimizer_trains_five_steps(tiny_run, tmp_path, name):
    checkpoint, config = tiny_run
    flags = ("--optimizer_type", name, "--learning_rate", LEARNING_RATES[name], "--max_train_steps", "5")
    assert _train(checkpoint, config, tmp_path / "out", *flags) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r["loss"]) for r in records)
    # Prodigy logs its effective learning rate (d x lr): it grows from d0 as Prodigy estimates the step size.
    assert (name == "Prodigy") == all("lr_effective" in r for r in records)
    if name == "Prodigy":
        assert 0 < records[0]["lr_effective"] <= records[-1]["lr_effective"]
    lora = load_file(tmp_path / "out" / "ltx2_lora.safetensors")
    assert any(lora[key].abs().sum() > 0 for key in lora if "lora_B" in key)  # B starts at zero: it trained


def _sorted_sums(tensors) -> torch.Tensor:
    """Each tensor's sum, sorted: compares the LoRA file with the state's weights without mapping their names."""
    return torch.tensor(sorted(t.double().sum().item() for t in tensors))


@pytest.mark.slow
def test_schedule_free_saves_its_averaged_weights_and_resumes_exactly(tiny_run, tmp_path):
    checkpoint, config = tiny_run
    common = ("--optimizer_type", "AdamWScheduleFree", "--learning_rate", "1e-2", "--max_train_steps", "4")
    assert _train(checkpoint, config, tmp_path / "full", *common) == 0
    assert _train(checkpoint, config, tmp_path / "part", *common, "--save_every_n_steps", "2", "--save_state") == 0
    state = tmp_path / "part" / "state-step000002"
    # The state holds the train-mode weights y and z; the LoRA file of that step the average x = y + (z - y)(1 - 1/b1).
    train_weights = list(torch.load(state / "trainable.pt").values())
    optimizer = torch.load(state / "optimizer.pt", weights_only=False)
    beta1 = optimizer["param_groups"][0]["betas"][0]
    averaged = [y.lerp(optimizer["state"][i]["z"], 1 - 1 / beta1) for i, y in enumerate(train_weights)]
    saved = load_file(tmp_path / "part" / "ltx2_lora-step000002.safetensors").values()  # alpha = rank: scale 1
    assert torch.allclose(_sorted_sums(saved), _sorted_sums(averaged), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_sorted_sums(saved), _sorted_sums(train_weights), rtol=1e-5, atol=1e-6)
    (tmp_path / "part" / "ltx2_lora.safetensors").unlink()
    assert _train(checkpoint, config, tmp_path / "part", *common, "--resume", str(state)) == 0
    full = load_file(tmp_path / "full" / "ltx2_lora.safetensors")
    resumed = load_file(tmp_path / "part" / "ltx2_lora.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[key], resumed[key]) for key in full)
