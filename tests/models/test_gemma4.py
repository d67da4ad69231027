"""LTX's Gemma 4 text encoder (LTX 2.5): both layouts, features equal to transformers' full model, tokenization,
one line per bad input, the memory estimate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import text_encoder
from ltx2_tuner.models.gemma_memory import GEMMA4_12B, GemmaSizes, estimate_text_encoding_memory
from ltx2_tuner.models.text_encoder import (
    MAX_PROMPT_TOKENS,
    check_gemma_fits,
    inspect_gemma,
    inspect_text_encoder,
    load_gemma,
    tokenize,
)
from ltx2_tuner.testing.tiny_gemma import (
    LTX_GEMMA4_VERSION,
    TINY_GEMMA4_HIDDEN_SIZE,
    TINY_GEMMA4_NUM_LAYERS,
    write_tiny_gemma4,
    write_tiny_gemma4_packed,
)

PAD, BOS = 0, 2
CAPTIONS = ["  A red fox runs through deep snow.  ", "x" * 1100, ""]
NUM_FEATURES = TINY_GEMMA4_HIDDEN_SIZE * (TINY_GEMMA4_NUM_LAYERS + 1)
BIAS = "text_embedding_projection.video_aggregate_embed.bias"
PROJECTIONS = {
    "text_embedding_projection.video_aggregate_embed.weight": torch.ones(64, NUM_FEATURES),
    BIAS: torch.zeros(64),
}


@pytest.fixture(scope="module")
def gemma4_dir(tmp_path_factory) -> Path:
    return write_tiny_gemma4(tmp_path_factory.mktemp("gemma4") / "gemma4-tiny-ltx")


@pytest.fixture(scope="module")
def gemma4_packed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pack") / "text_encoders" / "gemma4-tiny-with-proj.safetensors"
    return write_tiny_gemma4_packed(path, PROJECTIONS)


@pytest.fixture(scope="module")
def encoded(gemma4_dir, gemma4_packed) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {layout: load_gemma(path, dtype=torch.float32)(CAPTIONS)
            for layout, path in (("directory", gemma4_dir), ("packed", gemma4_packed))}  # fmt: skip


def _full_model_features(gemma_dir: Path, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What ltx-core computes, independently: the whole Gemma4UnifiedForConditionalGeneration (its inner model, as
    ltx-core calls it), transformers' own tokenizer class, <bos> and left padding done by hand."""
    from transformers import AutoTokenizer, Gemma4UnifiedForConditionalGeneration

    full = Gemma4UnifiedForConditionalGeneration.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    ids = torch.full((len(captions), MAX_PROMPT_TOKENS), PAD)
    mask = torch.zeros_like(ids)
    for row, caption in enumerate(captions):
        tokens = [BOS, *tokenizer(caption.strip(), add_special_tokens=True).input_ids][:MAX_PROMPT_TOKENS]
        ids[row, -len(tokens) :], mask[row, -len(tokens) :] = torch.tensor(tokens), 1
    with torch.no_grad():
        states = full.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return torch.stack(states, dim=-1).flatten(2), mask


def test_both_layouts_give_the_features_of_the_full_model(gemma4_dir, encoded):
    expected, expected_mask = _full_model_features(gemma4_dir, CAPTIONS)
    assert expected.shape == (3, 1024, NUM_FEATURES)
    for layout, (packed, mask) in encoded.items():
        assert torch.equal(mask, expected_mask), layout
        max_difference = (packed - expected).abs().max().item()
        assert max_difference == 0.0, layout  # bit-identical: the same ops on the same weights
    assert torch.equal(encoded["directory"][0], encoded["packed"][0])


def test_the_last_hidden_state_is_after_the_final_norm(gemma4_packed):
    model = load_gemma(gemma4_packed, dtype=torch.float32).model
    captured = []
    model.layers[-1].register_forward_hook(lambda module, args, out: captured.append(out))
    ids = torch.tensor([[BOS, 270, 271, 272]])
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        normed = model.norm(captured[0])
    assert len(states) == TINY_GEMMA4_NUM_LAYERS + 1
    assert torch.equal(states[-1], normed) and not torch.allclose(states[-1], captured[0])


def test_only_the_language_model_is_loaded(gemma4_packed):
    from transformers import Gemma4UnifiedTextModel

    model = load_gemma(gemma4_packed, dtype=torch.float32).model
    assert type(model) is Gemma4UnifiedTextModel  # no vision or audio embedder, no LM head
    assert not any(word in name for name, _ in model.named_parameters() for word in ("vision", "audio", "lm_head"))


def test_tokenize_prepends_bos_and_left_pads_to_1024(gemma4_packed):
    tokenizer = load_gemma(gemma4_packed, dtype=torch.float32).tokenizer
    plain = tokenizer("a cat").input_ids
    assert BOS not in plain and len(plain) == 5  # like the real one, the tokenizer adds no <bos> (nor <eos>)
    ids, mask = tokenize(tokenizer, ["  a cat  ", "abcdefghij" * 150, ""])
    assert ids.shape == mask.shape == (3, 1024) and mask.dtype == torch.int64
    assert mask[0].sum() == 6 and ids[0, -6:].tolist() == [BOS, *plain]
    assert ids[0, :-6].eq(PAD).all() and mask[0, :-6].eq(0).all()
    assert mask[1].all() and ids[1, 0] == BOS  # 1500 tokens: <bos> + the first 1023
    assert ids[1, 1:].tolist() == tokenizer(("abcdefghij" * 150)[:1023]).input_ids
    assert mask[2].sum() == 1 and ids[2, -1] == BOS  # an empty caption is <bos> alone


def test_info_and_identity(tiny_gemma_dir, gemma4_dir, gemma4_packed, tmp_path):
    gemma3 = inspect_gemma(tiny_gemma_dir)
    directory, packed = inspect_text_encoder(gemma4_dir), inspect_text_encoder(gemma4_packed)
    assert (gemma3.family, gemma3.layout, gemma3.gemma_version) == ("gemma3", "directory", None)
    assert (directory.family, directory.layout, directory.gemma_version) == ("gemma4", "directory", LTX_GEMMA4_VERSION)
    assert (packed.family, packed.layout, packed.root) == ("gemma4", "packed", gemma4_packed)
    assert (packed.hidden_size, packed.num_layers) == (TINY_GEMMA4_HIDDEN_SIZE, TINY_GEMMA4_NUM_LAYERS)
    assert len({gemma3.identity, directory.identity, packed.identity}) == 3
    assert inspect_text_encoder(gemma4_packed).identity == packed.identity  # stable
    copy = Path(shutil.copy2(gemma4_packed, tmp_path / "copy.safetensors"))
    assert inspect_text_encoder(copy).identity == packed.identity  # a copy with its time kept: the caches stay valid
    rewritten = inspect_text_encoder(write_tiny_gemma4_packed(copy, {**PROJECTIONS, BIAS: torch.ones(64)}))
    assert rewritten.identity not in (packed.identity, inspect_text_encoder(gemma4_packed).identity)


def test_the_packed_file_may_use_hugging_face_names(gemma4_packed, encoded, tmp_path):
    from safetensors import safe_open

    with safe_open(str(gemma4_packed), framework="pt") as f:
        metadata = f.metadata()
        tensors = {("model.language_model." + k.removeprefix("model.") if k.startswith("model.") else k): f.get_tensor(k)
                   for k in f.keys()}  # noqa: SIM118  # fmt: skip
    path = tmp_path / "hf_names.safetensors"
    save_file(tensors, path, metadata=metadata)
    assert torch.equal(load_gemma(path, dtype=torch.float32)(CAPTIONS)[0], encoded["packed"][0])
    both = tmp_path / "both.safetensors"
    save_file(
        {**tensors, "model.norm.weight": tensors["model.language_model.norm.weight"].clone()}, both, metadata=metadata
    )
    with pytest.raises(CheckpointError, match=r"holds the Gemma tensor .*norm\.weight twice"):
        inspect_text_encoder(both)


def test_offload_streams_gemma4_with_the_plain_features(gemma4_dir):
    plain = load_gemma(gemma4_dir, dtype=torch.bfloat16)(CAPTIONS)
    encoder = load_gemma(gemma4_dir, dtype=torch.bfloat16, offload=True)
    assert encoder.layer_stream is not None
    packed, mask = encoder(CAPTIONS)
    assert torch.equal(packed, plain[0]) and torch.equal(mask, plain[1])


def test_quantization_reaches_the_gemma4_loader(gemma4_packed, monkeypatch):
    from transformers import BitsAndBytesConfig, Gemma4UnifiedTextModel

    calls = []

    def fake_from_pretrained(name, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(text_encoder, "check_quantization", lambda quantization, device: None)
    monkeypatch.setattr(Gemma4UnifiedTextModel, "from_pretrained", fake_from_pretrained)
    with pytest.raises(RuntimeError, match="stop here"):
        load_gemma(gemma4_packed, quantization="8bit", device="cuda")
    config = calls[0]["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig) and config.load_in_8bit
    assert calls[0]["device_map"] == {"": "cuda"}
    assert "layers.1.self_attn.k_proj.weight" in calls[0]["state_dict"]  # the language model only
    assert not any(name.startswith(("text_embedding", "tokenizer", "hf_asset")) for name in calls[0]["state_dict"])


def test_gemma4_fits_connectors_sized_for_it(gemma4_packed):
    info = inspect_text_encoder(gemma4_packed)
    check_gemma_fits(info, TINY_GEMMA4_HIDDEN_SIZE, TINY_GEMMA4_NUM_LAYERS + 1, "transformer.safetensors")
    with pytest.raises(CheckpointError, match=r"LTX's Gemma 4 for LTX 2\.5"):
        check_gemma_fits(info, 64, 3, "transformer.safetensors")


# Bad input: one line each, naming the file and the fix.


def _one_line(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message


def _edit_config(gemma_dir: Path, tmp_path: Path, **changes) -> Path:
    root = Path(shutil.copytree(gemma_dir, tmp_path / "gemma"))
    config = json.loads((root / "config.json").read_text())
    config.update(changes)
    (root / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return root


def _rewrite(packed: Path, out: Path, drop=(), metadata_drop=(), metadata_add=None) -> Path:
    from safetensors import safe_open

    with safe_open(str(packed), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k not in metadata_drop}
    tensors = {k: v for k, v in load_file(packed).items() if not any(k.startswith(d) for d in drop)}
    save_file(tensors, out, metadata={**metadata, **(metadata_add or {})})
    return out


def test_stock_gemma4_is_refused(gemma4_dir, tmp_path):
    dense = _edit_config(gemma4_dir, tmp_path / "dense", model_type="gemma4")
    with pytest.raises(CheckpointError) as error:
        inspect_text_encoder(dense)
    _one_line(error, dense, "stock dense Gemma 4", "gemma-4-E2B-it", "gemma4-12b-with-proj")
    unversioned = _edit_config(gemma4_dir, tmp_path / "unversioned", gemma_version=None)
    with pytest.raises(CheckpointError) as error:
        load_gemma(unversioned)
    _one_line(error, unversioned, "without `gemma_version`", "gemma4-12b-ltx-v1")


def test_packed_file_problems(gemma4_packed, tmp_path):
    cases = {
        "no_config": ({"metadata_drop": ("gemma_config",)}, "no `gemma_config` metadata"),
        "ltx_model": ({"metadata_drop": ("gemma_config",), "metadata_add": {"config": "{}"}}, "is an LTX model file"),
        "no_tokenizer": ({"drop": ("tokenizer_json",)}, "has no tokenizer"),
        "no_settings": ({"drop": ("hf_asset__tokenizer_config",)}, "has no tokenizer settings"),
        "no_weights": ({"drop": ("model.",)}, "has no Gemma 4 language-model weights"),
        "truncated": ({"drop": ("model.layers.1.",)}, "lacks Gemma 4 language-model tensors"),
    }
    for name, (edits, words) in cases.items():
        path = _rewrite(gemma4_packed, tmp_path / f"{name}.safetensors", **edits)
        with pytest.raises(CheckpointError) as error:
            inspect_text_encoder(path)
        _one_line(error, path, words)
    not_safetensors = tmp_path / "gemma.bin"
    not_safetensors.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError) as error:
        inspect_text_encoder(not_safetensors)
    _one_line(error, not_safetensors, "neither a Gemma directory nor a packed")


def test_a_tensor_missing_beyond_the_cheap_check_fails_at_load(gemma4_packed, tmp_path):
    path = _rewrite(gemma4_packed, tmp_path / "partial.safetensors", drop=("model.layers.1.mlp.up_proj.",))
    inspect_text_encoder(path)  # the header check samples the layers; loading finds every missing tensor
    with pytest.raises(CheckpointError) as error:
        load_gemma(path, dtype=torch.float32)
    _one_line(error, path, "lacks 1 Gemma 4 language-model tensors", "layers.1.mlp.up_proj.weight")


def test_directory_problems(gemma4_dir, tmp_path):
    no_tokenizer = Path(shutil.copytree(gemma4_dir, tmp_path / "no_tokenizer"))
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError) as error:
        inspect_text_encoder(no_tokenizer)
    _one_line(error, no_tokenizer, "has no tokenizer (tokenizer.json missing)")
    no_weights = Path(shutil.copytree(gemma4_dir, tmp_path / "no_weights"))
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as error:
        inspect_text_encoder(no_weights)
    _one_line(error, no_weights, "has no model*.safetensors weights")


# The memory estimate.


def test_the_estimate_counts_gemma4_weights_exactly(gemma4_packed):
    from transformers import Gemma4UnifiedTextConfig, Gemma4UnifiedTextModel

    def params(module) -> int:
        return sum(p.numel() for p in module.parameters())

    tiny = load_gemma(gemma4_packed, dtype=torch.float32).model
    tiny_sizes = GemmaSizes.from_config(tiny.config)
    assert text_encoder.gemma_sizes(inspect_text_encoder(gemma4_packed)) == tiny_sizes  # from the packed config
    assert tiny_sizes.num_global_layers == 1 and tiny_sizes.global_values_are_keys
    assert tiny_sizes.num_params == params(tiny)
    assert tiny_sizes.layer_params == max(params(layer) for layer in tiny.layers)

    s = GEMMA4_12B
    config = Gemma4UnifiedTextConfig(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, head_dim=s.head_dim, global_head_dim=s.global_head_dim,
        num_global_key_value_heads=s.num_global_key_value_heads, attention_k_eq_v=True,
    )  # fmt: skip
    assert GemmaSizes.from_config(config) == GEMMA4_12B
    with torch.device("meta"):
        model = Gemma4UnifiedTextModel(config)
    whole = estimate_text_encoding_memory(GEMMA4_12B, streamed=False)
    streamed = estimate_text_encoding_memory(GEMMA4_12B, streamed=True)
    assert whole.gemma_weights == 2 * params(model) and whole.streamed_layers == 0
    assert streamed.streamed_layers == 2 * 2 * max(params(layer) for layer in model.layers)
    assert whole.gemma_activations == 2 * 49 * 1024 * 3840 * 2  # 49 states [1, 1024, 3840] and their packed copy
