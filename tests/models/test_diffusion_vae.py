"""LTX 2.5's diffusion video VAE file: loading each half, parity with diffusers, metadata-driven sampling, gate
folding, broken files.

The independent computations are diffusers' own classes (`AutoencoderKLLTX2Video`, `LTX2VideoDiffusionDecoderModel`,
`LTX2VideoDiffusionDecodePipeline`) configured and filled here by hand, the way diffusers' conversion script does it.
Their default attention (uncompiled flex) takes tens of seconds on these grids on CPU, so the reference decoders use
a dense-mask neighborhood attention defined here, itself checked against flex on a small grid.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import load_video_vae, read_checkpoint_info
from ltx2_tuner.models.diffusion_decoder import TiledNeighborhoodAttention, decode_latents
from ltx2_tuner.models.diffusion_vae import DiffusionVideoVae
from ltx2_tuner.models.key_maps import VIDEO_VAE_KEYS
from ltx2_tuner.models.loading import construct_module
from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.sampling.decode import Decoders, denormalize_video_latents
from ltx2_tuner.testing.tiny_configs import official_config
from ltx2_tuner.testing.tiny_diffusion_vae import tiny_diffusion_vae

_GATE_TARGETS = {".attn.to_out.0": ".gate_msa", ".mlp.w_down": ".gate_mlp", ".context_proj": ".gate_ctx"}


def _write(path, section, tensors, bare=False):
    if bare:  # the split pack's vae/ file: encoder.*, decoder.*, per_channel_statistics.*
        tensors = {name.removeprefix("vae."): value for name, value in tensors.items()}
    save_atomically(tensors, path, {"config": json.dumps({"vae": section}), "model_version": "2.5.0"})
    return path


@pytest.fixture(scope="module")
def tiny_vae():
    return tiny_diffusion_vae(seed=5)


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory, tiny_vae):
    return _write(tmp_path_factory.mktemp("vae") / "ltx-2.5-tiny-video-vae.safetensors", *tiny_vae)


# Reference pieces -----------------------------------------------------------------------------------------------------
def _window(length: int, kernel: int) -> torch.Tensor:
    """NATTEN's 1-D neighborhood: query q sees [s, s + kernel), s = clamp(q - kernel // 2, 0, length - kernel)."""
    kernel = min(kernel, length)
    start = (torch.arange(length) - kernel // 2).clamp(0, length - kernel)[:, None]
    keys = torch.arange(length)[None]
    return (keys >= start) & (keys < start + kernel)


class _DenseNeighborhoodAttention:
    """Neighborhood attention with the full [tokens, tokens] mask: slow in memory, simple, exact."""

    def __call__(self, attn, hidden_states, block_mask=None):
        batch, frames, height, width, channels = hidden_states.shape
        q, k, v = (x.flatten(1, 3).transpose(1, 2) for x in attn.project_qkv(hidden_states))
        kt, kh, kw = attn.kernel_size
        mask = _window(frames, kt)[:, None, None, :, None, None] & _window(height, kh)[None, :, None, None, :, None]
        mask = (mask & _window(width, kw)[None, None, :, None, None, :]).reshape(frames * height * width, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return attn.to_out[0](out.transpose(1, 2).reshape(batch, frames, height, width, channels))


def _reference_decoder(section: dict, tensors: dict, fold_gates: bool = True):
    """diffusers' decoder built and filled as its conversion script does (renames, QKV split, gates folded)."""
    from diffusers import LTX2VideoDiffusionDecoderModel

    decoder = section["decoder"]
    model = LTX2VideoDiffusionDecoderModel(
        latent_channels=decoder["in_channels"],
        patch_size=decoder["patch_size"],
        decoder_head_dim=decoder["head_dim"],
        decoder_stage_channels=tuple(decoder["stage_channels"]),
        decoder_stage_depths=tuple(decoder["stage_depths"]),
        decoder_stage_kernels=tuple(tuple(k) for k in decoder["stage_kernels"][:4]),
        decoder_upsample_strides=tuple(tuple(stride) for stride, _ in decoder["upsamples"]),
        decoder_upsample_channel_reductions=tuple(reduction for _, reduction in decoder["upsamples"]),
        decoder_stage5_kernel=tuple(decoder["stage5_kernel"]),
        decoder_t_emb_dim=decoder["t_emb_dim"],
        decoder_timestep_scale_multiplier=decoder["timestep_scale_multiplier"],
        decoder_model_output_type=section["model_output_type"],
        decoder_num_inference_steps=decoder["default_num_inference_steps"],
    )
    state = {
        "latents_mean": tensors["vae.per_channel_statistics.mean-of-means"],
        "latents_std": tensors["vae.per_channel_statistics.std-of-means"],
    }
    renames = {
        "t_embedder.mlp.0.": "t_embedder.timestep_embedder.linear_1.",
        "t_embedder.mlp.2.": "t_embedder.timestep_embedder.linear_2.",
        ".attn.proj.": ".attn.to_out.0.",
        ".attn.q_norm.": ".attn.norm_q.",
        ".attn.k_norm.": ".attn.norm_k.",
    }
    for name, value in tensors.items():
        if not name.startswith("vae.decoder.") or ".gate_" in name or "coarse_" in name or name.endswith("type_emb"):
            continue
        key = name.removeprefix("vae.")
        for old, new in renames.items():
            key = key.replace(old, new)
        for target, gate_name in _GATE_TARGETS.items():  # W <- g * W, b <- g * b
            gate = tensors.get(f"vae.{key[: key.rfind(target)]}{gate_name}")
            if fold_gates and key.endswith((f"{target}.weight", f"{target}.bias")) and gate is not None:
                value = (gate[:, None] if value.ndim == 2 else gate) * value
        if ".attn.qkv." in key:
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3), strict=True):
                state[key.replace("qkv", part)] = chunk
        else:
            state[key] = value
    model.load_state_dict(state, strict=True)
    model.set_attn_processor(_DenseNeighborhoodAttention())
    return model.eval()


def _pipeline_frames(reference, normalized_latents, seed):
    """diffusers' LTX2VideoDiffusionDecodePipeline: normalized latents -> frames [B, F, 3, H, W] in [0, 1]."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2VideoDiffusionDecodePipeline

    pipe = LTX2VideoDiffusionDecodePipeline(diffusion_decoder=reference, scheduler=FlowMatchEulerDiscreteScheduler())
    generator = torch.Generator().manual_seed(seed)
    return pipe(normalized_latents, generator=generator, output_type="pt").frames


def _our_frames(model, normalized_latents, seed):
    pixels = decode_latents(
        model, denormalize_video_latents(normalized_latents, model), torch.Generator().manual_seed(seed)
    )
    return (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)


def _latents(shape=(1, 128, 3, 3, 3), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# Attention ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_tiled_and_dense_neighborhood_attention_equal_diffusers_flex():
    from diffusers.models.autoencoders.ltx2_diffusion_decoder import LTX2VideoVaeNeighborhoodAttention

    torch.manual_seed(0)
    attn = LTX2VideoVaeNeighborhoodAttention(dim=16, kernel_size=(3, 5, 3), head_dim=8).eval()
    hidden = torch.randn(1, 5, 7, 9, 16)
    flex = attn(hidden, attn.build_block_mask(hidden))  # diffusers' default processor
    for processor in (
        TiledNeighborhoodAttention(tile=(2, 3, 4)),
        TiledNeighborhoodAttention(),
        _DenseNeighborhoodAttention(),
    ):
        attn.set_processor(processor)
        assert (attn(hidden) - flex).abs().max() < 1e-5


# Loading --------------------------------------------------------------------------------------------------------------
def test_each_part_loads_from_the_unified_and_the_split_layout(vae_file, tiny_vae, tmp_path):
    from diffusers import AutoencoderKLLTX2Video, LTX2VideoDiffusionDecoderModel

    encoder = load_video_vae(vae_file, part="encoder")
    decoder = load_video_vae(vae_file, part="decoder")
    both = load_video_vae(vae_file, part="both")
    assert isinstance(encoder, AutoencoderKLLTX2Video) and encoder.decoder is None
    assert isinstance(decoder, LTX2VideoDiffusionDecoderModel)
    assert isinstance(both, DiffusionVideoVae)
    assert not any(p.requires_grad for p in both.parameters())

    split = read_checkpoint_info(_write(tmp_path / "vae" / "ltx-2.5-video-vae.safetensors", *tiny_vae, bare=True))
    assert split.kind == "video_vae"
    split_decoder = load_video_vae(split, part="decoder", dtype=torch.bfloat16)
    for (name, ours), (_, theirs) in zip(split_decoder.state_dict().items(), decoder.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs.to(torch.bfloat16)), name


def test_each_part_reads_only_its_own_tensors(vae_file, monkeypatch):
    from ltx2_tuner.models import diffusion_vae

    read = []
    original = diffusion_vae.read_tensors

    def recording(header, names, *args, **kwargs):
        names = list(names)
        read.extend(names)
        return original(header, names, *args, **kwargs)

    monkeypatch.setattr(diffusion_vae, "read_tensors", recording)
    load_video_vae(vae_file, part="decoder")
    assert read and not any(name.startswith("vae.encoder.") for name in read)
    read.clear()
    load_video_vae(vae_file, part="encoder")
    assert read and not any(name.startswith("vae.decoder.") for name in read)


@torch.no_grad()
def test_encoder_equals_diffusers_conv_vae_built_independently(vae_file, tiny_vae):
    # The 2.5 encoder is 2.3's: diffusers' AutoencoderKLLTX2Video built from the 2.3-style flat section, filled
    # with the file's encoder tensors.
    _, tensors = tiny_vae
    reference = construct_module("video_vae", official_config("2.3")["vae"], {}, empty=False).eval()
    encoder_state = {
        VIDEO_VAE_KEYS.to_diffusers(name): value
        for name, value in tensors.items()
        if name.startswith(("vae.encoder.", "vae.per_channel_statistics.")) and VIDEO_VAE_KEYS.to_diffusers(name)
    }
    missing, unexpected = reference.load_state_dict(encoder_state, strict=False)
    assert not unexpected and all(name.startswith("decoder.") for name in missing)
    frames = torch.rand(1, 3, 17, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours = load_video_vae(vae_file, part="encoder").encode(frames).latent_dist.mode()
    expected = reference.encode(frames).latent_dist.mode()
    assert ours.shape == (1, 128, 3, 2, 3)
    assert (ours - expected).abs().max() < 1e-6


# Decoding -------------------------------------------------------------------------------------------------------------
def test_decode_equals_diffusers_decode_pipeline(vae_file, tiny_vae):
    reference = _reference_decoder(*tiny_vae)
    model = load_video_vae(vae_file, part="decoder")
    latents = _latents()
    ours, expected = _our_frames(model, latents, seed=7), _pipeline_frames(reference, latents, seed=7)
    assert ours.shape == expected.shape == (1, 17, 3, 96, 96)
    assert (ours - expected).abs().max() < 1e-5
    assert not torch.equal(ours, _our_frames(model, latents, seed=8))  # the generator draws the noise


@pytest.mark.parametrize(("steps", "output_type", "multiplier"), [(3, "v", 1.0), (2, "x0", 1000.0), (1, "x0", 1.0)])
def test_steps_output_type_and_multiplier_come_from_metadata(
    tmp_path, tiny_vae, vae_file, steps, output_type, multiplier
):
    section, tensors = json.loads(json.dumps(tiny_vae[0])), tiny_vae[1]
    section["model_output_type"] = output_type
    section["decoder"].update(default_num_inference_steps=steps, timestep_scale_multiplier=multiplier)
    model = load_video_vae(_write(tmp_path / "vae.safetensors", section, tensors), part="decoder")
    assert (model.config.decoder_num_inference_steps, model.config.decoder_model_output_type) == (steps, output_type)
    assert model.config.decoder_timestep_scale_multiplier == multiplier

    latents = _latents(seed=2)
    ours = _our_frames(model, latents, seed=3)
    # diffusers' loop takes a last Euler step where ltx-core returns an x0 prediction: equal up to rounding.
    assert (ours - _pipeline_frames(_reference_decoder(section, tensors), latents, seed=3)).abs().max() < 1e-5
    default = _our_frames(load_video_vae(vae_file, part="decoder"), latents, seed=3)
    assert (ours - default).abs().max() > 1e-3


def test_missing_fields_take_ltx_core_defaults(tmp_path, tiny_vae):
    section, tensors = json.loads(json.dumps(tiny_vae[0])), tiny_vae[1]
    del section["model_output_type"], section["decoder"]["default_num_inference_steps"]
    del section["decoder"]["timestep_scale_multiplier"]
    config = load_video_vae(_write(tmp_path / "vae.safetensors", section, tensors), part="decoder").config
    assert (config.decoder_num_inference_steps, config.decoder_model_output_type) == (2, "v")
    assert config.decoder_timestep_scale_multiplier == 1.0


@torch.no_grad()
def test_gates_fold_into_linears_and_coarse_heads_drop(vae_file, tiny_vae):
    section, tensors = tiny_vae
    assert any(".gate_" in name for name in tensors) and any("coarse_" in name for name in tensors)
    model = load_video_vae(vae_file, part="decoder")
    assert not any("coarse" in name or ".gate_" in name or "type_emb" in name for name in model.state_dict())

    # Unfolded reference: the file's Linears as they are, each output scaled by its gate at run time.
    unfolded = _reference_decoder(section, tensors, fold_gates=False)
    for index, block in enumerate(unfolded.decoder.diff_blocks):
        for linear, gate in (
            (block.attn.to_out[0], "gate_msa"),
            (block.mlp.w_down, "gate_mlp"),
            (block.context_proj, "gate_ctx"),
        ):
            scale = tensors[f"vae.decoder.diff_blocks.{index}.{gate}"]
            linear.register_forward_hook(lambda _m, _i, out, scale=scale: out * scale)
    gate = tensors["vae.decoder.diff_blocks.1.gate_mlp"]
    folded = model.decoder.diff_blocks[1].mlp.w_down.weight
    assert torch.equal(folded, gate[:, None] * tensors["vae.decoder.diff_blocks.1.mlp.w_down.weight"])
    latents = _latents(seed=4)
    assert (_our_frames(model, latents, seed=1) - _pipeline_frames(unfolded, latents, seed=1)).abs().max() < 1e-5


def test_small_latents_are_edge_padded_then_cropped(vae_file, tiny_vae):
    # Below the decoder's 3x3x3 floor ltx-core edge-pads (time: last frame repeated; space: the odd one after),
    # decodes, and crops back to 8(F-1)+1 frames of 32H x 32W.
    model = load_video_vae(vae_file, part="decoder")
    latents = _latents((1, 128, 1, 2, 2), seed=6)
    padded = torch.cat([latents] * 3, dim=2)
    padded = F.pad(padded, (0, 1, 0, 1, 0, 0), mode="replicate")
    expected = _pipeline_frames(_reference_decoder(*tiny_vae), padded, seed=9)[:, :1, :, :64, :64]
    ours = _our_frames(model, latents, seed=9)
    assert ours.shape == (1, 1, 3, 64, 64)
    assert (ours - expected).abs().max() < 1e-5


def test_decoders_decode_video_uses_the_diffusion_decoder(vae_file, tiny_vae):
    decoders = Decoders(load_video_vae(vae_file, part="decoder"))
    latents = _latents((1, 128, 2, 3, 3), seed=10)
    frames = decoders.decode_video(latents, seed=11)
    assert frames.dtype == torch.uint8 and frames.shape == (9, 96, 96, 3)
    assert torch.equal(frames, decoders.decode_video(latents, seed=11))
    padded = torch.cat([latents, latents[:, :, -1:]], dim=2)  # 2 latent frames -> the 3-frame floor
    expected = _pipeline_frames(_reference_decoder(*tiny_vae), padded, seed=11)[0, :9].permute(0, 2, 3, 1)
    assert ((frames.float() - (expected * 255).to(torch.uint8).float()).abs().max()) <= 1  # truncation boundaries

    decoders.video_vae.tile_sample_min_height = decoders.video_vae.tile_sample_min_width = 64
    decoders.video_vae.tile_sample_stride_height = decoders.video_vae.tile_sample_stride_width = 32
    tiled = decoders.decode_video(latents, tiled=True, seed=11)
    assert tiled.shape == frames.shape and torch.equal(tiled, decoders.decode_video(latents, tiled=True, seed=11))


@torch.no_grad()
def test_conv_vae_file_keeps_the_conv_path_and_shares_the_encoder(tmp_path):
    from diffusers import AutoencoderKLLTX2Video

    section = official_config("2.5")["vae"]  # the `-conv-` file: a flat 2.3-style section
    module = construct_module("video_vae", section, {}, empty=False)
    tensors = {VIDEO_VAE_KEYS.to_official(name): value for name, value in module.state_dict().items()}
    conv_file = _write(tmp_path / "ltx-2.5-video-vae-conv.safetensors", section, tensors)
    vae = load_video_vae(conv_file, part="both")
    assert isinstance(vae, AutoencoderKLLTX2Video) and vae.decoder is not None

    # The factory can give the diffusion file the conv file's encoder, as the released pair shares it.
    shared = {k: v for k, v in tensors.items() if k.startswith(("vae.encoder.", "vae.per_channel_statistics."))}
    diffusion_file = _write(tmp_path / "ltx-2.5-video-vae.safetensors", *tiny_diffusion_vae(encoder_tensors=shared))
    frames = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    conv_latents = vae.encode(frames).latent_dist.mode()
    assert torch.equal(load_video_vae(diffusion_file, part="encoder").encode(frames).latent_dist.mode(), conv_latents)


# Broken files ---------------------------------------------------------------------------------------------------------
def test_missing_decoder_tensor_is_one_line(tmp_path, tiny_vae):
    section, tensors = tiny_vae
    damaged = {k: v for k, v in tensors.items() if k != "vae.decoder.diff_blocks.1.attn.qkv.weight"}
    path = _write(tmp_path / "damaged.safetensors", section, damaged)
    with pytest.raises(CheckpointError) as error:
        load_video_vae(path, part="decoder")
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "vae.decoder.diff_blocks.1.attn.qkv.weight" in message and "download it again" in message
    load_video_vae(path, part="encoder")  # the other half does not need it


@pytest.mark.parametrize("part", ["encoder", "decoder", "both"])
def test_unknown_vae_class_is_one_line(tmp_path, tiny_vae, part):
    section, tensors = json.loads(json.dumps(tiny_vae[0])), tiny_vae[1]
    section["_class_name"] = "CausalDiffusionVAEv2"
    path = _write(tmp_path / "future.safetensors", section, tensors)
    with pytest.raises(CheckpointError) as error:
        load_video_vae(path, part=part)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "CausalDiffusionVAEv2" in message


def test_bad_decoder_metadata_is_one_line(tmp_path, tiny_vae):
    section, tensors = json.loads(json.dumps(tiny_vae[0])), tiny_vae[1]
    section["model_output_type"] = "eps"
    path = _write(tmp_path / "bad.safetensors", section, tensors)
    with pytest.raises(CheckpointError, match="model_output_type"):
        load_video_vae(path, part="decoder")
