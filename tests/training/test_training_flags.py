"""Training flags: every problem reported together, one line each, before any model loads; shared flags and precision
names defined once."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.cli import cache_latents, cache_text_encoder_outputs
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.dtypes import DTYPES
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.training.config import build_parser, parse_args

# Paths that do not exist: a check that reached the checkpoint or the dataset would fail on them instead.
REQUIRED = ["--dataset_config", "missing.toml", "--ltx2_checkpoint", "missing.safetensors"]


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--learning_rate", "0"], "--learning_rate 0.0: must be > 0"),
        (["--learning_rate", "nan"], "--learning_rate nan: must be a number"),
        (["--network_dim", "0"], "--network_dim 0: must be >= 1"),
        (["--network_alpha", "-1"], "--network_alpha -1.0: must be > 0"),
        (["--network_dropout", "1"], "--network_dropout 1.0: must be in [0, 1)"),
        (["--max_train_steps", "0"], "--max_train_steps 0: must be >= 1"),
        (["--max_train_epochs", "0"], "--max_train_epochs 0: must be >= 1"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: must be >= 1"),
        (["--max_data_loader_n_workers", "-1"], "--max_data_loader_n_workers -1: must be >= 0"),
        (["--max_grad_norm", "-0.5"], "--max_grad_norm -0.5: must be >= 0"),
        (["--save_every_n_steps", "0"], "--save_every_n_steps 0: must be >= 1"),
        (["--save_every_n_epochs", "0"], "--save_every_n_epochs 0: must be >= 1"),
        (["--save_last_n_checkpoints", "0"], "--save_last_n_checkpoints 0: must be >= 1"),
        (["--lr_warmup_steps", "-1"], "--lr_warmup_steps -1: must be >= 0"),
        (["--video_loss_weight", "-1"], "--video_loss_weight -1.0: must be >= 0"),
        (["--audio_loss_weight", "-1"], "--audio_loss_weight -1.0: must be >= 0"),
        (["--ltx2_first_frame_conditioning_p", "1.5"], "--ltx2_first_frame_conditioning_p 1.5: must be in [0, 1]"),
        (["--discrete_flow_shift", "0"], "--discrete_flow_shift 0.0: must be > 0"),
        (
            ["--optimizer_type", "AdamV"],
            "--optimizer_type AdamV: not AdamW, AdamW8bit, Prodigy, Adafactor or AdamWScheduleFree, nor an importable "
            "module.Class",
        ),
        (["--optimizer_type", "torch.optim.Nope"], "--optimizer_type torch.optim.Nope: not AdamW, AdamW8bit"),
        (["--optimizer_args", "lr"], "--optimizer_args 'lr': expected name=value"),
        (
            ["--network_module", "ltx2_tuner.networks.lora_ltx"],
            "--network_module ltx2_tuner.networks.lora_ltx: no such module",
        ),
        (["--network_module", "nowhere.lora"], "--network_module nowhere.lora: no such module"),
        (["--network_module", "json"], "--network_module json: not a network module (lacks select_targets"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(flags, line):
    with pytest.raises(ConfigError) as caught:
        parse_args([*REQUIRED, *flags])
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


def test_every_problem_is_reported_together_before_any_model_loads(capsys):
    code = run(main, [*REQUIRED, "--learning_rate", "-1", "--network_dim", "0", "--network_module", "ltx2_tuner.nets",
                      "--optimizer_type", "adamw_8bit", "--resume_extend"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == "error: 5 problems with the flags:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "--network_dim 0", "--learning_rate -1.0", "--resume_extend", "--network_module ltx2_tuner.nets",
        "--optimizer_type adamw_8bit"]  # fmt: skip
    assert "did you mean AdamW8bit?" in lines[-1]


def test_required_flags_are_named(capsys):
    assert run(main, ["--learning_rate", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  --dataset_config is required (on the command line or in --config_file)",
        "  --ltx2_checkpoint is required (on the command line or in --config_file)",
        "  --learning_rate 0.0: must be > 0"]  # fmt: skip


def test_config_file_values_are_checked_like_flags(tmp_path):
    settings = tmp_path / "train.toml"
    settings.write_text("network_dropout = 1.5\nmax_train_steps = 0\n")
    with pytest.raises(ConfigError, match=r"(?s)--network_dropout 1.5: must be in \[0, 1\).*--max_train_steps 0"):
        parse_args([*REQUIRED, "--config_file", str(settings)])


def test_ema_with_a_schedule_free_optimizer_is_refused():
    with pytest.raises(ConfigError, match=r"^--ema_decay with --optimizer_type schedulefree: .*drop --ema_decay$"):
        parse_args([*REQUIRED, "--optimizer_type", "schedulefree", "--ema_decay", "0.99"])


def test_good_flags_pass():
    args = parse_args([*REQUIRED, "--optimizer_type", "torch.optim.SGD", "--network_dropout", "0.1",
                       "--ltx2_first_frame_conditioning_p", "1", "--max_grad_norm", "0"])  # fmt: skip
    assert args.optimizer_type == "torch.optim.SGD" and args.ltx2_first_frame_conditioning_p == 1.0


def _action(parser, flag):
    return next(action for action in parser._actions if flag in action.option_strings)


@pytest.mark.parametrize("flag", ["--dataset_config", "--ltx2_checkpoint", "--ltx_mode"])
def test_shared_flags_are_one_definition(flag):
    trainer = _action(build_parser(), flag)
    for command in (cache_latents, cache_text_encoder_outputs):
        other = _action(command.build_parser(), flag)
        assert (other.type, other.default, other.choices) == (trainer.type, trainer.default, trainer.choices)
        shared = other.help.split(";")[0].split(" (default")[0]
        assert trainer.help.startswith(shared)
    assert _action(build_parser(), "--ltx_mode").choices == ("video", "av", "audio")


def test_precision_names_map_to_one_dtype_each():
    parsers = {
        "--mixed_precision": (build_parser(), cache_text_encoder_outputs.build_parser()),
        "--save_precision": (build_parser(),),
        "--vae_dtype": (cache_latents.build_parser(),),
    }
    for flag, owners in parsers.items():
        for parser in owners:
            assert set(_action(parser, flag).choices) <= DTYPES.keys()
    assert DTYPES["no"] is DTYPES["fp32"] is torch.float32 and DTYPES["bf16"] is torch.bfloat16
