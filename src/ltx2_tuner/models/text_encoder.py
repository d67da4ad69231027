"""Gemma 3, the LTX-2 text encoder: checking the directory, loading the language model, tokenizing, packing.

LTX-2 reads every hidden state of Gemma 3 12B (the embeddings and the output of each of its 48 layers) for a prompt
left-padded to exactly 1024 tokens, packed as `torch.stack(hidden_states, -1).flatten(2)`: [B, 1024, 3840 x 49].
Only the language model is loaded (`Gemma3TextModel`): the vision tower (~0.4 B parameters) is never read from
disk and there is no LM head, so no [B, 1024, 262144] logits either. Its hidden states are bit-identical to those of
the full `Gemma3ForConditionalGeneration` that diffusers' LTX2Pipeline runs (tests/models/test_text_encoder.py).
`load_gemma(..., offload=True)` keeps the decoder layers in host memory and streams them to the GPU one at a time:
the same features bit for bit with ~3.7 GB of Gemma on the GPU instead of ~24 GB (models/gemma_memory.py).
Facts: ../shared/reference/official-ltx-trainer.md §4, diffusers-ltx2-and-peers.md §5 "Text path".
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
# Language-model tensor names in the files transformers writes or reads: `language_model.model.*` (the release and
# transformers 5 saves), `model.language_model.*` (transformers 4.5x saves), `model.*` (text-only Gemma3ForCausalLM).
_LANGUAGE_MODEL_PREFIX = r"^(?:model\.language_model|language_model\.model|model)\."
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_IDENTITY_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class GemmaInfo:
    """What `inspect_gemma` found in a Gemma directory, without loading weights."""

    root: Path
    hidden_size: int
    num_layers: int
    identity: str  # changes when the config, tokenizer or weight files change (cache fingerprints)

    @property
    def num_features(self) -> int:
        """Width of the packed hidden states: hidden size x (layers + embeddings)."""
        return self.hidden_size * (self.num_layers + 1)


def inspect_gemma(gemma_root: str | Path) -> GemmaInfo:
    """Check that `gemma_root` is a Gemma 3 directory and read its sizes; one-line CheckpointError otherwise."""
    root = Path(gemma_root)
    if not root.exists():
        raise CheckpointError(f"{root}: Gemma directory not found; pass {_NEEDED}")
    if not root.is_dir():
        raise CheckpointError(f"{root}: is a file, not a directory; pass {_NEEDED}")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{root}: has no config.json, so it is not a Hugging Face model directory; pass {_NEEDED}"
        )
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config_path}: is not valid JSON; download the Gemma 3 directory again") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in _GEMMA3_TYPES:
        architectures = ", ".join(raw.get("architectures") or []) if isinstance(raw, dict) else ""
        found = f"model_type {model_type!r}" + (f" ({architectures})" if architectures else "")
        raise CheckpointError(f"{root}: config.json says {found}, not Gemma 3 (model_type 'gemma3'); pass {_NEEDED}")
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
    )


def _identity(root: Path, weights: list[Path]) -> str:
    # Cheap on a 24 GB directory: hash the small JSON files, and only the size and mtime of weights and tokenizer.
    digest = hashlib.sha256()
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
        f"{caption_channels} x {layer_factor} = {caption_channels * layer_factor} (a Gemma 3 with hidden size "
        f"{caption_channels} and {layer_factor - 1} layers: gemma-3-12b-it for LTX-2 and LTX-2.3); pass that one"
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


def gemma_sizes(gemma: GemmaInfo):
    """The `GemmaSizes` (hidden, layers, intermediate, vocab, heads) of a Gemma directory, from its config."""
    from transformers import AutoConfig

    from ltx2_tuner.models.gemma_memory import GemmaSizes

    return GemmaSizes.from_config(AutoConfig.from_pretrained(gemma.root, local_files_only=True))


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

    As LTX2Pipeline and ltx-core: each caption `.strip()`ped, no chat template, truncated to `max_tokens` (the end
    is cut, <bos> stays), Gemma's own <bos>, no <eos>.
    """
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(
        [caption.strip() for caption in captions],
        padding="max_length",
        max_length=max_tokens,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    ids, mask = batch.input_ids, batch.attention_mask.long()
    bos = tokenizer.bos_token_id
    first_real = mask.argmax(dim=1)  # left padding: the first 1
    if bos is not None and not bool((ids[torch.arange(len(ids)), first_real] == bos).all()):
        raise CheckpointError(
            f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: the tokenizer does not start prompts with <bos>, "
            "unlike Gemma 3's; use the tokenizer files of the original Gemma 3 release"
        )
    return ids, mask


def pack_hidden_states(hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """(layers + 1) x [B, T, H] -> [B, T, H x (layers + 1)], the layer index fastest (LTX2Pipeline's packing)."""
    return torch.stack(tuple(hidden_states), dim=-1).flatten(2)


class GemmaTextEncoder:
    """Gemma 3's language model and tokenizer: captions -> packed hidden states and mask. See `load_gemma`."""

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
    """Gemma 3's language model (no vision tower, no LM head) and tokenizer from a local directory, offline.

    dtype: weight dtype (bfloat16, as Gemma was trained and as the official trainer runs it); with `quantization`
    ("8bit" / "4bit", bitsandbytes, CUDA only) the linear layers are quantized on load and compute in `dtype`.
    offload: load into host memory and keep the decoder layers there; only the embedding table and final norm move
    to `device`, and `stream_decoder_layers` copies each layer in just before it runs. Bit-identical features.
    """
    from transformers import AutoConfig, AutoTokenizer, Gemma3TextModel

    info = gemma_root if isinstance(gemma_root, GemmaInfo) else inspect_gemma(gemma_root)
    device = torch.device(device)
    check_offload(quantization, offload)
    check_quantization(quantization, device)
    config = AutoConfig.from_pretrained(info.root, local_files_only=True)
    text_config = getattr(config, "text_config", config)
    kwargs = {}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantization == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        )
    with _quiet_transformers():  # it reports every vision-tower tensor it skips as "unexpected"
        model, loading = Gemma3TextModel.from_pretrained(
            info.root,
            config=text_config,
            dtype=dtype,
            device_map={"": "cpu" if offload else str(device)},
            local_files_only=True,
            key_mapping={_LANGUAGE_MODEL_PREFIX: ""},
            output_loading_info=True,
            **kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(info.root, local_files_only=True)
    if loading["missing_keys"]:
        example = sorted(loading["missing_keys"])[0]
        raise CheckpointError(
            f"{info.root}: the weights lack {len(loading['missing_keys'])} Gemma 3 language-model tensors (e.g. "
            f"{example}); the download is incomplete or not Gemma 3, download it again"
        )
    model = model.eval().requires_grad_(False)
    layer_stream = stream_decoder_layers(model, device) if offload else None
    return GemmaTextEncoder(model, tokenizer, info, quantization, layer_stream)


def stream_decoder_layers(model, device: torch.device):
    """Run `model` (a Gemma3TextModel in host memory) on `device` with its decoder layers streamed; return the
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
