"""How much GPU memory text caching needs: Gemma (3, or LTX 2.5's Gemma 4) whole or streamed layer by layer,
plus the text connectors.

A pure estimate from Gemma's sizes, for the caching command's automatic choice and for benchmarks/docs. The parts
(bytes; B captions, T = 1024 tokens, H hidden, L layers, a = 2 bytes per bf16 activation):
- Gemma's weights on the device: all of them, or when streamed the embedding table and final norm plus two decoder
  layers (the one running and the one being prefetched; Gemma 4's full-attention layers are the larger ones).
- Gemma's activations: the L + 1 hidden states [B, T, H] are all kept for packing, and `torch.stack` makes a second
  copy of them ([B, T, H x (L + 1)]), so packing peaks at 2 (L + 1) B T H a. While a layer runs, the states so far
  plus its own temporaries (fp32 RMS norms, q/k/v, the MLP's [B, T, intermediate] tensors, [B, 1, T, T]
  attention masks).
- The connectors' weights (loaded first and kept), and their feature extraction: the packed features plus about
  three same-sized temporaries (squares, normed, masked) while the Gemma weights stay resident.
The CUDA context (~0.5 GB) and allocator fragmentation are not included.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

STREAMED_LAYERS_ON_DEVICE = 2  # the layer running and the next one, prefetched on a side stream
_CONNECTOR_TEMPORARIES = 3  # copies of the packed features alive at once during feature extraction (besides it)


@dataclass(frozen=True)
class GemmaSizes:
    """The sizes of a Gemma language model that its memory depends on.

    Gemma 3's decoder layers are all alike. Gemma 4's full-attention ("global") layers differ from its sliding ones:
    wider heads, fewer K/V heads, and with `attention_k_eq_v` no value projection (the keys serve as values).
    """

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_global_layers: int = 0  # Gemma 4's full-attention layers, sized by the three fields below
    global_head_dim: int = 0
    num_global_key_value_heads: int = 0
    global_values_are_keys: bool = False

    @classmethod
    def from_config(cls, config) -> GemmaSizes:
        """From a transformers Gemma 3 or Gemma 4 config (its text_config is used) or text config."""
        text = getattr(config, "text_config", config)
        values_are_keys = bool(getattr(text, "attention_k_eq_v", False))
        kinds = list(text.layer_types)

        def shape(index: int) -> tuple[int, int, bool]:  # head dim, K/V heads, whether values are keys
            layer = text.per_layer_config[index]  # Gemma 4 sizes some attributes per layer
            return layer.head_dim, layer.num_key_value_heads, values_are_keys and kinds[index] == "full_attention"

        shapes = [shape(index) for index in range(text.num_hidden_layers)]
        local = Counter(shapes).most_common(1)[0][0]
        others = [other for other in shapes if other != local]
        if local[2] or len(set(others)) > 1:
            raise ValueError(f"unsupported Gemma layer shapes {sorted(set(shapes))}")
        global_ = others[0] if others else (0, 0, False)
        return cls(
            hidden_size=int(text.hidden_size),
            num_layers=len(shapes),
            intermediate_size=int(text.intermediate_size),
            vocab_size=int(text.vocab_size),
            num_attention_heads=int(text.num_attention_heads),
            num_key_value_heads=int(local[1]),
            head_dim=int(local[0]),
            num_global_layers=len(others),
            global_head_dim=int(global_[0]),
            num_global_key_value_heads=int(global_[1]),
            global_values_are_keys=global_[2],
        )

    def _layer_params(self, head_dim: int, num_key_value_heads: int, with_values: bool) -> int:
        """One decoder layer: q/k/(v)/o projections, gated MLP, four RMS norms and the q/k norms."""
        h, d = self.hidden_size, head_dim
        attention = 2 * h * self.num_attention_heads * d + (2 if with_values else 1) * h * num_key_value_heads * d
        return attention + 3 * h * self.intermediate_size + 4 * h + 2 * d

    @property
    def local_layer_params(self) -> int:
        return self._layer_params(self.head_dim, self.num_key_value_heads, with_values=True)

    @property
    def global_layer_params(self) -> int:
        """A Gemma 4 full-attention layer (0 when every layer has the local shape)."""
        if not self.num_global_layers:
            return 0
        return self._layer_params(
            self.global_head_dim, self.num_global_key_value_heads, with_values=not self.global_values_are_keys
        )

    @property
    def layer_params(self) -> int:
        """The largest decoder layer (what a streamed layer in flight may take)."""
        return max(self.local_layer_params, self.global_layer_params)

    @property
    def decoder_params(self) -> int:
        """All decoder layers."""
        num_local = self.num_layers - self.num_global_layers
        return num_local * self.local_layer_params + self.num_global_layers * self.global_layer_params

    @property
    def max_head_dim(self) -> int:
        return max(self.head_dim, self.global_head_dim)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """The language model: embedding table, decoder layers, final norm (no vision tower, no LM head)."""
        return self.embedding_params + self.decoder_params + self.hidden_size


# google/gemma-3-12b-it's text config: what LTX-2 and LTX-2.3 read (3840 x 49 packed features).
GEMMA3_12B = GemmaSizes(
    hidden_size=3840,
    num_layers=48,
    intermediate_size=15360,
    vocab_size=262208,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
)

# The text config of LTX's Gemma 4 (gemma4-12b-ltx-v1, LTX 2.5; 3840 x 49 packed features, as Gemma 3 12B): 48
# layers, every sixth full attention with 512-wide heads, one K/V head and values = keys. Sizes as quoted from the
# pack's config by a third-party LTX 2.5 loader's tests [obs]; the estimate reads a real encoder's own config.
GEMMA4_12B = GemmaSizes(
    hidden_size=3840,
    num_layers=48,
    intermediate_size=15360,
    vocab_size=262144,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    num_global_layers=8,
    global_head_dim=512,
    num_global_key_value_heads=1,
    global_values_are_keys=True,
)


@dataclass(frozen=True)
class TextEncodingMemory:
    """Estimated peak GPU bytes of one caching batch, by part (see the module docstring)."""

    gemma_weights: int  # resident for the whole batch (streamed: embedding table + final norm)
    streamed_layers: int  # decoder layers in flight while streaming (0 when the whole model is resident)
    gemma_activations: int  # hidden states, their packed copy, a layer's temporaries
    connector_weights: int
    connector_activations: int  # packed features + feature-extraction temporaries

    @property
    def gemma_peak(self) -> int:
        """Gemma alone: its weights on the device plus the largest of its activations."""
        return self.gemma_weights + self.streamed_layers + self.gemma_activations

    @property
    def peak(self) -> int:
        """Gemma and the connectors: the connectors' weights plus the larger of the two stages."""
        connector_stage = self.gemma_weights + self.connector_activations
        return self.connector_weights + max(self.gemma_peak, connector_stage)


def gemma_activation_bytes(sizes: GemmaSizes, batch_size: int, tokens: int, dtype_bytes: int = 2) -> int:
    """Peak bytes of Gemma's forward activations with all hidden states kept and packed."""
    state = batch_size * tokens * sizes.hidden_size * dtype_bytes  # one hidden state [B, T, H]
    num_states = sizes.num_layers + 1
    packing = 2 * num_states * state  # the states and their stacked copy
    heads = sizes.num_attention_heads + 2 * sizes.num_key_value_heads + sizes.num_attention_heads  # q, k, v, out
    per_token = (
        3 * sizes.hidden_size * 4  # RMS norm in fp32: the upcast input, its square, the normed output
        + heads * sizes.max_head_dim * dtype_bytes
        + 4 * sizes.intermediate_size * dtype_bytes  # gate, up, act(gate), act(gate) * up
    )
    # bool [B, 1, T, T] for the full and the sliding-window layers, and the additive float copy that
    # scaled_dot_product_attention makes of the one in use
    masks = batch_size * tokens * tokens * (2 + dtype_bytes)
    layer = num_states * state + batch_size * tokens * per_token + masks
    return max(packing, layer)


def estimate_text_encoding_memory(
    sizes: GemmaSizes,
    batch_size: int = 1,
    tokens: int = 1024,
    streamed: bool = False,
    dtype_bytes: int = 2,
    connector_bytes: int = 0,
) -> TextEncodingMemory:
    """Peak GPU bytes of encoding `batch_size` captions of `tokens` tokens, by part.

    streamed: Gemma's decoder layers live in host memory and two at a time are on the device (`load_gemma(...,
    offload=True)`); otherwise the whole language model is. dtype_bytes: Gemma's weights and activations (bf16: 2).
    connector_bytes: the text connectors' weights on the device (0: Gemma alone).
    """
    resident = sizes.embedding_params + sizes.hidden_size
    layers = sizes.decoder_params
    if streamed:
        in_flight = min(STREAMED_LAYERS_ON_DEVICE, sizes.num_layers) * sizes.layer_params
    else:
        resident, in_flight = resident + layers, 0
    packed = batch_size * tokens * sizes.hidden_size * (sizes.num_layers + 1) * dtype_bytes
    return TextEncodingMemory(
        gemma_weights=resident * dtype_bytes,
        streamed_layers=in_flight * dtype_bytes,
        gemma_activations=gemma_activation_bytes(sizes, batch_size, tokens, dtype_bytes),
        connector_weights=connector_bytes,
        connector_activations=(1 + _CONNECTOR_TEMPORARIES) * packed,
    )


def whole_gemma_fits(
    sizes: GemmaSizes, free_bytes: int, batch_size: int = 1, tokens: int = 1024, margin_bytes: int = 2**30
) -> bool:
    """Whether the whole bf16 Gemma and its activations fit in `free_bytes` of device memory, with a margin for
    the allocator's fragmentation (the connectors are already loaded, so they are not in `free_bytes`)."""
    need = estimate_text_encoding_memory(sizes, batch_size, tokens, streamed=False)
    return need.peak + margin_bytes <= free_bytes
