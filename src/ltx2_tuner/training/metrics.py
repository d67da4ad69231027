"""Training metrics: one record per optimizer step to a JSONL file, and to TensorBoard or Weights & Biases."""

from __future__ import annotations

import json
from pathlib import Path

from ltx2_tuner.errors import ConfigError

SIGMA_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def sigma_bucket(sigma: float) -> str:
    """The official trainer's per-sigma loss buckets: "0.00-0.25", ..., "0.75-1.00"."""
    index = min(int(sigma * (len(SIGMA_BUCKETS) - 1)), len(SIGMA_BUCKETS) - 2)
    return f"{SIGMA_BUCKETS[index]:.2f}-{SIGMA_BUCKETS[index + 1]:.2f}"


class MetricLogger:
    """`log(metrics, step)` writes `metrics.jsonl` in `directory` and to the chosen backend (tensorboard, wandb, none)."""

    def __init__(self, directory: Path, backend: str, config: dict):
        directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = (directory / "metrics.jsonl").open("a", encoding="utf-8")
        self._tensorboard = self._wandb = None
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(directory))
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
                self._tensorboard.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{key}": value for key, value in metrics.items()}, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
