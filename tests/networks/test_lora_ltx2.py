"""lora_ltx2: targets, official-format files that diffusers loads, musubi-format reading."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import load_transformer, load_transformer_backbone
from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.networks import convert_lora
from ltx2_tuner.networks import lora_ltx2 as lora
from ltx2_tuner.networks.lora_files import read_lora_file
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


def _lora_weights(backbone) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in backbone.named_parameters() if ".lora_" in name}


def _assert_unchanged(backbone, before: dict[str, torch.Tensor]) -> None:
    after = _lora_weights(backbone)
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)


def _saved(tmp_path, model, name, **edits):
    """The model's LoRA in the official format, with `edits` (tensor name -> tensor, or None to drop) applied."""
    tensors = lora.lora_state_dict(model.backbone, torch.float32)
    for key, tensor in edits.items():
        if tensor is None:
            del tensors[key]
        else:
            tensors[key] = tensor
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def _diffusers_reproduces(checkpoint, model, lora_path):
    """diffusers' LTX-2 transformer with the LoRA file loaded by its LoRA loader gives our model's outputs (within
    1e-5); returns (our outputs, the inputs)."""
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin

    state_dict = LTX2LoraLoaderMixin.lora_state_dict(str(lora_path))
    state_dict = state_dict[0] if isinstance(state_dict, tuple) else state_dict
    plain = load_transformer_backbone(checkpoint)
    plain.load_lora_adapter(state_dict, prefix="transformer", adapter_name="ours")
    video, audio = make_inputs(model.config)
    with torch.no_grad():
        ours = model(video, audio)
        theirs = diffusers_forward(plain, video, audio, uniform=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    return ours, (video, audio)


def test_presets_select_the_expected_layers(tiny_checkpoints):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="av")
    layers = 2
    video = lora.select_targets(model.backbone, "video")
    assert len(video) == layers * 2 * 4 and all(".attn1." in t or ".attn2." in t for t in video)
    assert len(lora.select_targets(model.backbone, "av")) == layers * 6 * 4
    full = lora.select_targets(model.backbone, "av", ["preset=full"])
    assert len(full) == layers * (6 * 5 + 4)  # q/k/v/out + the LTX-2.3 gate of 6 attentions, 4 feed-forward
    assert {t for t in full if "to_gate_logits" in t} == {
        f"transformer_blocks.{i}.{attn}.to_gate_logits"
        for i in range(layers)
        for attn in ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
    }
    no_gate = lora.select_targets(model.backbone, "av", ["preset=full", "exclude=to_gate_logits"])
    assert len(no_gate) == layers * (6 * 4 + 4)
    ltx20 = load_transformer(tiny_checkpoints["2.0"].path, mode="av")  # no gated attention in LTX-2.0
    assert len(lora.select_targets(ltx20.backbone, "av", ["preset=full"])) == layers * (6 * 4 + 4)
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
    gate_keys = {k for k in keys if ".to_gate_logits." in k}
    assert ("diffusion_model.transformer_blocks.0.attn1.to_gate_logits.lora_A.weight" in gate_keys) == (
        version == "2.3"
    )
    assert (
        metadata["lora_rank"] == "4" and metadata["lora_alpha"] == "8.0" and metadata["base_model_version"] == version
    )

    ours, (video, audio) = _diffusers_reproduces(tiny.path, model, path)
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
    with warnings.catch_warnings():
        warnings.simplefilter("error", lora.LoraLoadWarning)  # a one-to-one load is silent
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


def test_musubi_full_lora_with_the_ltx23_gate_loads(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    model, spec, _ = _network(path, mode="av", args=["preset=full"], rank=4, alpha=8.0)
    official = tmp_path / "official.safetensors"
    lora.save_lora(official, model.backbone, spec, {}, dtype=torch.float32)
    musubi = convert_lora.to_musubi(read_lora_file(official))
    assert "lora_unet_model_transformer_blocks_1_video_to_audio_attn_to_gate_logits.lora_down.weight" in musubi
    save_file(musubi, str(tmp_path / "musubi.safetensors"))

    fresh, _, _ = _network(path, mode="av", args=["preset=full"], rank=4, alpha=8.0, seed=3)
    assert lora.load_lora_weights(tmp_path / "musubi.safetensors", fresh.backbone) == len(spec.targets)
    video, audio = make_inputs(model.config)
    with torch.no_grad():
        for ours, theirs in zip(fresh(video, audio), model(video, audio), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_refused_files_name_the_problem_and_leave_the_lora_unchanged(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    model, _, _ = _network(path, mode="video", rank=4)
    target, _, _ = _network(path, mode="video", rank=4, seed=7)
    before = _lora_weights(target.backbone)
    layers = sorted(lora.lora_state_dict(model.backbone))
    first, last = layers[0].removesuffix(".lora_A.weight"), layers[-1].removesuffix(".lora_B.weight")
    rank8, _, _ = _network(path, mode="video", rank=8)
    cases = {
        "dora": (
            _saved(tmp_path, model, "dora.safetensors", **{f"{first}.dora_scale": torch.ones(32)}),
            "mixes dora and lora layers; a network trains one algorithm",
        ),
        "no_b": (
            _saved(tmp_path, model, "no_b.safetensors", **{f"{last}.lora_B.weight": None}),
            f"layer {last} has lora_A/lora_down but no lora_B/lora_up tensor",
        ),
        "features": (  # the last layer, so a loader that copied as it checked would have changed the others
            _saved(
                tmp_path,
                model,
                "features.safetensors",
                **{f"{last}.lora_A.weight": torch.ones(4, 33), f"{last}.lora_B.weight": torch.ones(32, 4)},
            ),
            f"layer {last} maps 33 -> 32 features in the file but 32 -> 32 in the model",
        ),
        "rank": (
            _saved(tmp_path, rank8, "rank8.safetensors"),
            "has rank 8 but the network has rank 4; pass --network_dim 8",
        ),
    }
    for file, expected in cases.values():
        with pytest.raises(lora.LoraFileError) as caught:
            lora.load_lora_weights(file, target.backbone)
        assert str(caught.value).startswith(f"{file}: ") and expected in str(caught.value)
        _assert_unchanged(target.backbone, before)


def test_partial_files_load_what_matches_and_warn_with_counts(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    av, _, _ = _network(path, mode="av", rank=4)  # av_attn: 2 blocks x 6 attentions x 4 projections
    av_file = _saved(tmp_path, av, "av.safetensors")
    video_run, _, _ = _network(path, mode="video", rank=4, seed=1)
    with pytest.warns(lora.LoraLoadWarning) as record:
        assert lora.load_lora_weights(av_file, video_run.backbone) == 16
    assert [str(w.message) for w in record] == [
        f"16 of 16 targeted layers loaded from {av_file}; 32 layers in the file are not targeted by this run (e.g. "
        "transformer_blocks.0.audio_attn1.to_k, transformer_blocks.0.audio_attn1.to_out.0, "
        "transformer_blocks.0.audio_attn1.to_q, ...); pass the --ltx_mode / --network_args the file was trained "
        "with to load it one to one"
    ]
    name = "transformer_blocks.0.attn1.to_q"
    loaded = dict(video_run.backbone.named_modules())[name].lora_A["default"].weight
    assert torch.equal(loaded, dict(av.backbone.named_modules())[name].lora_A["default"].weight)

    video_file = _saved(tmp_path, video_run, "video.safetensors")
    av_run, _, _ = _network(path, mode="av", rank=4, seed=2)
    untrained = r"^16 of 48 targeted layers loaded from .*video\.safetensors; 32 targeted layers are not in the file"
    with pytest.warns(lora.LoraLoadWarning, match=untrained + " and start untrained; "):
        assert lora.load_lora_weights(video_file, av_run.backbone) == 16

    audio, _, _ = _network(path, mode="av", args=["preset=audio_attn"], rank=4)
    audio_file = _saved(tmp_path, audio, "audio.safetensors")
    before = _lora_weights(video_run.backbone)
    with pytest.raises(lora.LoraFileError, match="none of its 16 LoRA layers is targeted by this run"):
        lora.load_lora_weights(audio_file, video_run.backbone)
    _assert_unchanged(video_run.backbone, before)


def test_a_lower_rank_file_loads_exactly_and_its_extra_ranks_can_learn(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    rank4, _, _ = _network(path, mode="video", rank=4, alpha=4.0)
    rank4_file = _saved(tmp_path, rank4, "rank4.safetensors")
    rank8, _, _ = _network(path, mode="video", rank=8, alpha=16.0, seed=4)
    lower = "16 layers have a lower rank than the network .*has rank 4, the network 8"
    with pytest.warns(lora.LoraLoadWarning, match=lower):
        assert lora.load_lora_weights(rank4_file, rank8.backbone) == 16
    video, _ = make_inputs(rank4.config)
    with torch.no_grad():
        torch.testing.assert_close(rank8(video)[0], rank4(video)[0], rtol=0, atol=1e-6)
    rank8(video)[0].pow(2).mean().backward()
    up = dict(rank8.backbone.named_modules())["transformer_blocks.0.attn1.to_q"].lora_B["default"].weight
    assert torch.all(up[:, 4:] == 0) and up.grad[:, 4:].abs().sum() > 0


def test_a_2_3_lora_loads_on_2_5_and_the_reverse_is_warned(tiny_checkpoints, tmp_path):
    """LTX 2.5 continues the 2.3 lineage: a 2.3 LoRA fits every layer of 2.5 and loads without a word; a 2.5 LoRA
    on 2.3 loads too (ltx-core fuses whatever matches, silently), with a warning naming both versions."""
    from ltx2_tuner.networks.lora_files import VERSION_KEY, lora_version_warning
    from ltx2_tuner.networks.lora_merge import merge_lora

    model, spec, _ = _network(tiny_checkpoints["2.3"].path, mode="av", args=["preset=full"])
    path = tmp_path / "lora_23.safetensors"
    lora.save_lora(path, model.backbone, spec, {VERSION_KEY: "2.3"}, dtype=torch.float32)
    assert lora_version_warning(path, "2.5") is None and lora_version_warning(path, "2.3") is None

    target = load_transformer(tiny_checkpoints["2.5"].path, mode="av")
    target_spec = lora.LoraSpec(4, 8.0, 0.0, lora.select_targets(target.backbone, "av", ["preset=full"]))
    lora.add_lora(target.backbone, target_spec)
    assert lora.load_lora_weights(path, target.backbone) == len(_lora_weights(model.backbone)) // 2
    assert _lora_weights(target.backbone).keys() == _lora_weights(model.backbone).keys()
    assert merge_lora(load_transformer(tiny_checkpoints["2.5"].path, mode="av").backbone, path, 1.0) > 0

    reverse = tmp_path / "lora_25.safetensors"
    lora.save_lora(reverse, model.backbone, spec, {VERSION_KEY: "2.5"}, dtype=torch.float32)
    warning = lora_version_warning(reverse, "2.3")
    assert warning.startswith(f"{reverse}: was trained on LTX-2.5 and is applied to LTX-2.3")
    assert "2.0" in lora_version_warning(path, "2.0")


@pytest.mark.parametrize("mode", ["t2a", "a2v", "v2a"])
def test_mode_default_presets_select_the_documented_layers_and_diffusers_reproduces_them(
    tiny_checkpoints, tmp_path, mode
):
    from ltx2_tuner.roles import roles_by_name

    roles = roles_by_name(mode)
    tiny = tiny_checkpoints["2.3"]
    model = load_transformer(tiny.path, mode=roles.build)
    targets = lora.select_targets(model.backbone, roles)
    modules = {target.split(".")[2] for target in targets}
    assert (
        modules
        == {
            "t2a": {"audio_attn1", "audio_attn2", "audio_ff"},
            "a2v": {"attn1", "attn2", "audio_to_video_attn"},
            "v2a": {"audio_attn1", "audio_attn2", "audio_ff", "video_to_audio_attn"},
        }[mode]
    )
    assert not any("to_gate_logits" in target for target in targets)

    # Saved from the AV build (as a LoRA is used in joint generation), it loads in diffusers' LTX-2 transformer.
    av_model, spec, _ = _network(tiny.path, mode="av", args=[f"preset={roles.default_preset}"])
    path = tmp_path / "lora.safetensors"
    lora.save_lora(path, av_model.backbone, spec, {}, dtype=torch.float32)
    _diffusers_reproduces(tiny.path, av_model, path)


def test_an_audio_only_lora_merged_into_an_av_build_changes_only_audio_weights(tiny_checkpoints, tmp_path):
    from ltx2_tuner.networks.lora_merge import merge_lora

    tiny = tiny_checkpoints["2.3"]
    audio_model, spec, _ = _network(tiny.path, mode="audio", args=None)  # the T2A default preset
    path = tmp_path / "t2a.safetensors"
    lora.save_lora(path, audio_model.backbone, spec, {}, dtype=torch.float32)
    av = load_transformer(tiny.path, mode="av")
    before = {name: tensor.clone() for name, tensor in av.backbone.state_dict().items()}
    assert merge_lora(av.backbone, path, 1.0) == len(spec.targets)
    changed = {name for name, tensor in av.backbone.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.split(".")[2].startswith("audio_") for name in changed), sorted(changed)
    assert changed == {f"{target}.weight" for target in spec.targets}
