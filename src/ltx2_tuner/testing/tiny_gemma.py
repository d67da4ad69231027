"""A tiny Gemma 3 model directory that `transformers` loads offline, shaped like google/gemma-3-12b-it.

Same classes and files as the real one (`Gemma3ForConditionalGeneration` with a vision tower, a Gemma BPE
tokenizer with byte fallback, `<pad>`=0, `<eos>`=1, `<bos>`=2), with tiny sizes. The tokenizer is built here,
offline: one token per character of a fixed alphabet, bytes for everything else.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

# Gemma 3 12B: hidden 3840, 48 layers -> the LTX text projection takes 3840 x 49 inputs.
TINY_GEMMA_HIDDEN_SIZE = 32
TINY_GEMMA_NUM_LAYERS = 2
_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


def _vocab() -> dict[str, int]:
    tokens = list(_SPECIAL_TOKENS)
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]  # byte fallback, as in Gemma's tokenizer
    tokens += ["▁", *(c for c in string.ascii_letters + string.digits + string.punctuation)]
    tokens += list(_IMAGE_TOKENS)
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
