"""Bad input gets one line naming the file, the problem and the fix; the CLI prints it without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import load_component, read_checkpoint_info
from ltx2_tuner.models.safetensors_io import read_header


def _variant(tiny, tmp_path, name, keep=lambda key: True, metadata_edit=None, drop_metadata=False):
    """A copy of the tiny checkpoint with some tensors dropped and/or its metadata changed."""
    header = read_header(tiny.path)
    tensors = {k: v for k, v in load_file(str(tiny.path)).items() if keep(k)}
    metadata = None if drop_metadata else dict(header.metadata)
    if metadata_edit:
        metadata_edit(metadata)
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def _edit_config(edit):
    def apply(metadata):
        config = json.loads(metadata["config"])
        edit(config, metadata)
        metadata["config"] = json.dumps(config)

    return apply


def _cases(tiny, tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a checkpoint\n" * 10)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny.path.read_bytes()[: tiny.path.stat().st_size // 2])
    diffusers_file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.modules["transformer"].state_dict().items()}, str(diffusers_file))
    diffusers_dir = tmp_path / "LTX-2-diffusers"
    (diffusers_dir / "transformer").mkdir(parents=True)
    (diffusers_dir / "model_index.json").write_text("{}")
    return [
        (text, "not a safetensors file"),
        (truncated, "truncated"),
        (_variant(tiny, tmp_path, "no_config.safetensors", drop_metadata=True), "no `config` metadata"),
        (diffusers_file, "diffusers-format component file"),
        (diffusers_dir, "diffusers-format model directory"),
        (
            _variant(tiny, tmp_path, "comfy_dit.safetensors", lambda k: k.startswith("model."), drop_metadata=True),
            "split/ComfyUI component file",
        ),
        (
            _variant(tiny, tmp_path, "ltx26.safetensors", metadata_edit=lambda m: m.update(model_version="2.6.0")),
            "newer than this ltx2-tuner knows",
        ),
        (
            _variant(
                tiny,
                tmp_path,
                "vae_without_tensors.safetensors",
                lambda k: k.startswith("model."),
                _edit_config(lambda c, m: [c.pop(s) for s in ("transformer", "audio_vae", "vocoder")]),
            ),
            "split/ComfyUI component file",
        ),
        (
            _variant(
                tiny,
                tmp_path,
                "ltxv09.safetensors",
                metadata_edit=_edit_config(
                    lambda c, m: [c["transformer"].pop("audio_num_attention_heads"), m.pop("model_version")]
                ),
            ),
            "LTX-Video 0.9",
        ),
        (tmp_path / "missing.safetensors", "file not found"),
    ]


def test_each_bad_input_gets_a_clear_error(tiny, tmp_path):
    for path, problem in _cases(tiny, tmp_path):
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint_info(path)
        message = str(caught.value)
        assert str(path) in message and problem in message, message
        assert "\n" not in message
        assert "pass" in message or "download" in message or "use" in message or "check" in message  # the fix


def test_missing_component_is_named_with_its_keys(tiny, tmp_path):
    path = _variant(tiny, tmp_path, "no_vocoder.safetensors", lambda k: not k.startswith("vocoder."))
    info = read_checkpoint_info(path)
    assert "vocoder" not in info.components
    load_component(info, "audio_vae")  # the rest still loads
    with pytest.raises(CheckpointError, match=r"has no vocoder weights \(vocoder\.\*\)"):
        load_component(info, "vocoder")
    path = _variant(
        tiny,
        tmp_path,
        "no_connectors.safetensors",
        lambda k: "embeddings_connector" not in k and not k.startswith("text_embedding_projection"),
    )
    with pytest.raises(CheckpointError, match="video_embeddings_connector"):
        load_component(path, "text_connectors")


def test_metadata_that_contradicts_the_weights(tiny, tmp_path):
    path = _variant(
        tiny,
        tmp_path,
        "wrong_layers.safetensors",
        metadata_edit=_edit_config(lambda c, m: c["transformer"].update(num_layers=3)),
    )
    with pytest.raises(CheckpointError, match="incomplete"):
        load_component(path, "transformer")
    path = _variant(
        tiny,
        tmp_path,
        "wrong_width.safetensors",
        metadata_edit=_edit_config(lambda c, m: c["transformer"].update(attention_head_dim=8)),
    )
    with pytest.raises(CheckpointError, match="shape"):
        load_component(path, "transformer")


@pytest.mark.parametrize(("model_version", "family"), [("2.3.rc1", "2.3"), ("2.4-rc2", "2.5"), ("2.5", "2.5")])
def test_pre_release_version_strings(tiny_checkpoints, tmp_path, model_version, family):
    """As ltx-core: from 2.4 on (pre-release builds included) the version string names the LTX 2.5 generation."""
    path = _variant(
        tiny_checkpoints["2.3"],
        tmp_path,
        "v.safetensors",
        metadata_edit=lambda m: m.update(model_version=model_version),
    )
    assert read_checkpoint_info(path).version == family


def test_a_2_5_version_string_on_a_2_0_transformer_is_refused(tiny_checkpoints, tmp_path):
    path = _variant(
        tiny_checkpoints["2.0"], tmp_path, "v.safetensors", metadata_edit=lambda m: m.update(model_version="2.5.0")
    )
    with pytest.raises(CheckpointError, match=r"LTX 2\.5\) but its `config` describes an LTX-2\.0 transformer"):
        read_checkpoint_info(path)


def test_a_transformer_only_file_is_a_split_pack_transformer(tiny, tmp_path):
    """Today's ComfyUI-style transformer file with its `config` (transformer section only) is accepted; it holds
    the transformer and the connectors, nothing else."""
    path = _variant(
        tiny,
        tmp_path,
        "split.safetensors",
        lambda k: k.startswith("model."),
        _edit_config(lambda c, m: [c.pop(s) for s in ("vae", "audio_vae", "vocoder")]),
    )
    info = read_checkpoint_info(path)
    assert (info.kind, info.version) == ("transformer", tiny.version)
    assert info.components == ("transformer", "text_connectors")
    with pytest.raises(CheckpointError, match="has no video vae weights"):
        info.require("video_vae")


def test_truncated_tensor_data_is_reported_on_load(tiny, tmp_path):
    data = bytearray(tiny.path.read_bytes())
    path = tmp_path / "short.safetensors"
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint_info(path)


def test_cli_prints_one_line_for_each_bad_input(tiny_checkpoints, tmp_path, capsys):
    from ltx2_tuner.cli import inspect_checkpoint
    from ltx2_tuner.cli._common import run

    for path, problem in _cases(tiny_checkpoints["2.3"], tmp_path):
        assert run(inspect_checkpoint.main, [str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and problem in err, err


@pytest.mark.parametrize("case", [0, 3])  # not safetensors; diffusers-format file
def test_cli_process_exits_without_traceback(tiny_checkpoints, tmp_path, case):
    path, problem = _cases(tiny_checkpoints["2.3"], tmp_path)[case]
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_tuner.cli.inspect_checkpoint", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], result.stderr


def test_cast_does_not_touch_integer_tensors(tiny):
    info = read_checkpoint_info(tiny.path)
    from ltx2_tuner.models.safetensors_io import read_tensors

    ((_, tensor),) = read_tensors(info.header, ["vae.per_channel_statistics.channel"], dtype=torch.bfloat16)
    assert tensor.dtype == torch.int64


def test_inspect_checkpoint_names_the_role_of_every_file_of_a_split_pack(tmp_path, capsys):
    from ltx2_tuner.cli import inspect_checkpoint
    from ltx2_tuner.cli._common import run
    from ltx2_tuner.testing.tiny_pack import write_tiny_pack

    pack = write_tiny_pack(tmp_path / "pack").root
    roles = {}
    for path in sorted(pack.rglob("*.safetensors")):
        assert run(inspect_checkpoint.main, [str(path)]) == 0
        roles[path.relative_to(pack).parts[0] + "/" + path.name] = capsys.readouterr().out.splitlines()[0]
    by_folder = {name.split("/")[0]: [line for key, line in roles.items() if key.startswith(name.split("/")[0])]
                 for name in roles}  # fmt: skip
    assert all("split pack: transformer" in line for line in by_folder["diffusion_models"])
    assert all("split pack: text encoder, packed gemma4" in line for line in by_folder["text_encoders"])
    vae = " ".join(by_folder["vae"])
    assert "split pack: video VAE" in vae and "split pack: audio VAE + vocoder" in vae
