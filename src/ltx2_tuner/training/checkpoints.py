"""Saving and resuming: LoRA files (official format), the resumable training state, keeping the last N.

The training state is our own small folder rather than `accelerator.save_state`, which would also write every
frozen base weight (tens of GB) next to the few MB of LoRA:

    state-step000100/
      trainable.pt         the trainable parameters as they are (exact, unlike the scale-folded LoRA file)
      ema.pt               with --ema_decay: their moving average, by the same names
      optimizer.pt         optimizer state (identical on every rank under DDP, gathered under FSDP; rank 0 writes it)
      rng-rank{r}.pt       each rank's generator and global RNG states
      train_state.json     step, epoch, batches done in the epoch, and the run fingerprint checked on resume

A save writes the folder as `.state-step000100.partial` and renames it into place once every rank's files are in
it, so a run killed while saving leaves no folder that looks like a state; the next save removes such leftovers. Each
file is written through a temporary name too (models/safetensors_io.py `write_atomically`), so a full disk is one
clear line rather than a torch zip-writer error.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ltx2_tuner.errors import CheckpointError, ConfigError
from ltx2_tuner.models.safetensors_io import write_atomically

STATE_FILE = "train_state.json"
TRAINABLE_FILE = "trainable.pt"
OPTIMIZER_FILE = "optimizer.pt"
EMA_FILE = "ema.pt"
RAW_SUFFIX = "-raw"  # with --ema_decay the LoRA files hold the EMA; NAME-raw files beside them the trained weights
_PARTIAL_SUFFIX = ".partial"
_REPLACED_SUFFIX = ".replaced"
_EARLIER = "resume from an earlier state-step folder"
_DISK_FULL_FIX = "free space on that drive, then --resume the newest state-step folder (earlier saves are intact)"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` this rank has consumed
    fingerprint: dict | None = None


def lora_path(output_dir: Path, name: str, step: int | None = None, raw: bool = False) -> Path:
    """NAME[-stepNNNNNN][-raw].safetensors (raw: the trained weights beside an EMA file)."""
    stem = f"{name}-step{step:06d}" if step is not None else name
    return output_dir / f"{stem}{RAW_SUFFIX if raw else ''}.safetensors"


def state_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"state-step{step:06d}"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def keep_last(output_dir: Path, name: str, keep: int | None) -> None:
    """Delete all but the newest `keep` intermediate LoRA files (EMA and raw) and state folders of this run."""
    if not keep:
        return
    pattern = re.compile(rf"^(?:{re.escape(name)}-step|state-step)(\d{{6}})(?:(?:{RAW_SUFFIX})?\.safetensors)?$")
    entries = sorted((int(m[1]), p) for p in output_dir.iterdir() if (m := pattern.match(p.name)))
    steps = sorted({step for step, _ in entries}, reverse=True)[:keep]
    for step, path in entries:
        if step not in steps:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# Writing a state folder: rank 0 starts it, every rank adds its files, rank 0 publishes it after a barrier.
def start_state_folder(output_dir: Path, step: int) -> Path:
    """Remove leftovers of saves that never finished; return the new, empty temporary folder of this save."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for leftover in output_dir.glob(".state-step*"):
        if not leftover.is_dir():
            continue
        if leftover.name.endswith(_REPLACED_SUFFIX):
            final = output_dir / leftover.name.removeprefix(".").removesuffix(_REPLACED_SUFFIX)
            if not final.exists():  # killed between publish_state_folder's renames: this complete state goes back
                os.replace(leftover, final)
                continue
        if leftover.name.endswith((_PARTIAL_SUFFIX, _REPLACED_SUFFIX)):
            shutil.rmtree(leftover)
    partial = partial_state_dir(output_dir, step)
    partial.mkdir()
    return partial


def partial_state_dir(output_dir: Path, step: int) -> Path:
    """Where a save of `step` writes before it is complete (hidden, and not matched by keep_last)."""
    return output_dir / f".{state_dir(output_dir, step).name}{_PARTIAL_SUFFIX}"


def publish_state_folder(partial: Path, final: Path) -> None:
    """Rename the complete temporary folder to `final`; a folder already there (an earlier save of this step) goes."""
    if final.exists():
        replaced = final.with_name(f".{final.name}{_REPLACED_SUFFIX}")
        os.replace(final, replaced)
        os.replace(partial, final)
        shutil.rmtree(replaced)
    else:
        os.replace(partial, final)


def save_rng(directory: Path, rank: int, generator: torch.Generator) -> None:
    states = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    _write(directory / rng_file(rank), lambda file: torch.save(states, file))


def save_trainable(directory: Path, module: torch.nn.Module, file_name: str = TRAINABLE_FILE) -> None:
    """The module's trainable parameters by name (EMA_FILE: called while the EMA is swapped in)."""
    params = {name: p.detach().cpu() for name, p in module.named_parameters() if p.requires_grad}
    _write(directory / file_name, lambda file: torch.save(params, file))


def save_optimizer(directory: Path, state_dict: dict) -> None:
    """`state_dict`: the optimizer's, with full tensors (training/distributed.py `full_optimizer_state`)."""
    _write(directory / OPTIMIZER_FILE, lambda file: torch.save(state_dict, file))


def write_state(directory: Path, state: TrainState) -> None:
    text = json.dumps(asdict(state), indent=1, sort_keys=True)
    _write(directory / STATE_FILE, lambda file: file.write(text.encode("utf-8")))


def _write(path: Path, write) -> None:
    """One file of the temporary state folder; a full disk stops the run with one line (CheckpointError), leaving the
    earlier state folders as they were and this one hidden (removed by the next save)."""
    write_atomically(path, write, CheckpointError, _DISK_FULL_FIX, remove_abandoned=False)  # a new folder


# Resuming: read and check every file first, then restore; a bad folder changes nothing.
@dataclass
class SavedState:
    state: TrainState
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict  # this rank's
    ema: dict[str, torch.Tensor] | None = None  # saved by a run with --ema_decay


def read_saved_state(directory: Path, rank: int, processes: int) -> SavedState:
    """Every file of a --resume folder, loaded on the CPU and checked; one line naming the bad file otherwise."""
    directory = Path(directory)
    if directory.name.endswith((_PARTIAL_SUFFIX, _REPLACED_SUFFIX)):
        raise ConfigError(f"{directory}: an unfinished save (the run stopped while writing it); {_EARLIER}")
    if not directory.is_dir():
        raise ConfigError(f"{directory}: --resume folder not found; pass a state-stepNNNNNN folder of --save_state")
    names = (STATE_FILE, TRAINABLE_FILE, OPTIMIZER_FILE, *(rng_file(r) for r in range(processes)))
    if not any((directory / name).exists() for name in names):
        raise ConfigError(f"{directory}: not a training state folder (no {STATE_FILE}); pass a state-step* folder")
    state = _read_train_state(directory / STATE_FILE)
    saved_processes = (state.fingerprint or {}).get("processes", processes)
    if saved_processes != processes:
        raise ConfigError(
            f"{directory}: saved by {saved_processes} process(es), this run has {processes}; launch "
            f"{saved_processes} to resume it"
        )
    trainable = _read_tensors(directory / TRAINABLE_FILE)
    ema = _read_tensors(directory / EMA_FILE) if (directory / EMA_FILE).exists() else None
    optimizer = _load(directory / OPTIMIZER_FILE, weights_only=False)
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= optimizer.keys():
        raise ConfigError(f"{directory / OPTIMIZER_FILE}: damaged (not an optimizer state); {_EARLIER}")
    rngs = [_load(directory / rng_file(r), weights_only=False) for r in range(processes)]
    for r, rng in enumerate(rngs):
        if not isinstance(rng, dict) or not {"generator", "torch", "numpy", "python"} <= rng.keys():
            raise ConfigError(f"{directory / rng_file(r)}: damaged (not random states); {_EARLIER}")
    return SavedState(state, trainable, optimizer, rngs[rank], ema)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = _load(path, weights_only=True)
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ConfigError(f"{path}: damaged (not a dict of tensors); {_EARLIER}")
    return tensors


def _read_train_state(path: Path) -> TrainState:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; {_EARLIER}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: damaged ({error}); {_EARLIER}") from None
    keys = {field.name for field in fields(TrainState)}
    counters = ("step", "epoch", "batches_done")
    if (
        not isinstance(values, dict)
        or values.keys() != keys
        or not all(isinstance(values[k], int) and values[k] >= 0 for k in counters)
    ):
        raise ConfigError(f"{path}: damaged (expected {', '.join(sorted(keys))}); {_EARLIER}")
    return TrainState(**values)


def _load(path: Path, weights_only: bool):
    if not path.is_file():
        raise ConfigError(f"{path}: missing; {_EARLIER}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # a damaged pickle/zip raises almost anything: EOFError, KeyError, RuntimeError, ...
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]  # torch's zip errors run on
        raise ConfigError(f"{path}: damaged ({type(error).__name__}: {reason}); {_EARLIER}") from None


def restore(saved: SavedState, module: torch.nn.Module, optimizer, generator: torch.Generator) -> None:
    """Put the saved trainable weights, optimizer state and random states back (checked by read_saved_state)."""
    current = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if saved.trainable.keys() != current.keys() or any(
        saved.trainable[name].shape != param.shape for name, param in current.items()
    ):
        raise ConfigError("--resume: the saved trainable parameters differ from this network's; resume the same run")
    with torch.no_grad():
        for name, param in current.items():
            param.copy_(saved.trainable[name])
    optimizer.load_state_dict(saved.optimizer)
    states = saved.rng
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def check_fingerprint(directory: Path, saved: dict | None, current: dict, may_differ: tuple[str, ...] = ()) -> None:
    """Resume only the same run (settings in `may_differ` aside): stop with every differing setting named."""
    saved = saved or {}
    current = json.loads(json.dumps(current))
    keys = (set(saved) | set(current)) - set(may_differ)
    changed = sorted(key for key in keys if saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
        fix = "restore those settings"
        if "total_steps" in changed:
            fix += " (a new --max_train_steps / --max_train_epochs alone is allowed with --resume_extend)"
        raise ConfigError(f"{directory}: cannot resume, the run changed ({details}); {fix}")
