"""lora_ltx2: targets, official-format files that diffusers loads, musubi-format reading."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import load_transformer, load_transformer_backbone
from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.networks import lora_ltx2 as lora
from ltx2_tuner.testing.transformer_inputs import diffusers_forward, make_inputs


def _network(path, mode="av", args=None, rank=4, alpha=8.0, seed=0):
    model = load_transformer(path, mode=mode)
    spec = lora.LoraSpec(rank, alpha, 0.0, lora.select_targets(model.backbone, mode, args))
    params = lora.add_lora(model.backbone, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:  # B starts at zero; give it values so the LoRA changes the output
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model, spec, params


def test_presets_select_the_expected_layers(tiny_checkpoints):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="av")
    layers = 2
    video = lora.select_targets(model.backbone, "video")
    assert len(video) == layers * 2 * 4 and all(".attn1." in t or ".attn2." in t for t in video)
    assert len(lora.select_targets(model.backbone, "av")) == layers * 6 * 4
    full = lora.select_targets(model.backbone, "av", ["preset=full"])
    assert len(full) == layers * (6 * 4 + 4)
    assert not any("to_gate_logits" in t for t in full)
    narrowed = lora.select_targets(model.backbone, "av", ["preset=full", "exclude=audio"])
    assert not any("audio" in t for t in narrowed)
    extra = lora.select_targets(model.backbone, "video", ["include=\\.ff\\.net\\.2$"])
    assert set(extra) - set(video) == {f"transformer_blocks.{i}.ff.net.2" for i in range(layers)}
    with pytest.raises(ConfigError, match="preset=huge"):
        lora.select_targets(model.backbone, "video", ["preset=huge"])
    with pytest.raises(ConfigError, match="expected preset=NAME"):
        lora.select_targets(model.backbone, "video", ["rank=4"])
    video_build = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    assert lora.select_targets(video_build.backbone, "video", ["preset=full"])  # audio layers simply absent


def test_lora_is_float32_on_a_bf16_base(tiny_checkpoints):
    model = load_transformer(tiny_checkpoints["2.0"].path, mode="video", dtype=torch.bfloat16)
    spec = lora.LoraSpec(4, 4.0, 0.0, lora.select_targets(model.backbone, "video"))
    params = lora.add_lora(model.backbone, spec)
    assert params and {p.dtype for p in params} == {torch.float32} and all(p.requires_grad for p in params)
    frozen = [p for n, p in model.named_parameters() if ".lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen) and {p.dtype for p in frozen} == {torch.bfloat16}
    video, _ = make_inputs(model.config, dtype=torch.bfloat16)
    out, _ = model(video)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_saved_file_is_official_and_diffusers_reproduces_our_output(tiny_checkpoints, tmp_path, version):
    tiny = tiny_checkpoints[version]
    model, spec, _ = _network(tiny.path, mode="av", args=["preset=full"])
    path = tmp_path / "lora.safetensors"
    lora.save_lora(path, model.backbone, spec, {"base_model_version": version}, dtype=torch.float32)

    with safe_open(str(path), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert keys and all(
        k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys
    )
    official_params = {
        TRANSFORMER_KEYS.to_official(n, prefix="") for n, _ in load_transformer_backbone(tiny.path).named_parameters()
    }
    assert {
        k.removeprefix("diffusion_model.").replace(".lora_A", "").replace(".lora_B", "") for k in keys
    } <= official_params
    assert (
        metadata["lora_rank"] == "4" and metadata["lora_alpha"] == "8.0" and metadata["base_model_version"] == version
    )

    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin

    state_dict = LTX2LoraLoaderMixin.lora_state_dict(str(path))
    state_dict = state_dict[0] if isinstance(state_dict, tuple) else state_dict
    plain = load_transformer_backbone(tiny.path)
    plain.load_lora_adapter(state_dict, prefix="transformer", adapter_name="ours")
    video, audio = make_inputs(model.config)
    with torch.no_grad():
        ours = model(video, audio)
        theirs = diffusers_forward(plain, video, audio, uniform=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with torch.no_grad():
        base_out = diffusers_forward(load_transformer_backbone(tiny.path), video, audio, uniform=True)
    assert (ours[0] - base_out[0]).abs().max() > 1e-3  # the LoRA does change the output


def test_load_back_official_and_musubi_formats(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    model, spec, _ = _network(path, mode="video", rank=4, alpha=2.0)
    official = tmp_path / "official.safetensors"
    lora.save_lora(official, model.backbone, spec, {}, dtype=torch.float32)
    video, _ = make_inputs(model.config)
    with torch.no_grad():
        expected, _ = model(video)

    fresh, _, _ = _network(path, mode="video", rank=4, alpha=2.0, seed=99)
    assert lora.load_lora_weights(official, fresh.backbone) == len(spec.targets)
    with torch.no_grad():
        torch.testing.assert_close(fresh(video)[0], expected, rtol=0, atol=1e-6)

    # musubi: lora_unet_<official path with underscores>.lora_down/lora_up/alpha, scale alpha / rank kept apart
    musubi = {}
    for key, tensor in lora.lora_state_dict(model.backbone, torch.float32).items():
        stem = key.removeprefix("diffusion_model.").rsplit(".lora_", 1)[0].replace(".", "_")
        if key.endswith("lora_A.weight"):
            musubi[f"lora_unet_model_{stem}.lora_down.weight"] = tensor
            musubi[f"lora_unet_model_{stem}.alpha"] = torch.tensor(8.0)
        else:
            musubi[f"lora_unet_model_{stem}.lora_up.weight"] = tensor / 2.0  # 8 / 4 = 2 is applied on load
    save_file(musubi, str(tmp_path / "musubi.safetensors"))
    other, _, _ = _network(path, mode="video", rank=4, alpha=4.0, seed=5)
    lora.load_lora_weights(tmp_path / "musubi.safetensors", other.backbone)
    with torch.no_grad():
        torch.testing.assert_close(other(video)[0], expected, rtol=0, atol=1e-6)


def test_mismatched_files_are_clear_errors(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    model, spec, _ = _network(path, mode="av")
    saved = tmp_path / "av.safetensors"
    lora.save_lora(saved, model.backbone, spec, {})
    video_model, _, _ = _network(path, mode="video")
    with pytest.raises(lora.LoraFileError, match="not a target of this network"):
        lora.load_lora_weights(saved, video_model.backbone)
    rank8, _, _ = _network(path, mode="av", rank=8)
    with pytest.raises(lora.LoraFileError, match="rank 4 but the network has rank 8"):
        lora.load_lora_weights(saved, rank8.backbone)
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(lora.LoraFileError, match="not a readable LoRA"):
        lora.read_lora_file(tmp_path / "junk.safetensors")


def test_converter_round_trips_between_formats(tiny_checkpoints, tmp_path, capsys):
    from ltx2_tuner.cli._common import run
    from ltx2_tuner.networks import convert_lora

    path = tiny_checkpoints["2.3"].path
    model, spec, _ = _network(path, mode="av", args=["preset=full"], rank=4, alpha=8.0)
    official = tmp_path / "official.safetensors"
    lora.save_lora(official, model.backbone, spec, {}, dtype=torch.float32)
    assert run(convert_lora.main, [str(official), str(tmp_path / "musubi.safetensors"), "--to", "musubi"]) == 0
    musubi = load_file(tmp_path / "musubi.safetensors")
    assert all(k.startswith("lora_unet_model_transformer_blocks_") for k in musubi)
    assert run(convert_lora.main, [str(tmp_path / "musubi.safetensors"), str(tmp_path / "back.safetensors")]) == 0
    original, back = load_file(official), load_file(tmp_path / "back.safetensors")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    fresh, _, _ = _network(path, mode="av", args=["preset=full"], rank=4, alpha=8.0, seed=3)
    lora.load_lora_weights(tmp_path / "musubi.safetensors", fresh.backbone)  # the trainer reads musubi files too
    video, audio = make_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(fresh(video, audio)[0], model(video, audio)[0], rtol=0, atol=1e-6)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    assert run(convert_lora.main, [str(tmp_path / "bad.safetensors"), str(tmp_path / "x.safetensors")]) == 2
    assert "not a readable LoRA" in capsys.readouterr().err
