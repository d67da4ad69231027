"""Gemma with its decoder layers streamed from host memory: the same features and caches bit for bit, the layers'
weights used only in their turn and at most two on the device, the flag conflicts, and the memory estimate.

On the CPU the "device copies" are clones, so the streaming code runs as on CUDA. The host copies are poisoned (NaN)
and the real values come back only through `device_copy`: a layer computing with weights outside its turn would
turn the features into NaN.
"""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_text_encoder_outputs import main as cache_text_main
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import text_encoder as text_encoder_module
from ltx2_tuner.models.gemma_memory import GEMMA3_12B, estimate_text_encoding_memory, whole_gemma_fits
from ltx2_tuner.models.text_encoder import load_gemma, stream_decoder_layers
from ltx2_tuner.testing.demo_data import write_captioned_stills
from ltx2_tuner.testing.poisoned_host import PoisonedHost

CAPTIONS = ["A red fox runs through deep snow.", "x" * 1100, "a cat"]
GB = 10**9


def _dataset(workdir: Path) -> Path:
    """Three stills with captions (one longer than 1024 tokens) and a dataset config caching into workdir/cache."""
    return write_captioned_stills(workdir, {str(index): caption for index, caption in enumerate(CAPTIONS)})


def _cache(config: Path, checkpoint: Path, gemma: Path, *flags: str) -> int:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--gemma_root", str(gemma)]
    return run(cache_text_main, [*argv, "--device", "cpu", *flags])


class CountingHost(PoisonedHost):
    """Poisoned host copies, and the most layers' worth of device copies alive at once."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)
        self.most_layers_alive = 0
        self.tensors_per_layer = 0

    def check(self) -> None:
        """Record how many layers' worth of device copies are alive right now."""
        self.most_layers_alive = max(self.most_layers_alive, math.ceil(len(self.alive()) / self.tensors_per_layer))


NUM_LAYERS = 5  # the tiny Gemma's 2 layers, deepened with copies so that "at most 2 on the device" means something


def _deepen(model, num_layers: int) -> None:
    """Append copies of the model's decoder layers (and their attention types) up to `num_layers`."""
    layers, config = model.layers, model.config
    depth = len(layers)
    for index in range(depth, num_layers):
        copy = deepcopy(layers[index % depth])
        copy.self_attn.layer_idx = index
        layers.append(copy)
    config.layer_types = [config.layer_types[i % depth] for i in range(num_layers)]
    config.num_hidden_layers = num_layers


def test_load_gemma_offload_gives_the_plain_features(tiny_gemma_dir):
    plain = load_gemma(tiny_gemma_dir, dtype=torch.bfloat16)(CAPTIONS)
    encoder = load_gemma(tiny_gemma_dir, dtype=torch.bfloat16, offload=True)
    assert encoder.layer_stream is not None and encoder.device == torch.device("cpu")
    packed, mask = encoder(CAPTIONS)
    assert torch.equal(packed, plain[0]) and torch.equal(mask, plain[1])
    encoder.unload()
    assert encoder.layer_stream is None and encoder.model is None


def test_streamed_layers_are_used_only_in_their_turn_two_at_most(tiny_gemma_dir, monkeypatch):
    encoder = load_gemma(tiny_gemma_dir, dtype=torch.bfloat16)
    _deepen(encoder.model, NUM_LAYERS)
    plain_packed, plain_mask = encoder(CAPTIONS)
    assert plain_packed.shape[-1] == 32 * (NUM_LAYERS + 1)

    host = CountingHost(monkeypatch)
    encoder.layer_stream = stream_decoder_layers(encoder.model, torch.device("cpu"))
    layers = encoder.model.layers
    host.tensors_per_layer = len(list(layers[0].parameters()))
    for layer in layers:
        layer.register_forward_pre_hook(lambda module, args: host.check())
        layer.register_forward_hook(lambda module, args, out: host.check())
    assert all(torch.isnan(p).all() for p in layers.parameters())  # between calls: the (poisoned) host copies

    for _ in range(2):  # a second call streams again from the host copies
        packed, mask = encoder(CAPTIONS)
        assert torch.equal(mask, plain_mask)
        assert torch.equal(packed, plain_packed)  # bit for bit, so no poisoned weight was read either
    assert len(host.copies) == 2 * NUM_LAYERS * host.tensors_per_layer  # each layer copied once per call
    assert host.most_layers_alive == 2  # the running layer and the prefetched next one
    assert not host.alive()  # no layer stays on the device after a call
    assert encoder.model.embed_tokens.weight.isfinite().all()  # the embedding table is resident, not streamed


def test_offload_and_quantization_exclude_each_other(tiny_gemma_dir):
    with pytest.raises(ConfigError, match=r"--gemma_offload.*--gemma_load_in_8bit"):
        load_gemma(tiny_gemma_dir, quantization="8bit", offload=True)


@pytest.mark.parametrize("quantize", ["--gemma_load_in_8bit", "--gemma_load_in_4bit"])
def test_the_command_refuses_offload_with_quantization(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys, quantize):
    assert _cache(_dataset(tmp_path), tiny_checkpoints["2.3"].path, tiny_gemma_dir, "--gemma_offload", quantize) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --gemma_offload") and quantize in error and len(error.splitlines()) == 1


def _caches(directory) -> dict[str, dict[str, torch.Tensor]]:
    return {path.name: load_file(path) for path in sorted(directory.glob("*.safetensors"))}


def test_the_command_writes_the_same_caches_streamed_forced_or_automatic(
    tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys, monkeypatch
):
    checkpoint = tiny_checkpoints["2.3"].path
    runs = {}
    for name, flags in [("plain", ()), ("flag", ("--gemma_offload",)), ("auto", ())]:
        if name == "auto":  # as on a GPU too small for the whole model
            monkeypatch.setattr(text_encoder_module, "whole_gemma_misfit", lambda *args: "Gemma needs more")
        workdir = tmp_path / name
        workdir.mkdir()
        assert _cache(_dataset(workdir), checkpoint, tiny_gemma_dir, "--ltx_mode", "av", *flags) == 0
        runs[name] = (_caches(workdir / "cache"), capsys.readouterr().out)

    plain = runs["plain"][0]
    assert len(plain) == 4  # three captions and the empty prompt (caption dropout)
    for name in ("flag", "auto"):
        caches = runs[name][0]
        assert caches.keys() == plain.keys()
        for file, tensors in plain.items():
            assert caches[file].keys() == tensors.keys()
            assert all(torch.equal(caches[file][key], value) for key, value in tensors.items()), (name, file)
    assert "streaming its layers from host memory (--gemma_offload" in runs["auto"][1]
    assert "streaming" not in runs["plain"][1] + runs["flag"][1]


def test_automatic_streaming_follows_the_free_cuda_memory(tiny_gemma_dir, monkeypatch):
    info = text_encoder_module.inspect_gemma(tiny_gemma_dir)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (GB // 2, 16 * GB))
    reason = text_encoder_module.whole_gemma_misfit(info, cuda)
    assert reason is not None and "0.5 GB free" in reason
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 * GB, 16 * GB))
    assert text_encoder_module.whole_gemma_misfit(info, cuda) is None  # the tiny Gemma fits in 8 GB
    assert text_encoder_module.whole_gemma_misfit(info, torch.device("cpu")) is None


def test_the_estimate_counts_gemma_3_12b_weights_exactly():
    from transformers import Gemma3TextConfig, Gemma3TextModel

    s = GEMMA3_12B
    config = Gemma3TextConfig(
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_layers,
        intermediate_size=s.intermediate_size,
        vocab_size=s.vocab_size,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        head_dim=s.head_dim,
    )
    with torch.device("meta"):
        model = Gemma3TextModel(config)

    def params(module) -> int:
        return sum(p.numel() for p in module.parameters())

    whole = estimate_text_encoding_memory(GEMMA3_12B, streamed=False)
    streamed = estimate_text_encoding_memory(GEMMA3_12B, streamed=True)
    assert whole.gemma_weights == 2 * params(model) and whole.streamed_layers == 0
    assert streamed.gemma_weights == 2 * (params(model.embed_tokens) + params(model.norm))
    assert streamed.streamed_layers == 2 * 2 * params(model.layers[0])
    # The 49 hidden states [1, 1024, 3840] and their packed copy, in bf16.
    assert whole.gemma_activations == streamed.gemma_activations == 2 * 49 * 1024 * 3840 * 2


def test_streamed_gemma_3_12b_and_ltx_2_3_connectors_fit_16_gb():
    connectors_av = 2 * 3_170_000_000  # LTX-2.3's text connectors in bf16 (3.17 B parameters)
    streamed = estimate_text_encoding_memory(GEMMA3_12B, streamed=True, connector_bytes=connectors_av)
    whole = estimate_text_encoding_memory(GEMMA3_12B, streamed=False, connector_bytes=connectors_av)
    assert streamed.peak < 14 * GB < 16 * GB < whole.peak  # ~2 GB left for the CUDA context and fragmentation
    assert not whole_gemma_fits(GEMMA3_12B, free_bytes=16 * GB)
    assert whole_gemma_fits(GEMMA3_12B, free_bytes=40 * GB)
    four = estimate_text_encoding_memory(GEMMA3_12B, batch_size=4, streamed=True)
    assert four.gemma_activations == 4 * streamed.gemma_activations  # activations grow with the batch
