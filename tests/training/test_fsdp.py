"""FSDP (FSDP2, launched with docs/accelerate/fsdp.yaml) on two CPU processes (gloo): the LoRA of one process with the
global batch, one LoRA file in the official format, resume equal to an uninterrupted run; flags that do not combine
with FSDP are refused in one line before the model loads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import distributed, trainer

FSDP_CONFIG = Path(__file__).parents[2] / "docs" / "accelerate" / "fsdp.yaml"
# The documented config file, with the test's process count and fp32 (command-line values win over the file).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes",
          "2", "--mixed_precision", "no"]  # fmt: skip
PER_ITEM_NOISE = Path(__file__).with_name("_per_item_noise.py")  # the trainer, each item's noise from its key
# Plain SGD moves lora_B far from 0 in few steps; momentum gives the optimizer a state that resume must restore.
FLAGS = ["--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4", "--network_args", "preset=full",
         "--optimizer_type", "torch.optim.SGD", "--save_precision", "fp32", "--max_data_loader_n_workers", "0",
         "--log_with", "none", "--ltx2_first_frame_conditioning_p", "0.5"]  # fmt: skip


def _launch(*args, units: int) -> None:
    done = subprocess.run([*LAUNCH, str(PER_ITEM_NOISE), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"FSDP: {units} units and the root, sharded over 2 processes" in done.stdout  # sharded, not DDP


def _train_one_process(monkeypatch, *args) -> None:
    from _per_item_noise import patch_trainer

    patch_trainer(monkeypatch)
    assert run(main, list(args)) == 0


def _difference(expected: dict, actual: dict) -> float:
    assert expected.keys() == actual.keys()
    return max((expected[k] - actual[k]).abs().max().item() for k in expected)


def _moved(lora: dict) -> float:
    return max(lora[k].abs().max().item() for k in lora if "lora_B" in k)  # lora_B starts at 0


@pytest.mark.slow
def test_fsdp_trains_the_lora_of_one_process_and_saves_one_official_file(tiny_checkpoints, tmp_path, monkeypatch):
    """2 processes x batch 1 (AV: one FSDP unit per transformer block) reach the LoRA of 1 process x batch 2, with
    gradient accumulation (no reduce-scatter but on a group's last batch) and clipping (the norm of the sharded
    gradients is the global one)."""
    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.networks import lora_ltx2

    checkpoint = tiny_checkpoints["2.3"].path
    flags = ["--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av", "--max_train_steps", "2",
             "--gradient_accumulation_steps", "2", "--learning_rate", "2.0", "--max_grad_norm", "0.5",
             *FLAGS]  # fmt: skip
    # Four items: every optimizer step sees all of them, in either split.
    config_two = write_synthetic_dataset(tmp_path / "data_two", stems=("a", "b", "c", "d"))
    config_one = write_synthetic_dataset(tmp_path / "data_one", stems=("a", "b", "c", "d"), batch_size=2)
    _launch(*flags, "--dataset_config", str(config_two), "--output_dir", str(tmp_path / "two"), units=2)  # 2 blocks
    _train_one_process(monkeypatch, *flags, "--dataset_config", str(config_one), "--output_dir", str(tmp_path / "one"))

    files = sorted(p.name for p in (tmp_path / "two").glob("*.safetensors"))
    assert files == ["ltx2_lora.safetensors"]  # rank 0 alone writes, once
    lora_two = load_file(tmp_path / "two" / "ltx2_lora.safetensors")
    lora_one = load_file(tmp_path / "one" / "ltx2_lora.safetensors")
    # Measured (fp32, gloo): 1.2e-7 apart after 2 SGD steps that moved lora_B from 0 to up to 0.31, with clipping
    # active (without it the LoRA ends up to 0.013 elsewhere). Each rank's own LoRA init (seed + rank), or one rank's
    # gradient alone, would be off by about the update itself.
    assert _difference(lora_one, lora_two) < 1e-6
    assert _moved(lora_one) > 1e-1
    # Official format: full (gathered) tensors under `diffusion_model.`, A and B per layer, no alpha.
    assert all(k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora_two)
    assert all(tensor.shape[0] == 4 for key, tensor in lora_two.items() if key.endswith("lora_A.weight"))  # rank 4
    model = load_transformer(checkpoint, "av")
    spec = lora_ltx2.LoraSpec(4, 4, 0.0, lora_ltx2.select_targets(model.backbone, "av", ["preset=full"]))
    lora_ltx2.add_lora(model.backbone, spec)
    assert lora_ltx2.load_lora_weights(tmp_path / "two" / "ltx2_lora.safetensors", model.backbone) == len(lora_two) // 2


@pytest.mark.slow
def test_resumed_fsdp_run_equals_an_uninterrupted_one(tiny_checkpoints, tmp_path, monkeypatch):
    """Video mode (one FSDP unit per attention / feed-forward module) with SGD momentum: the state folder holds full
    tensors, resuming it on 2 processes gives the uninterrupted run's LoRA, which is the LoRA of one process."""
    flags = ["--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--ltx_mode", "video", "--max_train_steps", "4",
             "--learning_rate", "0.5", "--optimizer_args", "momentum=0.9", "--max_grad_norm", "0", *FLAGS]  # fmt: skip
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b"))
    full = tmp_path / "full"
    # 2 blocks x (attn1, attn2, ff)
    _launch(*flags, "--dataset_config", str(config), "--output_dir", str(full), "--save_every_n_steps", "2",
            "--save_state", units=6)  # fmt: skip
    state = full / "state-step000002"
    momentum = torch.load(state / "optimizer.pt", weights_only=False)["state"]
    trainable = torch.load(state / "trainable.pt", weights_only=True)
    assert [type(s["momentum_buffer"]) for s in momentum.values()] == [torch.Tensor] * len(trainable)  # gathered
    assert [s["momentum_buffer"].shape for s in momentum.values()] == [t.shape for t in trainable.values()]
    _launch(*flags, "--dataset_config", str(config), "--output_dir", str(tmp_path / "resumed"), "--resume", str(state),
            units=6)  # fmt: skip

    uninterrupted = load_file(full / "ltx2_lora.safetensors")
    resumed = load_file(tmp_path / "resumed" / "ltx2_lora.safetensors")
    assert (
        all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted) and uninterrupted.keys() == resumed.keys()
    )
    assert _moved(uninterrupted) > 1e-1
    config_one = write_synthetic_dataset(tmp_path / "data_one", stems=("a", "b"), batch_size=2)
    _train_one_process(monkeypatch, *flags, "--dataset_config", str(config_one), "--output_dir", str(tmp_path / "one"))
    # Measured: 4.5e-8 apart, lora_B moved to up to 0.27.
    assert _difference(load_file(tmp_path / "one" / "ltx2_lora.safetensors"), uninterrupted) < 1e-6


def _fsdp_env(monkeypatch, **settings) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def test_blocks_to_swap_with_fsdp_is_one_line_before_the_model_loads(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before FSDP's flags were checked")

    _fsdp_env(monkeypatch)
    monkeypatch.setattr(trainer, "load_transformer", must_not_load)
    config = write_synthetic_dataset(tmp_path / "data")
    args = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--output_dir",
            str(tmp_path / "out"), "--blocks_to_swap", "1", *FLAGS]  # fmt: skip
    assert run(main, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --blocks_to_swap does not combine with FSDP") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("settings", "flags", "words"),
    [
        ({"FSDP_VERSION": "1"}, {}, "fsdp_version: 2"),
        ({}, {"sample_prompts": "prompts.txt"}, "--sample_prompts does not combine with FSDP"),
        ({"FSDP_OFFLOAD_PARAMS": "true"}, {}, "fsdp_offload_params"),
        ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, {}, "--gradient_checkpointing"),
        ({"FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer"}, {}, distributed.BLOCK_CLASS),
    ],
    ids=["fsdp1", "previews", "offload", "fsdp-checkpointing", "wrap-class"],
)
def test_what_fsdp_does_not_take_is_named(monkeypatch, settings, flags, words):
    _fsdp_env(monkeypatch, **settings)
    args = SimpleNamespace(**{"blocks_to_swap": 0, "sample_prompts": None, **flags})
    with pytest.raises(ConfigError, match=re.escape(words)):
        distributed.fsdp_settings(args)


def test_without_an_fsdp_launch_training_is_ddp(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert distributed.fsdp_settings(SimpleNamespace(blocks_to_swap=2, sample_prompts="p.txt")) is None
