"""Training metrics: one record per optimizer step to a JSONL file, and to TensorBoard or Weights & Biases; previews
(video, image, audio) to TensorBoard or Weights & Biases."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from ltx2_tuner.errors import ConfigError

SIGMA_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def sigma_bucket(sigma: float) -> str:
    """The official trainer's per-sigma loss buckets: "0.00-0.25", ..., "0.75-1.00"."""
    index = min(int(sigma * (len(SIGMA_BUCKETS) - 1)), len(SIGMA_BUCKETS) - 2)
    return f"{SIGMA_BUCKETS[index]:.2f}-{SIGMA_BUCKETS[index + 1]:.2f}"


def keep_records_up_to(path: Path, step: int) -> None:
    """Drop the records after `step` from a JSONL metrics file (and a line cut short by a killed run), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class MetricLogger:
    """`log(metrics, step)` writes `metrics.jsonl` in `directory` and to the chosen backend (tensorboard, wandb, none).

    A run that starts at `start_step` (a resume; 0 for a new run) first drops what an earlier run in this folder
    logged after that step, so each step appears once.
    """

    def __init__(self, directory: Path, backend: str, config: dict, start_step: int = 0):
        directory.mkdir(parents=True, exist_ok=True)
        keep_records_up_to(directory / "metrics.jsonl", start_step)
        self._jsonl = (directory / "metrics.jsonl").open("a", encoding="utf-8")
        self._tensorboard = self._wandb = None
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides the earlier events from this step on, as the JSONL file drops them.
            self._tensorboard = SummaryWriter(str(directory), purge_step=start_step + 1)
        elif backend == "wandb":
            try:
                import wandb
            except ImportError:
                raise ConfigError("--log_with wandb needs the wandb package: pip install wandb") from None
            self._wandb = wandb.init(project="ltx2-tuner", config={k: str(v) for k, v in config.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for key, value in metrics.items():
                self._tensorboard.add_scalar(_tag(key), value, step)
        if self._wandb is not None:
            self._wandb.log({_tag(key): value for key, value in metrics.items()}, step=step)

    def log_media(
        self,
        tag: str,
        path: Path,
        frames: torch.Tensor | None,
        fps: float | None,
        step: int,
        audio: torch.Tensor | None = None,
        audio_rate: int | None = None,
    ) -> None:
        """One preview: `path` (the written file), frames uint8 [F, H, W, 3] (None: an audio-only preview), audio
        float [C, S] in [-1, 1].

        TensorBoard shows a clip with `add_video`, which needs moviepy; without it, the middle frame as an image. Its
        audio panel is mono, so the channels are averaged there. Weights & Biases gets the written file.
        """
        if self._tensorboard is not None:
            board = self._tensorboard
            if frames is not None and frames.shape[0] > 1 and importlib.util.find_spec("moviepy") is not None:
                board.add_video(tag, frames.permute(0, 3, 1, 2)[None], step, fps=max(1, round(fps)))
            elif frames is not None:
                board.add_image(tag, frames[frames.shape[0] // 2], step, dataformats="HWC")
            if audio is not None:
                board.add_audio(f"{tag}_audio", audio.float().mean(0).clamp(-1, 1), step, sample_rate=audio_rate)
            board.flush()
        if self._wandb is not None:
            import wandb

            if frames is None:
                media = wandb.Audio(str(path))
            else:
                media = wandb.Image(str(path)) if frames.shape[0] == 1 else wandb.Video(str(path), format="mp4")
            self._wandb.log({tag: media}, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _tag(key: str) -> str:
    """train/loss, train/lr, ...; the validation loss under val/ (val_loss_video -> val/loss_video)."""
    return f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"
