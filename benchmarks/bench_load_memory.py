"""Resident-memory cost of loading the LTX-2 transformer from an official-format checkpoint.

Target (acceptance, issue "foundation"): while `load_component(path, "transformer")` runs, the process's
resident memory grows by less than 1.5x the transformer's bytes. Loading must not hold a second copy of the
weights (a whole-file read, an mmap whose pages stay resident, an uncast fp32 copy next to the bf16 one).

What it does: writes a random "bench"-size checkpoint with the tiny-checkpoint factory (~400 MiB of fp32
transformer weights, plus a bf16 copy of the file), then measures each loading method in a fresh subprocess,
so that neither the parent's allocations nor imports count. Each child imports torch/diffusers/ltx2_tuner,
warms up (reads the header, builds the module on the meta device once), takes its baseline VmRSS, resets the
high-water mark (VmHWM, via /proc/self/clear_refs; where the kernel refuses, a thread samples VmRSS every
5 ms instead) and loads. "peak" is VmHWM minus the baseline; "kept" is
VmRSS after loading minus the baseline ("file-backed": the part that is mapped file pages). The ratio is peak
over the bytes of the loaded tensors. Each row runs --repeat times: the largest peak and the shortest time count.

    python benchmarks/bench_load_memory.py [--version 2.0|2.3] [--workdir DIR] [--keep] [--repeat N]

Linux only (reads /proc). Exits 1 if our fp32 loader misses the 1.5x target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proc_memory import MIB, PeakRss, available

TARGET = 1.5
# (method, file dtype, load dtype, label). Only "ours" rows are held to TARGET; the safetensors rows show the
# alternatives. Its get_tensor returns tensors backed by a private mmap of the file, read lazily: they cost
# little until used, then count as file-backed RSS; a copy or a cast out of the map holds the map pages too.
ROWS = [
    ("ours", "float32", "", "load_component fp32 file -> fp32"),
    ("ours", "float32", "bfloat16", "load_component fp32 file -> bf16 (cast on read)"),
    ("ours", "bfloat16", "", "load_component bf16 file -> bf16"),
    ("mmap_read", "float32", "", "reference: safe_open (mmap) get_tensor, read once"),
    ("mmap_copy", "float32", "", "reference: safe_open (mmap) get_tensor + clone"),
    ("mmap_copy", "float32", "bfloat16", "reference: safe_open (mmap) get_tensor + to(bf16)"),
]


def child(method: str, path: str, dtype_name: str) -> None:
    """Load the transformer once with `method`; print one JSON line with the memory figures."""
    import gc

    import torch
    from safetensors import safe_open

    from ltx2_tuner.models import load_component, read_checkpoint_info
    from ltx2_tuner.models.loading import build_module

    dtype = getattr(torch, dtype_name) if dtype_name else None
    # Warm-up: lazy imports inside diffusers and the module's constructed buffers are not weight memory.
    info = read_checkpoint_info(path)
    build_module(info, "transformer")
    names = info.tensor_names["transformer"]
    gc.collect()

    with PeakRss() as meter:
        start = time.perf_counter()
        if method == "ours":
            module = load_component(info, "transformer", dtype=dtype)
            result = [*module.parameters(), *module.buffers()]
        else:
            with safe_open(path, framework="pt") as f:
                if method == "mmap_read":  # zero-copy: reading each weight once faults its pages in
                    result = [f.get_tensor(name) for name in names]
                    _ = [t.sum() for t in result]
                else:  # what a loader does that casts, or copies into an allocated module
                    result = [f.get_tensor(name).to(dtype, copy=True) for name in names]
        seconds = time.perf_counter() - start
    peak, kept, kept_file = meter.peak, meter.kept, meter.kept_file
    loaded = sum(t.numel() * t.element_size() for t in result)
    print(
        json.dumps(
            dict(peak=peak, kept=kept, kept_file=kept_file, loaded=loaded, seconds=seconds, hwm=not meter.sampled)
        )
    )


def measure(method: str, path: Path, dtype_name: str, repeat: int) -> dict:
    """Worst memory and best time over `repeat` fresh children (time is noisy on a shared machine, memory is not)."""
    runs = []
    for _ in range(repeat):
        cmd = [sys.executable, __file__, "--child", method, str(path), dtype_name]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"bench_load_memory: {method} on {path.name} failed:\n{out.stderr}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    worst = max(runs, key=lambda r: r["peak"])
    return {**worst, "seconds": min(r["seconds"] for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", choices=("2.0", "2.3"), default="2.3")
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per row (default 3)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # METHOD PATH DTYPE, internal
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if not available():
        print("bench_load_memory: needs Linux /proc to read resident memory; skipped.")
        return 0

    import torch

    from ltx2_tuner.models import read_checkpoint_info
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltx2_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {dtype: workdir / f"ltx2_bench_{args.version}_{dtype}.safetensors" for dtype in ("float32", "bfloat16")}
    try:
        for dtype, path in paths.items():
            if not path.exists():  # with --workdir and --keep, a second run reuses the files
                print(f"writing {path} ...", flush=True)
                write_tiny_checkpoint(workdir, args.version, size="bench", dtype=getattr(torch, dtype), path=path)

        print(f"\nLTX-{args.version} bench checkpoint, transformer loading; target: peak < {TARGET}x loaded bytes\n")
        header = f"{'method':<50} {'file MiB':>8} {'loaded MiB':>10} {'peak +MiB':>9} {'kept +MiB':>9} "
        header += f"{'(file-backed)':>13} {'peak/loaded':>11} {'peak/file':>9} {'time s':>6}  target"
        print(header)
        print("-" * len(header))
        failed = False
        for method, file_dtype, dtype_name, label in ROWS:
            file_bytes = read_checkpoint_info(paths[file_dtype]).component_bytes("transformer")
            r = measure(method, paths[file_dtype], dtype_name, args.repeat)
            ratio = r["peak"] / r["loaded"]
            verdict = "-" if method != "ours" else ("PASS" if ratio < TARGET else "FAIL")
            failed |= (file_dtype, dtype_name, verdict) == ("float32", "", "FAIL")
            print(
                f"{label:<50} {file_bytes / MIB:>8.1f} {r['loaded'] / MIB:>10.1f} {r['peak'] / MIB:>9.1f} "
                f"{r['kept'] / MIB:>9.1f} {r['kept_file'] / MIB:>13.1f} {ratio:>10.2f}x {r['peak'] / file_bytes:>8.2f}x "
                f"{r['seconds']:>6.2f}  {verdict}{'' if r['hwm'] else ' (sampled peak)'}"
            )
        return 1 if failed else 0
    finally:
        if not args.keep:
            for path in paths.values():
                path.unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
