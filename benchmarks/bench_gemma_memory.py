"""GPU memory of text caching with Gemma 3 whole or streamed layer by layer (`--gemma_offload`): estimate and measure.

Prints the estimate (ltx2_tuner.models.gemma_memory) for Gemma 3 12B, alone and with the LTX-2.0 / LTX-2.3 text
connectors, whole and streamed, at 1024 tokens per caption. Then measures:

- on the CPU (default): the tiny Gemma the test factory writes (or --gemma_root), in bf16. CPU memory has no peak
  counter, so tensors are counted through a TorchDispatchMode: the bytes of every tensor storage created during
  the call that is still alive, at its highest. The weights resident before the call are not in it, so it is
  compared with the estimate's activations (+ the two layers in flight when streamed).
- with --device cuda --gemma_root DIR (gemma-3-12b-it): torch.cuda.max_memory_allocated over one batch, weights
  included, compared with the estimate's Gemma peak, and the time per batch; the streamed features are compared
  with the whole model's bit for bit when both fit.

    python benchmarks/bench_gemma_memory.py [--device cuda --gemma_root gemma-3-12b-it] [--batch_size 1]
        [--modes streamed,whole]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from ltx2_tuner.models.gemma_memory import GEMMA3_12B, estimate_text_encoding_memory
from ltx2_tuner.models.text_encoder import gemma_sizes, inspect_gemma, load_gemma

GB = 1e9
# Text connector parameters in bf16 (diffusers-ltx2-and-peers.md: 1.43 B for LTX-2.0, 3.17 B for LTX-2.3, both AV).
CONNECTORS = {"LTX-2.0 (AV)": 2 * 1.43e9, "LTX-2.3 (AV)": 2 * 3.17e9}
CAPTION = "A red fox runs through deep snow, tracking shot, the camera low and close, powder flying up."


class LiveTensorBytes(TorchDispatchMode):
    """The largest total size of the tensor storages created inside the mode and alive at the same time."""

    def __init__(self):
        super().__init__()
        self.alive: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                self.alive.setdefault(storage.data_ptr(), (StorageWeakRef(storage), storage.nbytes()))
        self.alive = {ptr: entry for ptr, entry in self.alive.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.alive.values()))
        return out


def print_estimates(batch_size: int) -> None:
    print(f"estimate, Gemma 3 12B bf16, {batch_size} caption(s) x 1024 tokens (GB = 1e9 bytes; no CUDA context):")
    for streamed in (False, True):
        parts = estimate_text_encoding_memory(GEMMA3_12B, batch_size, streamed=streamed)
        label = "streamed (--gemma_offload)" if streamed else "whole"
        print(
            f"  {label:27} weights {parts.gemma_weights / GB:5.2f} + layers in flight {parts.streamed_layers / GB:4.2f}"
            f" + activations {parts.gemma_activations / GB:4.2f} = Gemma peak {parts.gemma_peak / GB:5.2f}"
        )
        for name, connector_bytes in CONNECTORS.items():
            total = estimate_text_encoding_memory(
                GEMMA3_12B, batch_size, streamed=streamed, connector_bytes=connector_bytes
            )
            print(f"    with the {name} connectors and their feature extraction: peak {total.peak / GB:5.2f}")


def measure_cpu(gemma_root: Path, modes: list[str], batch_size: int) -> None:
    sizes = gemma_sizes(inspect_gemma(gemma_root))
    print(f"measured on the CPU, {gemma_root} (hidden {sizes.hidden_size}, {sizes.num_layers} layers), bf16:")
    features = {}
    for mode in modes:
        encoder = load_gemma(gemma_root, torch.bfloat16, "cpu", offload=mode == "streamed")
        meter = LiveTensorBytes()
        with meter:
            features[mode] = encoder([CAPTION] * batch_size)[0]
        parts = estimate_text_encoding_memory(sizes, batch_size, streamed=mode == "streamed")
        expected = parts.streamed_layers + parts.gemma_activations
        print(
            f"  {mode:8} tensors created and alive at once {meter.peak / 2**20:7.2f} MiB; estimate (layers in flight "
            f"+ activations) {expected / 2**20:7.2f} MiB; ratio {meter.peak / expected:.2f}"
        )
        encoder.unload()
    _compare(features)


def measure_cuda(gemma_root: Path, modes: list[str], batch_size: int, device: torch.device) -> None:
    sizes = gemma_sizes(inspect_gemma(gemma_root))
    print(f"measured on {torch.cuda.get_device_name(device)}, {gemma_root}, bf16, {batch_size} caption(s):")
    features = {}
    for mode in modes:
        streamed = mode == "streamed"
        torch.cuda.empty_cache()
        try:
            encoder = load_gemma(gemma_root, torch.bfloat16, device, offload=streamed)
            encoder([CAPTION] * batch_size)  # warm-up: kernels, cuBLAS workspace, the allocator's pools
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            packed = encoder([CAPTION] * batch_size)[0]
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            print(f"  {mode:8} does not fit: {torch.cuda.mem_get_info(device)[1] / GB:.1f} GB GPU")
            encoder = packed = None
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated(device)
        estimate = estimate_text_encoding_memory(sizes, batch_size, streamed=streamed).gemma_peak
        print(
            f"  {mode:8} peak allocated {peak / GB:6.2f} GB (estimate {estimate / GB:6.2f}, ratio "
            f"{peak / estimate:.2f}); {seconds:.2f} s per batch"
        )
        features[mode] = packed.cpu()
        del packed
        encoder.unload()
    _compare(features)


def _compare(features: dict[str, torch.Tensor]) -> None:
    if len(features) == 2:
        same = torch.equal(features["streamed"], features["whole"])
        print(f"  streamed features equal the whole model's bit for bit: {same}")
        if not same:
            raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (tiny Gemma, counted tensors) or cuda (a real Gemma)")
    parser.add_argument("--gemma_root", type=Path, help="Gemma 3 directory (default on the CPU: the tiny one)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--modes", default="streamed,whole", help="comma-separated: streamed, whole")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",")]
    if not set(modes) <= {"streamed", "whole"}:
        parser.error("--modes takes streamed and/or whole")
    device = torch.device(args.device)

    print_estimates(args.batch_size)
    if device.type == "cuda":
        if args.gemma_root is None:
            parser.error("--device cuda needs --gemma_root (the Gemma 3 directory to measure)")
        measure_cuda(args.gemma_root, modes, args.batch_size, device)
        return
    if args.gemma_root is not None:
        measure_cpu(args.gemma_root, modes, args.batch_size)
        return
    from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma

    with tempfile.TemporaryDirectory() as workdir:
        measure_cpu(write_tiny_gemma(Path(workdir) / "gemma"), modes, args.batch_size)


if __name__ == "__main__":
    main()
