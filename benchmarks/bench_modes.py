"""Cost of training in video mode and audio mode (T2A) versus AV mode: weights, forward+backward time and peak memory.

A video LoRA does not need the audio stream: mode="video" neither loads nor runs the audio stream and the
audio <-> video cross-attention. An audio LoRA (T2A) does not need the video stream: mode="audio" neither loads nor
runs the video stream and the cross-attention. This benchmark measures what each saves, as ratios video / AV and
audio / AV measured in one run.

Setup: a random "bench"-size checkpoint from the tiny-checkpoint factory (16 layers, video width 512, audio 256),
fp32 on the CPU; a batch of 1 with 4 x 8 x 12 video latents (33 frames at 256 x 384) and the matching 1.4 s of
audio latents (T2A: the same audio alone); gradients on the weights of the mode's default LoRA preset (video: the
video attention projections; AV: every attention projection; T2A: audio attention and feed-forward, what each mode's
LoRA trains). Each mode runs in a fresh process: the weights are loaded first, then the peak resident memory of one forward+backward is taken above
that, and the time is the median of 3 steps after a warm-up.

    python benchmarks/bench_modes.py [--version 2.0|2.3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proc_memory import MIB, PeakRss, available

FRAMES, HEIGHT, WIDTH, FPS = 4, 8, 12, 24.0


def child(path: str, mode: str) -> None:
    import re

    import torch

    from ltx2_tuner.models import ModalityInput, audio_latent_count, audio_positions, load_transformer, video_positions
    from ltx2_tuner.networks.lora_ltx2 import PRESETS
    from ltx2_tuner.roles import roles_for

    torch.manual_seed(0)
    model = load_transformer(path, mode=mode)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = re.compile(PRESETS[roles_for(mode).default_preset])
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(name.endswith(".weight") and bool(trained.fullmatch(name.removesuffix(".weight"))))
    config = model.config
    video_context = config.caption_channels if config.use_prompt_embeddings else config.cross_attention_dim
    audio_context = config.caption_channels if config.use_prompt_embeddings else config.audio_cross_attention_dim
    sigma = torch.tensor([0.7])
    tokens = FRAMES * HEIGHT * WIDTH
    audio_tokens = audio_latent_count(1 + (FRAMES - 1) * 8, FPS)
    video = ModalityInput(torch.randn(1, tokens, 128), sigma, sigma.expand(1, tokens),
                          video_positions(1, FRAMES, HEIGHT, WIDTH, FPS), torch.randn(1, 128, video_context))  # fmt: skip
    audio = ModalityInput(torch.randn(1, audio_tokens, 128), sigma, sigma.expand(1, audio_tokens),
                          audio_positions(1, audio_tokens), torch.randn(1, 128, audio_context))  # fmt: skip
    inputs = {"video": video if mode != "audio" else None, "audio": audio if mode != "video" else None}

    def step() -> None:
        model.zero_grad(set_to_none=True)
        outputs = [o for o in model(**inputs) if o is not None]
        sum((o**2).mean() for o in outputs).backward()

    with PeakRss() as meter:
        step()
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"weights": weight_bytes, "peak": meter.peak, "seconds": statistics.median(seconds)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", choices=("2.0", "2.3"), default="2.3")
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoint (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # PATH MODE, internal
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if not available():
        print("bench_modes: needs Linux /proc to read resident memory; skipped.")
        return 0

    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltx2_bench_"))
    path = workdir / f"ltx2_bench_{args.version}.safetensors"
    try:
        if not path.exists():
            print(f"writing {path} ...", flush=True)
            write_tiny_checkpoint(workdir, args.version, size="bench", path=path)
        results = {}
        for mode in ("av", "video", "audio"):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), mode], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"bench_modes: mode {mode} failed:\n{out.stderr}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        av = results["av"]
        print(f"\nLTX-{args.version} bench transformer, fp32 CPU, {FRAMES}x{HEIGHT}x{WIDTH} video latents + audio\n")
        print(f"{'mode':<8} {'weights MiB':>11} {'fwd+bwd peak +MiB':>17} {'fwd+bwd s':>9}")
        for mode, r in results.items():
            print(f"{mode:<8} {r['weights'] / MIB:>11.1f} {r['peak'] / MIB:>17.1f} {r['seconds']:>9.3f}")
        for mode in ("video", "audio"):
            r = results[mode]
            print(
                f"{mode + '/av':<8} {r['weights'] / av['weights']:>10.2f}x {r['peak'] / av['peak']:>16.2f}x "
                f"{r['seconds'] / av['seconds']:>8.2f}x"
            )
        return 0
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
