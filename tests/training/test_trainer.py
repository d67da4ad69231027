"""ltx2_train_network.py: the loss falls, saved LoRAs load in diffusers, resume equals an uninterrupted run."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from _fixed_loss import fixed_batch_loss
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.models import load_transformer
from ltx2_tuner.testing.keyframe_probe import expected_addition, keyframe_probe
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", *flags])  # fmt: skip


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from ltx2_tuner.testing import write_tiny_checkpoint

    # As wide as a latent token (128), so a LoRA can move the outputs anywhere a latent can be.
    return write_tiny_checkpoint(tmp_path_factory.mktemp("small"), "2.3", size="small")


@pytest.mark.parametrize("mode", ["video", "av"])
def test_overfitting_two_clips_lowers_the_loss(small_checkpoint, tmp_path, mode):
    checkpoint = small_checkpoint
    config = write_synthetic_dataset(tmp_path / "data", context_dims=(128, 128), with_audio=mode == "av")
    assert _train(checkpoint, config, tmp_path / "out", "--ltx_mode", mode, "--max_train_steps", "200",
                  "--learning_rate", "3e-3", "--network_args", "preset=full") == 0  # fmt: skip
    lora_file = tmp_path / "out" / "ltx2_lora.safetensors"
    before = fixed_batch_loss(checkpoint, config, mode)
    after = fixed_batch_loss(checkpoint, config, mode, lora_file, network_args=["preset=full"])
    assert after < 0.7 * before, (before, after)


def test_resume_equals_an_uninterrupted_run(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["2.0"].path
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b", "c"), context_dims=(32, 32), version="2.0")
    common = ("--ltx_mode", "av", "--max_train_steps", "20", "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
              "--lr_warmup_steps", "3", "--save_precision", "fp32")  # fmt: skip
    assert _train(checkpoint, config, tmp_path / "full", *common) == 0
    assert _train(checkpoint, config, tmp_path / "part", *common, "--save_every_n_steps", "10", "--save_state") == 0
    state = tmp_path / "part" / "state-step000010"
    assert json.loads((state / "train_state.json").read_text())["step"] == 10
    (tmp_path / "part" / "ltx2_lora.safetensors").unlink()
    assert _train(checkpoint, config, tmp_path / "part", *common, "--resume", str(state)) == 0
    records = (tmp_path / "part" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in records] == list(range(1, 21))  # steps 11-20 logged once
    full = load_file(tmp_path / "full" / "ltx2_lora.safetensors")
    resumed = load_file(tmp_path / "part" / "ltx2_lora.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert any(full[k].abs().sum() > 0 for k in full if "lora_B" in k)  # it did train


def test_resume_refuses_a_changed_run(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "4", "--save_every_n_steps", "2",
                  "--save_state") == 0  # fmt: skip
    capsys.readouterr()
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "4", "--network_dim", "8",
                  "--resume", str(tmp_path / "out" / "state-step000002")) == 2  # fmt: skip
    assert "cannot resume, the run changed (rank: 4 -> 8" in capsys.readouterr().err
    # Settings recorded only when they leave their default are compared too.
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "4", "--no-first_frame_keyframe",
                  "--resume", str(tmp_path / "out" / "state-step000002")) == 2  # fmt: skip
    assert "cannot resume, the run changed (first_frame_keyframe: None -> False)" in capsys.readouterr().err


def test_saved_files_keep_the_last_n_and_carry_metadata(tiny_checkpoints, tmp_path):
    from safetensors import safe_open

    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "6", "--save_every_n_steps", "2",
                  "--save_last_n_checkpoints", "2", "--save_state") == 0  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["logs", "ltx2_lora-step000004.safetensors", "ltx2_lora-step000006.safetensors", "ltx2_lora.safetensors",
                     "state-step000004", "state-step000006"]  # fmt: skip
    with safe_open(str(tmp_path / "out" / "ltx2_lora.safetensors"), framework="pt") as f:
        metadata, dtype = f.metadata(), f.get_tensor(next(iter(f.keys()))).dtype
    assert dtype == torch.bfloat16  # --save_precision bf16 by default
    assert metadata["lora_rank"] == "4" and metadata["ltx_mode"] == "video" and metadata["training_step"] == "6"
    assert metadata["ltx_version"] == "2.3"  # a LoRA says which model family it was trained on
    assert json.loads(metadata["training_settings"])["learning_rate"] == 1e-4


def test_nan_loss_stops_with_the_step_and_items(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "5", "--learning_rate", "1e30",
                  "--max_grad_norm", "0") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "loss is nan at step" in err or "loss is inf at step" in err
    assert "_00000-017" in err and "lower --learning_rate" in err


def test_config_file_sets_flags_and_the_command_line_wins(tiny_checkpoints, tmp_path, capsys):
    from ltx2_tuner.training.config import parse_args

    settings = tmp_path / "train.toml"
    settings.write_text('learning_rate = 5e-4\nnetwork_dim = 8\nnetwork_args = ["preset=full"]\nltx_mode = "av"\n'
                        'dataset_config = "d.toml"\nltx2_checkpoint = "c.safetensors"\n')  # fmt: skip
    args = parse_args(["--config_file", str(settings), "--network_dim", "16"])
    assert args.learning_rate == 5e-4 and args.network_dim == 16 and args.network_args == ["preset=full"]
    assert args.ltx_mode == "av" and str(args.dataset_config) == "d.toml"
    settings.write_text("learning_rat = 1\n")
    assert run(main, ["--config_file", str(settings)]) == 2
    assert 'unknown key "learning_rat" (did you mean "learning_rate"?)' in capsys.readouterr().err


def test_fp16_on_a_bf16_checkpoint_is_refused(tmp_path, capsys):
    from ltx2_tuner.testing import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path, "2.3", dtype=torch.bfloat16)
    config = write_synthetic_dataset(tmp_path / "data")
    code = run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision",
                      "fp16", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "bf16 weights overflow in fp16; use --mixed_precision bf16" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_the_lora_before_stopping(tiny_checkpoints, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    config = write_synthetic_dataset(tmp_path / "data")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "ltx2_tuner.cli.train_network", "--dataset_config", str(config),
               "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--mixed_precision", "no",
               "--max_train_steps", "100000", "--output_dir", str(output), "--max_data_loader_n_workers", "0",
               "--log_with", "none"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = output / "logs" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    saved = list(output.glob("ltx2_lora-interrupted-step*.safetensors"))
    assert len(saved) == 1 and "interrupted at step" in out
    assert load_file(saved[0])  # a complete file


def test_max_train_epochs_counts_epochs(tiny_checkpoints, tmp_path):
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b", "c"))
    assert _train(tiny_checkpoints["2.3"].path, config, tmp_path / "out", "--max_train_epochs", "2",
                  "--save_every_n_epochs", "1") == 0  # fmt: skip
    records = (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 6  # 3 batches per epoch
    record = json.loads(records[0])
    assert {"loss", "loss_video", "lr", "step_time_s", "data_wait_s"} <= record.keys() and "loss_audio" not in record
    assert [key for key in record if key.startswith("loss_sigma_")]  # loss per video-sigma bucket
    assert sorted(p.name for p in (tmp_path / "out").glob("*-step*.safetensors")) == [
        "ltx2_lora-step000003.safetensors", "ltx2_lora-step000006.safetensors"]  # fmt: skip


@pytest.mark.parametrize(("version", "mode"), [("2.3", "av"), ("2.5", "av"), ("2.5", "video")])
def test_a_split_transformer_trains_on_existing_caches_and_equals_the_unified_run(tmp_path, version, mode):
    """Training needs the transformer alone: a split pack's transformer file (no VAE, no text encoder beside it)
    trains the LoRA the unified file of the same weights trains."""
    from ltx2_tuner.testing import write_tiny_checkpoint
    from ltx2_tuner.testing.tiny_pack import write_tiny_pack

    unified = write_tiny_checkpoint(tmp_path / "unified", version, seed=2)
    pack = write_tiny_pack(tmp_path / "pack", version, seed=2, text_encoder=False)
    lone = tmp_path / "lone" / pack.transformer.name
    lone.parent.mkdir()
    pack.transformer.rename(lone)
    config = write_synthetic_dataset(tmp_path / "data", version=version)
    flags = ("--ltx_mode", mode, "--max_train_steps", "2")
    assert _train(unified, config, tmp_path / "a", *flags) == 0
    assert _train(lone, config, tmp_path / "b", *flags) == 0
    a, b = (load_file(str(tmp_path / out / "ltx2_lora.safetensors")) for out in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags", [(), ("--no-first_frame_keyframe",)])
def test_ltx25_training_adds_the_keyframe_embedding_to_frame_0_unless_turned_off(
    tiny_checkpoints, tmp_path, monkeypatch, flags
):
    """The real training step on the tiny 2.5: the embedding lands on the first latent frame's tokens of each sample
    (as ltx-core's inference marks them), and on no token with --no-first_frame_keyframe (as the official trainer)."""
    from ltx2_tuner.training import trainer

    checkpoint = tiny_checkpoints["2.5"].path
    recorded = []
    with contextlib.ExitStack() as probes:

        def load_with_probe(*args, **kwargs):
            model = load_transformer(*args, **kwargs)
            recorded.append(probes.enter_context(keyframe_probe(model.backbone)))
            return model

        monkeypatch.setattr(trainer, "load_transformer", load_with_probe)
        config = write_synthetic_dataset(tmp_path / "data", version="2.5", latent_size=(2, 3), batch_size=2)
        assert _train(checkpoint, config, tmp_path / "out", "--ltx_mode", "av", "--max_train_steps", "2",
                      "--ltx2_first_frame_conditioning_p", "0.5", *flags) == 0  # fmt: skip
    (added,) = recorded
    embedding = load_file(str(checkpoint))["model.diffusion_model.keyframes_abs_pos_embedding"]
    assert len(added) == 2  # one forward per step
    for step in added:
        first_frame = torch.zeros(step.shape[:2], dtype=torch.bool)
        first_frame[:, : 2 * 3] = not flags  # 2 samples x 3 latent frames of 2x3 tokens
        assert step.shape[:2] == (2, 3 * 2 * 3)
        torch.testing.assert_close(step, expected_addition(first_frame, embedding), rtol=0, atol=1e-6)
