"""Previews during training: the prompts of --sample_prompts sampled with the LoRA being trained, decoded to
mp4 (with AAC audio in AV mode; a png for a 1-frame prompt) and logged.

Setup (`PreviewRunner.prepare`, before the transformer loads): the prompt embeddings come from the sample-prompt
cache beside the prompt file; when it is missing or stale, Gemma (--text_encoder) and the connectors encode them and
are freed before the transformer takes their memory. I2V images are encoded once with the video VAE encoder, which
is freed too. The decoders (video VAE; audio VAE and vocoder in AV mode) wait on the CPU.

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
from ltx2_tuner.sampling.decode import Decoders
from ltx2_tuner.sampling.defaults import sampling_defaults
from ltx2_tuner.sampling.media_writers import write_media
from ltx2_tuner.sampling.sampler import SampleRequest, sample

# The official conv-decoder tiles (384 px, 48 frames): previews that fit in one are decoded whole.
_TILE_PX, _TILE_FRAMES = 384, 48


class PreviewRunner:
    """Samples, decodes, writes and logs every prompt of a prompt file; see the module docstring."""

    def __init__(self, accelerator, info, mode: str, dtype: torch.dtype, folder: Path, name: str, prompts: list,
                 first_frames: list, decoders: Decoders | None, steps: int | None):  # fmt: skip
        self.accelerator, self.info, self.mode, self.dtype = accelerator, info, mode, dtype
        self.folder, self.name = folder, name
        self.prompts = prompts  # [SamplePromptEmbeds]; empty on the processes that only wait
        self.first_frames = first_frames  # per prompt: normalized latent [128, 1, H/32, W/32] or None
        self.decoders, self.steps = decoders, steps
        self.last_step: int | None = None  # a step that ends an epoch too gets one set of previews

    @classmethod
    def prepare(cls, args, files, accelerator, dtype: torch.dtype) -> PreviewRunner:
        """Check on every process, then (main process) encode what needs encoding and load the decoders.

        files: the model's `ModelFiles`; the text encoder and the VAE files are opened only when needed."""
        info = files.transformer
        prompts_file: Path = args.sample_prompts
        embeds, stale = _cached_embeds(prompts_file, args.ltx_mode, info.version)
        gemma = connectors = None
        if embeds is None:
            text_encoder = files.text_encoder(required=False)
            if text_encoder is None:
                raise ConfigError(f"{stale}; or pass --text_encoder (the Gemma text encoder) to encode them at setup")
            connectors = files.connectors()
            gemma = check_text_encoder(connectors, info, text_encoder, args.ltx_mode)
        video_vae = files.video_vae()
        audio_vae = files.audio_vae() if args.ltx_mode == "av" else None
        folder, name = args.output_dir / "sample", args.output_name
        if not accelerator.is_main_process:
            return cls(accelerator, info, args.ltx_mode, dtype, folder, name, [], [], None, args.sample_steps)
        device = accelerator.device
        if embeds is None:
            reason = stale.split("; run")[0]  # the cache's problem, without the command that would fix it
            print(f"previews: {reason}; encoding the prompts with Gemma from {gemma.root}", flush=True)
            embeds = _encode_prompts(prompts_file, gemma, connectors, args.ltx_mode, dtype, device)
        first_frames = _encode_first_frames(video_vae, [e.sample for e in embeds], device)
        # The video decoder in bf16 on a GPU when training in bf16 (as the official validation), else fp32 (CPU
        # convolutions in bf16 are ~100x slower; fp16 may overflow in the VAE).
        vae_dtype = torch.bfloat16 if dtype == torch.bfloat16 and device.type == "cuda" else torch.float32
        decoders = Decoders.load(video_vae, with_audio=audio_vae is not None, dtype=vae_dtype, audio_info=audio_vae)
        return cls(accelerator, info, args.ltx_mode, dtype, folder, name, embeds, first_frames, decoders,
                   args.sample_steps)  # fmt: skip

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
        with self.accelerator.autocast():  # bf16 base weights with fp32 LoRA weights, as in training
            result = sample(module, self.request(index), device=device, dtype=self.dtype)
        with self.decoders.on(device):
            tiled = max(prompt.width, prompt.height) > _TILE_PX or prompt.num_frames > _TILE_FRAMES
            frames = self.decoders.decode_video(result.video_latents, tiled=tiled)
            audio, rate = None, None
            if result.audio_latents is not None:
                audio, rate = self.decoders.decode_audio(result.audio_latents)
        path = self.folder / f"{self.name}_step{step:06d}_{index:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path = write_media(path, frames, prompt.frame_rate, audio, rate)
        tqdm.write(f"preview: {path}")
        if logger is not None:
            logger.log_media(f"preview/{index:02d}", path, frames, prompt.frame_rate, step, audio, rate)
        return path

    def request(self, index: int) -> SampleRequest:
        """The sampler's request for prompt `index`: its size, seed and CFG scales, the model version's defaults for
        what the prompt leaves unset (steps, STG, rescale, modality guidance), --sample_steps over every prompt's."""
        embeds, first_frame = self.prompts[index], self.first_frames[index]
        prompt = embeds.sample
        defaults = sampling_defaults(self.info.version)
        video, audio = defaults.video, defaults.audio
        if prompt.guidance_scale is not None:
            video = dataclasses.replace(video, cfg=prompt.guidance_scale)
        if prompt.audio_guidance_scale is not None:
            audio = dataclasses.replace(audio, cfg=prompt.audio_guidance_scale)
        # Video-mode previews are video only, even from an AV prompt cache; a still image (a png) has no sound.
        with_audio = self.mode == "av" and prompt.num_frames > 1
        return SampleRequest(
            width=prompt.width, height=prompt.height, num_frames=prompt.num_frames, frame_rate=prompt.frame_rate,
            seed=prompt.seed, steps=self.steps or prompt.steps or defaults.steps,
            video_context=embeds.video[None].to(self.dtype),
            video_context_negative=embeds.negative_video[None].to(self.dtype),
            audio_context=embeds.audio[None].to(self.dtype) if with_audio else None,
            audio_context_negative=embeds.negative_audio[None].to(self.dtype) if with_audio else None,
            video_guidance=video, audio_guidance=audio,
            first_frame_latent=None if first_frame is None else first_frame.to(self.dtype),
        )  # fmt: skip


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


def _encode_first_frames(info, prompts: list, device: torch.device) -> list[torch.Tensor | None]:
    """Each prompt's --i image fitted to its size (cover + centre crop, as dataset images) and encoded: a normalized
    latent [128, 1, H/32, W/32] on the CPU, or None. The encoder is loaded only when a prompt has an image."""
    if not any(prompt.image for prompt in prompts):
        return [None] * len(prompts)
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.images import load_image
    from ltx2_tuner.data.transforms import frames_to_model_input

    latents = []
    # fp32: a few single frames, and the latents are then cast to the compute dtype like the dataset's.
    encoder = LatentEncoder(info, None, device, torch.float32, VaeTiling())
    for prompt in prompts:
        if prompt.image is None:
            latents.append(None)
            continue
        pixels = load_image(prompt.image, size=(prompt.width, prompt.height))[None]  # [1, H, W, 3]
        latents.append(encoder.encode_video(frames_to_model_input(pixels)[None])[0].cpu())
    del encoder
    _release_memory()
    return latents


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
