"""merge_lora: W += strength * scale * B @ A, equal to running the LoRA as adapter layers; wrong files refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ltx2_tuner.models import load_transformer
from ltx2_tuner.networks import lora_ltx2 as lora
from ltx2_tuner.networks.convert_lora import convert_lora_file
from ltx2_tuner.networks.lora_files import LoraFileError
from ltx2_tuner.networks.lora_merge import merge_lora
from ltx2_tuner.testing.transformer_inputs import make_inputs

ALPHA, RANK = 8.0, 4  # scale 2: an unfolded alpha would show as a factor-2 error


def _trained_lora(path, tmp_path, mode="av", args=None, name="lora.safetensors"):
    """(adapter model with random LoRA weights, the official-format file it saved)."""
    model = load_transformer(path, mode=mode)
    spec = lora.LoraSpec(RANK, ALPHA, 0.0, lora.select_targets(model.backbone, mode, args))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in lora.add_lora(model.backbone, spec):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    file = tmp_path / name
    lora.save_lora(file, model.backbone, spec, {}, dtype=torch.float32)
    return model.eval(), file


def _forward(model, seed=0):
    video, audio = make_inputs(model.config, seed=seed)
    with torch.no_grad():
        return model(video, audio if model.mode == "av" else None)


def _weights(backbone):
    return {name: p.detach().clone() for name, p in backbone.state_dict().items()}


def test_strength_zero_is_bit_identical_and_one_equals_the_adapter(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    adapter, file = _trained_lora(path, tmp_path, args=["preset=full"])
    base = load_transformer(path, mode="av").eval()
    zero = load_transformer(path, mode="av").eval()
    assert merge_lora(zero.backbone, file, 0.0) == 0
    base_out, zero_out = _forward(base), _forward(zero)
    assert all(torch.equal(a, b) for a, b in zip(base_out, zero_out, strict=True))
    base_weights, zero_weights = _weights(base.backbone), _weights(zero.backbone)
    assert all(torch.equal(base_weights[k], zero_weights[k]) for k in base_weights)

    merged = load_transformer(path, mode="av").eval()
    layers = merge_lora(merged.backbone, file, 1.0)
    assert layers == len(lora.select_targets(merged.backbone, "av", ["preset=full"]))
    merged_out, adapter_out = _forward(merged), _forward(adapter)
    for ours, theirs, base_part in zip(merged_out, adapter_out, base_out, strict=True):
        assert not torch.allclose(theirs, base_part, atol=1e-3)  # the LoRA matters
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)  # fp32: merged vs unmerged summation order


def test_half_strength_is_halfway_in_weight_space_and_biases_stay(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.0"].path
    _, file = _trained_lora(path, tmp_path, mode="video")
    base = _weights(load_transformer(path, mode="video").backbone)
    full, half = load_transformer(path, mode="video"), load_transformer(path, mode="video")
    merge_lora(full.backbone, file, 1.0)
    merge_lora(half.backbone, file, 0.5)
    full_w, half_w = _weights(full.backbone), _weights(half.backbone)
    changed = [k for k in base if not torch.equal(base[k], full_w[k])]
    assert changed and all(k.endswith(".weight") and (".attn1." in k or ".attn2." in k) for k in changed)
    for key in changed:
        torch.testing.assert_close(half_w[key], (base[key] + full_w[key]) / 2, rtol=0, atol=1e-6)


def test_bf16_weights_get_the_fp32_sum_cast_once(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    adapter, file = _trained_lora(path, tmp_path, mode="video")
    model = load_transformer(path, mode="video", dtype=torch.bfloat16)
    name = "transformer_blocks.0.attn1.to_q"
    before = model.backbone.get_submodule(name).weight.detach().clone()
    merge_lora(model.backbone, file, 0.7)
    layer = adapter.backbone.get_submodule(name)
    delta = layer.lora_B["default"].weight * layer.scaling["default"] @ layer.lora_A["default"].weight
    expected = (before.float() + 0.7 * delta).to(torch.bfloat16)
    after = model.backbone.get_submodule(name).weight
    assert after.dtype == torch.bfloat16 and torch.equal(after, expected)


def test_musubi_file_merges_like_the_official_one(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    _, official = _trained_lora(path, tmp_path, mode="av")
    musubi = tmp_path / "musubi.safetensors"
    convert_lora_file(official, musubi, "musubi")
    a, b = load_transformer(path, mode="av"), load_transformer(path, mode="av")
    assert merge_lora(a.backbone, official, 0.8) == merge_lora(b.backbone, musubi, 0.8) > 0
    wa, wb = _weights(a.backbone), _weights(b.backbone)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)


def test_layers_missing_from_the_build_are_skipped_with_counts(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    _, file = _trained_lora(path, tmp_path, mode="av")  # av_attn: 6 attentions x 4 projections x 2 blocks
    video_only = load_transformer(path, mode="video")
    with pytest.warns(
        lora.LoraLoadWarning, match=r"16 of 48 LoRA layers merged; 32 are not in this.*audio layers need --ltx_mode av"
    ):
        assert merge_lora(video_only.backbone, file, 1.0) == 16


def test_a_lora_for_another_model_is_refused_naming_the_file(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    model = load_transformer(path, mode="video")
    before = _weights(model.backbone)
    down, up = torch.randn(4, 64), torch.randn(64, 4)
    other = tmp_path / "wan_lora.safetensors"  # official-style names of another transformer
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_A.weight": down,
            "diffusion_model.blocks.0.self_attn.q.lora_B.weight": up,
        },
        str(other),
    )
    with pytest.raises(LoraFileError, match=r"wan_lora\.safetensors: none of its 1 LoRA layers.*another model"):
        merge_lora(model.backbone, other, 1.0)

    # Same names, other sizes (a real LTX-2 LoRA on a differently sized transformer): refused before any change.
    q = model.backbone.get_submodule("transformer_blocks.0.attn1.to_q")
    k = model.backbone.get_submodule("transformer_blocks.0.attn1.to_k")
    wrong = tmp_path / "wrong_size.safetensors"
    prefix = "diffusion_model.transformer_blocks.0.attn1"
    save_file(
        {
            f"{prefix}.to_k.lora_A.weight": torch.randn(4, k.in_features),
            f"{prefix}.to_k.lora_B.weight": torch.randn(k.out_features, 4),
            f"{prefix}.to_q.lora_A.weight": torch.randn(4, q.in_features + 32),
            f"{prefix}.to_q.lora_B.weight": torch.randn(q.out_features, 4),
        },
        str(wrong),
    )
    with pytest.raises(LoraFileError, match=r"wrong_size\.safetensors: layer transformer_blocks\.0\.attn1\.to_q maps"):
        merge_lora(model.backbone, wrong, 1.0)
    after = _weights(model.backbone)
    assert all(torch.equal(before[key], after[key]) for key in before)  # all or nothing
