"""Training settings: every flag of `ltx2_train_network.py`, defined once, grouped by concern.

Each flag has one default, one help text and its bounds, here (flags the caching commands share come from
ltx2_tuner.flags). `--config_file settings.toml` sets any flag by its name (`learning_rate = 1e-4`); the command
line wins over the file. Unknown keys and wrong types in the file are errors naming the key (with the closest valid
one). `parse_args` then reports every problem with the values together, one line each, before any model loads.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import sys
from pathlib import Path

from ltx2_tuner.cache.sample_prompts import read_sample_prompts
from ltx2_tuner.dtypes import COMPUTE_DTYPES, STORAGE_DTYPES
from ltx2_tuner.errors import ConfigError, DatasetError
from ltx2_tuner.flags import (
    AUDIO_VAE,
    DATASET_CONFIG,
    FROZEN_MODALITY,
    LTX2_CHECKPOINT,
    LTX_MODE,
    TEXT_ENCODER,
    VIDEO_VAE,
    Flag,
    above,
    add_flag,
    at_least,
    between,
    with_help,
)
from ltx2_tuner.models.attention_backends import ATTENTION_BACKENDS, backend_problem
from ltx2_tuner.roles import roles_for
from ltx2_tuner.training.flow_matching import SIGMA_SAMPLERS
from ltx2_tuner.training.optim import is_schedule_free, optimizer_class, optimizer_problems

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# What the trainer calls on --network_module.
NETWORK_MODULE_API = ("select_targets", "spec_from_args", "add_lora", "load_lora_weights", "save_lora")
POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = above(0), at_least(0), at_least(1)


def _flags() -> dict[str, list[Flag]]:
    return {
        "data and model": [
            with_help(DATASET_CONFIG, "; its caches must exist (required)"),
            with_help(LTX2_CHECKPOINT, " (required)"),
            with_help(
                LTX_MODE,
                "; video builds no audio stream, av trains an audio-video LoRA, audio builds no video stream (T2A)",
            ),
            FROZEN_MODALITY,
            with_help(TEXT_ENCODER, "; only for --sample_prompts previews whose prompt cache is missing or stale"),
            Flag("gemma_root", Path, None, "same as --text_encoder (its older name)"),
            with_help(VIDEO_VAE, "; previews only (decoding, and encoding their --i images)"),
            with_help(AUDIO_VAE, "; AV previews only"),
            Flag(
                "dit",
                Path,
                None,
                "accepted for musubi compatibility and ignored (the DiT comes from --ltx2_checkpoint)",
            ),
            Flag("vae", Path, None, "same as --video_vae (musubi's name)"),
            Flag(
                "mixed_precision",
                str,
                "bf16",
                "compute precision; the base weights are stored in it (no = fp32)",
                choices=tuple(COMPUTE_DTYPES),
            ),
            Flag("seed", int, 42, "random seed; each process adds its rank"),
            Flag("max_data_loader_n_workers", int, 2, "DataLoader worker processes", bound=NON_NEGATIVE),
            Flag(
                "debug_dataset",
                bool,
                False,
                "check the caches, print the bucket plan, batches per epoch and the first batch's shapes, then exit "
                "without loading the model or training",
                action="store_true",
            ),
        ],
        "memory and speed": [
            Flag(
                "gradient_checkpointing",
                bool,
                False,
                "recompute each block in backward (less memory, ~30% slower)",
                action="store_true",
            ),
            Flag(
                "fp8_base",
                bool,
                False,
                "store the frozen base Linear weights in float8 e4m3 and compute in --mixed_precision (half the weight "
                "memory); needed to train an fp8 checkpoint",
                action="store_true",
            ),
            Flag(
                "fp8_scaled",
                bool,
                False,
                "with --fp8_base: one scale per weight tensor (amax / 448) so small weights keep their precision",
                action="store_true",
            ),
            Flag(
                "blocks_to_swap",
                int,
                0,
                "transformer blocks kept in pinned host memory and streamed to the GPU ahead of use (0 = none)",
                bound=NON_NEGATIVE,
            ),
            Flag(
                "attention_backend",
                str,
                "native",
                "attention kernel: native (PyTorch SDPA), cudnn, efficient, math, flash (flash-attn 2), flash3 "
                "(FlashAttention 3, Hopper), xformers; sage has no backward pass (ltx2_generate_video.py only)",
                choices=ATTENTION_BACKENDS,
                bound=lambda name: backend_problem(name, training=True),
            ),
            Flag(
                "compile",
                bool,
                False,
                "torch.compile the transformer block (regional, one graph for all blocks, dynamic token counts: a new "
                "bucket does not recompile); the first steps compile",
                action="store_true",
            ),
        ],
        "network": [
            Flag("network_module", str, "ltx2_tuner.networks.lora_ltx2", "the network to train (an importable module)"),
            Flag("network_dim", int, 32, "adapter rank (LoRA, DoRA, LoKr, LoHa)", bound=AT_LEAST_ONE),
            Flag(
                "network_alpha",
                float,
                32.0,
                "adapter alpha (scale alpha/rank; folded into the saved file)",
                bound=POSITIVE,
            ),
            Flag(
                "network_dropout",
                float,
                0.0,
                "dropout on the LoRA/DoRA input (LoKr/LoHa: --network_args rank_dropout=/module_dropout=)",
                bound=between(0, 1, include_high=False),
            ),
            Flag(
                "network_args",
                str,
                None,
                "preset=video_attn|av_attn|audio|audio_attn|a2v|v2a|full include=REGEX exclude=REGEX (default: the "
                "mode's preset); algo=lora|dora|lokr|loha (default lora) with LoKr factor=N decompose_both=true|false "
                "and LoKr/LoHa rank_dropout=P module_dropout=P; see docs/adapters.md",
                nargs="*",
            ),
            Flag("network_weights", Path, None, "start from this adapter file (official or musubi format, same algo)"),
        ],
        "optimization": [
            Flag("learning_rate", float, 1e-4, "peak learning rate", bound=POSITIVE),
            Flag(
                "optimizer_type",
                str,
                "AdamW",
                "AdamW, AdamW8bit (bitsandbytes), Prodigy (prodigyopt; use --learning_rate 1), Adafactor "
                "(transformers), AdamWScheduleFree or schedulefree (schedulefree; --lr_scheduler constant), or any "
                "module.Class; see docs/optimizers.md",
            ),
            Flag(
                "optimizer_args",
                str,
                None,
                "optimizer keyword arguments, e.g. weight_decay=0.01 betas=0.9,0.99",
                nargs="*",
            ),
            Flag("lr_scheduler", str, "constant", "learning-rate schedule", choices=LR_SCHEDULERS),
            Flag("lr_warmup_steps", int, 0, "linear warm-up steps (optimizer steps)", bound=NON_NEGATIVE),
            Flag(
                "max_train_steps",
                int,
                1600,
                "optimizer steps to train (ignored when --max_train_epochs is set)",
                bound=AT_LEAST_ONE,
            ),
            Flag(
                "max_train_epochs",
                int,
                None,
                "train this many epochs instead of --max_train_steps",
                bound=AT_LEAST_ONE,
            ),
            Flag(
                "gradient_accumulation_steps",
                int,
                1,
                "batches per optimizer step; the last, smaller group of an epoch makes a step too",
                bound=AT_LEAST_ONE,
            ),
            Flag("max_grad_norm", float, 1.0, "clip the gradient norm to this (0: no clipping)", bound=NON_NEGATIVE),
        ],
        "flow matching": [
            Flag("timestep_sampling", str, "shifted_logit_normal", "sigma sampler", choices=SIGMA_SAMPLERS),
            Flag("discrete_flow_shift", float, 3.0, "shift of --timestep_sampling shift", bound=POSITIVE),
            Flag(
                "sigmoid_scale",
                float,
                1.0,
                "scale of the normal draw of --timestep_sampling sigmoid/shift",
                bound=POSITIVE,
            ),
            Flag(
                "ltx2_first_frame_conditioning_p",
                float,
                0.1,
                "probability per sample that the first latent frame is a clean condition (no loss)",
                bound=between(0, 1),
            ),
            Flag(
                "first_frame_keyframe",
                bool,
                True,
                "LTX 2.5: add the learned keyframe embedding to the first latent frame, as inference does; "
                "--no-first_frame_keyframe leaves it off, as the official trainer does (no effect on 2.0/2.3)",
                action="boolean",
            ),
            Flag(
                "independent_audio_timestep",
                bool,
                True,
                "draw the audio sigma independently (official); --no-independent_audio_timestep shares the video's",
                action="boolean",
            ),
            Flag("video_loss_weight", float, 1.0, "weight of the video loss", bound=NON_NEGATIVE),
            Flag("audio_loss_weight", float, 1.0, "weight of the audio loss (AV, T2A, V2A)", bound=NON_NEGATIVE),
        ],
        "caption dropout, validation and EMA": [
            Flag(
                "caption_dropout_rate",
                float,
                0.0,
                "probability per sample of training on the empty prompt instead of its caption (the empty prompt's "
                "embeddings are cached by the text-caching command); a dataset's caption_dropout_rate overrides it",
                bound=between(0, 1),
            ),
            Flag(
                "validate_every_n_steps",
                int,
                None,
                "compute the validation loss on the dataset config's [[validation_datasets]] every N optimizer steps "
                "and after the last (fixed noise and sigmas, so values compare across steps and runs)",
                bound=AT_LEAST_ONE,
            ),
            Flag(
                "ema_decay",
                float,
                None,
                "keep an exponential moving average of the LoRA weights with this decay (e.g. 0.999), warmed up as "
                "min(decay, (1 + step) / (10 + step)); the LoRA files hold the EMA, NAME-raw files beside them the "
                "trained weights; previews and the validation loss use the EMA",
                bound=between(0, 1, include_high=False),
            ),
        ],
        "previews": [
            Flag(
                "sample_prompts",
                Path,
                None,
                "prompt file of the previews (one prompt per line, see docs/training.md); its text embeddings come "
                "from {stem}_ltx2_sample_te.safetensors beside it, or are encoded at setup with --text_encoder",
            ),
            Flag("sample_every_n_steps", int, None, "write previews every N optimizer steps", bound=AT_LEAST_ONE),
            Flag(
                "sample_every_n_epochs", int, None, "write previews at the end of every N-th epoch", bound=AT_LEAST_ONE
            ),
            Flag("sample_at_first", bool, False, "also write previews before the first step", action="store_true"),
            Flag(
                "sample_steps",
                int,
                None,
                "denoising steps of every preview (default: each prompt's --s, else the model's: 40 on LTX-2.0, "
                "30 on LTX-2.3 and 2.5)",
                bound=AT_LEAST_ONE,
            ),
        ],
        "saving and logging": [
            Flag("output_dir", Path, Path("output"), "where LoRA files, states and logs go"),
            Flag("output_name", str, "ltx2_lora", "file name stem of the LoRA files"),
            Flag("save_every_n_steps", int, None, "save a LoRA every N optimizer steps", bound=AT_LEAST_ONE),
            Flag("save_every_n_epochs", int, None, "save a LoRA every N epochs", bound=AT_LEAST_ONE),
            Flag(
                "save_last_n_checkpoints",
                int,
                None,
                "keep only the newest N intermediate LoRA files (and states)",
                bound=AT_LEAST_ONE,
            ),
            Flag("save_precision", str, "bf16", "dtype of the saved LoRA", choices=tuple(STORAGE_DTYPES)),
            Flag(
                "save_state",
                bool,
                False,
                "also save the resumable state (trainable weights, optimizer, RNG, step) beside each LoRA, the "
                "final one included",
                action="store_true",
            ),
            Flag("resume", Path, None, "continue a run from a state-stepNNNNNN folder saved with --save_state"),
            Flag(
                "resume_extend",
                bool,
                False,
                "with --resume: the run may have a new --max_train_steps / --max_train_epochs (to train a finished "
                "run longer); the LR schedule follows the new total, every other setting must match",
                action="store_true",
            ),
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
            add_flag(group, flag)
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
    """Flags, with `--config_file` values as defaults; then every problem with them at once, before any model loads."""
    parser = build_parser()
    first = parser.parse_args(argv)
    if first.config_file is not None:
        _apply_config_file(parser, first.config_file)
    args = parser.parse_args(argv)
    problems = flag_problems(args)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems with the flags:\n" + "\n".join(f"  {p}" for p in problems))
    return args


def flag_problems(args: argparse.Namespace) -> list[str]:
    """One line per problem: missing required flags, values out of bounds, names that do not import."""
    problems = [
        f"--{name} is required (on the command line or in --config_file)"
        for name in ("dataset_config", "ltx2_checkpoint")
        if getattr(args, name) is None
    ]
    problems += [p for flag in FLAGS.values() if (p := flag.problem(getattr(args, flag.name))) is not None]
    if args.resume_extend and args.resume is None:
        problems.append("--resume_extend: only means something with --resume STATE_FOLDER; add it or drop the flag")
    if args.fp8_base and "algo=dora" in (args.network_args or []):
        problems.append("--network_args algo=dora: DoRA reads the base weights, which --fp8_base stores in float8; "
                        "drop --fp8_base or use algo=lokr / loha / lora")  # fmt: skip
    if args.fp8_scaled and not args.fp8_base:
        problems.append("--fp8_scaled: only means something with --fp8_base; add --fp8_base or drop the flag")
    if (problem := _network_module_problem(args)) is not None:
        problems.append(problem)
    try:
        roles_for(args.ltx_mode, args.frozen_modality)
    except ConfigError as error:
        problems.append(str(error))
    return problems + _optimizer_problems(args) + _preview_problems(args)


def _network_module_problem(args) -> str | None:
    name = args.network_module
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that does not exist, or an empty/relative name
        found = False
    if not found:
        return (
            f"--network_module {name}: no such module; check the spelling (default {FLAGS['network_module'].default})"
        )
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        return f"--network_module {name}: cannot be imported ({error}); install what it needs"
    missing = [attr for attr in NETWORK_MODULE_API if not hasattr(module, attr)]
    if missing:
        return f"--network_module {name}: not a network module (lacks {', '.join(missing)})"
    return None


def _preview_problems(args) -> list[str]:
    """The preview flags belong together, and the prompt file parses (read now: a bad line stops the run here, not
    at the first preview hours later)."""
    schedule = ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first")
    given = [f"--{name}" for name in (*schedule, "sample_steps") if getattr(args, name)]
    if args.sample_prompts is None:
        return [f"{', '.join(given)}: previews need --sample_prompts FILE; add it or drop the flag"] if given else []
    problems = []
    if not any(getattr(args, name) for name in schedule):
        problems.append(
            "--sample_prompts: no preview is scheduled; add --sample_every_n_steps N, --sample_every_n_epochs N "
            "or --sample_at_first"
        )
    try:
        read_sample_prompts(args.sample_prompts)
    except DatasetError as error:
        problems.append(f"--sample_prompts: {error}")
    return problems


def _optimizer_problems(args) -> list[str]:
    problems = optimizer_problems(
        args.optimizer_type, args.learning_rate, args.lr_scheduler, args.lr_warmup_steps, args.optimizer_args
    )
    if args.ema_decay is not None and not problems and is_schedule_free(optimizer_class(args.optimizer_type)):
        problems.append(
            f"--ema_decay with --optimizer_type {args.optimizer_type}: a schedule-free optimizer averages the weights "
            "itself (its averaged weights are what gets saved); drop --ema_decay"
        )
    return problems
