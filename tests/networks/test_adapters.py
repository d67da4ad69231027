"""DoRA, LoKr and LoHa (`--network_args algo=...`): the files ComfyUI reads (its formulas re-implemented here from
its code), diffusers/PEFT loading them, training, --network_weights, resume, bf16/fp8 bases and block swap."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors import safe_open

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import load_transformer, load_transformer_backbone
from ltx2_tuner.models.fp8 import Fp8Storage
from ltx2_tuner.models.key_maps import TRANSFORMER_KEYS
from ltx2_tuner.networks import lora_ltx2 as lora
from ltx2_tuner.networks.lora_files import LoraFileError, read_lora_file
from ltx2_tuner.networks.lora_merge import merge_lora
from ltx2_tuner.testing.poisoned_host import PoisonedHost
from ltx2_tuner.testing.transformer_inputs import diffusers_forward, make_inputs

# (id, --network_args, rank): LoKr twice, with full factors (the tiny model's 32/128 features at rank 4) and with
# every factor a rank-1 pair (factor=4, decompose_both=true).
ALGOS = [
    pytest.param(["algo=dora"], 4, id="dora"),
    pytest.param(["algo=lokr"], 4, id="lokr"),
    pytest.param(["algo=lokr", "factor=4", "decompose_both=true"], 1, id="lokr_factored"),
    pytest.param(["algo=loha"], 4, id="loha"),
]
ALPHA = 8.0  # scale 2 (rank 4) or 8 (rank 1): an unfolded scale shows as a factor error
FILE_SUFFIXES = {  # per layer; LoKr at rank 4 factors w2 where it is large (the 128-feature feed-forward)
    "dora": ({"lora_A.weight", "lora_B.weight", "dora_scale"},),
    "lokr": ({"lokr_w1", "lokr_w2"}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
    "lokr_factored": ({"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"},),
    "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},),
}


def _network(path, args, rank, mode="video", seed=0, dtype=None, fp8=None, preset=None):
    """(model, spec, params) with the adapter's parameters moved off their no-op init."""
    model = load_transformer(path, mode=mode, dtype=dtype, fp8=fp8)
    args = [*args, *([f"preset={preset}"] if preset else [])]
    spec = lora.spec_from_args(rank, ALPHA, 0.0, lora.select_targets(model.backbone, mode, args), args)
    torch.manual_seed(seed)  # PEFT's init draws from the global generator
    params = lora.add_lora(model.backbone, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval(), spec, params


def _video_out(model, seed=0):
    video, _ = make_inputs(model.config, seed=seed)
    with torch.no_grad():
        return model(video)[0]


def _trainable(backbone) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in backbone.named_parameters() if p.requires_grad}


# ComfyUI's calculate_weight for one layer, float32, re-implemented from comfy/weight_adapter/{lora,lokr,loha,base}.py
# (comfyanonymous/ComfyUI, base.py at 9c0cf36): `alpha` only counts when present (and, for LoKr, when a factor is a
# pair); DoRA's `weight_decompose` takes the output axis when dora_scale.shape[0] == out, and then divides by the
# norm of the *base* weight rows.
def _comfy_weight(weight, tensors, stem, strength=1.0):
    get = tensors.get
    alpha = get(f"{stem}.alpha")
    alpha = None if alpha is None else float(alpha)
    if f"{stem}.lora_B.weight" in tensors:
        mat1, mat2 = get(f"{stem}.lora_B.weight").float(), get(f"{stem}.lora_A.weight").float()
        factor, diff = (alpha / mat2.shape[0] if alpha is not None else 1.0), mat1 @ mat2
    elif any(key.startswith(f"{stem}.lokr_") for key in tensors):
        dim = None
        w1, w2 = get(f"{stem}.lokr_w1"), get(f"{stem}.lokr_w2")
        if w1 is None:
            dim = get(f"{stem}.lokr_w1_b").shape[0]
            w1 = get(f"{stem}.lokr_w1_a") @ get(f"{stem}.lokr_w1_b")
        if w2 is None:
            dim = get(f"{stem}.lokr_w2_b").shape[0]
            w2 = get(f"{stem}.lokr_w2_a") @ get(f"{stem}.lokr_w2_b")
        factor = alpha / dim if alpha is not None and dim is not None else 1.0
        diff = torch.kron(w1.float(), w2.float()).reshape(weight.shape)
    else:
        w1b = get(f"{stem}.hada_w1_b")
        factor = alpha / w1b.shape[0] if alpha is not None else 1.0
        diff = (get(f"{stem}.hada_w1_a") @ w1b) * (get(f"{stem}.hada_w2_a") @ get(f"{stem}.hada_w2_b"))
    dora_scale = get(f"{stem}.dora_scale")
    if dora_scale is None:
        return weight + strength * factor * diff
    calc = weight + diff * factor
    if dora_scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True).transpose(0, 1)
    calc = calc * (dora_scale.float() / (norm + torch.finfo(torch.float32).eps))
    return calc if strength == 1.0 else weight + strength * (calc - weight)


def _file(path):
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()  # noqa: SIM118


def test_network_args_choose_the_algorithm_and_refuse_what_does_not_fit(tiny_checkpoints):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    targets = lora.select_targets(model.backbone, "video", ["algo=lokr", "factor=8"])  # algo keys pass through
    assert lora.spec_from_args(4, 4.0, 0.1, targets, None) == lora.LoraSpec(4, 4.0, 0.1, targets)  # default lora
    spec = lora.spec_from_args(4, 4.0, 0.0, targets, ["algo=lokr", "factor=8", "decompose_both=true"])
    assert (spec.algo, spec.factor, spec.decompose_both) == ("lokr", 8, True)
    spec = lora.spec_from_args(4, 4.0, 0.0, targets, ["algo=loha", "rank_dropout=0.25", "module_dropout=0.1"])
    assert (spec.algo, spec.rank_dropout, spec.module_dropout) == ("loha", 0.25, 0.1)
    for args, dropout, expected in (
        (["algo=oft"], 0.0, "--network_args algo=oft: choose one of lora, dora, lokr, loha"),
        (["algo=lokr", "factor=two"], 0.0, "factor=two: expected a whole number >= 1 (or -1 for automatic)"),
        (["algo=lokr", "decompose_both=yes"], 0.0, "decompose_both=yes: expected true or false"),
        (["algo=loha", "rank_dropout=1.5"], 0.0, "rank_dropout=1.5: expected a probability in [0, 1)"),
        (["algo=dora", "factor=4"], 0.0, "factor=4: an option of algo=lokr, not of algo=dora"),
        (["algo=lokr", "lokr_factor=4"], 0.0, "--network_args 'lokr_factor=4': expected preset=NAME"),
        (["algo=lokr"], 0.1, "--network_dropout 0.1: lokr has no input dropout; pass --network_args rank_dropout"),
    ):
        with pytest.raises(ConfigError) as caught:
            lora.spec_from_args(4, 4.0, dropout, targets, args)
        message = str(caught.value)
        assert message.startswith("--network_") and expected in message and "\n" not in message


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_the_file_has_comfyui_keys_and_comfyui_formula_gives_our_output(tiny_checkpoints, tmp_path, args, rank):
    tiny = tiny_checkpoints["2.3"]
    model, spec, _ = _network(tiny.path, args, rank, mode="av", preset="full")
    path = tmp_path / "adapter.safetensors"
    lora.save_lora(path, model.backbone, spec, {}, dtype=torch.float32)
    tensors, metadata = _file(path)

    kind = "lokr_factored" if "decompose_both=true" in args else spec.algo
    stems = {f"diffusion_model.{TRANSFORMER_KEYS.to_official(t, prefix='')}" for t in spec.targets}
    suffixes = {}
    for key in tensors:
        stem, suffix = next((stem, key[len(stem) + 1 :]) for stem in stems if key.startswith(f"{stem}."))
        suffixes.setdefault(stem, set()).add(suffix)
    assert suffixes.keys() == stems and all(found in FILE_SUFFIXES[kind] for found in suffixes.values())  # no .alpha
    assert metadata["ltx2_network_algo"] == spec.algo
    if spec.algo == "dora":
        assert all(tensors[f"{stem}.dora_scale"].shape[1] == 1 for stem in stems)  # [out, 1]: the output axis
    bf16_path = tmp_path / "bf16.safetensors"
    lora.save_lora(bf16_path, model.backbone, spec, {}, dtype=torch.bfloat16)
    dtypes = {key.rsplit(".", 1)[-1]: tensor.dtype for key, tensor in _file(bf16_path)[0].items()}
    assert all(dtype == (torch.float32 if name == "dora_scale" else torch.bfloat16) for name, dtype in dtypes.items())

    # ComfyUI patches `diffusion_model.<path>.weight` for the key stem `diffusion_model.<path>` (its generic map).
    comfy = load_transformer(tiny.path, mode="av").eval()
    weights = dict(comfy.backbone.named_parameters())
    with torch.no_grad():
        for target in spec.targets:
            stem = f"diffusion_model.{TRANSFORMER_KEYS.to_official(target, prefix='')}"
            weight = weights[f"{target}.weight"]
            weight.copy_(_comfy_weight(weight.float(), tensors, stem))
    ours = load_transformer(tiny.path, mode="av").eval()
    assert merge_lora(ours.backbone, path, 1.0) == len(spec.targets)
    video, audio = make_inputs(model.config)
    with torch.no_grad():
        adapter_out, comfy_out, merged_out = model(video, audio), comfy(video, audio), ours(video, audio)
        base_out = load_transformer(tiny.path, mode="av").eval()(video, audio)
    for adapter, theirs, merged, base in zip(adapter_out, comfy_out, merged_out, base_out, strict=True):
        assert (adapter - base).abs().max() > 1e-3  # the adapter matters
        torch.testing.assert_close(theirs, adapter, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged, adapter, rtol=0, atol=1e-5)

    # Strength: ComfyUI's W + s * (W' - W); our merge at 0.5 is halfway in weight space, like it.
    half = load_transformer(tiny.path, mode="av")
    merge_lora(half.backbone, path, 0.5)
    name = sorted(spec.targets)[0]
    stem = f"diffusion_model.{TRANSFORMER_KEYS.to_official(name, prefix='')}"
    base_weight = dict(load_transformer(tiny.path, mode="av").backbone.named_parameters())[f"{name}.weight"]
    expected = _comfy_weight(base_weight.detach().float(), tensors, stem, strength=0.5)
    torch.testing.assert_close(dict(half.backbone.named_parameters())[f"{name}.weight"], expected, rtol=0, atol=1e-6)


def _diffusers_state_dict(path):
    """The file's tensors under diffusers' names, renamed by diffusers' own LTX-2 LoRA loader."""
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin

    return LTX2LoraLoaderMixin.lora_state_dict(str(path))


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_diffusers_and_peft_load_the_file_and_give_our_output(tiny_checkpoints, tmp_path, args, rank):
    """DoRA: diffusers' loader drops `dora_scale` (it warns, then loads a plain LoRA); with the magnitude converted
    to PEFT's form `load_lora_adapter` reproduces us. LoKr: diffusers loads the file as it is. LoHa: diffusers fails
    to infer the config; its key renaming plus PEFT's LoHa and `set_peft_model_state_dict` reproduce us."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    from ltx2_tuner.networks.peft_adapters import peft_config

    tiny = tiny_checkpoints["2.3"]
    model, spec, _ = _network(tiny.path, args, rank, mode="av", preset="full")
    path = tmp_path / "adapter.safetensors"
    lora.save_lora(path, model.backbone, spec, {}, dtype=torch.float32)
    state_dict = _diffusers_state_dict(path)
    video, audio = make_inputs(model.config)
    with torch.no_grad():
        ours = model(video, audio)
    plain = load_transformer_backbone(tiny.path)
    if spec.algo == "dora":
        assert not any("dora_scale" in key for key in state_dict)  # dropped by diffusers
        lossy = load_transformer_backbone(tiny.path)
        lossy.load_lora_adapter(state_dict, prefix="transformer", adapter_name="lossy")
        with torch.no_grad():
            assert (diffusers_forward(lossy, video, audio, uniform=True)[0] - ours[0]).abs().max() > 1e-3
        tensors, _ = _file(path)
        weights = dict(plain.named_parameters())
        for target in spec.targets:
            stem = f"diffusion_model.{TRANSFORMER_KEYS.to_official(target, prefix='')}"
            delta = tensors[f"{stem}.lora_B.weight"] @ tensors[f"{stem}.lora_A.weight"]
            base = weights[f"{target}.weight"].detach()
            norm = base.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
            magnitude = tensors[f"{stem}.dora_scale"] * (base + delta).norm(dim=1, keepdim=True) / norm
            state_dict[f"transformer.{target}.lora_magnitude_vector"] = magnitude.reshape(-1)
        plain.load_lora_adapter(state_dict, prefix="transformer", adapter_name="ours")
    elif spec.algo == "lokr":  # diffusers 0.42.1 infers a LoKrConfig from the keys (alpha = r: scale 1)
        plain.load_lora_adapter(state_dict, prefix="transformer", adapter_name="ours")
    else:
        with pytest.raises(IndexError):  # diffusers 0.42.1 cannot infer a LoHa config
            load_transformer_backbone(tiny.path).load_lora_adapter(dict(state_dict), prefix="transformer")
        same_scale = lora.LoraSpec(rank, float(rank), 0.0, spec.targets, spec.algo)
        inject_adapter_in_model(peft_config(same_scale), plain, adapter_name="ours")  # alpha = r: the file's scale 1
        peft_state = {key.removeprefix("transformer."): tensor for key, tensor in state_dict.items()}
        result = set_peft_model_state_dict(plain, peft_state, adapter_name="ours")
        assert not result.unexpected_keys
    with torch.no_grad():
        theirs = diffusers_forward(plain, video, audio, uniform=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_training_on_one_fixed_batch_lowers_the_loss(tiny_checkpoints, args, rank):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    spec = lora.spec_from_args(rank, float(rank), 0.0, lora.select_targets(model.backbone, "video", args), args)
    params = lora.add_lora(model.backbone, spec)
    video, _ = make_inputs(model.config)
    target = torch.randn(video.latent.shape, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.AdamW(params, lr=3e-2, weight_decay=0.0)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = (model(video)[0] - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # LoKr/LoHa start with one factor at zero and learn slower than DoRA at first (rank-1 LoKr: about 3% in 12 steps)
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.98 * losses[0] and all(math.isfinite(value) for value in losses), losses


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_network_weights_round_trip_in_both_formats_and_another_algo_is_refused(tiny_checkpoints, tmp_path, args, rank):
    from ltx2_tuner.networks.convert_lora import convert_lora_file

    path = tiny_checkpoints["2.3"].path
    model, spec, _ = _network(path, args, rank)
    official = tmp_path / "official.safetensors"
    lora.save_lora(official, model.backbone, spec, {}, dtype=torch.float32)
    musubi = tmp_path / "musubi.safetensors"
    convert_lora_file(official, musubi, "musubi", base_checkpoint=path)
    back = tmp_path / "back.safetensors"
    convert_lora_file(musubi, back, "official", base_checkpoint=path)
    expected = _video_out(model)
    for file in (official, musubi, back):
        fresh, _, _ = _network(path, args, rank, seed=9)
        assert lora.load_lora_weights(file, fresh.backbone) == len(spec.targets)
        torch.testing.assert_close(_video_out(fresh), expected, rtol=0, atol=1e-5)
    musubi_keys, _ = _file(musubi)
    assert all(key.startswith("lora_unet_model_transformer_blocks_") for key in musubi_keys)
    if spec.algo == "dora":
        assert any(key.endswith(".lora_magnitude_vector.weight") for key in musubi_keys)

    plain, _, _ = _network(path, ["algo=lora"], 4)
    before = _trainable(plain.backbone)
    with pytest.raises(LoraFileError) as caught:
        lora.load_lora_weights(official, plain.backbone)
    assert str(caught.value) == (
        f"{official}: is a {spec.algo} file but this run trains algo=lora; pass --network_args algo={spec.algo} (and "
        "the options it was trained with) to continue it"
    )
    assert all(torch.equal(before[name], value) for name, value in _trainable(plain.backbone).items())


def test_a_lokr_file_with_other_factors_is_one_line(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["2.3"].path
    model, spec, _ = _network(path, ["algo=lokr", "factor=2"], 4)
    file = tmp_path / "lokr.safetensors"
    lora.save_lora(file, model.backbone, spec, {}, dtype=torch.float32)
    other, _, _ = _network(path, ["algo=lokr"], 4)  # factor -1: 32 = 4 x 8, not 2 x 16
    with pytest.raises(LoraFileError, match=r"lokr_w1 \[\(2, 2\)\] in the file, \[\(4, 4\)\] in the network; pass"):
        lora.load_lora_weights(file, other.backbone)


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_resume_restores_the_adapter_parameters_by_name(tiny_checkpoints, tmp_path, args, rank):
    from ltx2_tuner.training import checkpoints

    path = tiny_checkpoints["2.3"].path
    model, _, params = _network(path, args, rank)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model(make_inputs(model.config)[0])[0].pow(2).mean().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(0)
    checkpoints.save_trainable(tmp_path, model)
    checkpoints.save_optimizer(tmp_path, optimizer.state_dict())
    checkpoints.save_rng(tmp_path, 0, generator)
    checkpoints.write_state(tmp_path, checkpoints.TrainState(step=1))
    saved = checkpoints.read_saved_state(tmp_path, 0, 1)
    assert saved.trainable.keys() == _trainable(model).keys()

    fresh, _, fresh_params = _network(path, args, rank, seed=5)
    fresh_optimizer = torch.optim.AdamW(fresh_params, lr=1e-3)
    checkpoints.restore(saved, fresh, fresh_optimizer, generator)
    assert all(torch.equal(p, _trainable(model)[n]) for n, p in _trainable(fresh).items())
    torch.testing.assert_close(_video_out(fresh), _video_out(model), rtol=0, atol=0)


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_adapters_are_float32_on_a_bf16_base_and_train(tiny_checkpoints, args, rank):
    model, _, params = _network(tiny_checkpoints["2.3"].path, args, rank, dtype=torch.bfloat16)
    assert {p.dtype for p in params} == {torch.float32}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and {p.dtype for p in frozen} == {torch.bfloat16}
    video, _ = make_inputs(model.config, dtype=torch.bfloat16)
    model(video)[0].float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in params)


def test_fp8_base_refuses_dora_and_trains_lokr_and_loha(tiny_checkpoints):
    path = tiny_checkpoints["2.3"].path
    with pytest.raises(ConfigError) as caught:
        _network(path, ["algo=dora"], 4, dtype=torch.bfloat16, fp8=Fp8Storage())
    assert str(caught.value).startswith("--network_args algo=dora cannot train on --fp8_base layers")
    for args in (["algo=lokr"], ["algo=loha"]):
        fp8, _, params = _network(path, args, 4, dtype=torch.bfloat16, fp8=Fp8Storage(scaled=True))
        bf16, _, _ = _network(path, args, 4, dtype=torch.bfloat16)
        video, _ = make_inputs(fp8.config, dtype=torch.bfloat16)
        out = fp8(video)[0]
        out.float().pow(2).mean().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        with torch.no_grad():
            reference = bf16(video)[0].float()
        assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()  # fp8 rounding only


@pytest.mark.parametrize(("args", "rank"), ALGOS)
def test_block_swap_gives_the_plain_outputs_and_gradients(tiny_checkpoints, monkeypatch, args, rank):
    """Swapped weights are NaN outside their block's turn (PoisonedHost): DoRA reads its base weight only inside."""
    path = tiny_checkpoints["2.3"].path
    plain, _, plain_params = _network(path, args, rank, mode="av")
    swapped, _, swapped_params = _network(path, args, rank, mode="av")
    PoisonedHost(monkeypatch)
    swapped.enable_block_swap(1, "cpu")
    video, audio = make_inputs(plain.config)
    results = []
    for model, params in ((plain, plain_params), (swapped, swapped_params)):
        outputs = model(video, audio)
        sum(o.pow(2).mean() for o in outputs).backward()
        results.append((outputs, [p.grad.clone() for p in params]))
    (plain_out, plain_grads), (swapped_out, swapped_grads) = results
    for a, b in zip(plain_out, swapped_out, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    for a, b in zip(plain_grads, swapped_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def _train(checkpoint, config, output, algo, *flags) -> int:
    from ltx2_tuner.cli._common import run
    from ltx2_tuner.cli.train_network import main

    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
                      "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output),
                      "--max_data_loader_n_workers", "0", "--log_with", "none", "--ltx_mode", "video",
                      "--network_args", f"algo={algo}", *flags])  # fmt: skip


@pytest.mark.parametrize("algo", ["dora", "lokr", "loha"])
def test_the_trainer_resumes_to_the_uninterrupted_adapter_and_refuses_another_algos_file(
    tiny_checkpoints, tmp_path, capsys, algo
):
    """ltx2_train_network.py end to end: 4 steps equal 2 steps + --resume for 2 more; --network_weights of a plain
    LoRA file into this algo is one error line."""
    from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset

    checkpoint, config = tiny_checkpoints["2.3"].path, write_synthetic_dataset(tmp_path / "data")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _train(checkpoint, config, whole, algo, "--max_train_steps", "4", "--save_state",
                  "--save_every_n_steps", "2") == 0  # fmt: skip
    assert _train(checkpoint, config, resumed, algo, "--max_train_steps", "4",
                  "--resume", str(whole / "state-step000002")) == 0  # fmt: skip
    first, metadata = _file(whole / "ltx2_lora.safetensors")
    second, _ = _file(resumed / "ltx2_lora.safetensors")
    assert metadata["ltx2_network_algo"] == algo and first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    layers = read_lora_file(whole / "ltx2_lora.safetensors").layers.values()
    assert max(layer.delta().abs().max() for layer in layers) > 0  # it trained off the no-op start

    plain = tmp_path / "plain"
    assert _train(checkpoint, config, plain, "lora", "--max_train_steps", "1") == 0
    capsys.readouterr()
    lora_file = plain / "ltx2_lora.safetensors"
    assert _train(checkpoint, config, tmp_path / "x", algo, "--max_train_steps", "1", "--network_weights",
                  str(lora_file)) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (
        err == f"error: {lora_file}: is a lora file but this run trains algo={algo}; pass --network_args "
        "algo=lora (and the options it was trained with) to continue it\n"
    )
