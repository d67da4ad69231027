"""Gemma 4 (`gemma4_unified`), the LTX 2.5 text encoder: checking it in either layout, loading its language model
and its tokenizer.

Two layouts (reference ltx-2.5-and-conditioning-modes.md A3; ltx-core `text_encoders/gemma/gemma_assets.py`):
- a Hugging Face directory (e.g. gemma4-12b-ltx-v1/): config.json with model_type "gemma4_unified" and a top-level
  `gemma_version`, tokenizer.json, tokenizer_config.json, processor_config.json and model*.safetensors with the
  language model under `model.language_model.*`;
- the packed file (models/gemma_packed.py).
Only LTX's fine-tuned Gemma 4 is accepted, the one whose config names it (`gemma_version`, "gemma4-12b-ltx-v1" for
LTX 2.5): a stock Gemma 4 is no substitute (A1), and ltx-core accepts a dense `gemma4` only as a prompt enhancer
(A3, A6).

Only the language model is built (`Gemma4UnifiedTextModel`): no vision or audio embedder, no LM head. Its hidden
states are bit-identical to those of the full `Gemma4UnifiedForConditionalGeneration` that ltx-core runs
(tests/models/test_gemma4.py). Its tensors are read one at a time, in either layout, and handed to transformers'
own loading (`from_pretrained(state_dict=...)`), so bitsandbytes quantization and device placement work as for
Gemma 3, and the buffers no file holds (the rotary tables of both attention types, sized by their per-layer head
dims; the embedding scale) are initialized the Hugging Face way, not by hand (A8 caveat 1).
The tokenizer is built from tokenizer.json and the settings in tokenizer_config.json, for both layouts, as ltx-core
builds it. It does not add <bos>: `text_encoder.tokenize` prepends it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models.gemma_packed import (
    PACKED_EXAMPLE,
    TOKENIZER_TENSOR,
    language_model_tensors,
    packed_asset,
    packed_tokenizer_json,
    read_packed_header,
)
from ltx2_tuner.models.safetensors_io import SafetensorsHeader, read_header, read_tensors

GEMMA4_TYPE = "gemma4_unified"
STOCK_GEMMA4_TYPES = ("gemma4", "gemma4_text")  # dense Gemma 4 (gemma-4-E2B-it ...): ltx-core's prompt enhancer
NEEDED = f"LTX's Gemma 4 ({PACKED_EXAMPLE} or a gemma4-12b-ltx-v1 directory)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_IDENTITY_FILES = ("config.json", "tokenizer_config.json", "processor_config.json")
# tokenizer_config.json entries that describe how to load a tokenizer, not how it tokenizes (and would clash
# with the arguments of PreTrainedTokenizerFast, or are replaced by our own).
_LOADER_SETTINGS = frozenset(
    {
        "tokenizer_class",
        "auto_map",
        "model_max_length",
        "backend",
        "is_local",
        "local_files_only",
        "processor_class",
        "added_tokens_decoder",
        "name_or_path",
    }
)


def is_gemma4_type(model_type: object) -> bool:
    return model_type == GEMMA4_TYPE or model_type in STOCK_GEMMA4_TYPES


@dataclass(frozen=True)
class Gemma4Source:
    """The files of one Gemma 4 text encoder, checked from headers and small files only (see `open_gemma4`)."""

    path: Path  # the directory or the packed file
    layout: str  # "directory" or "packed"
    config: dict  # the Hugging Face config JSON, `gemma_version` included
    weights: dict[str, tuple[SafetensorsHeader, str]]  # Gemma4UnifiedTextModel name -> (its file's header, name)
    identity: str
    packed: SafetensorsHeader | None = None  # the packed file's header

    @property
    def gemma_version(self) -> str:
        return self.config["gemma_version"]

    def hf_config(self):
        """The transformers `Gemma4UnifiedConfig` (its `text_config` is the language model's)."""
        from huggingface_hub.errors import StrictDataclassError
        from transformers import Gemma4UnifiedConfig

        try:
            return Gemma4UnifiedConfig.from_dict(dict(self.config))
        except (TypeError, ValueError, StrictDataclassError) as error:
            reason = str(error).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"{self.path}: its Gemma 4 config does not load in transformers ({reason}); download it again"
            ) from None


def open_gemma4(path: str | Path) -> Gemma4Source:
    """Check a Gemma 4 text encoder (a directory or a packed file) from its headers; one-line CheckpointError."""
    path = Path(path)
    source = _open_packed(path) if path.is_file() else _open_directory(path)
    _check_language_model(source)
    return source


def check_gemma4_config(config: dict, where: Path) -> None:
    """The config is LTX's Gemma 4: model_type gemma4_unified and a `gemma_version` naming the fine-tune."""
    model_type = config.get("model_type")
    if model_type in STOCK_GEMMA4_TYPES:
        raise CheckpointError(
            f"{where}: is a stock dense Gemma 4 (model_type {model_type!r}, e.g. gemma-4-E2B-it), not the LTX text "
            f"encoder (model_type {GEMMA4_TYPE!r}); pass {NEEDED}"
        )
    if model_type != GEMMA4_TYPE:
        raise CheckpointError(
            f"{where}: holds model_type {model_type!r}, not LTX's Gemma 4 ({GEMMA4_TYPE!r}); pass {NEEDED}, or a "
            "Gemma 3 directory for LTX-2 and LTX-2.3"
        )
    if not isinstance(config.get("gemma_version"), str):
        raise CheckpointError(
            f"{where}: is a Gemma 4 without `gemma_version` in its config, i.e. a stock Gemma 4, not LTX's "
            f"fine-tuned one (gemma4-12b-ltx-v1); pass {NEEDED}"
        )


def _open_directory(root: Path) -> Gemma4Source:
    config_path = root / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config_path}: cannot be read as JSON; download the Gemma 4 directory again") from None
    check_gemma4_config(config, root)
    missing = [name for name in _TOKENIZER_FILES if not (root / name).is_file()]
    if missing:
        raise CheckpointError(f"{root}: has no tokenizer ({' and '.join(missing)} missing); pass {NEEDED}")
    shards = sorted(root.glob("model*.safetensors"))
    if not shards:
        raise CheckpointError(f"{root}: has no model*.safetensors weights; download the Gemma 4 directory again")
    weights = language_model_tensors([read_header(shard) for shard in shards])

    digest = hashlib.sha256(b"gemma4:directory")
    for name in _IDENTITY_FILES:
        file = root / name
        digest.update(name.encode() + (file.read_bytes() if file.is_file() else b"-"))
    for file in [*shards, root / "tokenizer.json"]:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Gemma4Source(root, "directory", config, weights, digest.hexdigest()[:16])


def _open_packed(path: Path) -> Gemma4Source:
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: is neither a Gemma directory nor a packed .safetensors text encoder; pass a Gemma directory "
            f"or {PACKED_EXAMPLE}"
        )
    header, config = read_packed_header(path)
    if config.get("model_type") in ("gemma3", "gemma3_text"):
        raise CheckpointError(
            f"{path}: is a packed Gemma 3, which is not supported; pass the Gemma 3 directory (gemma-3-12b-it)"
        )
    check_gemma4_config(config, path)
    if TOKENIZER_TENSOR not in header.tensors:
        raise CheckpointError(f"{path}: has no tokenizer (tensor `{TOKENIZER_TENSOR}`); pass {NEEDED}")
    if packed_asset(header, "tokenizer_config.json") is None:
        raise CheckpointError(f"{path}: has no tokenizer settings (`hf_asset__tokenizer_config.json`); pass {NEEDED}")
    # The header names every tensor with its offsets and holds the config; size and time catch rewritten bytes.
    stat = path.stat()
    digest = hashlib.sha256(b"gemma4:packed" + header.header_bytes)
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    weights = language_model_tensors([header])
    return Gemma4Source(path, "packed", config, weights, digest.hexdigest()[:16], packed=header)


def _check_language_model(source: Gemma4Source) -> None:
    """Cheap completeness check from the header: the embeddings, the final norm and every decoder layer."""
    if not source.weights:
        packed = source.layout == "packed"
        where = "model.layers.*, model.embed_tokens.*, model.norm.*" if packed else "model.language_model.*"
        raise CheckpointError(f"{source.path}: has no Gemma 4 language-model weights ({where}); pass {NEEDED}")
    num_layers = source.hf_config().text_config.num_hidden_layers
    needed = ["embed_tokens.weight", "norm.weight", *(f"layers.{i}.input_layernorm.weight" for i in range(num_layers))]
    missing = [name for name in needed if name not in source.weights]
    if missing:
        raise CheckpointError(
            f"{source.path}: lacks Gemma 4 language-model tensors (e.g. {missing[0]}, {len(missing)} of the "
            f"{len(needed)} checked); the download is incomplete, download it again"
        )


class _TensorOnDisk:
    """A tensor read from its file (one positioned read) when transformers first indexes it (`t[...]`), as it
    indexes safetensors' lazy slices in its own loading: only the few tensors its loader threads hold at a time are
    in host memory, never the whole model."""

    def __init__(self, header: SafetensorsHeader, name: str):
        self.header, self.name = header, name

    def __getitem__(self, index) -> torch.Tensor:
        ((_, tensor),) = read_tensors(self.header, [self.name])
        return tensor[index]


def load_gemma4_language_model(source: Gemma4Source, dtype: torch.dtype, device_map: dict, quantization_config=None):
    """`Gemma4UnifiedTextModel` with the weights of `source`, in `dtype`, placed by `device_map`, quantized on load
    when `quantization_config` (bitsandbytes) is given."""
    from transformers import Gemma4UnifiedTextModel

    state = {name: _TensorOnDisk(header, file_name) for name, (header, file_name) in source.weights.items()}
    kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
    model, loading = Gemma4UnifiedTextModel.from_pretrained(
        None,
        config=source.hf_config().text_config,
        state_dict=state,
        dtype=dtype,
        device_map=device_map,
        output_loading_info=True,
        **kwargs,
    )
    for kind, problem in (("missing_keys", "lacks"), ("unexpected_keys", "has extra"), ("mismatched_keys", "has")):
        names = sorted(str(name) for name in loading.get(kind) or ())
        if names:
            detail = "wrongly shaped " if kind == "mismatched_keys" else ""
            raise CheckpointError(
                f"{source.path}: {problem} {len(names)} {detail}Gemma 4 language-model tensors for its config (e.g. "
                f"{names[0]}); the weights and config disagree or the download is incomplete, download it again"
            )
    return model


def build_gemma4_tokenizer(source: Gemma4Source):
    """The tokenizer (a PreTrainedTokenizerFast) from tokenizer.json and tokenizer_config.json's settings."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if source.packed is not None:
        tokenizer_json = packed_tokenizer_json(source.packed)
        settings_bytes = packed_asset(source.packed, "tokenizer_config.json")
    else:
        tokenizer_json = (source.path / "tokenizer.json").read_bytes()
        settings_bytes = (source.path / "tokenizer_config.json").read_bytes()
    try:
        settings = json.loads(settings_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{source.path}: its tokenizer_config.json is not valid JSON; download it again"
        ) from None
    try:
        backend = Tokenizer.from_buffer(tokenizer_json)
    except Exception as error:  # tokenizers reports a bad tokenizer.json as a plain Exception
        raise CheckpointError(
            f"{source.path}: its tokenizer.json cannot be read ({error}); download it again"
        ) from None
    kwargs = {key: value for key, value in settings.items() if key not in _LOADER_SETTINGS}
    return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path=str(source.path), **kwargs)
