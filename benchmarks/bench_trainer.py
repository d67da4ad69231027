"""Trainer overhead: a full training step against the bare transformer forward+backward on the same batch (CPU).

Target: trainer step time / bare forward+backward <= 1.05; also the share of the step spent waiting for data.

Setup: the "bench" checkpoint (16 layers, width 512; fp32) with synthetic caches of 17-frame 4x6-latent clips and
audio, AV mode, LoRA rank 16 on the av_attn preset. The trainer runs its real loop (cache loading in a DataLoader
worker, input preparation, forward, backward, clipping, optimizer step, logging) for 12 steps and logs each step's
time; the bare step is the LoRA model's forward+backward alone on one prepared batch. Medians, after 2 warm-up steps.

    python benchmarks/bench_trainer.py [--workdir DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoint and caches (default: temp dir)")
    parser.add_argument("--steps", type=int, default=12, help="trainer steps to time (default 12)")
    args = parser.parse_args()

    import torch

    from ltx2_tuner.data.cached_dataset import CachedBatches
    from ltx2_tuner.data.config import load_dataset_config
    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.networks import lora_ltx2
    from ltx2_tuner.testing import write_tiny_checkpoint
    from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
    from ltx2_tuner.training.config import parse_args
    from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs
    from ltx2_tuner.training.trainer import train

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltx2_bench_"))
    try:
        checkpoint = write_tiny_checkpoint(workdir, "2.3", size="bench")
        config = write_synthetic_dataset(workdir / "data", stems=("a", "b", "c", "d"), latent_size=(4, 6),
                                         context_dims=(512, 256), text_tokens=256)  # fmt: skip
        flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av",
                 "--mixed_precision", "no", "--network_dim", "16", "--network_alpha", "16",
                 "--max_train_steps", str(args.steps), "--output_dir", str(workdir / "out"), "--log_with", "none",
                 "--max_data_loader_n_workers", "1"]  # fmt: skip
        train(parse_args(flags))
        records = [json.loads(line) for line in (workdir / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
        timed = records[2:]
        step_time = statistics.median(r["step_time_s"] for r in timed)
        wait_share = sum(r["data_wait_s"] for r in timed) / sum(r["step_time_s"] for r in timed)

        model = load_transformer(checkpoint, mode="av")
        targets = lora_ltx2.select_targets(model.backbone, "av")
        lora_ltx2.add_lora(model.backbone, lora_ltx2.LoraSpec(16, 16.0, 0.0, targets))
        model.train()
        batch = CachedBatches(load_dataset_config(config), "av")[0]
        flow = FlowSettings()
        inputs = prepare_inputs(batch, "av", flow, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
        times = []
        for _ in range(len(timed) + 2):
            start = time.perf_counter()
            loss, _ = compute_loss(model(inputs.video, inputs.audio), inputs, flow)
            loss.backward()
            times.append(time.perf_counter() - start)
        bare = statistics.median(times[2:])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    ratio = step_time / bare
    print(f"\ntrainer step {step_time * 1000:.1f} ms, bare forward+backward {bare * 1000:.1f} ms, "
          f"ratio {ratio:.3f} (target <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'}); "
          f"data wait {100 * wait_share:.1f}% of step time")  # fmt: skip
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
