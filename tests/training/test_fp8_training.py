"""ltx2_train_network.py --fp8_base: close to the plain run in video and AV mode, exactly equal with and without
gradient checkpointing and with block swap, resumable, and an official fp8 checkpoint trains."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint

COMMON = ("--max_train_steps", "3", "--learning_rate", "1e-3", "--network_args", "preset=full",
          "--save_precision", "fp32", "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4",
          "--max_data_loader_n_workers", "0", "--log_with", "none")  # fmt: skip


def _train(checkpoint, config, output, mode, *flags) -> dict[str, torch.Tensor]:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", mode,
            "--output_dir", str(output), *COMMON, *flags]  # fmt: skip
    assert run(main, argv) == 0
    return load_file(output / "ltx2_lora.safetensors")


@pytest.fixture(scope="module")
def data(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8_data")
    return tiny_checkpoints["2.3"].path, write_synthetic_dataset(root / "data", stems=("a", "b"))


@pytest.mark.parametrize("mode", ["video", "av"])
def test_fp8_trains_close_to_the_plain_run_and_checkpointing_changes_nothing(data, tmp_path, mode):
    checkpoint, config = data
    # SGD: the LoRA moves in proportion to its gradients (Adam's first steps would hide their size).
    sgd = ("--optimizer_type", "torch.optim.SGD", "--learning_rate", "0.1")
    plain = _train(checkpoint, config, tmp_path / "plain", mode, *sgd)
    fp8 = _train(checkpoint, config, tmp_path / "fp8", mode, *sgd, "--fp8_base", "--fp8_scaled")
    checkpointed = _train(checkpoint, config, tmp_path / "ckpt", mode, *sgd, "--fp8_base", "--fp8_scaled",
                          "--gradient_checkpointing")  # fmt: skip
    assert plain.keys() == fp8.keys() == checkpointed.keys()
    assert all(torch.equal(fp8[k], checkpointed[k]) for k in fp8)
    lora_b = [k for k in plain if "lora_B" in k]
    delta = torch.cat([(fp8[k] - plain[k]).flatten() for k in lora_b])
    size = torch.cat([plain[k].flatten() for k in lora_b])
    assert size.norm() > 0 and delta.norm() <= 0.1 * size.norm()  # e4m3 rounding of the base weights only


def test_fp8_with_block_swap_resumes_to_the_uninterrupted_fp8_run(data, tmp_path):
    checkpoint, config = data
    flags = ("--fp8_base", "--blocks_to_swap", "1")
    uninterrupted = _train(checkpoint, config, tmp_path / "whole", "av", "--fp8_base")
    _train(checkpoint, config, tmp_path / "out", "av", *flags, "--save_every_n_steps", "2", "--save_state")
    resumed = _train(checkpoint, config, tmp_path / "out", "av", *flags, "--resume",
                     str(tmp_path / "out" / "state-step000002"))  # fmt: skip
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)


def test_an_official_fp8_checkpoint_trains_with_fp8_base(data, tmp_path):
    _, config = data
    checkpoint = write_tiny_checkpoint(tmp_path, "2.3", seed=1234, fp8=True)
    lora = _train(checkpoint, config, tmp_path / "out", "video", "--fp8_base")
    assert any(lora[k].abs().sum() > 0 for k in lora if "lora_B" in k)


def test_fp8_scaled_without_fp8_base_is_one_line(data, tmp_path, capsys):
    checkpoint, config = data
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--output_dir", str(tmp_path),
            *COMMON, "--fp8_scaled"]  # fmt: skip
    assert run(main, argv) == 2
    assert capsys.readouterr().err == (
        "error: --fp8_scaled: only means something with --fp8_base; add --fp8_base or drop the flag\n"
    )
