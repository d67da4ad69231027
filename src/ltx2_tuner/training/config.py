"""Training settings: every flag of `ltx2_train_network.py`, defined once, grouped by concern.

Each flag has one default and one help text, here. `--config_file settings.toml` sets any flag by its name
(`learning_rate = 1e-4`); the command line wins over the file. Unknown keys and wrong types in the file are errors
naming the key (with the closest valid one).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx2_tuner.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
SIGMA_SAMPLERS = ("shifted_logit_normal", "uniform", "sigmoid", "shift")


@dataclass(frozen=True)
class Flag:
    name: str
    type: Any
    default: Any
    help: str
    choices: tuple | None = None
    action: str | None = None  # "store_true", or "boolean" for --flag / --no-flag
    nargs: str | None = None


def _flags() -> dict[str, list[Flag]]:
    return {
        "data and model": [
            Flag("dataset_config", Path, None, "dataset TOML whose caches were made (required)"),
            Flag("ltx2_checkpoint", Path, None, "official LTX-2 / LTX-2.3 checkpoint (required)"),
            Flag(
                "ltx_mode",
                str,
                "video",
                "video: video-only LoRA (no audio stream is built); av: audio-video",
                choices=("video", "av"),
            ),
            Flag("gemma_root", Path, None, "Gemma 3 directory; only needed for --sample_prompts previews"),
            Flag(
                "dit",
                Path,
                None,
                "accepted for musubi compatibility and ignored (the DiT comes from --ltx2_checkpoint)",
            ),
            Flag(
                "vae",
                Path,
                None,
                "accepted for musubi compatibility and ignored (the VAE comes from --ltx2_checkpoint)",
            ),
            Flag(
                "mixed_precision",
                str,
                "bf16",
                "compute precision; the base weights are stored in it (no = fp32)",
                choices=("no", "bf16", "fp16"),
            ),
            Flag(
                "gradient_checkpointing",
                bool,
                False,
                "recompute each block in backward (less memory, ~30% slower)",
                action="store_true",
            ),
            Flag("attention_backend", str, "native", "diffusers attention backend (native = PyTorch SDPA)"),
            Flag("seed", int, 42, "random seed; each process adds its rank"),
            Flag("max_data_loader_n_workers", int, 2, "DataLoader worker processes"),
        ],
        "network": [
            Flag("network_module", str, "ltx2_tuner.networks.lora_ltx2", "the network to train"),
            Flag("network_dim", int, 32, "LoRA rank"),
            Flag("network_alpha", float, 32.0, "LoRA alpha (scale alpha/rank; folded into lora_B when saved)"),
            Flag("network_dropout", float, 0.0, "dropout on the LoRA input"),
            Flag(
                "network_args",
                str,
                None,
                "preset=video_attn|av_attn|audio_attn|full include=REGEX exclude=REGEX",
                nargs="*",
            ),
            Flag("network_weights", Path, None, "start from this LoRA file (official or musubi format)"),
        ],
        "optimization": [
            Flag("learning_rate", float, 1e-4, "peak learning rate"),
            Flag("optimizer_type", str, "AdamW", "AdamW, AdamW8bit (bitsandbytes), or any module.Class path"),
            Flag(
                "optimizer_args",
                str,
                None,
                "optimizer keyword arguments, e.g. weight_decay=0.01 betas=0.9,0.99",
                nargs="*",
            ),
            Flag("lr_scheduler", str, "constant", "learning-rate schedule", choices=LR_SCHEDULERS),
            Flag("lr_warmup_steps", int, 0, "linear warm-up steps (optimizer steps)"),
            Flag("max_train_steps", int, 1600, "optimizer steps to train (ignored when --max_train_epochs is set)"),
            Flag("max_train_epochs", int, None, "train this many epochs instead of --max_train_steps"),
            Flag("gradient_accumulation_steps", int, 1, "batches per optimizer step"),
            Flag("max_grad_norm", float, 1.0, "clip the gradient norm to this (0: no clipping)"),
        ],
        "flow matching": [
            Flag("timestep_sampling", str, "shifted_logit_normal", "sigma sampler", choices=SIGMA_SAMPLERS),
            Flag("discrete_flow_shift", float, 3.0, "shift of --timestep_sampling shift"),
            Flag("sigmoid_scale", float, 1.0, "scale of the normal draw of --timestep_sampling sigmoid/shift"),
            Flag(
                "ltx2_first_frame_conditioning_p",
                float,
                0.1,
                "probability per sample that the first latent frame is a clean condition (no loss)",
            ),
            Flag(
                "independent_audio_timestep",
                bool,
                True,
                "draw the audio sigma independently (official); --no-independent_audio_timestep shares the video's",
                action="boolean",
            ),
            Flag("video_loss_weight", float, 1.0, "weight of the video loss"),
            Flag("audio_loss_weight", float, 1.0, "weight of the audio loss (AV)"),
        ],
        "saving and logging": [
            Flag("output_dir", Path, Path("output"), "where LoRA files, states and logs go"),
            Flag("output_name", str, "ltx2_lora", "file name stem of the LoRA files"),
            Flag("save_every_n_steps", int, None, "save a LoRA every N optimizer steps"),
            Flag("save_every_n_epochs", int, None, "save a LoRA every N epochs"),
            Flag("save_last_n_checkpoints", int, None, "keep only the newest N intermediate LoRA files (and states)"),
            Flag("save_precision", str, "bf16", "dtype of the saved LoRA", choices=("bf16", "fp16", "fp32")),
            Flag(
                "save_state",
                bool,
                False,
                "also save optimizer, scheduler, RNG and step for --resume",
                action="store_true",
            ),
            Flag("resume", Path, None, "continue a run from a state folder saved with --save_state"),
            Flag("logging_dir", Path, None, "TensorBoard/JSONL log folder (default: OUTPUT_DIR/logs)"),
            Flag("log_with", str, "tensorboard", "metrics backend", choices=("tensorboard", "wandb", "none")),
            Flag("config_file", Path, None, "TOML file setting any of these flags by name; the command line wins"),
        ],
    }


FLAGS = {flag.name: flag for group in _flags().values() for flag in group}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltx2_train_network.py", description="Train a LoRA for LTX-2 / LTX-2.3 on cached latents and text."
    )
    for title, flags in _flags().items():
        group = parser.add_argument_group(title)
        for flag in flags:
            help_text = f"{flag.help} (default: {flag.default})" if flag.default not in (None, False) else flag.help
            if flag.action == "store_true":
                group.add_argument(f"--{flag.name}", action="store_true", default=flag.default, help=help_text)
            elif flag.action == "boolean":
                group.add_argument(
                    f"--{flag.name}", action=argparse.BooleanOptionalAction, default=flag.default, help=help_text
                )
            else:
                group.add_argument(
                    f"--{flag.name}",
                    type=flag.type,
                    default=flag.default,
                    choices=flag.choices,
                    nargs=flag.nargs,
                    help=help_text,
                )
    return parser


def _apply_config_file(parser: argparse.ArgumentParser, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{path}: --config_file not found")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    problems = []
    defaults = {}
    for key, value in values.items():
        flag = FLAGS.get(key)
        if flag is None or key == "config_file":
            close = difflib.get_close_matches(key, FLAGS, n=1)
            problems.append(f'unknown key "{key}"' + (f' (did you mean "{close[0]}"?)' if close else ""))
            continue
        expected = bool if flag.action in ("store_true", "boolean") else flag.type
        if flag.nargs:
            value = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif expected is Path and isinstance(value, str):
            value = Path(value)
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            problems.append(f'key "{key}" must be {expected.__name__}, not {type(value).__name__} {value!r}')
            continue
        if flag.choices and value not in flag.choices:
            problems.append(f'key "{key}" must be one of {", ".join(flag.choices)}')
            continue
        defaults[key] = value
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    parser.set_defaults(**defaults)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, with `--config_file` values as defaults; then checks that span several flags."""
    parser = build_parser()
    first = parser.parse_args(argv)
    if first.config_file is not None:
        _apply_config_file(parser, first.config_file)
    args = parser.parse_args(argv)
    missing = [name for name in ("dataset_config", "ltx2_checkpoint") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"--{missing[0]} is required (on the command line or in --config_file)")
    for name in ("network_dim", "gradient_accumulation_steps", "max_train_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if args.max_train_epochs is not None and args.max_train_epochs < 1:
        raise ConfigError("--max_train_epochs must be at least 1")
    if not 0 <= args.ltx2_first_frame_conditioning_p <= 1:
        raise ConfigError("--ltx2_first_frame_conditioning_p must be in [0, 1]")
    return args
