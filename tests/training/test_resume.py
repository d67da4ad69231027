"""Resume robustness: damaged state folders fail before anything loads, saves are atomic, metrics keep each step once,
the final save writes a state, and --resume_extend lets a saved run train longer."""

from __future__ import annotations

import json
import shutil

import pytest

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import checkpoints as ckpt
from ltx2_tuner.training import trainer
from ltx2_tuner.training.metrics import MetricLogger
from ltx2_tuner.training.optim import lr_factor

EARLIER = "resume from an earlier state-step folder"


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", *flags])  # fmt: skip


def _steps(output) -> list[int]:
    return [json.loads(line)["step"] for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]


def _listing(directory) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


@pytest.fixture(scope="module")
def saved_run(tiny_checkpoints, tmp_path_factory):
    """A finished 2-step run with --save_state: (checkpoint, dataset config, output folder)."""
    root = tmp_path_factory.mktemp("saved_run")
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(root / "data")
    assert _train(checkpoint, config, root / "out", "--max_train_steps", "2", "--save_state") == 0
    return checkpoint, config, root / "out"


def test_the_final_save_writes_a_state(saved_run):
    _, _, output = saved_run
    state = output / "state-step000002"
    assert sorted(p.name for p in state.iterdir()) == ["optimizer.pt", "rng-rank0.pt", "train_state.json",
                                                       "trainable.pt"]  # fmt: skip
    assert json.loads((state / "train_state.json").read_text())["step"] == 2
    assert not list(output.glob(".state-step*"))  # the temporary folder was renamed into place


def _damage(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"\x80\x04not what was saved")


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage"])
@pytest.mark.parametrize("name", ["train_state.json", "trainable.pt", "optimizer.pt", "rng-rank0.pt"])
def test_a_damaged_state_file_is_named_before_anything_loads(saved_run, tmp_path, monkeypatch, capsys, name, how):
    checkpoint, config, output = saved_run
    state = tmp_path / "state-step000002"
    shutil.copytree(output / "state-step000002", state)
    _damage(state / name, how)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the state folder was checked")

    monkeypatch.setattr(trainer, "load_transformer", must_not_load)
    before = _listing(tmp_path)
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "2", "--resume", str(state)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {state / name}: ") and err.count("\n") == 1  # one line, naming the file
    assert ("missing" if how == "missing" else "damaged") in err and EARLIER in err
    assert _listing(tmp_path) == before  # nothing written, nothing deleted


def test_resuming_with_another_number_of_processes_is_refused(saved_run, tmp_path, capsys):
    checkpoint, config, output = saved_run
    state = tmp_path / "state-step000002"
    shutil.copytree(output / "state-step000002", state)
    values = json.loads((state / "train_state.json").read_text())
    values["fingerprint"]["processes"] = 2
    (state / "train_state.json").write_text(json.dumps(values))
    assert _train(checkpoint, config, tmp_path / "out", "--max_train_steps", "2", "--resume", str(state)) == 2
    assert "saved by 2 process(es), this run has 1; launch 2 to resume it" in capsys.readouterr().err


def test_a_killed_save_leaves_no_state_and_is_cleaned_up_at_the_next_save(tiny_checkpoints, tmp_path, monkeypatch,
                                                                          capsys):  # fmt: skip
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    output = tmp_path / "out"
    flags = ("--max_train_steps", "3", "--save_every_n_steps", "1", "--save_state", "--save_last_n_checkpoints", "1")

    def killed(*args, **kwargs):
        raise OSError("No space left on device")  # stands for a run killed while writing its state

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "save_rng", killed)
        with pytest.raises(OSError):
            _train(checkpoint, config, output, *flags)
    partial = output / ".state-step000001.partial"
    assert (partial / "trainable.pt").is_file() and not list(output.glob("state-step*"))

    assert _train(checkpoint, config, output, "--max_train_steps", "3", "--resume", str(partial)) == 2
    assert (
        f"error: {partial}: an unfinished save (the run stopped while writing it); {EARLIER}" in capsys.readouterr().err
    )

    assert _train(checkpoint, config, output, *flags) == 0  # saves at steps 1, 2, 3 keep the last one
    assert sorted(p.name for p in output.iterdir()) == ["logs", "ltx2_lora-step000003.safetensors",
                                                        "ltx2_lora.safetensors", "state-step000003"]  # fmt: skip


def test_keep_last_ignores_unfinished_saves(tmp_path):
    for name in ("state-step000001", "state-step000002", ".state-step000003.partial"):
        (tmp_path / name).mkdir()
    ckpt.keep_last(tmp_path, "ltx2_lora", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".state-step000003.partial", "state-step000002"]


def test_metrics_keep_each_step_once_when_a_run_restarts_at_a_step(tmp_path):
    lines = [json.dumps({"step": step, "loss": 1.0}) for step in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # cut short by a kill
    logger = MetricLogger(tmp_path, "none", {}, start_step=3)
    logger.log({"loss": 0.5}, 4)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == 0.5
    MetricLogger(tmp_path, "none", {}, start_step=0).close()  # a new run in the same folder starts a new log
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_resume_extend_trains_a_finished_run_longer(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints["2.3"].path
    config = write_synthetic_dataset(tmp_path / "data")
    output = tmp_path / "out"
    common = ("--lr_scheduler", "linear", "--learning_rate", "1e-3", "--save_state")
    assert _train(checkpoint, config, output, *common, "--max_train_steps", "3") == 0
    finished = output / "state-step000003"
    capsys.readouterr()

    # Without the flag a new length is a changed run; with it, other changes still are.
    assert _train(checkpoint, config, output, *common, "--max_train_steps", "5", "--resume", str(finished)) == 2
    err = capsys.readouterr().err
    assert "cannot resume, the run changed (total_steps: 3 -> 5)" in err and "--resume_extend" in err
    assert _train(checkpoint, config, output, *common, "--max_train_steps", "5", "--network_dim", "8", "--resume",
                  str(finished), "--resume_extend") == 2  # fmt: skip
    assert "(rank: 4 -> 8)" in capsys.readouterr().err
    assert _train(checkpoint, config, output, *common, "--max_train_steps", "3", "--resume", str(finished),
                  "--resume_extend") == 2  # fmt: skip
    assert "is at step 3 already and this run ends at step 3" in capsys.readouterr().err

    assert _train(checkpoint, config, output, *common, "--max_train_steps", "5", "--resume", str(finished),
                  "--resume_extend") == 0  # fmt: skip
    records = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    # The schedule of the new length: steps 4 and 5 of 5 (the first three followed the schedule of 3).
    assert [r["lr"] for r in records[3:]] == pytest.approx([1e-3 * lr_factor(s, 5, "linear") for s in (3, 4)])
    extended = json.loads((output / "state-step000005" / "train_state.json").read_text())
    assert extended["step"] == 5 and extended["fingerprint"]["total_steps"] == 5  # resumable as a run of 5


def test_resume_extend_needs_resume(capsys):
    assert run(main, ["--dataset_config", "d.toml", "--ltx2_checkpoint", "c.safetensors", "--resume_extend"]) == 2
    assert "error: --resume_extend: only means something with --resume" in capsys.readouterr().err
