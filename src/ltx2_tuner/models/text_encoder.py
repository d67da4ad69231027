"""The LTX text encoder, Gemma: checking it, loading its language model, tokenizing, packing.

LTX-2 and LTX-2.3 read Gemma 3 12B (a Hugging Face directory), LTX 2.5 reads LTX's fine-tuned Gemma 4 12B
(`gemma4_unified`, a directory or the packed text-encoder file; models/gemma4.py). Either way LTX reads every hidden
state (the embeddings and the output of each of the 48 layers, the last after the final norm) for a prompt
left-padded to exactly 1024 tokens, packed as `torch.stack(hidden_states, -1).flatten(2)`: [B, 1024, 3840 x 49].
Only the language model is loaded (`Gemma3TextModel`, `Gemma4UnifiedTextModel`): the vision tower or embedders are
never read from disk and there is no LM head, so no [B, 1024, 262144] logits either. Its hidden states are
bit-identical to those of the full `Gemma3ForConditionalGeneration` that diffusers' LTX2Pipeline runs and of the
full `Gemma4UnifiedForConditionalGeneration` that ltx-core runs (tests/models/test_text_encoder.py, test_gemma4.py).
`load_gemma(..., offload=True)` keeps the decoder layers in host memory and streams them to the GPU one at a time:
the same features bit for bit with ~3.7 GB of Gemma on the GPU instead of ~24 GB (models/gemma_memory.py).
Facts: ../shared/reference/official-ltx-trainer.md §4, diffusers-ltx2-and-peers.md §5 "Text path",
ltx-2.5-and-conditioning-modes.md A3 (Gemma 4, tokenization).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ltx2_tuner.errors import CheckpointError, ConfigError

MAX_PROMPT_TOKENS = 1024  # LTX-2 always sees 1024 positions; the connectors' 128 registers tile them
QUANTIZATIONS = (None, "8bit", "4bit")
QUANTIZATION_FLAGS = {"8bit": "--gemma_load_in_8bit", "4bit": "--gemma_load_in_4bit"}
OFFLOAD_FLAG = "--gemma_offload"
_GEMMA3_TYPES = ("gemma3", "gemma3_text")  # the multimodal release (gemma-3-12b-it) or a text-only export
_NEEDED = "a local Gemma 3 directory such as gemma-3-12b-it (config.json, tokenizer, *.safetensors)"
_NEEDED_ANY = (
    "a local Gemma 3 directory such as gemma-3-12b-it for LTX-2 and LTX-2.3, or LTX's Gemma 4 for LTX 2.5 "
    "(text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors or a gemma4-12b-ltx-v1 directory)"
)
# Language-model tensor names in the files transformers writes or reads: `language_model.model.*` (the release and
# transformers 5 saves), `model.language_model.*` (transformers 4.5x saves), `model.*` (text-only Gemma3ForCausalLM).
_LANGUAGE_MODEL_PREFIX = r"^(?:model\.language_model|language_model\.model|model)\."
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_IDENTITY_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class GemmaInfo:
    """What `inspect_text_encoder` found in a Gemma directory or packed file, without loading weights."""

    root: Path  # the directory, or the packed file (whose header also holds the LTX text projections)
    hidden_size: int
    num_layers: int
    identity: str  # changes when the config, tokenizer or weight files change (cache fingerprints)
    family: str = "gemma3"  # "gemma3" (LTX-2, LTX-2.3) or "gemma4" (LTX 2.5)
    gemma_version: str | None = None  # the config's `gemma_version` (LTX's Gemma 4: "gemma4-12b-ltx-v1")
    layout: str = "directory"  # "directory" or "packed"

    @property
    def num_features(self) -> int:
        """Width of the packed hidden states: hidden size x (layers + embeddings)."""
        return self.hidden_size * (self.num_layers + 1)


def inspect_text_encoder(path: str | Path) -> GemmaInfo:
    """Check a text encoder (a Gemma 3 directory, a Gemma 4 directory or a packed Gemma 4 file) and read its sizes
    from configs and headers; one-line CheckpointError naming the file, the problem and the fix otherwise."""
    from ltx2_tuner.models import gemma4

    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: Gemma text encoder not found; pass {_NEEDED_ANY}")
    if root.is_file():
        return _gemma4_info(gemma4.open_gemma4(root))
    config_path = root / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{root}: has no config.json, so it is not a Hugging Face model directory; pass {_NEEDED_ANY}"
        )
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config_path}: is not valid JSON; download the Gemma directory again") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if gemma4.is_gemma4_type(model_type):
        return _gemma4_info(gemma4.open_gemma4(root))
    if model_type not in _GEMMA3_TYPES:
        architectures = ", ".join(raw.get("architectures") or []) if isinstance(raw, dict) else ""
        found = f"model_type {model_type!r}" + (f" ({architectures})" if architectures else "")
        raise CheckpointError(
            f"{root}: config.json says {found}, not Gemma 3 (model_type 'gemma3') or LTX's Gemma 4 "
            f"(model_type 'gemma4_unified'); pass {_NEEDED_ANY}"
        )
    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(f"{root}: has no tokenizer ({' or '.join(_TOKENIZER_FILES)}); pass {_NEEDED}")
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"{root}: has no *.safetensors weights; pass {_NEEDED}")

    from transformers import AutoConfig

    # Through transformers, because config.json may leave sizes at the class defaults.
    config = AutoConfig.from_pretrained(root, local_files_only=True)
    text_config = getattr(config, "text_config", config)
    return GemmaInfo(
        root=root,
        hidden_size=int(text_config.hidden_size),
        num_layers=int(text_config.num_hidden_layers),
        identity=_identity(root, weights),
        gemma_version=getattr(config, "gemma_version", None),
    )


inspect_gemma = inspect_text_encoder  # the name callers used when only Gemma 3 directories existed


def _gemma4_info(source) -> GemmaInfo:
    text_config = source.hf_config().text_config
    return GemmaInfo(
        root=source.path,
        hidden_size=int(text_config.hidden_size),
        num_layers=int(text_config.num_hidden_layers),
        identity=source.identity,
        family="gemma4",
        gemma_version=source.gemma_version,
        layout=source.layout,
    )


def _identity(root: Path, weights: list[Path]) -> str:
    # Cheap on a 24 GB directory: hash the small JSON files, and only the size and mtime of weights and tokenizer.
    digest = hashlib.sha256()  # unprefixed: Gemma 3 identities stay what they were (Gemma 4's are prefixed)
    for name in _IDENTITY_FILES:
        path = root / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    for path in [*weights, *(root / name for name in _TOKENIZER_FILES)]:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def check_gemma_fits(gemma: GemmaInfo, caption_channels: int, layer_factor: int, connectors_file: Path | str) -> None:
    """The connectors' projection takes caption_channels x layer_factor inputs; Gemma must produce exactly that."""
    if gemma.hidden_size == caption_channels and gemma.num_layers + 1 == layer_factor:
        return
    raise CheckpointError(
        f"{gemma.root}: this Gemma has hidden size {gemma.hidden_size} and {gemma.num_layers} layers "
        f"({gemma.num_features} features), but the text connectors in {connectors_file} take "
        f"{caption_channels} x {layer_factor} = {caption_channels * layer_factor} (a Gemma with hidden size "
        f"{caption_channels} and {layer_factor - 1} layers: gemma-3-12b-it for LTX-2 and LTX-2.3, LTX's Gemma 4 "
        "for LTX 2.5); pass that one"
    )


def check_quantization(quantization: str | None, device: torch.device) -> None:
    """8/4-bit Gemma needs bitsandbytes on a CUDA GPU; ConfigError naming the flag otherwise."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    if quantization is None:
        return
    flag = QUANTIZATION_FLAGS[quantization]
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(
            f"{flag} needs a CUDA GPU (bitsandbytes), but the device is {device}; drop {flag} or run on a GPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes")


def check_offload(quantization: str | None, offload: bool) -> None:
    """Streaming moves Gemma's bf16 weights as they are; bitsandbytes layers are not plain tensors to stream."""
    if offload and quantization is not None:
        flag = QUANTIZATION_FLAGS[quantization]
        raise ConfigError(
            f"{OFFLOAD_FLAG} streams the exact bf16 weights and {flag} quantizes them; pass one of the two "
            f"({OFFLOAD_FLAG} gives the same features as plain bf16 within a 16 GB GPU)"
        )


def gemma_config(gemma: GemmaInfo):
    """The transformers config of a text encoder (Gemma3Config or Gemma4UnifiedConfig; `text_config` inside)."""
    if gemma.family == "gemma4":
        from ltx2_tuner.models.gemma4 import open_gemma4

        return open_gemma4(gemma.root).hf_config()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(gemma.root, local_files_only=True)


def gemma_sizes(gemma: GemmaInfo):
    """The `GemmaSizes` (hidden, layers, intermediate, vocab, heads) of a text encoder, from its config."""
    from ltx2_tuner.models.gemma_memory import GemmaSizes

    return GemmaSizes.from_config(gemma_config(gemma))


def whole_gemma_misfit(gemma: GemmaInfo, device: torch.device, batch_size: int = 1) -> str | None:
    """Why the whole bf16 Gemma would not fit the CUDA device's free memory now, or None (it fits, or no CUDA)."""
    from ltx2_tuner.models.gemma_memory import estimate_text_encoding_memory, whole_gemma_fits

    if device.type != "cuda":
        return None
    free_bytes, _ = torch.cuda.mem_get_info(device)
    sizes = gemma_sizes(gemma)
    if whole_gemma_fits(sizes, free_bytes, batch_size):
        return None
    need = estimate_text_encoding_memory(sizes, batch_size, streamed=False).peak
    return f"Gemma in bf16 needs ~{need / 1e9:.1f} GB of GPU memory but {device} has {free_bytes / 1e9:.1f} GB free"


def tokenize(tokenizer, captions: list[str], max_tokens: int = MAX_PROMPT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, max_tokens] and 0/1 mask [B, max_tokens] (int64), left-padded, starting with <bos>.

    As ltx-core's Gemma tokenizer does for Gemma 3 and Gemma 4 alike: each caption `.strip()`ped, no chat template,
    truncated to `max_tokens` (the end is cut), <bos> prepended when the tokenizer did not add it (Gemma 4's does
    not; Gemma 3's does, as in LTX2Pipeline), no <eos>, left-padded with <pad> (<eos> when there is none).
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        raise CheckpointError(
            f"{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}: the tokenizer has no <bos> token, which "
            "every LTX prompt starts with; use the tokenizer files of the original Gemma release"
        )
    tokenizer.truncation_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(
        [caption.strip() for caption in captions], truncation=True, max_length=max_tokens, add_special_tokens=True
    ).input_ids
    ids = torch.full((len(captions), max_tokens), tokenizer.pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(captions), max_tokens), dtype=torch.int64)
    for row, tokens in enumerate(encoded):
        if not tokens or tokens[0] != bos:
            tokens = [bos, *tokens][:max_tokens]
        ids[row, max_tokens - len(tokens) :] = torch.tensor(tokens, dtype=torch.int64)
        mask[row, max_tokens - len(tokens) :] = 1
    return ids, mask


def pack_hidden_states(hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """(layers + 1) x [B, T, H] -> [B, T, H x (layers + 1)], the layer index fastest (LTX2Pipeline's packing)."""
    return torch.stack(tuple(hidden_states), dim=-1).flatten(2)


class GemmaTextEncoder:
    """Gemma's language model and tokenizer: captions -> packed hidden states and mask. See `load_gemma`."""

    def __init__(self, model, tokenizer, info: GemmaInfo, quantization: str | None = None, layer_stream=None):
        self.model, self.tokenizer, self.info, self.quantization = model, tokenizer, info, quantization
        self.layer_stream = layer_stream  # the BlockSwap streaming the decoder layers (`offload`), or None

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed hidden states [B, 1024, H x (layers + 1)] (Gemma's dtype) and mask [B, 1024], on Gemma's device."""
        if self.model is None:
            raise RuntimeError("this Gemma was unloaded")
        ids, mask = tokenize(self.tokenizer, captions)
        ids, mask = ids.to(self.device), mask.to(self.device)
        output = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return pack_hidden_states(output.hidden_states), mask

    def unload(self) -> None:
        """Drop the weights and return their memory (GPU caches included) before the next big step."""
        self.model = self.layer_stream = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            # Streaming pinned the layers' host copies; the pinned allocator caches them until told otherwise.
            empty_host_cache = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
            if empty_host_cache is not None:
                empty_host_cache()


def load_gemma(
    gemma_root: str | Path | GemmaInfo,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    quantization: str | None = None,
    offload: bool = False,
) -> GemmaTextEncoder:
    """Gemma's language model (no vision tower or embedders, no LM head) and tokenizer, offline: Gemma 3 from its
    directory, LTX's Gemma 4 from its directory or packed file.

    dtype: weight dtype (bfloat16, as Gemma was trained and as the official trainer runs it); with `quantization`
    ("8bit" / "4bit", bitsandbytes, CUDA only) the linear layers are quantized on load and compute in `dtype`.
    offload: load into host memory and keep the decoder layers there; only the embedding table and final norm move
    to `device`, and `stream_decoder_layers` copies each layer in just before it runs. Bit-identical features.
    """
    info = gemma_root if isinstance(gemma_root, GemmaInfo) else inspect_text_encoder(gemma_root)
    device = torch.device(device)
    check_offload(quantization, offload)
    check_quantization(quantization, device)
    device_map = {"": "cpu" if offload else str(device)}
    quantization_config = _quantization_config(quantization, dtype)
    load = _load_gemma4 if info.family == "gemma4" else _load_gemma3
    with _quiet_transformers():  # it reports every vision-tower tensor it skips as "unexpected"
        model, tokenizer = load(info, dtype, device_map, quantization_config)
    model = model.eval().requires_grad_(False)
    layer_stream = stream_decoder_layers(model, device) if offload else None
    return GemmaTextEncoder(model, tokenizer, info, quantization, layer_stream)


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _load_gemma3(info: GemmaInfo, dtype: torch.dtype, device_map: dict, quantization_config):
    from transformers import AutoConfig, AutoTokenizer, Gemma3TextModel

    config = AutoConfig.from_pretrained(info.root, local_files_only=True)
    kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
    model, loading = Gemma3TextModel.from_pretrained(
        info.root,
        config=getattr(config, "text_config", config),
        dtype=dtype,
        device_map=device_map,
        local_files_only=True,
        key_mapping={_LANGUAGE_MODEL_PREFIX: ""},
        output_loading_info=True,
        **kwargs,
    )
    if loading["missing_keys"]:
        example = sorted(loading["missing_keys"])[0]
        raise CheckpointError(
            f"{info.root}: the weights lack {len(loading['missing_keys'])} Gemma 3 language-model tensors (e.g. "
            f"{example}); the download is incomplete or not Gemma 3, download it again"
        )
    return model, AutoTokenizer.from_pretrained(info.root, local_files_only=True)


def _load_gemma4(info: GemmaInfo, dtype: torch.dtype, device_map: dict, quantization_config):
    from ltx2_tuner.models.gemma4 import build_gemma4_tokenizer, load_gemma4_language_model, open_gemma4

    source = open_gemma4(info.root)
    model = load_gemma4_language_model(source, dtype, device_map, quantization_config)
    return model, build_gemma4_tokenizer(source)


def stream_decoder_layers(model, device: torch.device):
    """Run `model` (a Gemma3TextModel or Gemma4UnifiedTextModel in host memory) on `device` with its decoder layers streamed; return the
    BlockSwap that streams them.

    Everything but `model.layers` (embedding table, final norm, rotary tables) moves to `device` and stays. The
    layers' weights get one host copy each (pinned on CUDA) and, through forward hooks, each layer is copied to the
    device just before it runs while the next one is prefetched on a side stream, and dropped once it has run: at
    most two layers are on the device. It is our transformer block swap with every block swapped; the computation
    is unchanged, so the output is bit-identical. On the CPU the "device copies" are clones: the same code runs.
    Not diffusers' group offloading, which is exact too: its block level pins a copy of every layer before it frees
    the originals (twice the host memory while loading) and copies the embedding table to the GPU and back per call.
    """
    from ltx2_tuner.models.block_swap import BlockSwap

    for name, child in model.named_children():
        if name != "layers":
            child.to(device)
    layers = model.layers
    stream = BlockSwap(layers, len(layers), device)
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda module, args, index=index: stream.before_forward(index))
        layer.register_forward_hook(lambda module, args, out, index=index: stream.after_forward(index, out))
    return stream


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
