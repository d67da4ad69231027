"""Generate a video (with audio), an image, an image-to-video clip, sound alone (T2A), a video for a sound (A2V) or
a sound for a video (V2A), with LoRAs: `ltx2_generate_video.py`.

    python ltx2_generate_video.py --ltx2_checkpoint ltx-2.3-22b-dev.safetensors --gemma_root gemma-3-12b-it \\
        --prompt "a red fox runs through snow" [--lora_weight my_lora.safetensors:0.8] [--image first.png]
        [--ltx_mode audio --duration 5 | --audio voice.wav | --video clip.mp4]
        [--extend clip.mp4 --direction forward | --reference depth.mp4 | --source clip.mp4 --mask mask.png]

Every flag is checked, and every problem reported, before any weights load. Then, one model at a time on the device:
Gemma + text connectors encode the prompt and the negative prompt (or a sample-prompt cache replaces them), the VAE
encoders encode the --image / --audio / --video condition, the transformer (LoRAs merged) samples, the decoders that
the output needs decode. Each is freed before the next loads, so the peak is the transformer alone.
docs/generation.md has the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import warnings
from pathlib import Path

import torch

from ltx2_tuner.cli._common import resolve_device, run
from ltx2_tuner.cli.generate_plan import DEFAULTS, Job, LoraWeight, Plan, guidance, plan, text_mode
from ltx2_tuner.dtypes import COMPUTE_DTYPES
from ltx2_tuner.flags import AUDIO_VAE, LTX2_CHECKPOINT, LTX_MODE, TEXT_ENCODER, VIDEO_VAE, add_flag, with_help
from ltx2_tuner.models.attention_backends import ATTENTION_BACKENDS, check_backend


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltx2_generate_video.py", description=__doc__.split("\n")[0])
    add_flag(parser, LTX2_CHECKPOINT, required=True)
    add_flag(parser, VIDEO_VAE)
    add_flag(parser, AUDIO_VAE)
    text = parser.add_argument_group("prompt")
    text.add_argument("--prompt", help="what to generate (needs --text_encoder)")
    text.add_argument("--negative_prompt", help="what to steer away from (default: the official negative prompt)")
    add_flag(text, with_help(TEXT_ENCODER, "; encodes --prompt"))
    text.add_argument("--gemma_root", type=Path, help="same as --text_encoder (its older name)")
    text.add_argument(
        "--prompt_cache",
        type=Path,
        help="sample-prompt cache (ltx2_cache_text_encoder_outputs.py --sample_prompts) instead of Gemma: its "
        "prompts, each with its own options unless a flag below is given",
    )
    text.add_argument("--prompt_index", type=int, help="generate only this prompt of --prompt_cache (0-based)")
    size = parser.add_argument_group("output")
    for name, kind, what in (
        ("width", int, "width in pixels, a multiple of 32"),
        ("height", int, "height in pixels, a multiple of 32"),
        ("frames", int, "frames, 8k+1; 1 writes a png"),
        ("fps", float, "frame rate"),
        ("seed", int, "noise seed"),
    ):
        size.add_argument(f"--{name}", type=kind, help=f"{what} (default: {DEFAULTS[name]})")
    size.add_argument("--image", type=Path, help="first frame (image-to-video), cover-resized and centre-cropped")
    size.add_argument(
        "--audio",
        type=Path,
        help="audio-to-video (--ltx_mode av): make the video for this sound, muxed into the mp4 (default --frames: "
        "the largest 8k+1 it covers, at most 257)",
    )
    size.add_argument(
        "--video",
        type=Path,
        help="video-to-audio (--ltx_mode av): make the sound for this clip's frames, read at --width/--height "
        "(default --fps: the clip's; --frames: the largest 8k+1 it holds, at most 257)",
    )
    size.add_argument(
        "--duration", type=float, help=f"seconds of sound with --ltx_mode audio (default: {DEFAULTS['duration']})"
    )
    size.add_argument(
        "--output",
        type=Path,
        help="mp4 (or png; .wav or .mp3 with --ltx_mode audio) to write (default: outputs/ltx2_<time>.mp4 or .wav)",
    )
    size.add_argument("--vae_tiling", action="store_true", help="decode in overlapping tiles (less memory)")
    _add_condition_flags(parser)
    sampling = parser.add_argument_group("sampling (defaults: the official ones of the checkpoint's version)")
    sampling.add_argument("--steps", type=int, help="denoising steps (default: 40 on LTX-2.0, 30 on LTX-2.3 and 2.5)")
    for name, what in (
        ("cfg_scale", "video classifier-free guidance (default 3; 1 = off)"),
        ("audio_cfg_scale", "audio classifier-free guidance (default 7; 1 = off)"),
        ("stg_scale", "video spatio-temporal guidance (default 1; 0 = off)"),
        ("audio_stg_scale", "audio spatio-temporal guidance (default 1; 0 = off)"),
        ("rescale_scale", "guidance rescale, 0..1 (default 0.7; 0 = off)"),
        ("modality_scale", "audio <-> video guidance (default 3; 1 = off)"),
    ):
        sampling.add_argument(f"--{name}", type=float, help=what)
    sampling.add_argument(
        "--stg_blocks", type=int, nargs="+", help="blocks whose self-attention STG skips (default: 29 / 28)"
    )
    model = parser.add_argument_group("model")
    add_flag(
        model,
        dataclasses.replace(
            with_help(LTX_MODE, " (video: T2V with a video-only build; audio: T2A with an audio-only build)"),
            default="av",
        ),
    )
    model.add_argument(
        "--lora_weight",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="LoRA to merge (official/ComfyUI or musubi format), strength default 1.0; repeatable",
    )
    model.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    model.add_argument(
        "--attention_backend",
        choices=ATTENTION_BACKENDS,
        default="native",
        help="attention kernel (default: native = PyTorch SDPA); sage (sageattention) is fastest for sampling",
    )
    model.add_argument(
        "--mixed_precision",
        choices=tuple(COMPUTE_DTYPES),
        help="compute dtype (default: bf16 on CUDA, no = float32 on a CPU, where bf16 kernels are ~100x slower)",
    )
    return parser


def _add_condition_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("conditions on generated tokens (docs/generation.md)")
    group.add_argument(
        "--extend",
        type=Path,
        help="video extension: this clip (read at --width/--height/--fps, all of its 8k+1 frames) is kept and "
        "--frames (more than the clip) are generated around it; see --direction",
    )
    group.add_argument(
        "--extend_audio",
        type=Path,
        help="audio extension (--ltx_mode audio or av): this sound is kept and the rest generated; see --direction",
    )
    group.add_argument(
        "--direction",
        choices=("forward", "backward"),
        help="extension: forward = the clip starts the output (default), backward = the clip ends it",
    )
    group.add_argument(
        "--reference",
        type=Path,
        help="IC-LoRA reference clip (depth, pose, edges, ...), read at the output size / N with frames subsampled by "
        "S, N and S from the LoRA's metadata (1 when absent)",
    )
    group.add_argument(
        "--reference_downscale", type=int, help="read --reference at the output size / this (default: the LoRA's)"
    )
    group.add_argument(
        "--source",
        type=Path,
        help="clip to outpaint (with --outpaint_crop) or inpaint (with --mask and/or --audio_mask), read like --video "
        "(an audio file with --ltx_mode audio --audio_mask)",
    )
    group.add_argument(
        "--outpaint_crop",
        metavar="X,Y,W,H",
        help="outpainting: the --source clip fills this pixel box of the output (multiples of 32); the rest is generated",
    )
    group.add_argument(
        "--mask",
        type=Path,
        help="inpainting: mask image or video over the --source clip; white is kept, black regenerated (official)",
    )
    group.add_argument(
        "--reference_audio",
        type=Path,
        help="A2A / AV2AV IC-LoRA reference sound (--ltx_mode audio or av), read like --audio for the output's length "
        "and placed before the generated audio",
    )
    group.add_argument(
        "--audio_mask",
        type=Path,
        help="audio inpainting: mask over the --source sound (a 1-D tensor .pt/.npy/.safetensors or an audio file's "
        "envelope, stretched over the output); > 0.5 is kept, the rest regenerated",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    precision = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    dtype = COMPUTE_DTYPES[precision]

    check_backend(args.attention_backend, training=False, dtype=dtype)
    checked = plan(args)  # every problem, before any weights load
    info, jobs = checked.info, checked.jobs
    print(f"{info.path.name}: LTX-{info.version}, --ltx_mode {args.ltx_mode}, {precision} on {device}", flush=True)
    if args.reference is not None:
        spatial, temporal = jobs[0].conditions.reference_factors
        print(f"reference read at 1/{spatial} size, every {temporal} frame(s)", flush=True)
    contexts = _contexts(checked, args.ltx_mode, dtype, precision, device)
    conditions = _conditions(jobs, checked.files, device)
    requests = [_request(job, contexts[i], conditions[i], args, info.version, dtype) for i, job in enumerate(jobs)]

    from ltx2_tuner.models import load_transformer
    from ltx2_tuner.sampling import sample

    print(f"loading the transformer ({args.ltx_mode} build)", flush=True)
    model = load_transformer(info, mode=args.ltx_mode, dtype=dtype, device=device)
    model.set_attention_backend(args.attention_backend, training=False)
    _merge_loras(model, checked.loras, info.version)
    results = []
    for job, request in zip(jobs, requests, strict=True):
        print(f"sampling {_describe(job, args.ltx_mode)}, {request.steps} steps: {job.prompt[:60]!r}", flush=True)
        results.append(sample(model, request, device=device, dtype=dtype, progress=True))
    del model  # the decoders get the device to themselves
    _release_memory()
    _decode_and_write(jobs, results, conditions, checked.files, device, dtype, args)
    return 0


def _describe(job: Job, mode: str) -> str:
    roles = job.roles(mode)
    if roles.name == "t2a":
        return f"{job.duration_s:g} s of sound"
    return f"{roles.name.upper()} {job.width}x{job.height}x{job.frames}"


# ---------------------------------------------------------------- the models, one at a time
def _contexts(checked: Plan, mode: str, dtype, precision: str, device) -> list[dict]:
    """Per job {"video", "video_negative", "audio", "audio_negative"}: [1, T, D] on the CPU, None for a modality
    the job does not have. Gemma and the connectors are freed before this returns."""
    jobs, gemma = checked.jobs, checked.gemma
    if gemma is None:
        return [_cached_contexts(job, mode) for job in jobs]
    from ltx2_tuner.cache.text_cacher import check_finite
    from ltx2_tuner.models.text_embeddings import encode_prompts, load_text_embedder
    from ltx2_tuner.models.text_encoder import load_gemma

    print(f"encoding the prompts with {gemma.root}", flush=True)
    embedder = load_text_embedder(checked.connectors, text_mode(mode, jobs), dtype, device)
    # Gemma in its own bf16 (as the text cacher runs it), float32 with --mixed_precision no (CPU speed).
    encoder = load_gemma(gemma, torch.float32 if precision == "no" else torch.bfloat16, device)
    try:
        contexts = []
        for job in jobs:
            roles, found = job.roles(mode), {}
            for key, text in (("", job.prompt), ("_negative", job.negative_prompt)):
                video, audio, _ = encode_prompts(encoder, embedder, [text])  # one at a time, as the caches
                check_finite(video, audio, dtype)
                found["video" + key] = video if roles.present("video") else None
                found["audio" + key] = audio if roles.present("audio") else None
            contexts.append(found)
    finally:
        encoder.unload()
        del embedder
        _release_memory()
    return contexts


def _cached_contexts(job: Job, mode: str) -> dict:
    embeds, roles = job.cached, job.roles(mode)

    def present(modality: str, tensor):
        return tensor[None] if roles.present(modality) else None

    return {
        "video": present("video", embeds.video),
        "video_negative": present("video", embeds.negative_video),
        "audio": present("audio", embeds.audio),
        "audio_negative": present("audio", embeds.negative_audio),
    }


def _conditions(jobs: list[Job], files, device) -> list:
    """Each job's --image / --audio / --video encoded at its size and length (sampling.conditions), or None."""
    from ltx2_tuner.sampling.conditions import Condition, encode_conditions

    conditions = [
        Condition(
            job.width, job.height, job.frames, job.fps, job.image, job.audio, job.video,
            audio_latents=_audio_latents(job), **dataclasses.asdict(job.conditions),
        )
        for job in jobs
    ]  # fmt: skip
    needs_video = any(c.needs_video_vae for c in conditions)
    needs_audio = any(c.needs_audio_vae for c in conditions)
    if not needs_video and not needs_audio:
        return [None] * len(jobs)
    print("encoding the conditions", flush=True)
    video_vae = files.video_vae() if needs_video else None
    audio_vae = files.audio_vae() if needs_audio else None
    encoded = encode_conditions(conditions, video_vae, audio_vae, device)
    _release_memory()
    return encoded


def _audio_latents(job: Job) -> int:
    from ltx2_tuner.models import audio_latent_count

    return round(job.duration_s * 25) if job.duration_s is not None else audio_latent_count(job.frames, job.fps)


def _request(job: Job, contexts: dict, condition, args, version: str, dtype):
    from ltx2_tuner.sampling import SampleRequest

    steps, video, audio = guidance(job, args, version)

    def cast(tensor):
        return None if tensor is None else tensor.to(dtype)

    audio_only = not job.roles(args.ltx_mode).present("video")
    return SampleRequest(
        width=None if audio_only else job.width,
        height=None if audio_only else job.height,
        num_frames=None if audio_only else job.frames,
        frame_rate=None if audio_only else job.fps,
        seed=job.seed,
        steps=steps,
        video_context=cast(contexts["video"]),
        video_context_negative=cast(contexts["video_negative"]),
        audio_context=cast(contexts["audio"]),
        audio_context_negative=cast(contexts["audio_negative"]),
        video_guidance=video,
        audio_guidance=audio,
        first_frame_latent=cast(condition.first_frame) if condition else None,
        audio_duration_s=job.duration_s if audio_only else None,
        frozen_video_latents=condition.frozen_video if condition else None,
        frozen_audio_latents=condition.frozen_audio if condition else None,
        video_clean_latents=condition.video_clean if condition else None,
        video_clean_mask=condition.video_clean_mask if condition else None,
        audio_clean_latents=condition.audio_clean if condition else None,
        audio_clean_mask=condition.audio_clean_mask if condition else None,
        video_reference_latents=cast(condition.video_reference) if condition else None,
        reference_fps=condition.reference_fps if condition else None,
        reference_spatial_factor=condition.reference_factors[0] if condition else 1,
        reference_temporal_factor=condition.reference_factors[1] if condition else 1,
        audio_reference_latents=cast(condition.audio_reference) if condition else None,
    )


def _merge_loras(model, loras: list[LoraWeight], version: str) -> None:
    from ltx2_tuner.networks.lora_files import lora_version_warning
    from ltx2_tuner.networks.lora_merge import merge_lora

    for lora in loras:
        mismatch = lora_version_warning(lora.path, version)
        if mismatch:
            print(f"warning: {mismatch}", file=sys.stderr)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = merge_lora(model.backbone, lora.path, lora.strength)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        print(f"LoRA {lora.path.name}: {layers} layers merged at strength {lora.strength}", flush=True)


def _decode_and_write(jobs, results, conditions, files, device, dtype, args) -> None:
    """Decode what each job generated (only the decoders that needs are loaded) and write it with its condition:
    T2A a .wav / .mp3; A2V the generated frames with the source audio; V2A the source frames with the new sound."""
    from ltx2_tuner.sampling.conditions import OUTPUT_AUDIO_RATE
    from ltx2_tuner.sampling.decode import Decoders
    from ltx2_tuner.sampling.media_writers import write_audio, write_media

    roles = [job.roles(args.ltx_mode) for job in jobs]
    with_video, with_audio = (any(r.generated(m) for r in roles) for m in ("video", "audio"))
    # float32 on a CPU (bf16 convolutions crawl there); the compute dtype on a GPU, bf16 for fp16 (VAE overflow).
    decode_dtype = torch.float32 if device.type == "cpu" or dtype == torch.float32 else torch.bfloat16
    print("decoding", flush=True)
    decoders = Decoders.load(
        files.video_vae() if with_video else None,
        with_audio=with_audio,
        dtype=decode_dtype,
        audio_info=files.audio_vae() if with_audio else None,
        with_video=with_video,
    )
    with decoders.on(device):
        for job, role, result, condition in zip(jobs, roles, results, conditions, strict=True):
            audio, rate = decoders.decode_audio(result.audio_latents) if role.generated("audio") else (None, None)
            if role.frozen("audio"):
                audio, rate = condition.waveform, OUTPUT_AUDIO_RATE
            job.output.parent.mkdir(parents=True, exist_ok=True)
            if not role.present("video"):
                path = write_audio(job.output, audio, rate)
            else:
                frames = (
                    condition.frames
                    if role.frozen("video")
                    else decoders.decode_video(result.video_latents, tiled=args.vae_tiling, seed=job.seed)
                )
                path = write_media(job.output, frames, job.fps, audio, rate)
            print(f"wrote {path}", flush=True)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(run(main))
