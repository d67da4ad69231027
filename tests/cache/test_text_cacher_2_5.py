"""LTX 2.5 text caching: a split pack (its packed Gemma 4 found beside the transformer) and a unified file with a
Gemma 4 directory give the embeddings of an independent computation; mismatched text encoders are one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_text_encoder_outputs import main
from ltx2_tuner.testing.demo_data import write_captioned_stills
from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma4
from ltx2_tuner.testing.tiny_pack import write_tiny_pack

CAPTIONS = {"fox": "A red fox runs through deep snow, tracking shot.", "cat": "a cat"}
SEED = 4
PAD, BOS = 0, 2
# diffusers' converter renames for the 2.3/2.5 connectors (scripts/convert_ltx2_to_diffusers.py), in order.
_RENAMES = {
    "video_embeddings_connector": "video_connector",
    "audio_embeddings_connector": "audio_connector",
    "transformer_1d_blocks": "transformer_blocks",
    "text_embedding_projection.audio_aggregate_embed": "audio_text_proj_in",
    "text_embedding_projection.video_aggregate_embed": "video_text_proj_in",
    "q_norm": "norm_q",
    "k_norm": "norm_k",
}
# The tiny 2.5 connectors written out by hand (as the converter's get_ltx2_connectors_config would for 2.5, with
# caption_channels and text_proj_in_factor from the Gemma 4 config: hidden 32, 2 layers + 1).
_CONFIG = dict(caption_channels=32, text_proj_in_factor=3, connector_rope_base_seq_len=4096, rope_theta=10000.0,
               rope_double_precision=True, causal_temporal_positioning=False, rope_type="split",
               video_connector_num_attention_heads=2, video_connector_attention_head_dim=16,
               video_connector_num_layers=2, video_connector_num_learnable_registers=128, video_gated_attn=True,
               audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8,
               audio_connector_num_layers=2, audio_connector_num_learnable_registers=128, audio_gated_attn=True,
               per_modality_projections=True, video_hidden_dim=32, audio_hidden_dim=16, proj_bias=True)  # fmt: skip


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return write_tiny_pack(tmp_path_factory.mktemp("pack"), "2.5", seed=SEED)


def _dataset(root: Path) -> Path:
    return write_captioned_stills(root, CAPTIONS)


def _cache(config: Path, checkpoint: Path, *flags: str) -> int:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu"]
    return run(main, [*argv, "--ltx_mode", "av", "--mixed_precision", "no", *flags])


def _cached(root: Path, stem: str) -> dict[str, torch.Tensor]:
    with safe_open(str(root / "cache" / f"{stem}_ltx2_te.safetensors"), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _independent(transformer: Path, text_encoder: Path, gemma_dir: Path, captions: list[str]):
    """ltx-core's path computed apart from ours: the whole Gemma4UnifiedForConditionalGeneration with <bos> and left
    padding to 1024 done by hand, then diffusers' LTX2TextConnectors loaded with the converter's renames from the
    connectors in the transformer file and the projections in the packed text-encoder file."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from transformers import AutoTokenizer, Gemma4UnifiedForConditionalGeneration

    state = {}
    for path in (transformer, text_encoder):
        for key, value in load_file(str(path)).items():
            key = key.removeprefix("model.diffusion_model.")
            if key.startswith(
                ("video_embeddings_connector", "audio_embeddings_connector", "text_embedding_projection")
            ):
                for old, new in _RENAMES.items():
                    key = key.replace(old, new)
                state[key] = value
    connectors = LTX2TextConnectors(**_CONFIG).eval()
    connectors.load_state_dict(state, strict=True)
    # bf16, Gemma's own dtype, in which the text cacher runs it whatever --mixed_precision says
    gemma = Gemma4UnifiedForConditionalGeneration.from_pretrained(gemma_dir, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    ids = torch.full((len(captions), 1024), PAD)
    mask = torch.zeros_like(ids)
    for row, caption in enumerate(captions):
        tokens = [BOS, *tokenizer(caption.strip(), add_special_tokens=True).input_ids][:1024]
        ids[row, -len(tokens) :], mask[row, -len(tokens) :] = torch.tensor(tokens), 1
    with torch.no_grad():
        states = gemma.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return connectors(torch.stack(states, dim=-1).flatten(2).float(), mask, padding_side="left")


def test_a_pack_and_a_unified_file_with_a_gemma4_directory_equal_an_independent_computation(pack, tmp_path):
    gemma_dir = write_tiny_gemma4(tmp_path / "gemma4-tiny-ltx", seed=SEED)
    unified = write_tiny_checkpoint(tmp_path / "unified", "2.5", seed=SEED)
    assert _cache(_dataset(tmp_path / "a"), pack.transformer) == 0  # the packed Gemma 4 is found beside it
    assert _cache(_dataset(tmp_path / "b"), unified, "--text_encoder", str(gemma_dir)) == 0
    stems = sorted(CAPTIONS)
    video, audio, mask = _independent(pack.transformer, pack.text_encoder, gemma_dir, [CAPTIONS[s] for s in stems])
    for index, stem in enumerate(stems):
        from_pack, from_unified = _cached(tmp_path / "a", stem), _cached(tmp_path / "b", stem)
        for key in ("video_prompt_embeds_float32", "audio_prompt_embeds_float32", "prompt_attention_mask"):
            assert torch.equal(from_pack[key], from_unified[key]), (stem, key)
        video_diff = (from_pack["video_prompt_embeds_float32"] - video[index]).abs().max().item()
        audio_diff = (from_pack["audio_prompt_embeds_float32"] - audio[index]).abs().max().item()
        assert video_diff <= 1e-5 and audio_diff <= 1e-5, (stem, video_diff, audio_diff)
        assert torch.equal(from_pack["prompt_attention_mask"], mask[index].long())


def test_mismatched_text_encoders_are_one_line(pack, tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    config = _dataset(tmp_path)
    stock = write_tiny_gemma4(tmp_path / "gemma-4-stock", gemma_version=None)
    unified = write_tiny_checkpoint(tmp_path / "unified", "2.5", seed=SEED)
    cases = [
        (unified, tiny_gemma_dir, r"is Gemma 3, but ltx2_tiny\.safetensors \(LTX-2\.5\) was trained with the text "
         r"encoder 'gemma4-12b-ltx-v1'; pass the LTX Gemma 4"),
        (unified, stock, r"gemma_version"),
        (pack.transformer, tiny_gemma_dir, r"is a Gemma directory, but the split transformer .* keeps its text "
         r"projections in the pack's packed text encoder"),
        (tiny_checkpoints["2.3"].path, pack.text_encoder, r"is Gemma 4 \(gemma4-12b-ltx-v1\), but ltx2_tiny\."
         r"safetensors \(LTX-2\.3\) was trained with Gemma 3; pass the Gemma 3 directory"),
    ]  # fmt: skip
    capsys.readouterr()
    for transformer, text_encoder, problem in cases:
        assert _cache(config, transformer, "--text_encoder", str(text_encoder)) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and re.search(problem, line), line
    assert not list(tmp_path.glob("cache/*_te.safetensors"))
