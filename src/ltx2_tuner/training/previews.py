"""Previews during training: the prompts of --sample_prompts sampled with the LoRA being trained, decoded to
mp4 (with AAC audio in AV mode; a png for a 1-frame prompt; a 16-bit wav for audio only) and logged.

Each preview does what the run trains (roles.py, the trainer's `ModalityRoles`): T2V, T2AV, T2A (a wav of the
prompt's --du seconds), A2V (video for the prompt's --a audio, muxed with that audio) or V2A (sound for the prompt's
--v frames, written with them). An A2V / V2A run's prompts without --a / --v are sampled as joint T2AV (the AV build
can), and the run says so once. These are the official validation runner's outputs (reference
ltx-2.5-and-conditioning-modes.md §C1).

Setup (`PreviewRunner.prepare`, before the transformer loads): the prompt embeddings come from the sample-prompt
cache beside the prompt file; when it is missing or stale, Gemma (--text_encoder) and the connectors encode them and
are freed before the transformer takes their memory. I2V images, --a audio and --v frames are encoded once with the
VAE encoders, which are freed too (sampling.conditions). A run with `[[conditions]]` previews with them (issue 14,
training.preview_conditions): a prompt's --x clip is extended, its --src in- or outpainted, its --ra sound is the
audio reference; its --r reference clip is encoded once the trainer has measured the reference factors
(`encode_references`, after the cache is read). Only the decoders the previews need (video VAE; audio VAE
and vocoder) wait on the CPU.

A preview (`run`) happens on the main process (the others wait at a barrier), in eval mode and without gradients,
and leaves no trace in training: the train/eval modes, every random state (torch CPU and CUDA, Python, NumPy) and
the memory are what they were before it (the decoders go back to the CPU and the CUDA cache is emptied), so a run
with previews trains exactly the LoRA a run without them does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ltx2_tuner.cache import sample_prompts as samples
from ltx2_tuner.errors import CacheError, ConfigError
from ltx2_tuner.models.text_embeddings import check_text_encoder
from ltx2_tuner.roles import ModalityRoles, roles_by_name, roles_for
from ltx2_tuner.sampling.conditions import OUTPUT_AUDIO_RATE, EncodedCondition, encode_conditions
from ltx2_tuner.sampling.decode import Decoders
from ltx2_tuner.sampling.defaults import sampling_defaults
from ltx2_tuner.sampling.media_writers import write_audio, write_media
from ltx2_tuner.sampling.sampler import SampleRequest, sample
from ltx2_tuner.training.preview_conditions import (
    measured_factors,
    missing_media_note,
    preview_condition,
    with_reference,
)

# The official conv-decoder tiles (384 px, 48 frames): previews that fit in one are decoded whole.
_TILE_PX, _TILE_FRAMES = 384, 48


class PreviewRunner:
    """Samples, decodes, writes and logs every prompt of a prompt file; see the module docstring."""

    def __init__(self, accelerator, info, roles: ModalityRoles, dtype: torch.dtype, folder: Path, name: str,
                 prompts: list, conditions: list, decoders: Decoders | None, steps: int | None):  # fmt: skip
        self.accelerator, self.info, self.roles, self.dtype = accelerator, info, roles, dtype
        self.folder, self.name = folder, name
        self.prompts = prompts  # [SamplePromptEmbeds]; empty on the processes that only wait
        self.conditions = conditions  # per prompt: sampling.conditions.EncodedCondition or None
        self.decoders, self.steps = decoders, steps
        self.last_step: int | None = None  # a step that ends an epoch too gets one set of previews
        self.trained: tuple = ()  # the run's conditioning.spec.Condition list (issue 14)
        self.video_vae = None  # the video VAE checkpoint, for `encode_references` (main process)
        self.prompts_file: Path | None = None

    @classmethod
    def prepare(cls, args, files, accelerator, dtype: torch.dtype, conditions: tuple = ()) -> PreviewRunner:
        """Check on every process, then (main process) encode what needs encoding and load the decoders.

        args: reads sample_prompts, ltx_mode, frozen_modality (roles.roles_for), output_dir, output_name and
        sample_steps. files: the model's `ModelFiles`; the text encoder and the VAE files are opened only when
        needed. conditions: the run's `[[conditions]]` (conditioning.spec.load_conditions); a video reference is
        encoded by `encode_references`."""
        info = files.transformer
        roles = roles_for(args.ltx_mode, getattr(args, "frozen_modality", None))
        prompts_file: Path = args.sample_prompts
        embeds, stale = _cached_embeds(prompts_file, roles.build, info.version)
        gemma = connectors = None
        if embeds is None:
            text_encoder = files.text_encoder(required=False)
            if text_encoder is None:
                raise ConfigError(f"{stale}; or pass --text_encoder (the Gemma text encoder) to encode them at setup")
            connectors = files.connectors()
            gemma = check_text_encoder(connectors, info, text_encoder, roles.build)
        prompt_roles = [preview_roles(roles, p) for p in samples.read_sample_prompts(prompts_file)]
        video_vae = files.video_vae() if any(r.present("video") for r in prompt_roles) else None
        audio_vae = files.audio_vae() if any(r.present("audio") for r in prompt_roles) else None
        folder, name = args.output_dir / "sample", args.output_name
        if not accelerator.is_main_process:
            runner = cls(accelerator, info, roles, dtype, folder, name, [], [], None, args.sample_steps)
            runner.trained = tuple(conditions)
            return runner
        device = accelerator.device
        if embeds is None:
            reason = stale.split("; run")[0]  # the cache's problem, without the command that would fix it
            print(f"previews: {reason}; encoding the prompts with Gemma from {gemma.root}", flush=True)
            embeds = _encode_prompts(prompts_file, gemma, connectors, roles.build, dtype, device)
        _say_joint_previews(roles, [e.sample for e in embeds])
        trained = tuple(conditions)
        note = missing_media_note([e.sample for e in embeds], prompt_roles, trained)
        if note:
            print(note, flush=True)
        wanted = [preview_condition(p.sample, r, trained, _where(prompts_file, i))
                  for i, (p, r) in enumerate(zip(embeds, prompt_roles, strict=True))]  # fmt: skip
        encoded = encode_conditions(wanted, video_vae, audio_vae, device)
        _release_memory()
        # The video decoder in bf16 on a GPU when training in bf16 (as the official validation), else fp32 (CPU
        # convolutions in bf16 are ~100x slower; fp16 may overflow in the VAE).
        vae_dtype = torch.bfloat16 if dtype == torch.bfloat16 and device.type == "cuda" else torch.float32
        with_video, with_audio = (any(r.generated(m) for r in prompt_roles) for m in ("video", "audio"))
        decoders = Decoders.load(video_vae, with_audio=with_audio, dtype=vae_dtype, audio_info=audio_vae,
                                 with_video=with_video)  # fmt: skip
        runner = cls(accelerator, info, roles, dtype, folder, name, embeds, encoded, decoders,
                     args.sample_steps)  # fmt: skip
        runner.trained, runner.video_vae, runner.prompts_file = trained, video_vae, prompts_file
        return runner

    def encode_references(self, metadata: dict) -> None:
        """Encode the prompts' --r reference clips at the reference factors the trainer measured (`metadata`:
        training.conditioned.reference_metadata's keys); nothing without a video reference condition or off the main
        process. The video VAE encoder is loaded for this and freed."""
        factors = measured_factors(metadata)
        wanted = {}
        for index, embeds in enumerate(self.prompts):
            roles = preview_roles(self.roles, embeds.sample)
            where = _where(self.prompts_file, index)
            condition = with_reference(embeds.sample, roles, self.trained, factors, where)
            if condition is not None:
                wanted[index] = condition
        if not wanted:
            return
        encoded = encode_conditions(list(wanted.values()), self.video_vae, None, self.accelerator.device)
        for index, reference in zip(wanted, encoded, strict=True):
            self.conditions[index] = dataclasses.replace(
                self.conditions[index] or EncodedCondition(),
                video_reference=reference.video_reference,
                reference_fps=reference.reference_fps,
                reference_factors=reference.reference_factors,
            )
        _release_memory()

    def run(self, model, step: int, logger=None) -> list[Path]:
        """Write (and log) one preview per prompt for `step`; return the files written (none on other processes, and
        none when this step's previews exist already)."""
        written = []
        if step == self.last_step:
            return written
        self.last_step = step
        if self.accelerator.is_main_process:
            module = self.accelerator.unwrap_model(model)
            modes = {sub: sub.training for sub in module.modules()}
            module.eval()
            try:
                with _random_states_kept(), torch.no_grad():
                    for index, embeds in enumerate(self.prompts):
                        written.append(self._preview(module, index, embeds, step, logger))
            finally:
                for sub, training in modes.items():
                    sub.training = training
                _release_memory()
        self.accelerator.wait_for_everyone()
        return written

    def _preview(self, module, index: int, embeds, step: int, logger) -> Path:
        prompt, device = embeds.sample, self.accelerator.device
        roles, condition = preview_roles(self.roles, prompt), self.conditions[index]
        with self.accelerator.autocast():  # bf16 base weights with fp32 LoRA weights, as in training
            result = sample(module, self.request(index), device=device, dtype=self.dtype)
        frames = audio = rate = None
        with self.decoders.on(device):
            if roles.generated("video"):
                tiled = max(prompt.width, prompt.height) > _TILE_PX or prompt.num_frames > _TILE_FRAMES
                frames = self.decoders.decode_video(result.video_latents, tiled=tiled)
            if roles.generated("audio"):
                audio, rate = self.decoders.decode_audio(result.audio_latents)
        if roles.frozen("video"):  # V2A: the source frames with the new sound
            frames = condition.frames
        if roles.frozen("audio"):  # A2V: the new frames with the source sound
            audio, rate = condition.waveform, OUTPUT_AUDIO_RATE
        path = self.folder / f"{self.name}_step{step:06d}_{index:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        if frames is None:  # T2A
            path = write_audio(path.with_suffix(".wav"), audio, rate)
        else:
            path = write_media(path, frames, prompt.frame_rate, audio, rate)
        tqdm.write(f"preview: {path}")
        if logger is not None:
            logger.log_media(f"preview/{index:02d}", path, frames, prompt.frame_rate, step, audio, rate)
        return path

    def request(self, index: int) -> SampleRequest:
        """The sampler's request for prompt `index`: its size, seed and CFG scales, the model version's defaults for
        what the prompt leaves unset (steps, STG, rescale, modality guidance), --sample_steps over every prompt's; its
        condition (I2V image, A2V audio, V2A frames; the clean tokens and references of the run's conditions) as
        latents."""
        embeds, condition = self.prompts[index], self.conditions[index] or EncodedCondition()
        prompt = embeds.sample
        roles = preview_roles(self.roles, prompt)
        defaults = sampling_defaults(self.info.version)
        video, audio = defaults.video, defaults.audio
        if prompt.guidance_scale is not None:
            video = dataclasses.replace(video, cfg=prompt.guidance_scale)
        if prompt.audio_guidance_scale is not None:
            audio = dataclasses.replace(audio, cfg=prompt.audio_guidance_scale)

        # Each modality's contexts only where it is present: video-mode previews are video only, even from an AV
        # prompt cache.
        def context(modality: str, tensor):
            return tensor[None].to(self.dtype) if roles.present(modality) else None

        def cast(tensor):
            return None if tensor is None else tensor.to(self.dtype)

        with_video = roles.present("video")
        return SampleRequest(
            width=prompt.width if with_video else None, height=prompt.height if with_video else None,
            num_frames=prompt.num_frames if with_video else None,
            frame_rate=prompt.frame_rate if with_video else None,
            seed=prompt.seed, steps=self.steps or prompt.steps or defaults.steps,
            video_context=context("video", embeds.video),
            video_context_negative=context("video", embeds.negative_video),
            audio_context=context("audio", embeds.audio),
            audio_context_negative=context("audio", embeds.negative_audio),
            video_guidance=video, audio_guidance=audio,
            first_frame_latent=None if condition.first_frame is None else condition.first_frame.to(self.dtype),
            audio_duration_s=None if with_video else prompt.audio_seconds,
            frozen_video_latents=condition.frozen_video, frozen_audio_latents=condition.frozen_audio,
            video_clean_latents=condition.video_clean, video_clean_mask=condition.video_clean_mask,
            audio_clean_latents=condition.audio_clean, audio_clean_mask=condition.audio_clean_mask,
            video_reference_latents=cast(condition.video_reference), reference_fps=condition.reference_fps,
            reference_spatial_factor=condition.reference_factors[0],
            reference_temporal_factor=condition.reference_factors[1],
            audio_reference_latents=cast(condition.audio_reference),
        )  # fmt: skip


def preview_roles(roles: ModalityRoles, prompt) -> ModalityRoles:
    """What one prompt's preview does in a run of `roles`: the run's mode, except that a 1-frame prompt is a still
    image (no sound), and that an A2V / V2A run samples a prompt without its --a / --v as joint T2AV."""
    if roles.name == "t2a":
        return roles
    if prompt.num_frames == 1:
        return roles_by_name("t2v")
    if (roles.name == "a2v" and prompt.audio is None) or (roles.name == "v2a" and prompt.video is None):
        return roles_by_name("t2av")
    return roles


def _where(prompts_file: Path | None, index: int) -> str:
    return f"{prompts_file}: prompt {index}"


def _say_joint_previews(roles: ModalityRoles, prompts: list) -> None:
    option = {"a2v": "--a AUDIO", "v2a": "--v VIDEO"}.get(roles.name)
    joint = [i for i, p in enumerate(prompts) if option and p.num_frames > 1 and preview_roles(roles, p).name == "t2av"]
    if joint:
        print(
            f"previews: prompt(s) {', '.join(map(str, joint))} have no {option} for this {roles.name.upper()} run; "
            "they are sampled as joint audio and video (T2AV)",
            flush=True,
        )


def _cached_embeds(prompts_file: Path, mode: str, version: str) -> tuple[list | None, str | None]:
    """(the cached embeddings, None), or (None, why the cache cannot serve: missing, stale, other mode/version)."""
    path = samples.sample_cache_path(prompts_file)
    try:
        return samples.load_sample_prompt_cache(path, prompts_file, mode=mode, version=version), None
    except CacheError as error:
        return None, str(error)


def _encode_prompts(prompts_file: Path, gemma, info, mode: str, dtype: torch.dtype, device: torch.device) -> list:
    """Encode every prompt and negative prompt, free Gemma and the connectors, and write the sample-prompt cache
    beside the prompt file (as the text cacher would) so the next run needs no Gemma."""
    from ltx2_tuner.cache.text_cacher import TextStamp

    prompts = samples.read_sample_prompts(prompts_file)
    embeddings = _encode_texts(prompts, gemma, info, mode, dtype, device)
    _release_memory()  # Gemma and the connectors are gone once _encode_texts returns; return their memory now
    stamp = TextStamp(
        connectors={"file": info.fingerprint, "version": info.version},
        gemma={"identity": gemma.identity, "quantization": "none"},
        mode=mode,
        dtype=dtype,
        compat_keys=False,  # not a field of the sample cache's fingerprint
    )
    path = samples.sample_cache_path(prompts_file)
    try:
        samples.write_sample_prompt_cache(path, prompts, embeddings, stamp.models())
    except OSError as error:  # a read-only folder: the embeddings in memory serve this run all the same
        print(f"warning: previews: cannot write {path} ({error}); the next run encodes the prompts again")
    return samples.sample_prompt_embeds(prompts, embeddings)


def _encode_texts(prompts: list, gemma, info, mode: str, dtype: torch.dtype, device: torch.device) -> dict:
    from ltx2_tuner.cache.text_cacher import check_finite
    from ltx2_tuner.models.text_embeddings import encode_prompts, load_text_embedder
    from ltx2_tuner.models.text_encoder import load_gemma, whole_gemma_misfit

    embedder = load_text_embedder(info, mode, dtype, device)
    # Gemma's own bf16, as the text cacher runs it; its layers streamed from host memory when the GPU is too small.
    text_encoder = load_gemma(gemma, device=device, offload=whole_gemma_misfit(gemma, device) is not None)

    def encode(texts: list[str]):
        video, audio, mask = encode_prompts(text_encoder, embedder, texts)
        check_finite(video, audio, dtype)
        return video, audio, mask

    try:
        return samples.encode_sample_prompts(prompts, encode)
    finally:
        text_encoder.unload()


@contextlib.contextmanager
def _random_states_kept():
    """Restore every random state the sampler or the decoders might draw from (the sampler's own noise comes from a
    seeded generator; a decoder may draw from the global one)."""
    cpu, python, numpy = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        random.setstate(python)
        np.random.set_state(numpy)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
