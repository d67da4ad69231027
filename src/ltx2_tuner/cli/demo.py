"""The demo: the main job on the embedded default, no downloads, a few minutes on 2 CPU cores.

It writes a tiny random LTX-2.3 checkpoint in the official format and a tiny Gemma 3, a small synthetic dataset
(moving shapes with a matching tone track, captions) and a preview prompt, caches latents (audio-video) and text (the
preview prompt too), trains an AV LoRA, writes it in the official format and, at the last step, an AV preview mp4
(`--mode t2a`: captioned tones, audio-only caches, an audio LoRA and a wav preview). Each step runs the same command, with the same flags, that a user runs on real
models and data; the commands are printed as they go (run from the repository root, they work as printed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ltx2_tuner.cli._common import run

# One short AV preview: small, few steps, so it adds seconds (a real prompt file leaves size and steps at defaults).
DEMO_PROMPT = "a bright square glides from left to right while a tone rises in pitch --w 96 --h 64 --f 17 --s 4 --d 7"
# The audio-only demo's preview: one second of sound.
DEMO_T2A_PROMPT = "a bright major chord held steady --du 1 --s 4 --d 7"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./demo.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="work directory (default outputs/demo)")
    parser.add_argument(
        "--version",
        choices=("2.0", "2.3", "2.5"),
        default="2.3",
        help="model family (default 2.3); 2.5 runs from a split pack with its packed Gemma 4, as LTX 2.5 ships",
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument(
        "--mode",
        choices=("t2av", "t2a"),
        default="t2av",
        help="t2av (default): an audio-video LoRA on clips with sound; t2a: an audio-only LoRA (--ltx_mode audio) on "
        "captioned tones, with a wav preview",
    )
    return parser


def _step(command: str, argv: list[str], entry) -> None:
    print(f"\n$ {command} {shlex.join(argv)}", flush=True)
    code = entry(argv)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    from ltx2_tuner.cli import cache_latents, cache_text_encoder_outputs, inspect_checkpoint, train_network
    from ltx2_tuner.testing import make_tiny
    from ltx2_tuner.testing.demo_data import write_demo_dataset, write_demo_tones

    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    out = args.out
    lora_dir = out / "lora"
    make_flags = ["--out", str(out), "--version", args.version]
    if args.version == "2.5":  # LTX 2.5 ships as a split pack; its text encoder is found beside the transformer
        make_flags += ["--layout", "pack"]
        checkpoint, text_encoder = make_tiny.make_tiny_paths(out, "pack"), []
    else:
        checkpoint, text_encoder = make_tiny.make_tiny_paths(out, "unified"), ["--text_encoder", str(out / "gemma")]
    _step("python -m ltx2_tuner.testing.make_tiny", make_flags, make_tiny.main)
    _step("python -m ltx2_tuner.cli.inspect_checkpoint", [str(checkpoint)], inspect_checkpoint.main)
    audio_only = args.mode == "t2a"
    if audio_only:
        print(f"\n# synthetic dataset: captioned tones (an audio dataset) -> {out / 'data'}")
        config, mode, name = write_demo_tones(out / "data"), "audio", "demo_t2a_lora"
    else:
        print(f"\n# synthetic dataset: clips with a moving square and a matching tone, captions -> {out / 'data'}")
        config, mode, name = write_demo_dataset(out / "data"), "av", "demo_av_lora"
    prompts = out / "data" / "sample_prompts.txt"
    prompts.write_text(f"# the demo's preview\n{DEMO_T2A_PROMPT if audio_only else DEMO_PROMPT}\n", encoding="utf-8")
    common = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", mode]
    cpu = ["--device", "cpu"]
    _step("python ltx2_cache_latents.py", [*common, *cpu, "--skip_existing"],
          cache_latents.main)  # fmt: skip
    _step("python ltx2_cache_text_encoder_outputs.py",
          [*common, *text_encoder, "--mixed_precision", "no", *cpu, "--skip_existing",
           "--sample_prompts", str(prompts)],
          cache_text_encoder_outputs.main)  # fmt: skip
    train_flags = [*common, "--mixed_precision", "no", "--network_dim", "8", "--network_alpha", "8",
                   "--learning_rate", "2e-3", "--max_train_steps", str(args.steps), "--save_every_n_steps",
                   str(max(1, args.steps // 2)), "--output_dir", str(lora_dir), "--output_name", name,
                   "--max_data_loader_n_workers", "0", "--log_with", "tensorboard",
                   "--sample_prompts", str(prompts), "--sample_every_n_steps", str(args.steps)]  # fmt: skip
    _step("python ltx2_train_network.py", train_flags, train_network.main)

    records = [json.loads(line) for line in (lora_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    first, last = records[: max(1, len(records) // 5)], records[-max(1, len(records) // 5) :]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    parts = ", ".join(
        f"{modality} {mean(first, f'loss_{modality}'):.3f} -> {mean(last, f'loss_{modality}'):.3f}"
        for modality in ("video", "audio")
        if f"loss_{modality}" in records[0]
    )
    print(
        f"\ndemo: done in {time.perf_counter() - start:.0f} s; LoRA {lora_dir / f'{name}.safetensors'} "
        f"(official/ComfyUI format); loss {mean(first, 'loss'):.3f} -> {mean(last, 'loss'):.3f} ({parts})"
    )
    preview = lora_dir / "sample" / f"{name}_step{args.steps:06d}_00.{'wav' if audio_only else 'mp4'}"
    print(f"demo: {'T2A' if audio_only else 'AV'} preview at step {args.steps}: {preview}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
