"""ltx2_train_network.py in the modality-role modes: A2V and V2A keep the frozen modality clean at timestep 0 and out
of the loss while the LoRA learns the generated one; T2A never runs a video module and overfits synthetic tones.

Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md B2 (frozen modality), official-ltx-trainer.md §1.1.
"""

from __future__ import annotations

import re

import pytest
import torch
from _fixed_loss import fixed_batch_loss

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.models import load_transformer, patchify_audio, patchify_video
from ltx2_tuner.roles import roles_for
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import trainer

MODES = {"a2v": ("av", "audio"), "v2a": ("av", "video"), "t2a": ("audio", None)}


def _train(checkpoint, config, output, name, *flags) -> int:
    mode, frozen = MODES[name]
    frozen_flags = ("--frozen_modality", frozen) if frozen else ()
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", "--ltx_mode", mode, *frozen_flags,
                      *flags])  # fmt: skip


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from ltx2_tuner.testing import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("small"), "2.3", size="small")


def _recording(monkeypatch) -> list:
    """Patch the trainer's transformer loader so that every forward's (video, audio) inputs are recorded."""
    calls = []

    def load_and_record(*args, **kwargs):
        model = load_transformer(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs))
        return model

    monkeypatch.setattr(trainer, "load_transformer", load_and_record)
    return calls


@pytest.mark.parametrize("name", ["a2v", "v2a"])
def test_frozen_modality_enters_clean_at_timestep_0_and_the_generated_one_learns(
    small_checkpoint, tmp_path, monkeypatch, name
):
    config = write_synthetic_dataset(tmp_path / "data", context_dims=(128, 128))
    calls = _recording(monkeypatch)
    assert _train(small_checkpoint, config, tmp_path / "out", name, "--max_train_steps", "100",
                  "--learning_rate", "3e-3") == 0  # fmt: skip
    monkeypatch.undo()
    frozen = MODES[name][1]
    batches = CachedBatches(load_dataset_config(config), roles_for(*MODES[name]))
    clean = []
    for index in range(len(batches)):
        batch = batches[index]
        clean.append(patchify_video(batch["latents"]["latents"]) if frozen == "video" else
                     patchify_audio(batch["audio_latents"]["latents"]))  # fmt: skip
    assert len(calls) == 100
    for video, audio in calls:
        given = video if frozen == "video" else audio
        assert any(torch.equal(given.latent, latents) for latents in clean)  # the cached latents, unchanged
        assert not given.timesteps.any() and not given.sigma.any()
        generated = audio if frozen == "video" else video
        assert generated.sigma.gt(0).all()
    before = fixed_batch_loss(small_checkpoint, config, roles_for(*MODES[name]))
    after = fixed_batch_loss(
        small_checkpoint, config, roles_for(*MODES[name]), tmp_path / "out" / "ltx2_lora.safetensors"
    )
    print(f"{name}: generated-modality eval loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def _tone_dataset(root) -> object:
    """Two captioned tones (different pitch and length) in an audio dataset, cached with ltx2_cache_latents.py."""
    from ltx2_tuner.testing.synthetic_media import tone, write_audio

    voice = root / "voice"
    voice.mkdir(parents=True)
    for stem, pitch, seconds, caption in (("low", 220.0, 1.5, "a low hum"), ("high", 880.0, 1.3, "a high whistle")):
        write_audio(voice / f"{stem}.wav", tone(seconds, 22050, (pitch, pitch * 1.5)), 22050)
        (voice / f"{stem}.txt").write_text(caption)
    config = root / "dataset.toml"
    config.write_text(
        '[[datasets]]\naudio_directory = "voice"\ncache_directory = "cache"\naudio_bucket_interval = 1.0\n'
    )
    return config


def test_t2a_overfits_captioned_tones_and_never_runs_a_video_module(small_checkpoint, tmp_path, monkeypatch):
    from ltx2_tuner.cli.cache_latents import main as cache_latents
    from ltx2_tuner.testing.synthetic_caches import write_synthetic_text_caches

    config = _tone_dataset(tmp_path / "data")
    assert run(cache_latents, ["--dataset_config", str(config), "--ltx2_checkpoint", str(small_checkpoint),
                               "--ltx_mode", "audio", "--device", "cpu"]) == 0  # fmt: skip
    write_synthetic_text_caches(config, "audio", context_dims=(128, 128))

    ran, names = set(), {}

    def load_and_watch(*args, **kwargs):
        model = load_transformer(*args, **kwargs)
        for name, module in model.backbone.named_modules():
            names[module] = name
            module.register_forward_hook(lambda module, inputs, output: ran.add(names[module]))
        return model

    monkeypatch.setattr(trainer, "load_transformer", load_and_watch)
    assert _train(small_checkpoint, config, tmp_path / "out", "t2a", "--max_train_steps", "200",
                  "--learning_rate", "3e-3") == 0  # fmt: skip
    monkeypatch.undo()
    video_modules = re.compile(r"(^|\.)(proj_in|time_embed|rope|norm_out|proj_out|caption_projection|prompt_adaln|"
                               r"attn1|attn2|ff|audio_to_video_attn|video_to_audio_attn)(\.|$)")  # fmt: skip
    assert ran and not [name for name in ran if video_modules.search(name)]
    assert {
        "audio_proj_in",
        "audio_proj_out",
        "transformer_blocks.0.audio_attn1",
        "transformer_blocks.0.audio_ff",
    } <= ran

    before = fixed_batch_loss(small_checkpoint, config, "audio")
    after = fixed_batch_loss(small_checkpoint, config, "audio", tmp_path / "out" / "ltx2_lora.safetensors")
    print(f"t2a: eval loss {before:.4f} -> {after:.4f}; modules that ran: {len(ran)}")
    assert after < 0.7 * before, (before, after)
