"""Saving and resuming: LoRA files (official format), the resumable training state, keeping the last N.

The training state is our own small folder rather than `accelerator.save_state`, which would also write every
frozen base weight (tens of GB) next to the few MB of LoRA:

    state-step000100/
      trainable.pt         the trainable parameters as they are (exact, unlike the scale-folded LoRA file)
      optimizer.pt         optimizer state (identical on every rank under DDP, so rank 0 writes it)
      rng-rank{r}.pt       each rank's generator and global RNG states
      train_state.json     step, epoch, batches done in the epoch, and the run fingerprint checked on resume
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ltx2_tuner.errors import ConfigError

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` this rank has consumed
    fingerprint: dict | None = None


def lora_path(output_dir: Path, name: str, step: int | None = None) -> Path:
    return output_dir / (f"{name}-step{step:06d}.safetensors" if step is not None else f"{name}.safetensors")


def state_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"state-step{step:06d}"


def keep_last(output_dir: Path, name: str, keep: int | None) -> None:
    """Delete all but the newest `keep` intermediate LoRA files and state folders of this run."""
    if not keep:
        return
    pattern = re.compile(rf"^(?:{re.escape(name)}-step|state-step)(\d{{6}})(?:\.safetensors)?$")
    entries = sorted((int(m[1]), p) for p in output_dir.iterdir() if (m := pattern.match(p.name)))
    steps = sorted({step for step, _ in entries}, reverse=True)[:keep]
    for step, path in entries:
        if step not in steps:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_rng(directory: Path, rank: int, generator: torch.Generator) -> None:
    states = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    _atomic_torch_save(states, directory / f"rng-rank{rank}.pt")


def load_rng(directory: Path, rank: int, generator: torch.Generator) -> None:
    path = directory / f"rng-rank{rank}.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; resume with the same number of processes as the saved run")
    states = torch.load(path, weights_only=False)
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_trainable(directory: Path, module: torch.nn.Module) -> None:
    params = {name: p.detach().cpu() for name, p in module.named_parameters() if p.requires_grad}
    _atomic_torch_save(params, directory / "trainable.pt")


def load_trainable(directory: Path, module: torch.nn.Module) -> None:
    saved = torch.load(directory / "trainable.pt", weights_only=True)
    current = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if saved.keys() != current.keys():
        raise ConfigError(f"{directory}: its trainable parameters differ from this network's; resume the same run")
    with torch.no_grad():
        for name, param in current.items():
            param.copy_(saved[name])


def save_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    _atomic_torch_save(optimizer.state_dict(), directory / "optimizer.pt")


def write_state(directory: Path, state: TrainState) -> None:
    tmp = directory / f".{STATE_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
    os.replace(tmp, directory / STATE_FILE)


def read_state(directory: Path) -> TrainState:
    path = directory / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{directory}: not a training state folder (no {STATE_FILE}); pass a state-step* folder")
    return TrainState(**json.loads(path.read_text()))


def check_fingerprint(directory: Path, saved: dict | None, current: dict) -> None:
    """Resume only the same run: stop with every differing setting named."""
    saved = saved or {}
    current = json.loads(json.dumps(current))
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
        raise ConfigError(f"{directory}: cannot resume, the run changed ({details}); restore those settings")
