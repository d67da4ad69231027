"""Tiny Gemma text encoders that `transformers` loads offline: a Gemma 3 directory shaped like
google/gemma-3-12b-it (LTX-2, LTX-2.3), and LTX's Gemma 4 (LTX 2.5) as a directory or as the packed file.

Same classes and files as the real ones (`Gemma3ForConditionalGeneration` with a vision tower;
`Gemma4UnifiedForConditionalGeneration` with its vision and audio embedders; a Gemma BPE tokenizer with byte
fallback, `<pad>`=0, `<eos>`=1, `<bos>`=2), with tiny sizes. The tokenizer is built here, offline: one token per
character of a fixed alphabet, bytes for everything else. Gemma 3's adds <bos>; Gemma 4's does not, as the real
one (reference ltx-2.5-and-conditioning-modes.md A3). The packed file is laid out as ltx-core packs it
(models/gemma_packed.py): Comfy-flat names, tokenizer and small files as uint8 tensors, `gemma_config` metadata.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

# Gemma 3 12B and LTX's Gemma 4 12B: hidden 3840, 48 layers -> the LTX text projection takes 3840 x 49 inputs.
TINY_GEMMA_HIDDEN_SIZE = 32
TINY_GEMMA_NUM_LAYERS = 2
TINY_GEMMA4_HIDDEN_SIZE = TINY_GEMMA_HIDDEN_SIZE  # the same, so one set of tiny connectors fits both
TINY_GEMMA4_NUM_LAYERS = TINY_GEMMA_NUM_LAYERS
LTX_GEMMA4_VERSION = "gemma4-12b-ltx-v1"  # the `gemma_version` LTX 2.5 names
_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
# Gemma 4's multimodal placeholders: image/video/audio soft tokens and the audio boundaries.
_GEMMA4_TOKENS = ("<video_soft_token>", "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>")


def _vocab(extra_tokens: tuple[str, ...] = ()) -> dict[str, int]:
    tokens = list(_SPECIAL_TOKENS)
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]  # byte fallback, as in Gemma's tokenizer
    tokens += ["▁", *(c for c in string.ascii_letters + string.digits + string.punctuation)]
    tokens += [*_IMAGE_TOKENS, *extra_tokens]
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_gemma(out_dir: str | Path, seed: int = 0) -> Path:
    """Write config, weights and tokenizer of a tiny Gemma 3 to `out_dir` and return it."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GemmaTokenizer

    out_dir = Path(out_dir)
    vocab = _vocab()
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=False)
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = 1024 * 1024

    config = Gemma3Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": TINY_GEMMA_HIDDEN_SIZE,
            "intermediate_size": 64,
            "num_hidden_layers": TINY_GEMMA_NUM_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "max_position_embeddings": 2048,
            "sliding_window": 512,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 2,
        },
        mm_tokens_per_image=16,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Gemma3ForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_tiny_gemma4(out_dir: str | Path, seed: int = 0, gemma_version: str | None = LTX_GEMMA4_VERSION) -> Path:
    """Write a tiny LTX Gemma 4 directory (config.json with `gemma_version`, model.safetensors with
    `model.language_model.*`, tokenizer.json, tokenizer_config.json, processor_config.json) and return it.

    gemma_version: None writes a stock Gemma 4 config (no `gemma_version`), which the loaders refuse.
    """
    from transformers import Gemma4UnifiedForConditionalGeneration, GemmaTokenizer

    out_dir = Path(out_dir)
    vocab = _vocab(_GEMMA4_TOKENS)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=False, add_eos_token=False)
    tokenizer.model_max_length = 1024 * 1024
    model = _seeded(lambda: Gemma4UnifiedForConditionalGeneration(_tiny_gemma4_config(vocab, gemma_version)), seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor = {"processor_class": "Gemma4UnifiedProcessor", "image_seq_length": 4, "audio_seq_length": 4}
    (out_dir / "processor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")
    return out_dir


def write_tiny_gemma4_packed(
    path: str | Path,
    projections: dict[str, torch.Tensor],
    seed: int = 0,
    gemma_version: str | None = LTX_GEMMA4_VERSION,
) -> Path:
    """Write the tiny LTX Gemma 4 of `write_tiny_gemma4(seed=seed)` (the same weights) as a packed text-encoder
    file, with `projections` (the `text_embedding_projection.*` tensors) beside it; return `path`."""
    from safetensors.torch import load_file

    from ltx2_tuner.models.gemma_packed import ASSET_TENSOR_PREFIX, GEMMA_CONFIG_KEY, TOKENIZER_TENSOR
    from ltx2_tuner.models.safetensors_io import save_atomically

    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        root = write_tiny_gemma4(Path(scratch) / "gemma", seed=seed, gemma_version=gemma_version)
        tensors = {_comfy_name(name): tensor for name, tensor in load_file(root / "model.safetensors").items()}
        tensors[TOKENIZER_TENSOR] = _bytes_tensor((root / "tokenizer.json").read_bytes())
        for asset in sorted(root.glob("*.json")):
            if asset.name not in ("config.json", "tokenizer.json"):
                tensors[ASSET_TENSOR_PREFIX + asset.name] = _bytes_tensor(asset.read_bytes())
        config = (root / "config.json").read_text(encoding="utf-8")
    tensors.update(projections)
    save_atomically(tensors, path, {"format": "pt", GEMMA_CONFIG_KEY: config})
    return path


def _tiny_gemma4_config(vocab: dict[str, int], gemma_version: str | None):
    """Shaped like gemma4-12b-ltx-v1: a sliding layer then a full-attention one with wider heads, one K/V head and
    values = keys; tiny vision and audio embedders."""
    from transformers import Gemma4UnifiedConfig

    config = Gemma4UnifiedConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": TINY_GEMMA4_HIDDEN_SIZE,
            "intermediate_size": 64,
            "num_hidden_layers": TINY_GEMMA4_NUM_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "global_head_dim": 32,
            "num_global_key_value_heads": 1,
            "attention_k_eq_v": True,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 2048,
            "sliding_window": 512,  # under 1024, so the sliding layer's window shows in the features
        },
        vision_config={
            "patch_size": 2,
            "pooling_kernel_size": 2,
            "mm_embed_dim": 16,
            "mm_posemb_size": 8,
            "output_proj_dims": 16,
        },
        audio_config={"audio_embed_dim": 16},
        boi_token_id=vocab["<start_of_image>"],
        eoi_token_id=vocab["<end_of_image>"],
        image_token_id=vocab["<image_soft_token>"],
        video_token_id=vocab["<video_soft_token>"],
        boa_token_id=vocab["<start_of_audio>"],
        eoa_token_index=vocab["<end_of_audio>"],
        audio_token_id=vocab["<audio_soft_token>"],
    )
    if gemma_version is not None:
        config.gemma_version = gemma_version
    return config


def _seeded(build, seed: int):
    """`build()` under `seed`, leaving the global generator as it was; norm scales and the per-layer scalars,
    which initialize to 1, are drawn too, so that every tensor matters in tests."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build().eval()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name.endswith("layer_scalar") or ("norm" in name and name.endswith("weight")):
                    tensor.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def _comfy_name(name: str) -> str:
    """The Hugging Face name of a Gemma 4 tensor -> the Comfy-flat name of ltx-core's packs."""
    renames = (
        ("model.language_model.", "model."),
        ("model.vision_embedder.", "vision_model."),
        ("model.embed_vision.", "multi_modal_projector."),
        ("model.embed_audio.", "audio_projector."),
    )
    for old, new in renames:
        if name.startswith(old):
            return new + name.removeprefix(old)
    return name


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
