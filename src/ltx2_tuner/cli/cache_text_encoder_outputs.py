"""Cache Gemma text embeddings of a dataset's captions: `ltx2_cache_text_encoder_outputs.py`.

    python ltx2_cache_text_encoder_outputs.py --dataset_config dataset.toml \\
        --ltx2_checkpoint ltx-2.3-22b-dev.safetensors --gemma_root gemma-3-12b-it \\
        [--ltx_mode av|audio] [--skip_existing] [--sample_prompts prompts.txt] [--gemma_offload]

Validation datasets are cached like training datasets. The empty prompt (caption dropout) is encoded once and
written into every training dataset's cache folder (cache.empty_prompt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ltx2_tuner.cli._common import (
    add_dataset_flags,
    add_device_flags,
    add_mode_flag,
    add_model_file_flags,
    resolve_device,
    run,
)
from ltx2_tuner.dtypes import COMPUTE_DTYPES
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.flags import TEXT_ENCODER, with_help

GEMMA_DTYPE = torch.bfloat16  # Gemma 3's own dtype, as the official trainer and diffusers' pipeline run it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltx2_cache_text_encoder_outputs.py", description=__doc__.split("\n")[0])
    add_dataset_flags(parser, checkpoint_required=True)
    parser.add_argument(
        "--ltx2_text_encoder_checkpoint",
        type=Path,
        help="file with the text connectors and projection, when --ltx2_checkpoint lacks them",
    )
    add_model_file_flags(
        parser,
        with_help(TEXT_ENCODER, "; not needed when --skip_existing finds every cache current"),
    )
    parser.add_argument("--gemma_root", type=Path, help="same as --text_encoder (a Gemma directory)")
    add_mode_flag(parser, "caches audio embeddings (for av, A2V and V2A training); audio caches only those (T2A)")
    parser.add_argument(
        "--mixed_precision",
        choices=tuple(COMPUTE_DTYPES),
        default="bf16",
        help="dtype of the connectors and of the stored embeddings (no = float32; default bf16)",
    )
    parser.add_argument("--batch_size", type=int, default=1, help="captions per Gemma call (default 1)")
    add_device_flags(parser)
    parser.add_argument("--gemma_load_in_8bit", action="store_true", help="8-bit Gemma (bitsandbytes, CUDA only)")
    parser.add_argument("--gemma_load_in_4bit", action="store_true", help="4-bit NF4 Gemma (bitsandbytes, CUDA only)")
    parser.add_argument(
        "--gemma_offload",
        action="store_true",
        help="keep Gemma's layers in host memory and stream one at a time to the GPU: the same bf16 features with "
        "~3.7 GB of Gemma on the GPU (automatic when the whole model does not fit)",
    )
    parser.add_argument("--allow_empty_captions", action="store_true", help="encode empty captions instead of failing")
    parser.add_argument(
        "--no_compat_text_keys",
        action="store_true",
        help="do not write the text_{dtype}/text_mask copies (--ltx_mode audio never writes them: other tools read "
        "them as video embeddings)",
    )
    parser.add_argument("--sample_prompts", type=Path, help="prompt file of the trainer's previews: cache it too")
    parser.add_argument(
        "--sample_prompts_cache",
        type=Path,
        help="where to write the sample prompt cache (default: {prompt file stem}_ltx2_sample_te.safetensors beside it)",
    )
    return parser


def _quantization(args) -> str | None:
    if args.gemma_load_in_8bit and args.gemma_load_in_4bit:
        raise ConfigError("--gemma_load_in_8bit and --gemma_load_in_4bit exclude each other; pass one")
    return "8bit" if args.gemma_load_in_8bit else "4bit" if args.gemma_load_in_4bit else None


def main(argv: list[str] | None = None) -> int:
    from ltx2_tuner.cache import empty_prompt
    from ltx2_tuner.cache import sample_prompts as samples
    from ltx2_tuner.cache.naming import EMPTY_PROMPT_NAME, TEXT_SUFFIX
    from ltx2_tuner.cache.store import remove_interrupted_writes
    from ltx2_tuner.cache.text_cacher import (
        TextCacheSummary,
        TextStamp,
        cache_text,
        compat_keys_allowed,
        pending_jobs,
        plan_text_jobs,
    )
    from ltx2_tuner.data.config import load_all_datasets
    from ltx2_tuner.models.model_files import model_files
    from ltx2_tuner.models.text_embeddings import check_text_encoder, connector_checkpoint, require_connector_weights
    from ltx2_tuner.models.text_encoder import check_offload, check_quantization

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError("--batch_size must be >= 1")
    if args.sample_prompts_cache and not args.sample_prompts:
        raise ConfigError("--sample_prompts_cache needs --sample_prompts")
    quantization = _quantization(args)
    device = resolve_device(args.device)
    dtype = COMPUTE_DTYPES[args.mixed_precision]

    # Everything that can be wrong is found here, before any weights load.
    check_offload(quantization, args.gemma_offload)
    check_quantization(quantization, device)
    datasets = load_all_datasets(args.dataset_config)  # training and validation datasets
    files = model_files(args.ltx2_checkpoint, text_encoder=args.text_encoder or args.gemma_root)
    text_encoder = files.text_encoder(required=False)  # not needed when every cache is current
    if args.ltx2_text_encoder_checkpoint:
        info = connector_checkpoint(args.ltx2_checkpoint, args.ltx2_text_encoder_checkpoint)
    else:
        info = files.connectors()
    require_connector_weights(info, args.ltx_mode)
    gemma = check_text_encoder(info, files.transformer, text_encoder, args.ltx_mode) if text_encoder else None
    prompts = samples.read_sample_prompts(args.sample_prompts) if args.sample_prompts else None
    jobs = plan_text_jobs(datasets, allow_empty=args.allow_empty_captions)

    stamp = TextStamp(
        connectors={"file": info.fingerprint, "version": info.version},
        gemma=None if gemma is None else {"identity": gemma.identity, "quantization": quantization or "none"},
        mode=args.ltx_mode,
        dtype=dtype,
        # Audio mode writes none: they would be read as the video context (compat_keys_allowed).
        compat_keys=not args.no_compat_text_keys and compat_keys_allowed(args.ltx_mode),
    )
    for dataset in datasets:
        remove_interrupted_writes(dataset.cache_directory, (TEXT_SUFFIX, EMPTY_PROMPT_NAME))
    pending = pending_jobs(jobs, stamp, args.skip_existing)
    empty_paths = empty_prompt.empty_prompt_paths(datasets)
    empty_pending = empty_prompt.pending_empty_prompts(empty_paths, stamp, args.skip_existing)
    sample_path = args.sample_prompts_cache or (samples.sample_cache_path(args.sample_prompts) if prompts else None)
    sample_needed = prompts is not None and not (
        args.skip_existing and samples.sample_cache_is_current(sample_path, prompts, stamp.models())
    )
    if (pending or sample_needed or empty_pending) and gemma is None:
        what = [f"{len(pending)} caption(s)"] if pending else []
        what += ["the sample prompts"] if sample_needed else []
        what += ["the empty prompt"] if empty_pending else []
        verb = "needs" if what == ["the empty prompt"] else "need"
        raise ConfigError(
            f"{' and '.join(what)} {verb} encoding; pass --text_encoder with "
            f"{'the LTX Gemma 4' if files.version == '2.5' else 'the Gemma 3 directory (e.g. gemma-3-12b-it)'}"
        )

    summary = TextCacheSummary(reused=len(jobs) - len(pending))
    print(
        f"encoding {len(pending)} of {len(jobs)} caption(s) with {info.path.name} (LTX-{info.version}, "
        f"{args.ltx_mode}, {args.mixed_precision}) on {device}",
        flush=True,
    )
    if pending or sample_needed or empty_pending:
        encode, unload = _load_encoder(
            info, gemma, args.ltx_mode, dtype, device, quantization, args.gemma_offload, args.batch_size
        )
        try:
            result = cache_text(pending, encode, stamp, args.batch_size)
            summary.encoded, summary.failed = result.encoded, result.failed
            if sample_needed:
                samples.cache_sample_prompts(sample_path, prompts, encode, stamp.models(), args.batch_size)
            summary.failed += empty_prompt.cache_empty_prompt(empty_pending, encode, stamp)
        finally:
            unload()
    reused = len(empty_paths) - len(empty_pending)
    print(f"empty prompt (caption dropout): written to {len(empty_pending)}, current in {reused} cache folder(s)")
    if prompts is not None:
        state = "written" if sample_needed else "current, reused"
        print(f"sample prompts: {len(prompts)} prompt(s) in {sample_path} ({state})")
    print(f"done: {summary.encoded} encoded, {summary.reused} reused, {len(summary.failed)} failed")
    for reason in summary.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def _load_encoder(
    info,
    gemma,
    mode: str,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None,
    offload: bool,
    batch_size: int,
):
    """(captions -> CPU embeddings, unload). Connectors load first: they are smaller and fail faster than Gemma.

    Gemma and the connectors stay loaded together and each batch goes through both at once, so only the final
    embeddings (~12-15 MB per caption) are kept, never the packed Gemma features (~385 MB per caption).
    Gemma's layers are streamed from host memory with --gemma_offload, or when the whole bf16 model would not fit
    the GPU's free memory next to the connectors: the features are the same bit for bit, only slower.
    """
    from ltx2_tuner.cache.text_cacher import check_finite
    from ltx2_tuner.models.text_embeddings import encode_prompts, load_text_embedder
    from ltx2_tuner.models.text_encoder import OFFLOAD_FLAG, load_gemma, whole_gemma_misfit

    embedder = load_text_embedder(info, mode, dtype, device)
    if not offload and quantization is None:
        misfit = whole_gemma_misfit(gemma, device, batch_size)
        if misfit is not None:
            print(f"{misfit}: streaming its layers from host memory ({OFFLOAD_FLAG}, same features)", flush=True)
            offload = True
    text_encoder = load_gemma(gemma, GEMMA_DTYPE, device, quantization, offload)

    def encode(texts: list[str]):
        video, audio, mask = encode_prompts(text_encoder, embedder, texts)
        check_finite(video, audio, dtype)
        return video, audio, mask

    return encode, text_encoder.unload


if __name__ == "__main__":
    sys.exit(run(main))
