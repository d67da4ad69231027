"""Helpers of the crash tests: start a command as a subprocess that SIGKILLs itself at a chosen point
(_crash_hooks.py), and check that what a run leaves behind is readable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import torch
from safetensors import safe_open

from ltx2_tuner.training import checkpoints as ckpt

HOOKS = Path(__file__).with_name("_crash_hooks.py")
# Training: 4 steps, a LoRA and a state at steps 2 and 4, fp32 files so that equality is exact.
TRAIN_FLAGS = ["--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4", "--max_data_loader_n_workers",
               "0", "--log_with", "none", "--max_train_steps", "4", "--save_every_n_steps", "2", "--save_state",
               "--learning_rate", "1e-3", "--save_precision", "fp32"]  # fmt: skip


def run_killed(module: str, argv: list[str], point: str, n: int, match: str = "") -> None:
    """Run `python -m module argv` and check that it was SIGKILLed at the n-th `point` (not finished, not failed)."""
    env = {**os.environ, "CRASH_AT": f"{point}:{n}", "CRASH_MATCH": match}
    result = subprocess.run([sys.executable, str(HOOKS), module, *map(str, argv)], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-3000:])


def hidden(folder: Path) -> list[str]:
    """Temporary files and folders (names starting with a dot) anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def assert_all_readable(folder: Path) -> None:
    """Every visible .safetensors opens and reads, every state-step folder resumes, every mp4 decodes."""
    for path in folder.rglob("*.safetensors"):
        if not path.name.startswith("."):
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118
                    f.get_tensor(key)
    for state in folder.rglob("state-step*"):
        ckpt.read_saved_state(state, rank=0, processes=1)
    for video in folder.rglob("*.mp4"):
        if not video.name.startswith("."):
            with av.open(str(video)) as container:
                assert sum(1 for _ in container.decode(video=0)) > 0, video


def cache_contents(folder: Path) -> dict[str, tuple[dict, dict]]:
    """Every visible .safetensors under `folder` by relative path: (metadata, tensors). Not the bytes: safetensors
    writes the metadata in hash order, which differs between processes."""
    contents = {}
    for path in sorted(folder.rglob("*.safetensors")):
        if not path.name.startswith("."):
            with safe_open(str(path), framework="pt") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
                contents[str(path.relative_to(folder))] = (f.metadata(), tensors)
    return contents


def assert_same_caches(folder: Path, reference: dict[str, tuple[dict, dict]]) -> None:
    contents = cache_contents(folder)
    assert contents.keys() == reference.keys()
    for name, (metadata, tensors) in contents.items():
        assert metadata == reference[name][0], name
        assert tensors.keys() == reference[name][1].keys(), name
        assert all(torch.equal(tensors[k], reference[name][1][k]) for k in tensors), name
