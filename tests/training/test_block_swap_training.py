"""ltx2_train_network.py --blocks_to_swap: the same LoRA as a plain run (with and without gradient checkpointing, one
process and two), resume equal to an uninterrupted run, and a one-line error for too many blocks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import trainer

COMMON = ("--ltx_mode", "av", "--max_train_steps", "4", "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
          "--network_args", "preset=full", "--save_precision", "fp32")  # fmt: skip


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", *COMMON, *flags])  # fmt: skip


def _assert_same_lora(expected_file, actual_file) -> None:
    expected, actual = load_file(expected_file), load_file(actual_file)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert any(expected[k].abs().sum() > 0 for k in expected if "lora_B" in k)  # it did train


@pytest.fixture(scope="module")
def plain_run(tiny_checkpoints, tmp_path_factory):
    """(checkpoint, dataset config, LoRA file) of a 4-step AV run without block swap."""
    root = tmp_path_factory.mktemp("plain_run")
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(root / "data", stems=("a", "b"))
    assert _train(checkpoint, config, root / "out") == 0
    return checkpoint, config, root / "out" / "ltx2_lora.safetensors"


@pytest.mark.parametrize("flags", [("--blocks_to_swap", "1"), ("--blocks_to_swap", "2", "--gradient_checkpointing")],
                         ids=["one-block", "all-blocks-checkpointing"])  # fmt: skip
def test_block_swap_trains_the_same_lora_as_a_plain_run(plain_run, tmp_path, flags):
    # Gradient checkpointing alone changes nothing (tests/models/test_transformer_adapter.py), so one plain run serves.
    checkpoint, config, plain_lora = plain_run
    assert _train(checkpoint, config, tmp_path / "out", *flags) == 0
    _assert_same_lora(plain_lora, tmp_path / "out" / "ltx2_lora.safetensors")


def test_resumed_block_swap_run_equals_an_uninterrupted_one(plain_run, tmp_path):
    checkpoint, config, plain_lora = plain_run
    flags = ("--blocks_to_swap", "1", "--save_every_n_steps", "2", "--save_state")
    assert _train(checkpoint, config, tmp_path / "out", *flags) == 0
    (tmp_path / "out" / "ltx2_lora.safetensors").unlink()
    state = tmp_path / "out" / "state-step000002"
    assert _train(checkpoint, config, tmp_path / "out", "--blocks_to_swap", "1", "--resume", str(state)) == 0
    _assert_same_lora(plain_lora, tmp_path / "out" / "ltx2_lora.safetensors")


def test_more_blocks_than_the_checkpoint_has_is_one_line_before_loading(plain_run, tmp_path, capsys, monkeypatch):
    checkpoint, config, _ = plain_run

    def no_loading(*args, **kwargs):
        raise AssertionError("the count must be checked before the weights are loaded")

    monkeypatch.setattr(trainer, "load_transformer", no_loading)
    assert _train(checkpoint, config, tmp_path / "out", "--blocks_to_swap", "3") == 2
    err = capsys.readouterr().err
    assert err == "error: --blocks_to_swap 3: this transformer has 2 blocks; pass 1 to 2\n"


@pytest.mark.slow
def test_two_processes_with_block_swap_train_the_same_lora(tiny_checkpoints, tmp_path):
    """DDP (gloo) with the frozen base left out of DDP and the swapped blocks streamed: the LoRA of the same two
    processes without block swap."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "ltx2_tuner.cli.train_network"]  # fmt: skip
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b"))
    flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path),
             "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4", "--max_data_loader_n_workers",
             "0", "--log_with", "none", *COMMON, "--max_train_steps", "2"]  # fmt: skip
    for name, extra in (("plain", []), ("swap", ["--blocks_to_swap", "2", "--gradient_checkpointing"])):
        done = subprocess.run([*launch, *flags, "--output_dir", str(tmp_path / name), *extra], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_lora(tmp_path / "plain" / "ltx2_lora.safetensors", tmp_path / "swap" / "ltx2_lora.safetensors")
