"""LoRA EMA (--ema_decay): the average's arithmetic, its files, and a bit-exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import checkpoints as ckpt
from ltx2_tuner.training.ema import WeightEma, warmed_up_decay


def _params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.nn.Parameter(torch.randn(4, 3, generator=generator)) for name in ("a", "b")}


def _step(params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params.values():
            param.add_(torch.randn(param.shape, generator=generator))


def test_decay_zero_makes_the_average_the_weights_bit_for_bit():
    params = _params()
    ema = WeightEma(params, decay=0.0)
    for step in range(1, 4):
        _step(params, step)
        ema.update(step)
        assert all(torch.equal(ema.average[name], param) for name, param in params.items())


def test_the_average_follows_the_warmed_up_decay():
    params = _params()
    start = {name: p.detach().clone() for name, p in params.items()}
    ema = WeightEma(params, decay=0.999)
    _step(params, 1)
    ema.update(1)
    keep = 2 / 11  # min(0.999, (1 + 1) / (10 + 1))
    assert warmed_up_decay(0.999, 1) == pytest.approx(keep)
    assert warmed_up_decay(0.5, 1000) == 0.5  # the decay itself once the warm-up passes it
    for name, param in params.items():
        torch.testing.assert_close(ema.average[name], keep * start[name] + (1 - keep) * param.detach())


def test_applied_swaps_the_average_in_and_the_weights_back_exactly():
    params = _params()
    ema = WeightEma(params, decay=0.9)
    trained = {name: p.detach().clone() for name, p in params.items()}
    ema.average = {name: torch.full_like(p, 7.0) for name, p in params.items()}
    with ema.applied():
        assert all(bool((p == 7.0).all()) for p in params.values())
    assert all(torch.equal(params[name], trained[name]) for name in params)


def test_keep_last_removes_the_raw_files_with_their_step(tmp_path):
    for step in (1, 2, 3):
        for raw in (False, True):
            ckpt.lora_path(tmp_path, "run", step, raw=raw).write_bytes(b"x")
    ckpt.keep_last(tmp_path, "run", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-step000003-raw.safetensors",
                                                          "run-step000003.safetensors"]  # fmt: skip


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output), "--learning_rate",
                      "1e-2", "--max_data_loader_n_workers", "0", "--log_with", "none", *flags])  # fmt: skip


def _metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_with_decay_zero_the_lora_file_equals_the_raw_file(tiny_checkpoints, tmp_path):
    config = write_synthetic_dataset(tmp_path / "data")
    assert _train(tiny_checkpoints["2.3"].path, config, tmp_path / "out", "--max_train_steps", "2",
                  "--ema_decay", "0") == 0  # fmt: skip
    ema, raw = tmp_path / "out" / "ltx2_lora.safetensors", tmp_path / "out" / "ltx2_lora-raw.safetensors"
    ema_tensors, raw_tensors = load_file(ema), load_file(raw)
    assert ema_tensors.keys() == raw_tensors.keys()
    assert all(torch.equal(ema_tensors[key], raw_tensors[key]) for key in ema_tensors)
    assert any(bool(t.abs().sum() > 0) for key, t in raw_tensors.items() if "lora_B" in key)  # it trained
    assert (_metadata(ema)["ltx2_weights"], _metadata(raw)["ltx2_weights"]) == ("ema", "raw")


@pytest.mark.slow
def test_resume_with_ema_is_bit_exact(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    flags = ("--max_train_steps", "4", "--ema_decay", "0.9", "--save_state", "--save_every_n_steps", "2")
    assert _train(checkpoint, config, tmp_path / "whole", *flags) == 0
    state = tmp_path / "whole" / "state-step000002"
    assert (state / ckpt.EMA_FILE).is_file()
    assert _train(checkpoint, config, tmp_path / "resumed", *flags, "--resume", str(state)) == 0
    for name in ("ltx2_lora.safetensors", "ltx2_lora-raw.safetensors"):
        whole, resumed = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        assert all(torch.equal(whole[key], resumed[key]) for key in whole), name
    ema, raw = (load_file(tmp_path / "whole" / name) for name in ("ltx2_lora.safetensors", "ltx2_lora-raw.safetensors"))
    assert any(not torch.equal(ema[key], raw[key]) for key in ema)  # decay 0.9 averages: not the raw weights


def test_resuming_a_state_without_ema_into_an_ema_run_is_refused(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "1", "--save_state") == 0
    state = tmp_path / "out" / "state-step000001"
    capsys.readouterr()
    assert _train(checkpoint, config, tmp_path / "again", "--max_train_steps", "2", "--ema_decay", "0.9",
                  "--resume", str(state)) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "ema_decay" in err and err.count("\n") == 1


def test_previews_see_the_ema_weights_and_training_gets_its_own_back(tiny_checkpoints, tmp_path):
    from ltx2_tuner.training import config as training_config
    from ltx2_tuner.training import trainer

    config = write_synthetic_dataset(tmp_path / "data")
    args = training_config.parse_args(["--dataset_config", str(config), "--ltx2_checkpoint",
                                       str(tiny_checkpoints["2.3"].path), "--mixed_precision", "no", "--network_dim",
                                       "4", "--output_dir", str(tmp_path / "out"), "--ema_decay", "0.5",
                                       "--log_with", "none"])  # fmt: skip
    setup = trainer.setup(args)
    setup.ema.average = {name: torch.full_like(p, 0.25) for name, p in setup.ema.average.items()}
    trained = {name: p.detach().clone() for name, p in setup.ema.params.items()}
    seen = []

    class Previews:
        def run(self, model, step, logger):
            seen.append(all(bool((p == 0.25).all()) for p in setup.ema.params.values()))

    setup.previews = Previews()
    trainer._previews(setup)
    assert seen == [True]
    assert all(torch.equal(p, trained[name]) for name, p in setup.ema.params.items())
