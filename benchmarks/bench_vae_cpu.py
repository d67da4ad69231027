"""Latent caching on a CPU with the default `--vae_dtype bf16`, against fp32: time ratio (target <= 1.3).

PyTorch's CPU Conv3d in bf16 is two orders of magnitude slower than in fp32, so `LatentEncoder` computes the video
VAE in fp32 on a CPU and stores the requested dtype. This measures the encoder as `ltx2_cache_latents.py` builds
it: requested bf16 / requested fp32, medians of 7 interleaved encodes after a warm-up, on the tiny-checkpoint factory's VAE
with 9 frames at 192 x 192 (the clip that took 230 s in bf16). For the record it also times one encode with the
VAE really in bf16 on a smaller clip (9 frames at 64 x 64), the pathology the default avoids.

    python benchmarks/bench_vae_cpu.py [--version 2.0|2.3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET = 1.3


def _median_encode_s(encoders: dict, frames: torch.Tensor, repeats: int = 7) -> dict[str, float]:
    """Median seconds per encode of each encoder, their runs interleaved so that load on the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode_video(frames)  # warm-up
    for _ in range(repeats):
        for name, encoder in encoders.items():
            start = time.perf_counter()
            encoder.encode_video(frames)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.models import load_video_vae, read_checkpoint_info
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", choices=("2.0", "2.3"), default="2.3")
    args = parser.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as workdir:
        info = read_checkpoint_info(write_tiny_checkpoint(Path(workdir), args.version, seed=0))
        frames = torch.rand(1, 3, 9, 192, 192) * 2 - 1
        encoders = {
            "fp32": LatentEncoder(info, None, cpu, torch.float32, VaeTiling()),
            "bf16": LatentEncoder(info, None, cpu, torch.bfloat16, VaeTiling()),
        }
        medians = _median_encode_s(encoders, frames)
        fp32, bf16 = medians["fp32"], medians["bf16"]
        stored = encoders["bf16"].encode_video(frames).dtype

        small = frames[..., :64, :64]
        raw = load_video_vae(info, part="encoder", dtype=torch.bfloat16, device=cpu)
        start = time.perf_counter()
        with torch.no_grad():
            raw.encode(small.to(torch.bfloat16))
        raw_bf16_small = time.perf_counter() - start
        small_fp32 = _median_encode_s({"fp32": encoders["fp32"]}, small, repeats=3)["fp32"]

    ratio = bf16 / fp32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LTX-{args.version} tiny VAE, CPU")
    print(f"9x192x192: requested fp32 {fp32:.3f} s, requested bf16 {bf16:.3f} s (stored {stored})")
    print(f"ratio bf16-requested / fp32: {ratio:.2f} (target <= {TARGET}) {'PASS' if ratio <= TARGET else 'FAIL'}")
    print(f"for the record, 9x64x64 with the VAE really in bf16: {raw_bf16_small:.2f} s vs fp32 {small_fp32:.3f} s")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
