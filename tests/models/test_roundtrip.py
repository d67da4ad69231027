"""diffusers modules -> official names -> our loader gives bit-identical state dicts, every component, 2.0 and 2.3."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.models import COMPONENTS, load_component, read_checkpoint_info


def test_checkpoint_info(tiny):
    info = read_checkpoint_info(tiny.path)
    assert info.version == tiny.version
    assert info.model_version == f"{tiny.version}.0"
    assert info.components == COMPONENTS
    assert set(info.configs) == {"transformer", "vae", "audio_vae", "vocoder", "scheduler"}
    assert info.component_bytes("transformer") > 0


@pytest.mark.parametrize("component", COMPONENTS)
def test_round_trip_is_bit_identical(tiny, component):
    expected = tiny.modules[component].state_dict()
    loaded = load_component(tiny.path, component).state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("component", COMPONENTS)
def test_loaded_module_has_the_original_class_and_config(tiny, component):
    # Same weights and buffers is necessary; same class and config (what a forward depends on) too.
    original = tiny.modules[component]
    loaded = load_component(tiny.path, component)
    assert type(loaded) is type(original)
    assert dict(loaded.config) == dict(original.config)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_dtype_cast_on_load(tiny):
    vae = load_component(tiny.path, "video_vae", dtype=torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert vae.latents_mean.dtype == torch.bfloat16
    vocoder = load_component(tiny.path, "vocoder", dtype=torch.bfloat16)
    floating = [b for b in vocoder.buffers() if b.is_floating_point()] + list(vocoder.parameters())
    assert {t.dtype for t in floating} == {torch.bfloat16}  # constructor-made filters too


@pytest.mark.parametrize("part", ["encoder", "decoder"])
@pytest.mark.parametrize("component", ["video_vae", "audio_vae"])
def test_vae_halves_load_alone(tiny, component, part):
    other = "decoder" if part == "encoder" else "encoder"
    module = load_component(tiny.path, component, part=part)
    assert getattr(module, other) is None
    names = module.state_dict().keys()
    assert names and not any(name.startswith(f"{other}.") for name in names)
    expected = tiny.modules[component].state_dict()
    assert all(torch.equal(module.state_dict()[name], expected[name]) for name in names)
    assert {"latents_mean", "latents_std"} <= set(names)  # normalization statistics come with either half


def test_video_vae_compresses_32x_spatially_and_8x_temporally(tiny):
    vae = load_component(tiny.path, "video_vae", part="encoder")
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (32, 8)
    frames = torch.rand(1, 3, 17, 64, 96) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(frames).latent_dist.mode()
    assert latents.shape == (1, 128, 1 + (17 - 1) // 8, 64 // 32, 96 // 32)


def test_audio_vae_gives_25_latents_per_second(tiny):
    vae = load_component(tiny.path, "audio_vae", part="encoder")
    mel = torch.randn(1, 2, 401, 64)  # 4 s of 100 mel frames per second, plus the causal first frame
    with torch.no_grad():
        latents = vae.encode(mel).latent_dist.mode()
    assert latents.shape == (1, 8, 101, 16)
    assert vae.latents_mean.shape == (128,)  # one statistic per packed latent channel (8 x 16)
