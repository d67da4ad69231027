"""Epochs with gradient accumulation, counted as accelerate counts them: the last, smaller group of an epoch makes an
optimizer step, so 5 batches with accumulation 2 are 3 steps per epoch; the schedule, epoch saves and a resume
in the middle of an epoch agree with that."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import accumulation as acc
from ltx2_tuner.training.optim import lr_factor

CLIPS = ("a", "b", "c", "d", "e")  # 5 batches of 1 per epoch
EPOCHS_OF_5_BY_2 = ("--max_train_epochs", "2", "--gradient_accumulation_steps", "2", "--lr_scheduler", "linear",
                    "--learning_rate", "1e-3", "--save_precision", "fp32")  # fmt: skip


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", *flags])  # fmt: skip


def _records(output) -> list[dict]:
    return [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_groups_of_an_epoch():
    assert [acc.group_size(i, 5, 2) for i in range(5)] == [2, 2, 2, 2, 1]
    assert [acc.ends_group(i, 5, 2) for i in range(5)] == [False, True, False, True, True]
    assert [acc.steps_per_epoch(n, 2) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert acc.steps_per_epoch(3, 4) == 1 and acc.group_size(2, 3, 4) == 3  # one group smaller than asked
    assert all(acc.ends_group(i, 7, 1) and acc.group_size(i, 7, 1) == 1 for i in range(7))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("five") / "data", stems=CLIPS)


def test_two_epochs_of_5_batches_with_accumulation_2_are_6_steps(tiny_checkpoints, dataset, tmp_path):
    output = tmp_path / "out"
    assert _train(tiny_checkpoints["2.3"].path, dataset, output, *EPOCHS_OF_5_BY_2, "--save_every_n_epochs", "1") == 0
    records = _records(output)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * lr_factor(s, 6, "linear") for s in range(6)])
    assert sorted(p.name for p in output.glob("*-step*.safetensors")) == [
        "ltx2_lora-step000003.safetensors", "ltx2_lora-step000006.safetensors"]  # fmt: skip


def test_resume_inside_an_epoch_equals_an_uninterrupted_run(tiny_checkpoints, dataset, tmp_path):
    checkpoint = tiny_checkpoints["2.3"].path
    assert _train(checkpoint, dataset, tmp_path / "full", *EPOCHS_OF_5_BY_2) == 0
    part = tmp_path / "part"
    assert _train(checkpoint, dataset, part, *EPOCHS_OF_5_BY_2, "--save_every_n_steps", "2", "--save_state") == 0
    state = part / "state-step000002"  # 4 of the first epoch's 5 batches done; its last, single-batch group is next
    saved = json.loads((state / "train_state.json").read_text())
    assert (saved["epoch"], saved["batches_done"]) == (0, 4)
    (part / "ltx2_lora.safetensors").unlink()
    assert _train(checkpoint, dataset, part, *EPOCHS_OF_5_BY_2, "--resume", str(state)) == 0
    assert [r["step"] for r in _records(part)] == [1, 2, 3, 4, 5, 6]
    full = load_file(tmp_path / "full" / "ltx2_lora.safetensors")
    resumed = load_file(part / "ltx2_lora.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert any(full[k].abs().sum() > 0 for k in full if "lora_B" in k)  # it did train
