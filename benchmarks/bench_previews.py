"""Previews during training: resident memory does not grow from preview to preview, and what one preview costs.

Target: resident memory (VmRSS) after the 5th preview / after the 1st <= 1.05. Also printed: one preview's time
relative to one training step (medians).

Setup: a CPU training run (fp32, AV mode, LoRA rank 8 on av_attn) of the real trainer on the tiny LTX-2.3 checkpoint
(or --size small / bench) with synthetic caches of 17-frame 2x2-latent clips and audio, previews every K steps until
5 were written: one AV prompt at 64x64, 17 frames, the LTX-2.3 defaults (30 steps, CFG 3/7, STG, rescale, modality
guidance), decoded to mp4 with AAC audio. The prompt is encoded at setup with the tiny Gemma (no sample cache). The
trainer's own PreviewRunner.run is wrapped to read VmRSS and the time after each preview.

    python benchmarks/bench_previews.py [--size tiny|small|bench] [--every K] [--workdir DIR]
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

from proc_memory import MIB, proc_bytes

TARGET = 1.05
PREVIEWS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "small", "bench"), default="tiny", help="checkpoint size")
    parser.add_argument("--every", type=int, default=3, help="training steps between previews (default 3)")
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoint and caches (default: temp dir)")
    args = parser.parse_args()

    from ltx2_tuner.testing import write_tiny_checkpoint
    from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
    from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma
    from ltx2_tuner.training import previews
    from ltx2_tuner.training.config import parse_args
    from ltx2_tuner.training.trainer import train

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltx2_bench_previews_"))
    rss, seconds = [], []
    real_run = previews.PreviewRunner.run

    def measured_run(self, model, step, logger=None):
        start = time.perf_counter()
        written = real_run(self, model, step, logger)
        seconds.append(time.perf_counter() - start)
        rss.append(proc_bytes("VmRSS"))
        return written

    previews.PreviewRunner.run = measured_run
    try:
        checkpoint = write_tiny_checkpoint(workdir, "2.3", size=args.size)
        gemma = write_tiny_gemma(workdir / "gemma")
        dims = {"tiny": (32, 16), "small": (128, 128), "bench": (512, 256)}[args.size]
        config = write_synthetic_dataset(workdir / "data", stems=("a", "b", "c", "d"), context_dims=dims)
        prompts = workdir / "prompts.txt"
        prompts.write_text("a bright square glides to the right while a tone rises --w 64 --h 64 --f 17\n")
        out = workdir / "out"
        flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av",
                 "--mixed_precision", "no", "--network_dim", "8", "--network_alpha", "8",
                 "--max_train_steps", str(PREVIEWS * args.every), "--output_dir", str(out), "--log_with", "none",
                 "--max_data_loader_n_workers", "0", "--sample_prompts", str(prompts), "--gemma_root", str(gemma),
                 "--sample_every_n_steps", str(args.every)]  # fmt: skip
        train(parse_args(flags))
        records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
        step_s = statistics.median(r["step_time_s"] for r in records[1:])
    finally:
        previews.PreviewRunner.run = real_run
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    growth = rss[-1] / rss[0]
    preview_s = statistics.median(seconds)
    print("VmRSS after each preview (MiB):", ", ".join(f"{value / MIB:.0f}" for value in rss))
    print("preview times (s):", ", ".join(f"{value:.2f}" for value in seconds))
    print(f"\nresident memory after preview {len(rss)} / after preview 1: {growth:.3f} "
          f"(target <= {TARGET}: {'PASS' if growth <= TARGET else 'FAIL'})")  # fmt: skip
    print(f"one preview {preview_s:.2f} s = {preview_s / step_s:.1f} training steps ({step_s * 1000:.0f} ms each)")
    return 0 if growth <= TARGET and len(rss) == PREVIEWS else 1


if __name__ == "__main__":
    sys.exit(main())
