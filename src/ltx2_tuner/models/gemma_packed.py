"""The packed text-encoder file of LTX 2.5: Gemma 4 with its config, tokenizer and the LTX text projections in one
.safetensors file (`text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors`).

What it holds (reference ltx-2.5-and-conditioning-modes.md A3; ltx-core `text_encoders/gemma/gemma_assets.py`):
- metadata `gemma_config`: the Hugging Face config JSON (model_type "gemma4_unified", top-level `gemma_version`),
  and `format`;
- a uint8 tensor `tokenizer_json` (tokenizer.json's bytes; Comfy packs may use int8) and uint8 tensors
  `hf_asset__<file>` for the other small files (tokenizer_config.json, processor_config.json, ...); older or Comfy
  packs keep small JSON files as metadata strings under the file's own name instead;
- Gemma's weights under Comfy's flat names: `model.layers.*`, `model.embed_tokens.*`, `model.norm.*` for the
  language model, `vision_model.*`, `multi_modal_projector.*`, `audio_projector.*` for the vision and audio
  embedders (never read here); Hugging Face names `model.language_model.*` are accepted too. There is no `lm_head`:
  it is tied to the embedding table;
- the LTX projections `text_embedding_projection.{video,audio}_aggregate_embed.*`, which the connector code reads.
Only the header is parsed here; a tensor is read when it is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models.safetensors_io import SafetensorsHeader, read_header, read_tensors

GEMMA_CONFIG_KEY = "gemma_config"
TOKENIZER_TENSOR = "tokenizer_json"
ASSET_TENSOR_PREFIX = "hf_asset__"
PACKED_EXAMPLE = "text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors"
# Small files that older packs store as metadata strings (ltx-core's fallback list).
_METADATA_ASSETS = ("tokenizer_config.json", "processor_config.json", "chat_template.jinja", "generation_config.json")
# Where the language model's tensors live: Hugging Face names, then Comfy's flat ones. The vision and audio
# embedders (`model.embed_vision.*`, `model.embed_audio.*`, `vision_model.*`, ...) match neither.
_HF_LANGUAGE_MODEL = "model.language_model."
_COMFY_LANGUAGE_MODEL = ("model.layers.", "model.embed_tokens.", "model.norm.")


def language_model_name(name: str) -> str | None:
    """The name of a file's tensor in `Gemma4UnifiedTextModel` (`layers.0.mlp.up_proj.weight`), or None when it
    is not a language-model tensor."""
    if name.startswith(_HF_LANGUAGE_MODEL):
        return name.removeprefix(_HF_LANGUAGE_MODEL)
    if name.startswith(_COMFY_LANGUAGE_MODEL):
        return name.removeprefix("model.")
    return None


def language_model_tensors(headers: list[SafetensorsHeader]) -> dict[str, tuple[SafetensorsHeader, str]]:
    """Gemma4UnifiedTextModel name -> (the header of the file holding it, its name there), over all `headers`."""
    found: dict[str, tuple[SafetensorsHeader, str]] = {}
    for header in headers:
        for name in header.tensors:
            model_name = language_model_name(name)
            if model_name is None:
                continue
            if model_name in found:
                other, other_name = found[model_name]
                raise CheckpointError(
                    f"{header.path}: holds the Gemma tensor {name} twice (also as {other_name} in {other.path.name}); "
                    "keep one copy of the weights"
                )
            found[model_name] = (header, name)
    return found


def read_packed_header(path: Path) -> tuple[SafetensorsHeader, dict]:
    """The header of a packed text encoder and its Gemma config (a dict); one-line CheckpointError otherwise."""
    header = read_header(path)
    raw = header.metadata.get(GEMMA_CONFIG_KEY)
    if raw is None:
        if "config" in header.metadata or any(name.startswith("model.diffusion_model.") for name in header.tensors):
            raise CheckpointError(
                f"{path}: is an LTX model file, not a text encoder; pass the packed Gemma ({PACKED_EXAMPLE}) or a "
                "Gemma directory"
            )
        raise CheckpointError(
            f"{path}: has no `{GEMMA_CONFIG_KEY}` metadata, so it is not a packed Gemma text encoder; pass "
            f"{PACKED_EXAMPLE} or a Gemma directory"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its `{GEMMA_CONFIG_KEY}` metadata is not a JSON object; download it again")
    return header, config


def packed_asset(header: SafetensorsHeader, file_name: str) -> bytes | None:
    """The bytes of a small file packed as `hf_asset__<file_name>` (or as a metadata string), or None."""
    tensor_name = ASSET_TENSOR_PREFIX + file_name
    if tensor_name in header.tensors:
        return tensor_bytes(header, tensor_name)
    if file_name in _METADATA_ASSETS and file_name in header.metadata:
        return header.metadata[file_name].encode()
    return None


def packed_tokenizer_json(header: SafetensorsHeader) -> bytes | None:
    """tokenizer.json's bytes from the `tokenizer_json` tensor, or None when the file has none."""
    return tensor_bytes(header, TOKENIZER_TENSOR) if TOKENIZER_TENSOR in header.tensors else None


def tensor_bytes(header: SafetensorsHeader, name: str) -> bytes:
    """A byte tensor's content. One-byte dtypes are reinterpreted (Comfy's int8 packs); wider integer tensors hold
    one byte per element."""
    ((_, tensor),) = read_tensors(header, [name])
    if tensor.element_size() == 1:
        return tensor.view(torch.uint8).numpy().tobytes()
    return tensor.to(torch.uint8).numpy().tobytes()
