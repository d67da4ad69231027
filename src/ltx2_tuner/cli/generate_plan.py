"""The flags of `ltx2_generate_video.py` -> a checked plan (what to generate, with which LoRAs), before any weights
load. Every problem found is reported at once, one line each; the generate command then only runs models.

Each job has modality roles (roles.py): --ltx_mode video is T2V, audio T2A (--duration seconds), av T2AV, or A2V with
--audio FILE (the video is made for that sound), or V2A with --video FILE (the sound is made for those frames).
Flags that mean nothing in a job's mode are refused, one line each, rather than ignored. Any job may also extend a
clip (--extend / --extend_audio), follow an IC-LoRA reference (--reference) or in/outpaint a --source clip
(generate_modes.token_conditions).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.cli import generate_modes
from ltx2_tuner.errors import CacheError, ConfigError, Ltx2TunerError
from ltx2_tuner.roles import ModalityRoles, roles_by_name, roles_for

DEFAULTS = {"width": 768, "height": 512, "frames": 121, "fps": 24.0, "seed": 42, "duration": 5.0}


@dataclass(frozen=True)
class LoraWeight:
    path: Path
    strength: float


@dataclass(frozen=True)
class Job:
    """One output: its sampling settings and texts (or cached embeddings), and where it goes."""

    prompt: str
    negative_prompt: str | None  # None: the embeddings come from the cache
    cached: object | None  # cache.sample_prompts.SamplePromptEmbeds
    width: int
    height: int
    frames: int
    fps: float
    seed: int
    steps: int | None
    cfg: float | None
    audio_cfg: float | None
    image: Path | None
    output: Path
    audio: Path | None = None  # A2V: the audio the video is made for
    video: Path | None = None  # V2A: the video the sound is made for
    duration_s: float | None = None  # T2A: seconds of audio
    # extension, IC-LoRA reference, in/outpainting (set by plan)
    conditions: generate_modes.TokenConditions = dataclasses.field(default_factory=generate_modes.TokenConditions)

    def roles(self, mode: str) -> ModalityRoles:
        """What this job does with video and audio in `--ltx_mode mode`. A still image (a png) has no sound."""
        if mode == "av" and self.audio is not None:
            return roles_by_name("a2v")
        if mode == "av" and self.video is not None:
            return roles_by_name("v2a")
        if mode == "av" and self.frames == 1:
            return roles_by_name("t2v")
        return roles_for(mode)


@dataclass(frozen=True)
class Plan:
    info: object  # models.CheckpointInfo: the transformer's file
    jobs: list[Job]
    loras: list[LoraWeight]
    gemma: object | None  # models.text_encoder.GemmaInfo; None: the prompts come from --prompt_cache
    files: object = None  # models.model_files.ModelFiles: the VAE files, opened and checked
    connectors: object = None  # models.CheckpointInfo of the text connectors (with Gemma only)


def plan(args) -> Plan:
    """Check every flag, file and their fit to the checkpoint; ConfigError listing every problem, one line each."""
    from ltx2_tuner.models.model_files import model_files
    from ltx2_tuner.models.text_embeddings import check_text_encoder

    problems: list[str] = []

    def check(step):  # run a check; a user-facing error becomes one problem line
        try:
            return step()
        except Ltx2TunerError as error:
            problems.append(str(error))
            return None

    text_encoder = args.text_encoder or args.gemma_root
    files = check(lambda: model_files(args.ltx2_checkpoint, args.video_vae, args.audio_vae, text_encoder))
    info = files.transformer if files is not None else None
    if files is not None and text_encoder is None and not args.prompt_cache:
        text_encoder = files.text_encoder(required=False)  # a split pack's own; else the source check says
    source_problems = _prompt_source_problems(args, text_encoder)
    problems += source_problems
    mode_problems = generate_modes.flag_problems(args) + generate_modes.condition_flag_problems(args)
    problems += mode_problems
    media = check(lambda: generate_modes.media_defaults(args, DEFAULTS["fps"])) if not mode_problems else None
    cached = check(lambda: _read_prompt_cache(args, info)) if args.prompt_cache and not source_problems else None
    jobs = _jobs(args, cached, media or {})
    for job in jobs:
        problems += _job_problems(job, args.ltx_mode)
    problems += _guidance_problems(args, info)
    loras = [lora for text in args.lora_weight if (lora := _lora_weight(text, problems)) is not None]
    if not mode_problems:
        jobs = _with_conditions(args, jobs, loras, problems, check)
    gemma = connectors = None
    if info is not None:
        roles = [job.roles(args.ltx_mode) for job in jobs]
        if any(r.present("video") for r in roles):
            check(lambda: files.video_vae().require("video_vae"))
        if any(r.generated("audio") for r in roles):
            check(lambda: [files.audio_vae().require(c) for c in ("audio_vae", "vocoder")])
        elif any(r.frozen("audio") for r in roles):
            check(lambda: files.audio_vae().require("audio_vae"))
        if text_encoder and not args.prompt_cache:
            connectors = check(files.connectors)
            if connectors is not None:
                mode = text_mode(args.ltx_mode, jobs)
                gemma = check(lambda: check_text_encoder(connectors, info, text_encoder, mode))
        if loras:
            check(lambda: _check_loras_fit(info, args.ltx_mode, loras))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems with the flags:\n" + "\n".join(f"  {p}" for p in problems))
    return Plan(info, jobs, loras, gemma, files, connectors)


def _with_conditions(args, jobs: list[Job], loras: list[LoraWeight], problems: list[str], check) -> list[Job]:
    """The jobs with their extension / reference / in- and outpainting inputs; the reference factors are read from
    the LoRAs' metadata once."""
    from ltx2_tuner.networks.lora_files import ReferenceFactors, reference_factors

    factors = ReferenceFactors()
    if args.reference is not None:
        factors = check(lambda: reference_factors([lora.path for lora in loras]))
        if factors is None:
            return jobs
    found = []
    for job in jobs:
        result = check(lambda job=job: generate_modes.token_conditions(args, job, factors))  # unreadable media
        if result is None:
            return jobs
        conditions, job_problems = result
        problems += [p for p in job_problems if p not in problems]  # one line per problem, not per cached prompt
        found.append(dataclasses.replace(job, conditions=conditions))
    return found


def guidance(job: Job, args, version: str):
    """(steps, video GuidanceParams, audio GuidanceParams): the flags, else the job's prompt line, else the official
    defaults of the checkpoint's version."""
    from ltx2_tuner.sampling import sampling_defaults

    defaults = sampling_defaults(version)
    shared = _given(rescale=args.rescale_scale, modality=args.modality_scale)
    if args.stg_blocks is not None:
        shared["stg_blocks"] = tuple(args.stg_blocks)
    video = dataclasses.replace(defaults.video, **shared, **_given(cfg=job.cfg, stg=args.stg_scale))
    audio = dataclasses.replace(defaults.audio, **shared, **_given(cfg=job.audio_cfg, stg=args.audio_stg_scale))
    return job.steps or defaults.steps, video, audio


def _given(**values) -> dict:
    return {key: value for key, value in values.items() if value is not None}


def _prompt_source_problems(args, text_encoder) -> list[str]:
    if args.prompt_cache:
        flags = ("prompt", "negative_prompt", "text_encoder", "gemma_root")
        given = [flag for flag in flags if getattr(args, flag) is not None]
        return [
            f"--{flag}: the prompts come from --prompt_cache {args.prompt_cache}; drop --{flag} or --prompt_cache"
            for flag in given
        ]
    problems = []
    if args.prompt_index is not None:
        problems.append("--prompt_index: picks a prompt of --prompt_cache; add --prompt_cache or drop it")
    if not args.prompt:
        problems.append('--prompt: required (e.g. --prompt "a red fox runs through snow"), or pass --prompt_cache')
    if text_encoder is None:
        problems.append(
            "--text_encoder: needed to encode --prompt; pass the Gemma text encoder (gemma-3-12b-it for LTX-2/2.3, "
            "the LTX Gemma 4 for 2.5), or a --prompt_cache written by ltx2_cache_text_encoder_outputs.py "
            "--sample_prompts"
        )
    return problems


def _jobs(args, cached: list | None, media: dict) -> list[Job]:
    """One job for --prompt, or one per cached prompt (--prompt_index: that one); flags win over a prompt's options,
    and an --audio / --video file's defaults (`media`) over the built-in ones. A cached prompt's own --a / --v
    (A2V / V2A) applies in AV mode, its --du in audio mode."""
    from ltx2_tuner.sampling import OFFICIAL_NEGATIVE_PROMPT

    def pick(flag, own):
        return flag if flag is not None else own

    if cached is None:
        entries = [] if args.prompt_cache else [(None, None)]  # sizes are checked even when --prompt is missing
    else:
        entries = list(enumerate(cached))
        if args.prompt_index is not None:
            entries = entries[args.prompt_index : args.prompt_index + 1] if args.prompt_index >= 0 else []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    audio_only, av = args.ltx_mode == "audio", args.ltx_mode == "av"
    jobs = []
    for index, embeds in entries:
        own = embeds.sample if embeds is not None else None
        condition = args.audio or args.video
        frames = pick(args.frames, media.get("frames") or (own.num_frames if own else DEFAULTS["frames"]))
        suffix = ".wav" if audio_only else ".mp4"
        output = args.output or Path("outputs") / f"ltx2_{stamp}{suffix}"
        if index is not None and args.prompt_index is None and len(entries) > 1:
            output = output.with_name(f"{output.stem}_{index:02d}{output.suffix}")
        jobs.append(
            Job(
                prompt=own.prompt if own else args.prompt or "",
                negative_prompt=None if own else pick(args.negative_prompt, OFFICIAL_NEGATIVE_PROMPT),
                cached=embeds,
                width=pick(args.width, own.width if own else DEFAULTS["width"]),
                height=pick(args.height, own.height if own else DEFAULTS["height"]),
                frames=frames,
                fps=pick(args.fps, media.get("fps") or (own.frame_rate if own else DEFAULTS["fps"])),
                seed=pick(args.seed, own.seed if own else DEFAULTS["seed"]),
                steps=pick(args.steps, own.steps if own else None),
                cfg=pick(args.cfg_scale, own.guidance_scale if own else None),
                audio_cfg=pick(args.audio_cfg_scale, own.audio_guidance_scale if own else None),
                image=pick(args.image, Path(own.image) if own and own.image else None),
                output=output.with_suffix(".png") if frames == 1 and not args.output and not audio_only else output,
                audio=pick(args.audio, _own_path(own, "audio") if av and not condition else None),
                video=pick(args.video, _own_path(own, "video") if av and not condition else None),
                duration_s=pick(args.duration, own.audio_seconds if own else DEFAULTS["duration"])
                if audio_only
                else None,
            )
        )
    return jobs


def _own_path(own, name: str) -> Path | None:
    value = getattr(own, name) if own is not None else None
    return Path(value) if value else None


def _job_problems(job: Job, mode: str) -> list[str]:
    from ltx2_tuner.data.images import image_size
    from ltx2_tuner.models import audio_latent_count

    roles = job.roles(mode)
    if roles.name == "t2a":  # only the length and the file type matter
        if job.output.suffix.lower() not in (".wav", ".mp3"):
            return [f"--output {job.output}: audio-only output is a .wav (16-bit) or .mp3; name the file so"]
        return []
    problems = []
    for flag, value in (("width", job.width), ("height", job.height)):
        if value < 32 or value % 32:
            problems.append(
                f"--{flag} {value}: must be a positive multiple of 32 (the VAE's factor), e.g. {max(32, round(value / 32) * 32)}"
            )
    if job.frames < 1 or (job.frames - 1) % 8:
        nearest = max(1, round((job.frames - 1) / 8) * 8 + 1)
        problems.append(f"--frames {job.frames}: must be 8k+1 (1, 9, 17, ..., 121); e.g. {nearest}")
    elif not job.fps > 0:
        problems.append(f"--fps {job.fps}: must be positive")
    elif roles.generated("audio") and audio_latent_count(job.frames, job.fps) < 1:
        problems.append(
            f"--frames {job.frames} at --fps {job.fps}: too short for audio; more frames or --ltx_mode video"
        )
    if job.steps is not None and job.steps < 1:
        problems.append(f"--steps {job.steps}: must be at least 1")
    if job.image is not None:
        if not job.image.is_file():
            problems.append(f"--image {job.image}: file not found; pass the first-frame image")
        else:
            try:
                image_size(job.image)
            except Ltx2TunerError as error:
                problems.append(f"--image {error}")
    if job.frames == 1 and (job.audio or job.video):
        problems.append(
            "--frames 1: a still image has no sound; audio-to-video and video-to-audio need 9 frames or more"
        )
    if job.frames > 1 and job.output.suffix.lower() != ".mp4":
        problems.append(f"--output {job.output}: {job.frames} frames are written as an mp4; name the file .mp4")
    return problems


def _guidance_problems(args, info) -> list[str]:
    problems = []
    for flag in ("cfg_scale", "audio_cfg_scale", "stg_scale", "audio_stg_scale", "modality_scale"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value >= 0):
            problems.append(f"--{flag} {value}: must be a number >= 0")
    if args.rescale_scale is not None and not 0 <= args.rescale_scale <= 1:
        problems.append(f"--rescale_scale {args.rescale_scale}: must be in [0, 1]")
    layers = info.configs["transformer"].get("num_layers") if info is not None else None
    for block in args.stg_blocks or ():
        if block < 0 or (layers is not None and block >= layers):
            problems.append(f"--stg_blocks {block}: the transformer has blocks 0..{(layers or 1) - 1}")
    if args.prompt_index is not None and args.prompt_index < 0:
        problems.append(f"--prompt_index {args.prompt_index}: must be >= 0")
    return problems


def _lora_weight(text: str, problems: list[str]) -> LoraWeight | None:
    """PATH or PATH:STRENGTH (the last colon splits, so Windows drive letters stay in the path)."""
    head, sep, tail = text.rpartition(":")
    path, strength = Path(text), 1.0
    if sep:
        try:
            path, strength = Path(head), float(tail)
        except ValueError:
            if Path(head).is_file():
                problems.append(f"--lora_weight {text}: strength {tail!r} is not a number; e.g. {head}:0.8")
                return None
    if not math.isfinite(strength):
        problems.append(f"--lora_weight {text}: strength must be a finite number, e.g. {path}:0.8")
    elif not path.is_file():
        problems.append(f"--lora_weight {path}: file not found; pass an existing LoRA .safetensors file")
    else:
        return LoraWeight(path, strength)
    return None


def text_mode(mode: str, jobs: list[Job]) -> str:
    """The text embeddings the jobs need: "av" when some job has both modalities, else its one modality."""
    if any(job.roles(mode).both_present for job in jobs):
        return "av"
    return "audio" if mode == "audio" else "video"


def _check_loras_fit(info, mode: str, loras: list[LoraWeight]) -> None:
    """Each LoRA against the transformer's layer shapes on the meta device: nothing is read but the LoRA files."""
    from ltx2_tuner.models.loading import build_module
    from ltx2_tuner.models.transformer import prune
    from ltx2_tuner.networks.lora_merge import merge_lora

    backbone = prune(build_module(info, "transformer"), mode)
    with warnings.catch_warnings():  # the real merge warns about skipped layers
        warnings.simplefilter("ignore")
        for lora in loras:
            merge_lora(backbone, lora.path, 0.0)  # strength 0: checks only


def _read_prompt_cache(args, info) -> list:
    """The cache's prompts with their embeddings; CacheError when it cannot serve this mode or model version."""
    from safetensors import safe_open

    from ltx2_tuner.cache import sample_prompts as samples
    from ltx2_tuner.cache.store import read_fingerprint

    path = args.prompt_cache
    rerun = "write it with ltx2_cache_text_encoder_outputs.py --sample_prompts PROMPTS.txt"
    fingerprint = read_fingerprint(path) if path.is_file() else None
    if fingerprint is None:
        raise CacheError(f"--prompt_cache {path}: not a sample-prompt cache (missing or damaged); {rerun}")
    version = (fingerprint.get("connectors") or {}).get("version")
    if info is not None and version != info.version:
        raise CacheError(
            f"--prompt_cache {path}: encoded for LTX-{version}, the checkpoint is LTX-{info.version}; {rerun}"
        )
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    try:
        prompts = [samples.SamplePrompt(**fields) for fields in json.loads(metadata["prompts"])]
    except (KeyError, TypeError, ValueError):  # no or unreadable prompt list: another or an older format
        raise CacheError(f"--prompt_cache {path}: holds no readable prompt list; {rerun}") from None
    if args.prompt_index is not None and args.prompt_index >= len(prompts):
        raise ConfigError(
            f"--prompt_index {args.prompt_index}: {path} holds {len(prompts)} prompt(s), 0..{len(prompts) - 1}"
        )
    if not samples.cache_serves(fingerprint.get("mode"), args.ltx_mode):
        raise CacheError(
            f"--prompt_cache {path}: encoded in {fingerprint.get('mode')} mode, which lacks embeddings --ltx_mode "
            f"{args.ltx_mode} needs; {rerun} --ltx_mode {args.ltx_mode}"
        )
    embeddings = {}
    for index, sample in enumerate(prompts):
        for prefix, text in (("", sample.prompt), ("negative_", sample.negative_prompt)):
            audio = tensors.get(f"{prefix}audio_prompt_embeds_{index}")
            embeddings[text] = (
                tensors.get(f"{prefix}video_prompt_embeds_{index}"),
                audio,
                tensors[f"{prefix}prompt_attention_mask_{index}"],
            )
    return samples.sample_prompt_embeds(prompts, embeddings)
