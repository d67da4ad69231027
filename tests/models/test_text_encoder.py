"""Gemma loading, tokenization and packing; connector loading per mode; video mode equals the AV call's video."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltx2_tuner.errors import CheckpointError, ConfigError
from ltx2_tuner.models.text_embeddings import (
    TextEmbedder,
    connector_checkpoint,
    connector_input,
    load_text_embedder,
)
from ltx2_tuner.models.text_encoder import (
    GemmaInfo,
    check_gemma_fits,
    check_quantization,
    inspect_gemma,
    load_gemma,
    tokenize,
)
from ltx2_tuner.testing.tiny_checkpoint import copy_without

PAD, EOS, BOS = 0, 1, 2  # the tiny tokenizer's special ids (Gemma's)


@pytest.fixture(scope="module")
def gemma(tiny_gemma_dir):
    return load_gemma(tiny_gemma_dir, dtype=torch.float32)


def _char_ids(tokenizer, text: str) -> list[int]:
    # The tiny tokenizer has one token per character ("▁" for a space).
    return tokenizer.convert_tokens_to_ids(["▁" if c == " " else c for c in text])


def test_tokenize_left_pads_to_1024_with_bos(gemma):
    ids, mask = tokenize(gemma.tokenizer, ["  a cat  "])
    assert ids.shape == mask.shape == (1, 1024) and mask.dtype == torch.int64
    assert mask.sum() == 6  # <bos> + "a cat" (stripped)
    assert ids[0, :-6].eq(PAD).all() and mask[0, :-6].eq(0).all()
    assert ids[0, -6:].tolist() == [BOS, *_char_ids(gemma.tokenizer, "a cat")]


def test_tokenize_truncates_at_1024_and_keeps_bos(gemma):
    caption = "".join("abcdefghij"[i % 10] for i in range(1500))
    ids, mask = tokenize(gemma.tokenizer, [caption, "short"])
    assert mask[0].eq(1).all()  # no padding: 1500 characters are cut to <bos> + 1023
    assert ids[0, 0] == BOS and ids[0, 1:].tolist() == _char_ids(gemma.tokenizer, caption[:1023])
    assert mask[1].sum() == 6 and ids[1, -6] == BOS


def test_tokenize_prepends_bos_when_the_tokenizer_does_not_add_it(gemma, tiny_gemma_dir):
    from transformers import AutoTokenizer

    # ltx-core prepends <bos> for Gemma 3 and Gemma 4 alike; Gemma 3's own tokenizer already adds it.
    without_bos = AutoTokenizer.from_pretrained(tiny_gemma_dir, add_bos_token=False)
    assert BOS not in without_bos("a cat").input_ids
    captions = ["  a cat  ", "x" * 1500, ""]
    ids, mask = tokenize(without_bos, captions)
    expected_ids, expected_mask = tokenize(gemma.tokenizer, captions)
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
    assert ids[2, -1] == BOS and mask[2].sum() == 1  # an empty caption is <bos> alone


def test_a_tokenizer_without_bos_is_one_line(tiny_gemma_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.bos_token = None
    with pytest.raises(CheckpointError, match="has no <bos> token") as error:
        tokenize(tokenizer, ["a cat"])
    assert "\n" not in str(error.value)


def test_packed_hidden_states_equal_diffusers_pipeline_with_full_gemma(gemma, tiny_gemma_dir):
    from diffusers import LTX2Pipeline
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    captions = ["A red fox runs through deep snow.", "x" * 1100, ""]
    full = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma_dir, dtype=torch.float32, local_files_only=True)
    pipe = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(tiny_gemma_dir), text_encoder=full.eval())
    expected, expected_mask = LTX2Pipeline._get_gemma_prompt_embeds(pipe, captions, device=torch.device("cpu"))

    packed, mask = gemma(captions)
    assert packed.shape == (3, 1024, 32 * 3)  # hidden 32 x (2 layers + embeddings)
    assert torch.equal(mask, expected_mask.long())
    assert torch.equal(packed, expected)


def test_only_the_language_model_is_loaded(gemma):
    from transformers import Gemma3TextModel

    assert type(gemma.model) is Gemma3TextModel  # no vision tower, no LM head
    assert not any("vision" in name for name, _ in gemma.model.named_parameters())


@pytest.mark.parametrize("layout", ["transformers4", "text_only"])
def test_other_gemma_file_layouts_load_the_same_weights(gemma, tiny_gemma_dir, tmp_path, layout):
    root = tmp_path / "gemma"
    shutil.copytree(tiny_gemma_dir, root)
    tensors = load_file(root / "model.safetensors")
    if layout == "transformers4":  # transformers 4.5x saved `model.language_model.*`
        renamed = {("model." + k).replace("model.language_model.model.", "model.language_model."): v
                   for k, v in tensors.items()}  # fmt: skip
    else:  # a text-only Gemma3ForCausalLM export
        renamed = {k.replace("language_model.", "", 1): v for k, v in tensors.items() if k.startswith("language_")}
        config = json.loads((root / "config.json").read_text())
        (root / "config.json").write_text(json.dumps({**config["text_config"], "architectures": ["Gemma3ForCausalLM"]}))
    save_file(renamed, root / "model.safetensors", metadata={"format": "pt"})
    packed, _ = load_gemma(root, dtype=torch.float32)(["same weights"])
    assert torch.equal(packed, gemma(["same weights"])[0])


def test_not_a_gemma_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        inspect_gemma(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        inspect_gemma(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match=r"model_type 'llama' \(LlamaForCausalLM\), not Gemma 3") as error:
        inspect_gemma(tmp_path)
    assert "gemma-3-12b-it" in str(error.value) and "\n" not in str(error.value)


def test_gemma_must_fit_the_connectors(tiny_gemma_dir, tiny_checkpoints):
    info = inspect_gemma(tiny_gemma_dir)
    caption_channels, factor = connector_input(connector_checkpoint(tiny_checkpoints["2.3"].path))
    assert (info.hidden_size, info.num_layers + 1) == (caption_channels, factor) == (32, 3)
    check_gemma_fits(info, caption_channels, factor, "ltx.safetensors")
    deeper = GemmaInfo(info.root, 32, 5, info.identity)
    with pytest.raises(CheckpointError, match=r"hidden size 32 and 5 layers \(192 features\).* take 32 x 3 = 96"):
        check_gemma_fits(deeper, caption_channels, factor, "ltx.safetensors")


def test_quantization_needs_cuda():
    check_quantization(None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="--gemma_load_in_8bit needs a CUDA GPU"):
        check_quantization("8bit", torch.device("cpu"))
    with pytest.raises(ConfigError, match="--gemma_load_in_4bit"):
        check_quantization("4bit", torch.device("cpu"))


def _left_padded_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    packed = torch.randn(3, 1024, 96, generator=generator) * 5
    mask = torch.zeros(3, 1024, dtype=torch.int64)
    for row, length in enumerate((1, 300, 1024)):
        mask[row, 1024 - length :] = 1
    return packed, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_video_mode_is_bit_identical_to_the_av_call(tiny, dtype):
    info = connector_checkpoint(tiny.path)
    packed, mask = _left_padded_batch(torch.Generator().manual_seed(3))
    av_video, av_audio, av_mask = load_text_embedder(info, "av", dtype)(packed, mask)
    video, audio, video_mask = load_text_embedder(info, "video", dtype)(packed, mask)
    assert audio is None and av_audio.shape == (3, 1024, 32 if tiny.version == "2.0" else 16)
    assert video.dtype == dtype and torch.equal(video, av_video)
    assert torch.equal(video_mask, av_mask) and video_mask.eq(1).all()  # registers fill the padding


def test_video_mode_does_not_need_the_audio_connector(tiny, tmp_path):
    path = copy_without(
        tiny.path, tmp_path / "no_audio.safetensors", "model.diffusion_model.audio_embeddings_connector."
    )
    info = connector_checkpoint(path)
    embedder = load_text_embedder(info, "video", torch.float32)
    assert embedder.connectors.audio_connector is None
    packed, mask = _left_padded_batch(torch.Generator().manual_seed(4))
    expected = load_text_embedder(connector_checkpoint(tiny.path), "video", torch.float32)(packed, mask)[0]
    assert torch.equal(embedder(packed, mask)[0], expected)
    with pytest.raises(CheckpointError) as error:
        load_text_embedder(info, "av")
    message = str(error.value)
    assert "model.diffusion_model.audio_embeddings_connector.*" in message
    assert "--ltx2_text_encoder_checkpoint" in message and "video_embeddings_connector" not in message


def test_connectors_from_a_bare_component_file(tiny, tmp_path):
    with safe_open(str(tiny.path), framework="pt") as f:
        names = [k for k in f.keys() if "embeddings_connector" in k or k.startswith("text_embedding_projection")]  # noqa: SIM118
        save_file({k: f.get_tensor(k) for k in names}, tmp_path / "connectors.safetensors")
    without = copy_without(tiny.path, tmp_path / "main.safetensors", "text_embedding_projection.")
    with pytest.raises(CheckpointError, match=r"text_embedding_projection\."):
        load_text_embedder(connector_checkpoint(without), "video")
    info = connector_checkpoint(without, tmp_path / "connectors.safetensors")
    packed, mask = _left_padded_batch(torch.Generator().manual_seed(5))
    expected = load_text_embedder(connector_checkpoint(tiny.path), "av", torch.float32)(packed, mask)
    got = TextEmbedder(load_text_embedder(info, "av", torch.float32).connectors, "av")(packed, mask)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
