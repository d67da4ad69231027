"""Memory and speed of a LoRA training step: bf16 vs fp8 base weights, block swap N vs 0, video and AV.

Every case builds the transformer with random weights straight on the device (no checkpoint, no download: the
parameters are made on the meta device, then materialized and filled in place; fp8 weights are quantized there),
adds the default LoRA (rank 32; video_attn / av_attn preset), and times full steps (forward, loss, backward, AdamW)
after one warm-up step. Reported per case: s/step, tokens/s, peak memory, frozen weight bytes, and on a GPU the model
FLOPs utilisation, 6 x N x tokens / step time / the card's dense bf16 peak (N: parameters of the build the step uses;
attention's own FLOPs are not counted, and checkpointing's recompute is not credited, as MFU is usually quoted).

CPU (default; about a minute): the "bench" model (LTX-2.3 layout, 16 blocks, width 512), small clips, fp32 compute
(bf16 CPU kernels are 20x slower and not what anyone trains with), each case in its own process so that its peak RSS
is its own. Ratios: fp8 / bf16 frozen weight bytes (target <= 0.55), fp8 / fp32 peak RSS and step time; block swap
8 of 16 / none step time (on the CPU the "device" copies are CPU clones: this measures the bookkeeping and copies, not
a bus).

GPU (`--device cuda`): the full-size LTX-2.3 and LTX-2.0 transformers (official configs,
tests/models/data/official_configs.json), bf16 compute, gradient checkpointing on, 512x512x49 and 768x512x121,
bf16 vs fp8 (scaled) weights, block swap 0/8/16/24; the most telling cases first, stopping cleanly at --budget_s
(default 450 s, so the whole run fits one 8-minute GPU call), and the rows appended to docs/performance.md with the
card, date and command.

    python benchmarks/bench_memory_speed.py                # CPU ratios
    python benchmarks/bench_memory_speed.py --device cuda  # full size, writes docs/performance.md rows
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_CONFIGS = ROOT / "tests" / "models" / "data" / "official_configs.json"
PERFORMANCE_DOC = ROOT / "docs" / "performance.md"
GIB = 2**30
# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
DENSE_BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "RTX 4090": 165e12, "RTX 3090": 71e12}  # fmt: skip


@dataclass(frozen=True)
class Case:
    version: str
    mode: str  # "video" or "av"
    frames: int
    height: int
    width: int
    fp8: bool
    blocks_to_swap: int = 0

    @property
    def label(self) -> str:
        swap = f", swap {self.blocks_to_swap}" if self.blocks_to_swap else ""
        weights = "fp8" if self.fp8 else "bf16" if self.version != "bench" else "fp32"  # the CPU computes in fp32
        return f"LTX-{self.version} {self.mode} {self.width}x{self.height}x{self.frames} {weights}{swap}"


def gpu_cases() -> list[Case]:
    """Most telling first: the budget may end the run early."""
    cases = []
    for version in ("2.3", "2.0"):
        for frames, height, width in ((49, 512, 512), (121, 512, 768)):
            for mode in ("video", "av"):
                cases += [Case(version, mode, frames, height, width, fp8) for fp8 in (False, True)]
                if version == "2.3" and frames == 49:
                    cases += [Case(version, mode, frames, height, width, True, n) for n in (8, 16, 24)]
    return cases


def cpu_cases() -> list[Case]:
    size = (9, 128, 192)  # 2 latent frames of 4x6: a few hundred tokens
    return [Case("bench", mode, *size, fp8, swap) for mode in ("video", "av")
            for fp8, swap in ((False, 0), (True, 0), (False, 8))]  # fmt: skip


def transformer_section(version: str) -> dict:
    if version == "bench":
        from ltx2_tuner.testing.tiny_configs import official_config

        return official_config("2.3", "bench")["transformer"]
    return json.loads(OFFICIAL_CONFIGS.read_text())[version]["transformer"]


def build_model(case: Case, device: torch.device, dtype: torch.dtype):
    """The transformer of `case` with random weights made on `device` (fp8 ones quantized there), LoRA added."""
    from ltx2_tuner.models.fp8 import Fp8Linear, prepare_fp8, quantize
    from ltx2_tuner.models.loading import construct_module
    from ltx2_tuner.models.transformer import TransformerAdapter, prune
    from ltx2_tuner.networks import lora_ltx2

    backbone = prune(construct_module("transformer", transformer_section(case.version), {}, empty=True), case.mode)
    if case.fp8:
        prepare_fp8(backbone, dtype)
    generator = torch.Generator(device).manual_seed(0)
    for module in backbone.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            values = torch.empty(param.shape, dtype=dtype, device=device).normal_(0, 0.02, generator=generator)
            if isinstance(module, Fp8Linear) and name == "weight":
                values, scale = quantize(values, scaled=True)
                module.weight_scale = scale
            setattr(module, name, torch.nn.Parameter(values, requires_grad=False))
    for module in backbone.modules():  # fp8 scales made on the meta device by prepare_fp8
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device.type == "meta":
                module.register_buffer(name, torch.ones(buffer.shape, dtype=buffer.dtype, device=device))
    model = TransformerAdapter(backbone, case.mode)
    targets = lora_ltx2.select_targets(backbone, case.mode)
    lora = lora_ltx2.add_lora(backbone, lora_ltx2.LoraSpec(32, 32.0, 0.0, targets))
    if case.blocks_to_swap:
        model.enable_block_swap(case.blocks_to_swap, device)
    return model.train(), lora


def make_inputs(model, case: Case, device: torch.device, dtype: torch.dtype, text_tokens: int):
    from ltx2_tuner.models import ModalityInput, audio_latent_count, audio_positions, context_dims, video_positions

    frames, height, width = (case.frames - 1) // 8 + 1, case.height // 32, case.width // 32
    video_dim, audio_dim = context_dims(model.config)
    sigma = torch.full((1,), 0.6, device=device)

    def modality(tokens, positions, context_dim):
        return ModalityInput(
            latent=torch.randn(1, tokens, 128, device=device, dtype=dtype),
            sigma=sigma,
            timesteps=sigma[:, None].expand(1, tokens),
            positions=positions,
            context=torch.randn(1, text_tokens, context_dim, device=device, dtype=dtype),
        )

    video = modality(frames * height * width, video_positions(1, frames, height, width, 24.0, device), video_dim)
    audio = None
    if case.mode == "av":
        count = audio_latent_count(case.frames, 24.0)
        audio = modality(count, audio_positions(1, count, device), audio_dim)
    return video, audio


def run_case(case: Case, device: torch.device, dtype: torch.dtype, steps: int, text_tokens: int) -> dict:
    """Build, warm up, time; peak memory over the whole case (weights included)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result = _timed_steps(case, device, dtype, steps, text_tokens)
        result["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        return result
    from proc_memory import PeakRss

    with PeakRss() as meter:
        result = _timed_steps(case, device, dtype, steps, text_tokens)
    result["peak_gib"] = meter.peak / GIB
    return result


def _timed_steps(case: Case, device: torch.device, dtype: torch.dtype, steps: int, text_tokens: int) -> dict:
    from ltx2_tuner.models.fp8 import weight_bytes

    cuda = device.type == "cuda"
    model, lora = build_model(case, device, dtype)
    model.enable_gradient_checkpointing(cuda)
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    video, audio = make_inputs(model, case, device, dtype, text_tokens)
    tokens = video.latent.shape[1] + (audio.latent.shape[1] if audio is not None else 0)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            velocities = [v for v in model(video, audio) if v is not None]
            loss = sum(v.float().square().mean() for v in velocities)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    params = sum(p.numel() for p in model.parameters())
    result = {"case": case.label, "s_per_step": step, "tokens": tokens, "tokens_per_s": tokens / step,
              "weight_gib": weight_bytes(model) / GIB, "params_b": params / 1e9, "mfu": None}  # fmt: skip
    if cuda:
        peak = next((v for k, v in DENSE_BF16_PEAK.items() if k in torch.cuda.get_device_name()), None)
        result["mfu"] = 6 * params * tokens / step / peak if peak else None
    if model.block_swap is not None:
        model.block_swap.release_all()
    return result


def print_row(result: dict) -> None:
    mfu = f", MFU {100 * result['mfu']:.1f}%" if result.get("mfu") else ""
    print(f"{result['case']:<44} {result['s_per_step']:8.3f} s/step  {result['tokens_per_s']:9.0f} tok/s  "
          f"peak {result['peak_gib']:7.2f} GiB  weights {result['weight_gib']:6.2f} GiB{mfu}", flush=True)  # fmt: skip


def weight_ratio(mode: str) -> float:
    """fp8 / bf16 frozen weight bytes of the bench model (built, not run: bf16 steps on a CPU take seconds)."""
    from ltx2_tuner.models.fp8 import weight_bytes

    sizes = [weight_bytes(build_model(Case("bench", mode, 9, 128, 192, fp8), torch.device("cpu"), torch.bfloat16)[0])
             for fp8 in (False, True)]  # fmt: skip
    return sizes[1] / sizes[0]


def cpu_ratios(results: dict[str, dict]) -> list[str]:
    lines = []
    for mode in ("video", "av"):
        base = results[Case("bench", mode, 9, 128, 192, False).label]
        fp8 = results[Case("bench", mode, 9, 128, 192, True).label]
        swap = results[Case("bench", mode, 9, 128, 192, False, 8).label]
        ratio = weight_ratio(mode)
        lines += [
            f"{mode}: fp8 / bf16 frozen weight bytes {ratio:.3f} (target <= 0.55: {'PASS' if ratio <= 0.55 else 'FAIL'})",
            f"{mode}: fp8 / fp32 peak RSS {fp8['peak_gib'] / base['peak_gib']:.3f}, "
            f"step time {fp8['s_per_step'] / base['s_per_step']:.3f} (the CPU upcasts e4m3 slowly; a GPU does not)",
            f"{mode}: block swap 8 of 16 / none: step time {swap['s_per_step'] / base['s_per_step']:.3f}",
        ]  # fmt: skip
    return lines


def compile_recompiles(device: torch.device, dtype: torch.dtype, text_tokens: int) -> str:
    """Graphs `--compile` makes over three bucket shapes (video mode, grad on), with the eager backend: the count is
    the backend's to keep, the graph capture is what this checks (inductor on a CPU takes minutes per graph)."""
    import torch._dynamo

    from ltx2_tuner.models.compile import compile_counts

    torch._dynamo.reset()
    model, _ = build_model(Case("bench", "video", 9, 128, 192, False), device, dtype)
    model.compile_blocks(backend="eager")
    seen = []
    for frames, height, width in ((9, 128, 192), (17, 128, 128), (9, 192, 256)):
        video, _ = make_inputs(model, Case("bench", "video", frames, height, width, False), device, dtype, text_tokens)
        model(video, None)[0].float().square().mean().backward()
        seen.append(json.dumps(compile_counts()))
    return f"--compile: graphs after each of 3 bucket shapes (16 blocks each): {' -> '.join(seen)}"


def run_in_subprocess(case: Case, steps: int) -> dict:
    """One CPU case in a fresh process: resident memory of one case is only measurable alone."""
    command = [sys.executable, __file__, "--one_case", case.label, "--steps", str(steps)]
    # A fixed mmap threshold: glibc otherwise raises it as big blocks are freed and keeps their pages resident, so
    # RSS would follow the allocation history rather than the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{case.label}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def append_performance_rows(results: list[dict], command: str) -> None:
    card = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    if not PERFORMANCE_DOC.exists():
        PERFORMANCE_DOC.write_text(
            "# Performance\n\nRows written by `benchmarks/bench_memory_speed.py --device cuda` (random weights at full "
            "size, LoRA rank 32, batch 1, gradient checkpointing, bf16 compute; MFU = 6 x params x tokens / step / "
            "dense bf16 peak).\n\n| date | card | case | s/step | tokens/s | MFU | peak GiB | weights GiB | command |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
    rows = []
    for r in results:
        mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        rows.append(f"| {date} | {card} | {r['case']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {mfu} | "
                    f"{r['peak_gib']:.2f} | {r['weight_gib']:.2f} | `{command}` |")  # fmt: skip
    with PERFORMANCE_DOC.open("a") as f:
        f.write("\n".join(rows) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (bench model, ratios) or cuda (full size, docs rows)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per case after one warm-up (default 2)")
    parser.add_argument("--budget_s", type=float, default=450, help="GPU: start no case after this many seconds")
    parser.add_argument("--cases", default=None, help="only cases whose label contains this text")
    parser.add_argument("--no_doc", action="store_true", help="GPU: do not append rows to docs/performance.md")
    parser.add_argument("--one_case", help=argparse.SUPPRESS)  # CPU: run one case, print its result as JSON
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # proc_memory

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cases = gpu_cases() if cuda else cpu_cases()
    dtype = torch.bfloat16 if cuda else torch.float32
    text_tokens = 1024 if cuda else 64
    if args.one_case:
        (case,) = [case for case in cases if case.label == args.one_case]
        print(json.dumps(run_case(case, device, dtype, args.steps, text_tokens)))
        return 0
    if args.cases:
        cases = [case for case in cases if args.cases in case.label]
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for case in cases:
        if cuda and time.perf_counter() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent; skipped from {case.label} on")
            break
        try:
            if cuda:
                results[case.label] = run_case(case, device, dtype, args.steps, text_tokens)
            else:
                results[case.label] = run_in_subprocess(case, args.steps)
        except torch.OutOfMemoryError:
            results[case.label] = {"case": case.label, "oom": True}
            print(f"{case.label:<44} out of memory")
            torch.cuda.empty_cache()
            continue
        print_row(results[case.label])
    done = [r for r in results.values() if not r.get("oom")]
    if cuda and done and not args.no_doc:
        append_performance_rows(done, "python benchmarks/bench_memory_speed.py --device cuda")
        print(f"appended {len(done)} rows to {PERFORMANCE_DOC}")
    if not cuda:
        print("\n" + "\n".join(cpu_ratios(results)))
        print(compile_recompiles(device, dtype, text_tokens))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
