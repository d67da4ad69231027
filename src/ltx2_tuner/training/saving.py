"""Writing a run's results: LoRA files (EMA and raw), the resumable state, and the weights evaluation sees.

With `--ema_decay` a save writes the EMA weights as NAME[-stepN].safetensors (the file users load) and the trained
weights as NAME[-stepN]-raw.safetensors beside it; the state folder holds both. Schedule-free optimizers keep the
weights users must get in their "eval" mode (training/optim.py): every save, preview and validation loss switches
to it and back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ltx2_tuner.dtypes import STORAGE_DTYPES
from ltx2_tuner.networks.lora_files import VERSION_KEY
from ltx2_tuner.training import checkpoints as ckpt
from ltx2_tuner.training import distributed
from ltx2_tuner.training.optim import evaluation_weights

if TYPE_CHECKING:
    from ltx2_tuner.training.trainer import Run


@contextlib.contextmanager
def weights_users_get(run: Run) -> Iterator[None]:
    """Within: the model holds the weights a saved LoRA file gets (schedule-free's eval weights, then the EMA)."""
    with evaluation_weights(run.optimizer), run.ema.applied() if run.ema else contextlib.nullcontext():
        yield


def save_checkpoint(run: Run, step: int | None, name_suffix: str = "") -> Path:
    """The LoRA (rank 0; with EMA also the raw one) and, with --save_state, the resumable state (not for the Ctrl-C
    save); keeps the last N. Returns the LoRA file users load."""
    args, accelerator = run.args, run.accelerator
    output_dir: Path = args.output_dir
    name = args.output_name + name_suffix
    path = ckpt.lora_path(output_dir, name, step)
    backbone = accelerator.unwrap_model(run.model).backbone
    accelerator.wait_for_everyone()
    with weights_users_get(run):
        _write_lora(run, backbone, path, "ema" if run.ema else None)
    if run.ema:  # the trained weights beside the EMA (schedule-free never runs with an EMA: config.py refuses it)
        _write_lora(run, backbone, ckpt.lora_path(output_dir, name, step, raw=True), "raw")
    if args.save_state and not name_suffix:
        _save_state(run, backbone)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and step is not None and not name_suffix:
        ckpt.keep_last(output_dir, args.output_name, args.save_last_n_checkpoints)
    return path


def _write_lora(run: Run, backbone, path: Path, weights: str | None) -> None:
    with distributed.full_trainable(backbone):  # FSDP: every rank gathers the full LoRA; rank 0 writes it
        if run.accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            metadata = lora_metadata(run) | ({"ltx2_weights": weights} if weights else {})
            run.network_module.save_lora(path, backbone, run.spec, metadata, STORAGE_DTYPES[run.args.save_precision])


def _save_state(run: Run, backbone) -> None:
    """state-stepNNNNNN/ of the current step: written under a temporary name, renamed once every rank's files are in.
    The trainable weights are saved as they train (schedule-free's train mode: what its optimizer state pairs with)."""
    accelerator, output_dir, step = run.accelerator, run.args.output_dir, run.state.step
    optimizer_state = distributed.full_optimizer_state(run.optimizer)  # every rank: FSDP gathers it
    partial = ckpt.partial_state_dir(output_dir, step)
    with distributed.full_trainable(backbone):
        if accelerator.is_main_process:
            ckpt.start_state_folder(output_dir, step)
            ckpt.save_trainable(partial, backbone)
            ckpt.save_optimizer(partial, optimizer_state)
            ckpt.write_state(partial, run.state)
    if run.ema:
        with run.ema.applied(), distributed.full_trainable(backbone):
            if accelerator.is_main_process:
                ckpt.save_trainable(partial, backbone, ckpt.EMA_FILE)
    accelerator.wait_for_everyone()
    ckpt.save_rng(partial, accelerator.process_index, run.generator)
    accelerator.wait_for_everyone()  # every rank's random states are written
    if accelerator.is_main_process:
        ckpt.publish_state_folder(partial, ckpt.state_dir(output_dir, step))


def lora_metadata(run: Run) -> dict:
    args = run.args
    return {
        "base_model_fingerprint": run.fingerprint["checkpoint"],
        VERSION_KEY: run.model_version,
        "ltx_mode": args.ltx_mode,
        "training_mode": run.roles.name,  # t2v, t2av, t2a, a2v or v2a
        **run.condition_metadata,
        "training_step": str(run.state.step),
        "training_settings": json.dumps(
            {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}, sort_keys=True
        ),
    }
