"""SIGKILL during training: between steps after a save, and inside a save (the LoRA file, the state folder). What is
left is readable (hidden temporaries aside), resuming from the last state redoes only the steps since it, the rerun
removes the temporaries and its LoRA files equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import pytest
import torch
from _crash import TRAIN_FLAGS, assert_all_readable, hidden, run_killed
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import trainer

LORAS = ("ltx2_lora-step000002.safetensors", "ltx2_lora-step000004.safetensors", "ltx2_lora.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoints, tmp_path_factory):
    """(the arguments without --output_dir, the uninterrupted run's output folder)."""
    root = tmp_path_factory.mktemp("training")
    config = write_synthetic_dataset(root / "data")
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), *TRAIN_FLAGS]
    assert run(main, [*argv, "--output_dir", str(root / "full")]) == 0
    return argv, root / "full"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "n", "match", "left_hidden"),
    [
        ("optimizer_step", 3, "", []),  # killed before step 3: the save of step 2 is the last
        ("inside_write", 1, "ltx2_lora-step000004", [".ltx2_lora-step000004.safetensors.tmp"]),
        ("inside_write", 1, ".state-step000004.partial/optimizer.pt", [".state-step000004.partial"]),  # LoRA 4 is done
    ],
    ids=["between_steps", "lora_write", "state_write"],
)
def test_a_killed_run_resumes_from_its_last_state_and_equals_an_uninterrupted_run(
    uninterrupted, tmp_path, monkeypatch, point, n, match, left_hidden
):
    argv, full = uninterrupted
    output = tmp_path / "out"
    run_killed("ltx2_tuner.cli.train_network", [*argv, "--output_dir", output], point, n, match)

    assert_all_readable(output)
    assert (output / "state-step000002").is_dir() and not (output / "state-step000004").exists()
    assert [name.split("tmp")[0] for name in hidden(output) if "/" not in name] == [
        name.split("tmp")[0] for name in left_hidden
    ]

    steps = []
    real_step = trainer._optimizer_step
    monkeypatch.setattr(trainer, "_optimizer_step", lambda run: steps.append(1) or real_step(run))
    resumed = [*argv, "--output_dir", str(output), "--resume", str(output / "state-step000002")]
    assert run(main, resumed) == 0
    assert len(steps) == 2  # only the steps since the last save are redone
    assert hidden(output) == []  # the rerun removed what the killed run left
    assert_all_readable(output)
    for name in LORAS:
        expected, got = load_file(full / name), load_file(output / name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), name
