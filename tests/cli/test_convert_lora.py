"""`python -m ltx2_tuner.cli.convert_lora`: official <-> musubi round trips, refusals as one `error:` line, and the
library in networks/ that never imports the command line."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.convert_lora import main

LAYERS = (
    "transformer_blocks.0.attn1.to_q",
    "transformer_blocks.0.audio_to_video_attn.to_out.0",
    "transformer_blocks.1.video_to_audio_attn.to_gate_logits",
    "transformer_blocks.1.audio_ff.net.0.proj",
)


def _official_file(tmp_path, extra=None):
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in LAYERS:
        tensors[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(4, 16, generator=generator)
        tensors[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(8, 4, generator=generator)
    path = tmp_path / "official.safetensors"
    save_file(tensors | (extra or {}), str(path))
    return path


def test_official_musubi_official_round_trip_is_exact(tmp_path, capsys):
    official = _official_file(tmp_path)
    musubi, back = tmp_path / "musubi.safetensors", tmp_path / "back.safetensors"
    assert run(main, [str(official), str(musubi), "--to", "musubi"]) == 0
    assert f"wrote {musubi} (12 tensors, musubi format)" in capsys.readouterr().out
    converted = load_file(musubi)
    assert set(converted) == {
        f"lora_unet_model_{layer.replace('.', '_')}.{part}"
        for layer in LAYERS
        for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert all(float(converted[key]) == 4.0 for key in converted if key.endswith(".alpha"))  # alpha = rank
    assert run(main, [str(musubi), str(back)]) == 0
    original, restored = load_file(official), load_file(back)
    assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)


def test_refused_inputs_are_one_error_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    dora = _official_file(tmp_path, {"diffusion_model.transformer_blocks.0.attn1.to_q.dora_scale": torch.ones(8, 1)})
    oft = tmp_path / "oft.safetensors"
    save_file({"diffusion_model.transformer_blocks.0.attn1.to_q.oft_blocks": torch.ones(2, 4, 4)}, str(oft))
    outside = tmp_path / "outside.safetensors"
    save_file(
        {
            "text_embedding_projection.aggregate_embed.lora_A.weight": torch.ones(4, 16),
            "text_embedding_projection.aggregate_embed.lora_B.weight": torch.ones(8, 4),
        },
        str(outside),
    )
    for path, to, expected in (
        (bad, "official", "not a readable LoRA safetensors file"),
        (dora, "musubi", "needs the base weights; pass the base model checkpoint (--base)"),
        (oft, "official", "OFT (orthogonal blocks) is not supported (LoRA, DoRA, LoKr and LoHa are)"),
        (outside, "musubi", "layer text_embedding_projection.aggregate_embed has no musubi name"),
    ):
        output = tmp_path / f"out-{path.stem}.safetensors"
        assert run(main, [str(path), str(output), "--to", to]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: ") and expected in err and err.count("\n") == 1
        assert not output.exists()


def _python(*args, cwd):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_networks_does_not_import_the_command_line_and_the_module_runs(tmp_path):
    imported = _python(
        "-c",
        "import sys, ltx2_tuner.networks.convert_lora, ltx2_tuner.networks.lora_ltx2; "
        "print(sorted(m for m in sys.modules if m.startswith('ltx2_tuner.cli')))",
        cwd=tmp_path,
    )
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr

    official = _official_file(tmp_path)
    converted = _python("-m", "ltx2_tuner.cli.convert_lora", str(official), "m.safetensors", "--to", "musubi",
                        cwd=tmp_path)  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "m.safetensors").exists()


def _lycoris_file(tmp_path, algo):
    """A two-layer official LoKr (w1 full, w2 a factored pair) or LoHa file of random factors, no alpha."""
    generator = torch.Generator().manual_seed(1)
    shapes = {
        "lokr": {"lokr_w1": (4, 4), "lokr_w2_a": (4, 2), "lokr_w2_b": (2, 4)},
        "loha": {"hada_w1_a": (16, 2), "hada_w1_b": (2, 16), "hada_w2_a": (16, 2), "hada_w2_b": (2, 16)},
    }[algo]
    tensors = {
        f"diffusion_model.{layer}.{name}": torch.randn(shape, generator=generator)
        for layer in LAYERS[:2]
        for name, shape in shapes.items()
    }
    path = tmp_path / f"{algo}.safetensors"
    save_file(tensors, str(path))
    return path, shapes


def test_lokr_and_loha_convert_to_musubi_names_and_back_exactly(tmp_path):
    for algo in ("lokr", "loha"):
        official, shapes = _lycoris_file(tmp_path, algo)
        musubi, back = tmp_path / f"{algo}-musubi.safetensors", tmp_path / f"{algo}-back.safetensors"
        assert run(main, [str(official), str(musubi), "--to", "musubi"]) == 0
        converted = load_file(musubi)
        stems = [f"lora_unet_model_{layer.replace('.', '_')}" for layer in LAYERS[:2]]
        assert set(converted) == {f"{stem}.{name}" for stem in stems for name in (*shapes, "alpha")}
        assert all(float(converted[f"{stem}.alpha"]) == 2.0 for stem in stems)  # alpha = rank: scale 1
        assert run(main, [str(musubi), str(back)]) == 0
        original, restored = load_file(official), load_file(back)
        assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)


def test_dora_converts_with_the_base_checkpoint_and_back(tiny_checkpoints, tmp_path, capsys):
    layer = "diffusion_model.transformer_blocks.0.attn1.to_q"
    generator = torch.Generator().manual_seed(2)
    official = tmp_path / "dora.safetensors"
    tensors = {
        f"{layer}.lora_A.weight": torch.randn(4, 32, generator=generator) * 0.1,
        f"{layer}.lora_B.weight": torch.randn(32, 4, generator=generator) * 0.1,
        f"{layer}.dora_scale": torch.rand(32, 1, generator=generator) + 0.5,
    }
    save_file(tensors, str(official))
    musubi, back = tmp_path / "musubi.safetensors", tmp_path / "back.safetensors"
    base = str(tiny_checkpoints["2.3"].path)
    assert run(main, [str(official), str(musubi), "--to", "musubi", "--base", base]) == 0
    stem = "lora_unet_model_transformer_blocks_0_attn1_to_q"
    converted = load_file(musubi)
    assert set(converted) == {f"{stem}.{name}" for name in ("lora_down.weight", "lora_up.weight", "alpha",
                                                            "lora_magnitude_vector.weight")}  # fmt: skip
    assert converted[f"{stem}.lora_magnitude_vector.weight"].shape == (32,)
    assert run(main, [str(musubi), str(back), "--base", base]) == 0
    restored = load_file(back)
    assert restored.keys() == tensors.keys()
    for key, tensor in tensors.items():
        torch.testing.assert_close(restored[key], tensor, rtol=0, atol=1e-6)
    capsys.readouterr()
