"""Two processes on the CPU (gloo; `accelerate launch --multi_gpu` on a machine without CUDA): training works, saves once, the LR schedule matches one process, ranks differ."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset

STEPS = 6


def _metrics(output):
    return [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_save_once_and_keep_the_schedule(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b", "c", "d"))
    # One process with the same global batch: batches of 2 instead of 2 processes x batches of 1.
    config_one = write_synthetic_dataset(tmp_path / "data_one", stems=("a", "b", "c", "d"), batch_size=2)
    flags = ["--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av",
             "--mixed_precision", "no", "--max_train_steps", str(STEPS), "--network_dim", "4", "--network_alpha", "4",
             "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--max_data_loader_n_workers", "0",
             "--log_with", "none", "--save_every_n_steps", str(STEPS), "--save_state"]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
              "ltx2_tuner.cli.train_network"]  # fmt: skip
    two = subprocess.run([*launch, *flags, "--dataset_config", str(config), "--output_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "ltx2_tuner.cli.train_network", *flags, "--dataset_config",
                          str(config_one), "--output_dir", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]

    two_metrics, one_metrics = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert [m["step"] for m in two_metrics] == list(range(1, STEPS + 1))  # one record per optimizer step, once
    assert [m["lr"] for m in two_metrics] == [m["lr"] for m in one_metrics]  # advances once per optimizer step
    assert two.stdout.count("saved ") == 1  # rank 0 writes the final LoRA, once
    assert sorted(p.name for p in (tmp_path / "two").glob("*.safetensors")) == [
        "ltx2_lora-step000006.safetensors", "ltx2_lora.safetensors"]  # fmt: skip
    state = tmp_path / "two" / "state-step000006"
    rank0 = torch.load(state / "rng-rank0.pt", weights_only=False)["generator"]
    rank1 = torch.load(state / "rng-rank1.pt", weights_only=False)["generator"]
    assert not torch.equal(rank0, rank1)  # each rank draws its own noise and sigmas (seed + rank)
