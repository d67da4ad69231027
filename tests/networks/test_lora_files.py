"""lora_files: LoRA, DoRA, LoKr and LoHa in the official and musubi layouts are read; every other layout is a clear
error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ltx2_tuner.errors import Ltx2TunerError
from ltx2_tuner.networks.lora_files import LoraFileError, read_lora_file
from ltx2_tuner.networks.musubi_names import musubi_to_official, official_to_musubi

OFFICIAL = "diffusion_model.transformer_blocks.0.attn1.to_q"
MUSUBI = "lora_unet_model_transformer_blocks_0_attn1_to_q"


def _write(tmp_path, tensors, name="lora.safetensors"):
    path = tmp_path / name
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def _pair(stem, down=".lora_A.weight", up=".lora_B.weight", rank=2, features=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        stem + down: torch.randn(rank, features, generator=generator),
        stem + up: torch.randn(features, rank, generator=generator),
    }


def _refusal(path) -> str:
    with pytest.raises(LoraFileError) as caught:
        read_lora_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_lora_file_error_is_a_user_error():
    assert issubclass(LoraFileError, Ltx2TunerError)  # the CLI prints `error: ...` and exits 2


def test_official_and_musubi_layouts_read_to_the_same_layers(tmp_path):
    official = _pair(OFFICIAL)  # alpha folded into B: no alpha tensor
    musubi = _pair(MUSUBI, ".lora_down.weight", ".lora_up.weight") | {f"{MUSUBI}.alpha": torch.tensor(4.0)}
    comfy_kohya = _pair(OFFICIAL, ".lora_down.weight", ".lora_up.weight") | {f"{OFFICIAL}.alpha": torch.tensor(1.0)}

    layer = read_lora_file(_write(tmp_path, official)).layers[OFFICIAL]
    assert torch.equal(layer.down, official[f"{OFFICIAL}.lora_A.weight"])
    assert torch.equal(layer.folded_up(), official[f"{OFFICIAL}.lora_B.weight"])
    layer = read_lora_file(_write(tmp_path, musubi)).layers[OFFICIAL]
    assert layer.scale == 2.0  # alpha 4 / rank 2
    torch.testing.assert_close(layer.folded_up(), musubi[f"{MUSUBI}.lora_up.weight"] * 2.0, rtol=0, atol=0)
    assert set(read_lora_file(_write(tmp_path, comfy_kohya)).layers) == {OFFICIAL}


@pytest.mark.parametrize(
    ("dora_key", "form"),
    [
        (f"{MUSUBI}.lora_magnitude_vector.weight", "magnitude"),  # musubi DoRA
        (f"{MUSUBI}.lora_magnitude_vector", "magnitude"),  # PEFT's state-dict name
        (f"{OFFICIAL}.dora_scale", "dora_scale"),  # ComfyUI export, [out, 1]
    ],
)
def test_dora_reads_with_its_magnitude_in_the_form_the_file_has(tmp_path, dora_key, form):
    stem = dora_key.split(".lora_magnitude")[0].split(".dora_scale")[0]
    pair = _pair(stem) if stem.startswith("diffusion_model.") else _pair(stem, ".lora_down.weight", ".lora_up.weight")
    magnitude = torch.arange(1.0, 9.0).reshape(8, 1) if form == "dora_scale" else torch.arange(1.0, 9.0)
    lora = read_lora_file(_write(tmp_path, pair | {dora_key: magnitude}))
    layer = lora.layers[OFFICIAL]
    assert lora.algos == {"dora"} and torch.equal(getattr(layer, form).reshape(-1), torch.arange(1.0, 9.0))
    assert getattr(layer, "magnitude" if form == "dora_scale" else "dora_scale") is None


def test_input_axis_dora_scale_is_refused(tmp_path):
    message = _refusal(_write(tmp_path, _pair(OFFICIAL) | {f"{OFFICIAL}.dora_scale": torch.ones(1, 8)}))
    assert "dora_scale [1, 8], not [8, 1]: input-axis DoRA" in message


def test_lokr_and_loha_read_with_comfyui_alpha_rules(tmp_path):
    full = {f"{OFFICIAL}.lokr_w1": torch.ones(2, 4), f"{OFFICIAL}.lokr_w2": torch.ones(4, 2), f"{OFFICIAL}.alpha":
            torch.tensor(8.0)}  # fmt: skip
    layer = read_lora_file(_write(tmp_path, full, "full.safetensors")).layers[OFFICIAL]
    assert layer.features == (8, 8) and layer.scale == 1.0  # both factors full: alpha is ignored
    factored = {
        f"{MUSUBI}.lokr_w1": torch.ones(2, 4),
        f"{MUSUBI}.lokr_w2_a": torch.ones(4, 2),
        f"{MUSUBI}.lokr_w2_b": torch.ones(2, 2),
        f"{MUSUBI}.alpha": torch.tensor(1.0),
    }
    lora = read_lora_file(_write(tmp_path, factored, "factored.safetensors"))
    assert lora.algos == {"lokr"} and lora.layers[OFFICIAL].scale == 0.5  # alpha / rank of w2's pair
    loha = {f"{OFFICIAL}.{name}": torch.ones(8, 2) if name.endswith("_a") else torch.ones(2, 8)
            for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}  # fmt: skip
    layer = read_lora_file(_write(tmp_path, loha, "loha.safetensors")).layers[OFFICIAL]
    assert layer.algo == "loha" and layer.scale == 1.0 and torch.equal(layer.delta(), torch.full((8, 8), 4.0))


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({f"{OFFICIAL}.lokr_w1": torch.ones(2, 2)}, "has neither lokr_w2 nor both lokr_w2_a and lokr_w2_b"),
        ({f"{OFFICIAL}.hada_w1_a": torch.ones(8, 2)}, "has no hada_w1_b, hada_w2_a, hada_w2_b"),
        (_pair(OFFICIAL) | {f"{OFFICIAL}.lokr_w1": torch.ones(2, 2)}, "has LoKr and LoRA/DoRA tensors"),
    ],
)
def test_incomplete_or_mixed_lycoris_layers_are_refused(tmp_path, tensors, expected):
    assert expected in _refusal(_write(tmp_path, tensors))


@pytest.mark.parametrize(
    ("keys", "layout"),
    [
        ([f"{MUSUBI}.lokr_w1", f"{MUSUBI}.lokr_w2_a", f"{MUSUBI}.lokr_w2_b", f"{MUSUBI}.lokr_t2"], "Tucker"),
        ([f"{OFFICIAL}.hada_w1_a", f"{OFFICIAL}.hada_t1"], "Tucker"),
        ([f"{MUSUBI}.oft_blocks"], "OFT"),
        ([f"{MUSUBI}.oft_R.weight"], "OFT"),
        ([f"{OFFICIAL}.on_input"], "(IA)^3"),
        ([f"{OFFICIAL}.diff", f"{OFFICIAL}.diff_b"], "LyCORIS full"),
        (["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"], "diffusers/PEFT naming"),
    ],
)
def test_other_adapter_layouts_are_refused_by_name(tmp_path, keys, layout):
    path = _write(tmp_path, {key: torch.ones(2, 2) for key in keys})
    message = _refusal(path)
    found = next(key for key in keys if key.endswith(("_t2", "_t1", "oft_blocks", "oft_R.weight", "on_input",
                                                      ".diff", "lora_A.weight")))  # fmt: skip
    assert f"{path}: {layout}" in message and f"(found {found})" in message


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ({"diffusion_model.transformer_blocks.0.attn1.to_q.weight": torch.ones(2, 2)}, "unrecognised tensor"),
        (
            _pair(OFFICIAL) | {"diffusion_model.transformer_blocks.0.scale_shift_table": torch.ones(2)},
            "unrecognised tensor diffusion_model.transformer_blocks.0.scale_shift_table",
        ),
        (
            _pair("lora_te_text_model_encoder_layers_0_mlp_fc1", ".lora_down.weight", ".lora_up.weight"),
            "neither official/ComfyUI (diffusion_model.*) nor musubi (lora_unet_*) naming",
        ),
        ({}, "holds no tensors"),
    ],
)
def test_unknown_layouts_are_refused(tmp_path, tensors, expected):
    assert expected in _refusal(_write(tmp_path, tensors))


def test_a_musubi_layer_without_an_official_name_is_refused(tmp_path):
    stem = "lora_unet_model_video_embeddings_connector_transformer_1d_blocks_0_attn1_to_q"
    message = _refusal(_write(tmp_path, _pair(stem, ".lora_down.weight", ".lora_up.weight")))
    assert f"musubi layer {stem} is not an LTX-2 transformer module" in message


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        (f"{OFFICIAL}.lora_A.weight", "lora_B/lora_up"),
        (f"{OFFICIAL}.lora_B.weight", "lora_A/lora_down"),
        (f"{MUSUBI}.lora_down.weight", "lora_B/lora_up"),
        (f"{MUSUBI}.lora_up.weight", "lora_A/lora_down"),
        (f"{MUSUBI}.alpha", "lora_A/lora_down"),
    ],
)
def test_a_missing_partner_tensor_names_the_file_and_the_layer(tmp_path, present, missing):
    other = _pair(OFFICIAL.replace("to_q", "to_k"))  # a complete layer beside it
    message = _refusal(_write(tmp_path, other | {present: torch.ones(2, 2)}))
    stem = present.rsplit(".lora_", 1)[0].removesuffix(".alpha")
    assert f"layer {stem} has" in message and f"no {missing} tensor" in message


def test_inconsistent_pair_shapes_are_refused(tmp_path):
    tensors = {f"{OFFICIAL}.lora_A.weight": torch.ones(4, 8), f"{OFFICIAL}.lora_B.weight": torch.ones(8, 2)}
    assert "lora_A/down [4, 8] and lora_B/up [8, 2]" in _refusal(_write(tmp_path, tensors))


def test_musubi_names_round_trip_for_every_targetable_module():
    for path in (
        "transformer_blocks.11.audio_to_video_attn.to_gate_logits",
        "transformer_blocks.0.video_to_audio_attn.to_out.0",
        "transformer_blocks.3.audio_ff.net.0.proj",
        "transformer_blocks.3.ff.net.2",
        "audio_caption_projection.linear_1",
        "audio_patchify_proj",
    ):
        stem = official_to_musubi(f"diffusion_model.{path}")
        assert stem == f"lora_unet_model_{path.replace('.', '_')}"
        assert musubi_to_official(stem) == f"diffusion_model.{path}"
        assert musubi_to_official(stem.replace("lora_unet_model_", "lora_unet_")) == f"diffusion_model.{path}"
    assert official_to_musubi("diffusion_model.adaln_single.linear") is None  # would not read back
    assert official_to_musubi("text_embedding_projection.aggregate_embed") is None
