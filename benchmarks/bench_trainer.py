"""Trainer overhead: a full training step against the bare transformer forward+backward on the same batch (CPU).

Target: trainer step time / bare forward+backward <= 1.05; also the share of the step spent waiting for data.

Setup: the "bench" checkpoint (16 layers, width 512; fp32) with synthetic caches of 17-frame 4x6-latent clips and
audio, AV mode, LoRA rank 16 on the av_attn preset. The trainer runs its real loop (cache loading, input
preparation, forward, backward, clipping, optimizer step, logging) for 20 steps and logs each step's time; the bare
step is the LoRA model's forward+backward alone on one prepared batch, timed before and after the trainer. Medians,
after 2 warm-up steps. Data loading runs in the main process (`--max_data_loader_n_workers 0`): on 2 cores a worker
process competes with the compute it is meant to hide.

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
    parser.add_argument("--steps", type=int, default=20, help="trainer steps to time (default 20)")
    parser.add_argument("--verbose", action="store_true", help="print every step time")
    args = parser.parse_args()

    import torch

    from ltx2_tuner.cache.cached_dataset import CachedBatches
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
                 "--max_data_loader_n_workers", "0"]  # fmt: skip
        model = load_transformer(checkpoint, mode="av")
        targets = lora_ltx2.select_targets(model.backbone, "av")
        lora_ltx2.add_lora(model.backbone, lora_ltx2.LoraSpec(16, 16.0, 0.0, targets))
        model.train()
        batch = CachedBatches(load_dataset_config(config), "av")[0]
        flow = FlowSettings()
        inputs = prepare_inputs(batch, "av", flow, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)

        def bare_steps(count: int) -> list[float]:
            times = []
            for _ in range(count):
                start = time.perf_counter()
                loss, _ = compute_loss(model(inputs.video, inputs.audio), inputs, flow)
                loss.backward()
                times.append(time.perf_counter() - start)
            return times

        # What the trainer adds to forward+backward, timed alone in this process (steadier than the step ratio
        # on a shared machine): loading and collating a batch, input preparation, clipping, optimizer step.
        from ltx2_tuner.training.optim import make_optimizer

        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, "AdamW", 1e-4, None)
        batches = CachedBatches(load_dataset_config(config), "av")
        parts = {"load": [], "prepare": [], "clip": [], "optimizer": []}
        for index in range(8):
            start = time.perf_counter()
            batch = batches[index % len(batches)]
            parts["load"].append(time.perf_counter() - start)
            start = time.perf_counter()
            prepared = prepare_inputs(batch, "av", flow, torch.Generator().manual_seed(index), torch.device("cpu"),
                                      torch.float32)  # fmt: skip
            parts["prepare"].append(time.perf_counter() - start)
            compute_loss(model(prepared.video, prepared.audio), prepared, flow)[0].backward()
            start = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            parts["clip"].append(time.perf_counter() - start)
            start = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            parts["optimizer"].append(time.perf_counter() - start)
        overhead = {name: statistics.median(values[2:]) for name, values in parts.items()}

        # The bare steps run before and after the trainer, so that drifting machine load hits both alike.
        bare_times = bare_steps(args.steps // 2 + 2)[2:]
        train(parse_args(flags))
        bare_times += bare_steps(args.steps // 2)
        bare = statistics.median(bare_times)
        records = [json.loads(line) for line in (workdir / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
        timed = records[2:]
        step_time = statistics.median(r["step_time_s"] for r in timed)
        wait_share = sum(r["data_wait_s"] for r in timed) / sum(r["step_time_s"] for r in timed)
        if args.verbose:
            print("trainer step times (ms):", [round(r["step_time_s"] * 1000) for r in timed])
            print("bare step times (ms):", [round(t * 1000) for t in bare_times])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    ratio = step_time / bare
    added = sum(overhead.values())
    print("trainer work besides forward+backward: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in overhead.items())
          + f" = {100 * added / bare:.1f}% of forward+backward")  # fmt: skip
    print(f"\ntrainer step {step_time * 1000:.1f} ms, bare forward+backward {bare * 1000:.1f} ms, "
          f"ratio {ratio:.3f} (target <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'}); "
          f"data wait {100 * wait_share:.1f}% of step time")  # fmt: skip
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
