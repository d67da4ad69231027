"""Media decoding for latent caching: decode+resize throughput against plain PyAV, and VAE-encode throughput.

Target (issue "datasets and latent caching"): `read_video_frames(path, times, size=bucket)` delivers at least
0.8x the frames per second of plain PyAV decoding of the same file, `for frame in container.decode(video=0):
frame.to_ndarray(format="rgb24")`, i.e. picking frames by time, scaling to the bucket and cropping cost
little beyond decoding itself.

(a) Writes a camera-like synthetic clip (1280x720, 24 fps, 5 s, libx264 CRF 18, a panning texture plus film
grain: ~9 Mbit/s, so decoding costs what it does for real footage) and reads all 120 frames with each method.
Methods run interleaved, --rounds times each; each row is its best round. Reference rows show what the
alternatives cost: full-size frames, decoding alone, and one-step swscale scaling straight to RGB.
(b) Encodes [1, 3, F, 448, 768] clips with the video VAE encoder of a tiny LTX-2.3 checkpoint (the official
architecture with few layers and channels, random weights): the absolute frames/s are for the TINY VAE, not
the real one, which is far slower; the number only shows how much faster decoding is than any VAE encode.

    python benchmarks/bench_media.py [--rounds N] [--workdir DIR] [--keep] [--skip-vae]

Exits 1 if the decode+resize ratio misses the target.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

TARGET = 0.8
WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 24, 5
BUCKET = (768, 448)  # (width, height), the reference's example bucket
GRAIN = 3.0  # film grain, 8-bit levels: ~9 Mbit/s at CRF 18, like camera footage


def plain(path: Path) -> int:
    """The baseline the target is measured against."""
    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def decode_only(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def one_step(interpolation: str):
    """Plain decoding plus swscale scaling straight to RGB: `frame.reformat(width, height, "rgb24", ...)`."""
    from av.video.reformatter import VideoReformatter

    from ltx2_tuner.data.transforms import cover_size, crop_center

    def run(path: Path) -> int:
        count = 0
        reformatter = VideoReformatter()
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                width, height = cover_size(frame.width, frame.height, *BUCKET)
                scaled = reformatter.reformat(frame, width, height, "rgb24", interpolation=interpolation)
                np.ascontiguousarray(crop_center(scaled.to_ndarray(), *BUCKET))
                count += 1
        return count

    return run


def ours(size):
    from ltx2_tuner.data.video import read_video_frames

    times = [k / FPS for k in range(FPS * SECONDS)]
    return lambda path: len(read_video_frames(path, times, size=size))


def bench_decoding(path: Path, rounds: int) -> list[tuple[str, float]]:
    methods = [
        ("plain PyAV: decode + `to_ndarray(format='rgb24')` (baseline)", plain),
        (f"**ours: `read_video_frames(times, size={BUCKET})`**", ours(BUCKET)),
        ("ours: `read_video_frames(times)`, full size", ours(None)),
        ("reference: decode only, no RGB conversion", decode_only),
        ("reference: decode + one-step `reformat(796, 448, 'rgb24', BICUBIC)` + crop", one_step("BICUBIC")),
        ("reference: decode + one-step `reformat(796, 448, 'rgb24', AREA)` + crop", one_step("AREA")),
    ]
    best = {name: float("inf") for name, _ in methods}
    for _ in range(rounds):
        for name, method in methods:
            start = time.perf_counter()
            frames = method(path)
            best[name] = min(best[name], time.perf_counter() - start)
            assert frames == FPS * SECONDS, (name, frames)
    return [(name, FPS * SECONDS / seconds) for name, seconds in best.items()]


def bench_vae(workdir: Path) -> tuple[int, list[tuple[int, float]]]:
    """(encoder parameters, [(frames per clip, frames/s)])."""
    import torch

    from ltx2_tuner.models import load_video_vae
    from ltx2_tuner.testing import write_tiny_checkpoint

    vae = load_video_vae(write_tiny_checkpoint(workdir, "2.3"), part="encoder")
    rows = []
    with torch.no_grad():
        vae.encode(torch.zeros(1, 3, 9, 64, 64))  # warm-up: first-call allocations
        for num_frames in (9, 17):
            clip = torch.rand(1, 3, num_frames, BUCKET[1], BUCKET[0]) * 2 - 1
            times = []
            for _ in range(2):
                start = time.perf_counter()
                vae.encode(clip).latent_dist.mode()
                times.append(time.perf_counter() - start)
            rows.append((num_frames, num_frames / min(times)))
    return sum(p.numel() for p in vae.parameters()), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per decoding method (best counts)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the clip (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--skip-vae", action="store_true", help="only the decoding benchmark")
    args = parser.parse_args()

    from ltx2_tuner.testing.synthetic_media import write_video

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_media_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        clip = write_video(workdir / "clip.mp4", FPS * SECONDS, FPS, WIDTH, HEIGHT, grain=GRAIN)
        megabits = clip.stat().st_size * 8 / SECONDS / 1e6
        print(f"clip: {WIDTH}x{HEIGHT} @ {FPS} fps, {SECONDS} s, libx264, {megabits:.1f} Mbit/s "
              f"(written in {time.perf_counter() - start:.1f} s)\n")  # fmt: skip

        rows = bench_decoding(clip, args.rounds)
        baseline = rows[0][1]
        print(f"(a) decode {WIDTH}x{HEIGHT} -> bucket {BUCKET[0]}x{BUCKET[1]}, best of {args.rounds} rounds\n")
        print("| method | frames/s | vs plain |\n|---|---:|---:|")
        for name, fps in rows:
            print(f"| {name} | {fps:.0f} | {fps / baseline:.2f}x |")
        ratio = rows[1][1] / baseline
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(f"\ndecode+resize / plain decode = {ratio:.2f} (target >= {TARGET}): {verdict}\n")

        if not args.skip_vae:
            parameters, vae_rows = bench_vae(workdir)
            print(f"(b) video VAE encode of [1, 3, F, {BUCKET[1]}, {BUCKET[0]}], fp32, CPU: the TINY LTX-2.3 VAE")
            print(f"(official architecture, {parameters / 1e6:.1f} M parameters, random weights; the real VAE is far")
            print(" slower, so these frames/s are an upper bound for it, not a prediction)\n")
            print("| frames F | tiny-VAE encode frames/s | plain decode / tiny-VAE encode |\n|---:|---:|---:|")
            for num_frames, fps in vae_rows:
                print(f"| {num_frames} | {fps:.2f} | {baseline / fps:.0f}x |")
        return 0 if ratio >= TARGET else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
