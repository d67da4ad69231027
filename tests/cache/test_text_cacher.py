"""ltx2_cache_text_encoder_outputs.py end to end on tiny models: values, keys, reuse, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltx2_tuner.cache.cached_dataset import _conditions, _load
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_text_encoder_outputs import main
from ltx2_tuner.roles import roles_for
from ltx2_tuner.testing.demo_data import write_captioned_stills

CAPTIONS = {"fox": "A red fox runs through deep snow, tracking shot.", "cat": "a cat", "sea": "waves " * 200}

# Reference data: the connector renames of diffusers' scripts/convert_ltx2_to_diffusers.py
# (LTX_2_0_CONNECTORS_KEYS_RENAME_DICT, LTX_2_3_CONNECTORS_KEYS_RENAME_DICT), applied in order with str.replace
# after `model.diffusion_model.` is stripped.
_RENAMES = {
    "2.0": {
        "connectors.": "",
        "video_embeddings_connector": "video_connector",
        "audio_embeddings_connector": "audio_connector",
        "transformer_1d_blocks": "transformer_blocks",
        "text_embedding_projection.aggregate_embed": "text_proj_in",
        "q_norm": "norm_q",
        "k_norm": "norm_k",
    },
    "2.3": {
        "connectors.": "",
        "video_embeddings_connector": "video_connector",
        "audio_embeddings_connector": "audio_connector",
        "transformer_1d_blocks": "transformer_blocks",
        "text_embedding_projection.audio_aggregate_embed": "audio_text_proj_in",
        "text_embedding_projection.video_aggregate_embed": "video_text_proj_in",
        "q_norm": "norm_q",
        "k_norm": "norm_k",
    },
}
# The tiny checkpoints' connectors, written out by hand: Gemma hidden 32 x (2 layers + 1); the real models'
# values are in the same script's get_ltx2_connectors_config.
_SHARED = dict(caption_channels=32, text_proj_in_factor=3, connector_rope_base_seq_len=4096, rope_theta=10000.0,
               rope_double_precision=True, causal_temporal_positioning=False, rope_type="split")  # fmt: skip
_CONFIGS = {
    "2.0": dict(_SHARED, video_connector_num_attention_heads=2, video_connector_attention_head_dim=16,
                video_connector_num_layers=1, video_connector_num_learnable_registers=128, video_gated_attn=False,
                audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=16,
                audio_connector_num_layers=1, audio_connector_num_learnable_registers=128, audio_gated_attn=False,
                per_modality_projections=False, proj_bias=False),
    "2.3": dict(_SHARED, video_connector_num_attention_heads=2, video_connector_attention_head_dim=16,
                video_connector_num_layers=2, video_connector_num_learnable_registers=128, video_gated_attn=True,
                audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8,
                audio_connector_num_layers=2, audio_connector_num_learnable_registers=128, audio_gated_attn=True,
                per_modality_projections=True, video_hidden_dim=32, audio_hidden_dim=16, proj_bias=True),
}  # fmt: skip
WIDTHS = {"2.0": (32, 32), "2.3": (32, 16)}  # (Dv, Da) of the tiny connectors


def _dataset(tmp_path: Path, captions: dict[str, str] = CAPTIONS) -> Path:
    return write_captioned_stills(tmp_path, captions)


def _cache(config: Path, checkpoint: Path, gemma: Path | None, *flags: str) -> int:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu", *flags]
    return run(main, argv + (["--gemma_root", str(gemma)] if gemma else []))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _independent(checkpoint: Path, version: str, gemma_dir: Path, captions: list[str]):
    """diffusers' own path: LTX2Pipeline's Gemma packing with the full Gemma3ForConditionalGeneration, then
    LTX2TextConnectors loaded from the official keys with the converter's renames."""
    from diffusers import LTX2Pipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    state = {}
    for key, value in load_file(checkpoint).items():
        key = key.removeprefix("model.diffusion_model.")
        if key.startswith(("video_embeddings_connector", "audio_embeddings_connector", "text_embedding_projection")):
            for old, new in _RENAMES[version].items():
                key = key.replace(old, new)
            state[key] = value
    connectors = LTX2TextConnectors(**_CONFIGS[version]).eval()
    connectors.load_state_dict(state, strict=True)

    gemma = Gemma3ForConditionalGeneration.from_pretrained(gemma_dir, dtype=torch.bfloat16, local_files_only=True)
    pipe = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(gemma_dir), text_encoder=gemma.eval())
    with torch.no_grad():
        packed, mask = LTX2Pipeline._get_gemma_prompt_embeds(
            pipe, captions, device=torch.device("cpu"), dtype=torch.float32
        )
        return connectors(packed, mask, padding_side="left")


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_embeddings_equal_an_independent_diffusers_computation(tmp_path, tiny_checkpoints, tiny_gemma_dir, version):
    checkpoint = tiny_checkpoints[version].path
    config = _dataset(tmp_path)
    assert _cache(config, checkpoint, tiny_gemma_dir, "--ltx_mode", "av", "--mixed_precision", "no",
                  "--batch_size", "2") == 0  # fmt: skip
    stems = sorted(CAPTIONS)
    video, audio, mask = _independent(checkpoint, version, tiny_gemma_dir, [CAPTIONS[s] for s in stems])
    for index, stem in enumerate(stems):
        cached = _tensors(tmp_path / "cache" / f"{stem}_ltx2_te.safetensors")
        video_diff = (cached["video_prompt_embeds_float32"] - video[index]).abs().max().item()
        audio_diff = (cached["audio_prompt_embeds_float32"] - audio[index]).abs().max().item()
        assert video_diff <= 1e-5 and audio_diff <= 1e-5, (stem, video_diff, audio_diff)
        assert torch.equal(cached["prompt_attention_mask"], mask[index].long())


@pytest.mark.parametrize("compat", [True, False])
@pytest.mark.parametrize("mode", ["video", "av"])
def test_keys_dtypes_shapes_and_the_trainer_reads_them(tmp_path, tiny_checkpoints, tiny_gemma_dir, mode, compat):
    config = _dataset(tmp_path, {"fox": CAPTIONS["fox"]})
    flags = ["--ltx_mode", mode] + ([] if compat else ["--no_compat_text_keys"])
    assert _cache(config, tiny_checkpoints["2.3"].path, tiny_gemma_dir, *flags) == 0
    tensors = _tensors(tmp_path / "cache" / "fox_ltx2_te.safetensors")

    dv, da = WIDTHS["2.3"]
    expected = {
        "video_prompt_embeds_bfloat16": ((1024, dv), torch.bfloat16),
        "prompt_attention_mask": ((1024,), torch.int64),
    }
    if mode == "av":
        expected["audio_prompt_embeds_bfloat16"] = ((1024, da), torch.bfloat16)
    if compat:
        expected["text_bfloat16"] = ((1024, dv + (da if mode == "av" else 0)), torch.bfloat16)
        expected["text_mask"] = ((1024,), torch.int64)
    assert {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} == expected
    assert tensors["prompt_attention_mask"].eq(1).all()  # the connectors' mask: registers fill the padding
    video = tensors["video_prompt_embeds_bfloat16"]
    if compat:
        joined = video if mode == "video" else torch.cat([video, tensors["audio_prompt_embeds_bfloat16"]], -1)
        assert torch.equal(tensors["text_bfloat16"], joined)

    conditions = _conditions(_load(tmp_path / "cache" / "fox_ltx2_te.safetensors"), roles_for(mode), dv)
    assert torch.equal(conditions["video_prompt_embeds"], video)
    assert conditions["prompt_attention_mask"].eq(1).all()
    if mode == "av":
        assert torch.equal(conditions["audio_prompt_embeds"], tensors["audio_prompt_embeds_bfloat16"])
    if compat:  # a file with only the compatibility keys reads the same
        only = tmp_path / "compat_only.safetensors"
        save_file({k: v for k, v in tensors.items() if k.startswith("text")}, only)
        legacy = _conditions(_load(only), roles_for(mode), dv)
        assert legacy.keys() == conditions.keys()
        assert all(torch.equal(legacy[k], conditions[k]) for k in conditions)


def test_skip_existing_reencodes_exactly_the_edited_caption(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    config = _dataset(tmp_path)
    checkpoint = tiny_checkpoints["2.0"].path
    assert _cache(config, checkpoint, tiny_gemma_dir) == 0
    files = {stem: tmp_path / "cache" / f"{stem}_ltx2_te.safetensors" for stem in CAPTIONS}
    for path in files.values():  # so a rewrite is visible in mtime_ns whatever the file system's resolution
        os.utime(path, ns=(1, 1))
    before = {stem: _tensors(path) for stem, path in files.items()}
    (tmp_path / "stills" / "cat.txt").write_text("a black cat", encoding="utf-8")
    ours, latents = (
        tmp_path / "cache" / ".cat_ltx2_te.safetensors.tmp99",
        tmp_path / "cache" / ".cat_ltx2.safetensors.tmp7",
    )
    ours.write_bytes(b"half a file")  # a killed run's leftover; the other is a latent caching run writing beside us
    latents.write_bytes(b"in progress")
    capsys.readouterr()

    assert _cache(config, checkpoint, tiny_gemma_dir, "--skip_existing") == 0
    assert "done: 1 encoded, 2 reused, 0 failed" in capsys.readouterr().out
    rewritten = [stem for stem, path in files.items() if path.stat().st_mtime_ns != 1]
    assert rewritten == ["cat"]
    assert not ours.exists() and latents.exists()
    assert not torch.equal(_tensors(files["cat"])["text_bfloat16"], before["cat"]["text_bfloat16"])

    # Other settings make every file stale; without --skip_existing everything is encoded again.
    assert _cache(config, checkpoint, tiny_gemma_dir, "--skip_existing", "--mixed_precision", "fp16") == 0
    assert "done: 3 encoded, 0 reused" in capsys.readouterr().out
    assert _cache(config, checkpoint, tiny_gemma_dir) == 0
    assert "done: 3 encoded, 0 reused" in capsys.readouterr().out


def test_gemma_root_is_needed_only_for_stale_caches(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    config = _dataset(tmp_path)
    checkpoint = tiny_checkpoints["2.3"].path
    assert _cache(config, checkpoint, tiny_gemma_dir) == 0
    capsys.readouterr()
    assert _cache(config, checkpoint, None, "--skip_existing") == 0
    assert "done: 0 encoded, 3 reused, 0 failed" in capsys.readouterr().out
    (tmp_path / "stills" / "fox.txt").write_text("a grey fox", encoding="utf-8")
    assert _cache(config, checkpoint, None, "--skip_existing") == 2
    assert capsys.readouterr().err.strip() == (
        "error: 1 caption(s) need encoding; pass --text_encoder with the Gemma 3 directory (e.g. gemma-3-12b-it)"
    )


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_missing_audio_connector_fails_av_only(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    full = tiny_checkpoints["2.3"].path
    with safe_open(str(full), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if "audio_embeddings_connector" not in k}  # noqa: SIM118
    partial = tmp_path / "no_audio_connector.safetensors"
    save_file(tensors, partial, metadata=metadata)
    config = _dataset(tmp_path, {"fox": CAPTIONS["fox"]})

    assert _cache(config, partial, tiny_gemma_dir, "--ltx_mode", "av") == 2
    err = _error(capsys)
    assert "model.diffusion_model.audio_embeddings_connector.*" in err and "--ltx2_text_encoder_checkpoint" in err
    assert not (tmp_path / "cache" / "fox_ltx2_te.safetensors").exists()

    assert _cache(config, partial, tiny_gemma_dir, "--ltx_mode", "video") == 0
    assert _cache(config, partial, tiny_gemma_dir, "--ltx_mode", "av", "--ltx2_text_encoder_checkpoint", str(full)) == 0
    assert "audio_prompt_embeds_bfloat16" in _tensors(tmp_path / "cache" / "fox_ltx2_te.safetensors")


def test_bad_gemma_root(tmp_path, tiny_checkpoints, capsys):
    config = _dataset(tmp_path, {"fox": CAPTIONS["fox"]})
    root = tmp_path / "llama"
    root.mkdir()
    assert _cache(config, tiny_checkpoints["2.0"].path, root) == 2
    assert "has no config.json" in _error(capsys)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert _cache(config, tiny_checkpoints["2.0"].path, root) == 2
    assert "config.json says model_type 'llama', not Gemma 3" in _error(capsys)


def test_missing_and_empty_captions(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    checkpoint = tiny_checkpoints["2.0"].path
    config = _dataset(tmp_path, {"fox": CAPTIONS["fox"], "owl": None})
    assert _cache(config, checkpoint, tiny_gemma_dir) == 2
    assert f"{tmp_path / 'stills' / 'owl.txt'}: caption file missing" in _error(capsys)
    assert not (tmp_path / "cache").exists()  # checked before anything was encoded

    (tmp_path / "stills" / "owl.txt").write_text("  \n", encoding="utf-8")
    assert _cache(config, checkpoint, tiny_gemma_dir) == 2
    err = _error(capsys)
    assert f"{tmp_path / 'stills' / 'owl.txt'}: caption is empty" in err and "--allow_empty_captions" in err
    assert _cache(config, checkpoint, tiny_gemma_dir, "--allow_empty_captions") == 0
    assert (tmp_path / "cache" / "owl_ltx2_te.safetensors").is_file()


def test_quantized_gemma_needs_cuda(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    config = _dataset(tmp_path, {"fox": CAPTIONS["fox"]})
    assert _cache(config, tiny_checkpoints["2.0"].path, tiny_gemma_dir, "--gemma_load_in_8bit") == 2
    assert "--gemma_load_in_8bit needs a CUDA GPU" in _error(capsys)
    assert _cache(config, tiny_checkpoints["2.0"].path, tiny_gemma_dir, "--gemma_load_in_8bit",
                  "--gemma_load_in_4bit") == 2  # fmt: skip
    assert "exclude each other" in _error(capsys)


def test_fp16_overflow_is_reported():
    from ltx2_tuner.cache.text_cacher import check_finite
    from ltx2_tuner.errors import ConfigError

    check_finite(torch.zeros(1, 4, 2), None, torch.float16)
    with pytest.raises(ConfigError, match=r"overflowed in float16.*--mixed_precision bf16 or no"):
        check_finite(torch.zeros(1, 4, 2), torch.tensor([[[float("inf")]]]), torch.float16)


def test_windows_1252_caption_is_encoded_with_a_warning_not_a_traceback(tmp_path, tiny_checkpoints, tiny_gemma_dir):
    from ltx2_tuner.cache.text_cacher import plan_text_jobs
    from ltx2_tuner.data.config import load_dataset_config

    config = _dataset(tmp_path, {"fox": CAPTIONS["fox"]})
    (tmp_path / "stills" / "cafe.png").write_bytes((tmp_path / "stills" / "fox.png").read_bytes())
    (tmp_path / "stills" / "cafe.txt").write_bytes("un café".encode("cp1252"))
    with pytest.warns(UserWarning, match=r"cafe\.txt: not UTF-8 .* read as Windows-1252: 'un café'"):
        jobs = plan_text_jobs(load_dataset_config(config))
    assert {job.item.stem: job.caption for job in jobs}["cafe"] == "un café"
    with pytest.warns(UserWarning, match="Windows-1252"):
        assert _cache(config, tiny_checkpoints["2.3"].path, tiny_gemma_dir) == 0
    assert (tmp_path / "cache" / "cafe_ltx2_te.safetensors").is_file()
