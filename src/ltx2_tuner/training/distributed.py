"""Several processes: DDP (the default) or FSDP2, chosen by the `accelerate launch` configuration.

DDP: every process holds the whole model; the frozen base is left out of DDP and only the LoRA gradients are averaged.

FSDP (`accelerate launch --config_file docs/accelerate/fsdp.yaml`, `fsdp_version: 2`): torch's `fully_shard` splits
every parameter along its first dimension across the processes (per-parameter DTensors, so frozen bf16 or fp8 base
weights and fp32 LoRA weights live in one unit, which FSDP1's flat parameters cannot do). Units: one per transformer
block (per attention / feed-forward module in single-stream modes, see `_units`), plus the root. A unit's weights are
gathered just before it runs and freed after; the LoRA gradients are reduce-scattered (averaged, as DDP does) and each
process steps the optimizer on its shard. We shard here rather than let accelerate do it: accelerate has no FSDP mode
for CPU processes (gloo, what the tests run) and its wrap policy does not know our forward; the settings are read
from the environment `accelerate launch` fills from the config file.

Saving gathers the full LoRA tensors and optimizer state on every process (collectives, a few MB) and rank 0 writes
them in the same files as DDP, so a state folder resumes under either.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.training.checkpoints import SavedState

BLOCK_CLASS = "LTX2VideoTransformerBlock"  # diffusers' transformer block: one FSDP unit each
_FIX = "set it in the accelerate config file (docs/accelerate/fsdp.yaml) or use DDP (accelerate launch --multi_gpu)"


@dataclass(frozen=True)
class FsdpSettings:
    reshard_after_forward: bool  # free a unit's gathered weights after its forward (gather again for backward)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip().lower()


def fsdp_settings(args) -> FsdpSettings | None:
    """The FSDP settings of this launch, or None for DDP / one process; refuse what does not combine with FSDP."""
    if _env("ACCELERATE_USE_FSDP", "false") != "true":
        return None
    if _env("FSDP_VERSION", "1") != "2":
        raise ConfigError(f"FSDP: fsdp_version {_env('FSDP_VERSION', '1')} cannot mix bf16/fp8 base and fp32 LoRA "
                          f"weights; set fsdp_version: 2 in the accelerate config file")  # fmt: skip
    if args.blocks_to_swap:
        raise ConfigError("--blocks_to_swap does not combine with FSDP (each process holds 1/N of every block "
                          "already); drop it, or use it with DDP (accelerate launch --multi_gpu)")  # fmt: skip
    if "algo=dora" in (getattr(args, "network_args", None) or []):
        raise ConfigError(
            "--network_args algo=dora does not combine with FSDP (a DoRA file is written from the full "
            "base weights, which FSDP shards); use DDP (accelerate launch --multi_gpu) or another algo"
        )
    if args.sample_prompts:
        raise ConfigError("--sample_prompts does not combine with FSDP yet (previews run on rank 0 alone, and every "
                          "process must take part in a sharded forward); sample the saved LoRA with "
                          "ltx2_generate_video.py, or use DDP (accelerate launch --multi_gpu)")  # fmt: skip
    unsupported = {
        "FSDP_OFFLOAD_PARAMS": "fsdp_offload_params: true (use --blocks_to_swap with DDP to keep weights in RAM)",
        "FSDP_ACTIVATION_CHECKPOINTING": "fsdp_activation_checkpointing: true (use --gradient_checkpointing)",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "fsdp_cpu_ram_efficient_loading: true",
    }
    for name, setting in unsupported.items():
        if _env(name, "false") == "true":
            raise ConfigError(f"FSDP: {setting} is not supported here; {_FIX}")
    policy, block = _env("FSDP_AUTO_WRAP_POLICY"), os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if policy not in ("", "transformer_based_wrap") or block not in ("", BLOCK_CLASS):
        raise ConfigError(f"FSDP: the wrap policy is one unit per {BLOCK_CLASS}; set fsdp_auto_wrap_policy: "
                          f"TRANSFORMER_BASED_WRAP and fsdp_transformer_layer_cls_to_wrap: {BLOCK_CLASS}")  # fmt: skip
    if not torch.distributed.is_initialized():
        raise ConfigError("FSDP needs the processes `accelerate launch` starts; run ltx2_train_network.py under it")
    return FsdpSettings(reshard_after_forward=_env("FSDP_RESHARD_AFTER_FORWARD", "true") != "false")


def shard(model: nn.Module, device: torch.device, settings: FsdpSettings) -> list[nn.Parameter]:
    """Shard `model` (LoRA in place) across all processes: the units of `_units`, the rest in the root. Returns the
    trainable parameters, which are new (sharded) objects: build the optimizer from them."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # Each rank initialized its LoRA from its own seed (seed + rank) and keeps its slice of its own tensors: start
    # every rank from rank 0's LoRA, as DDP does when it wraps the model.
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                torch.distributed.broadcast(param.data, src=0)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # No MixedPrecisionPolicy cast: weights keep their storage dtype (bf16/fp8 base, fp32 LoRA) and autocast computes
    # in the compute dtype, as under DDP; LoRA gradients are reduced in fp32.
    units = _units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(model, mesh=mesh)  # the root: embeddings, projections, the blocks' scale-shift tables in video mode
    # Some units return views; the adapter and the loss use them out of place, the case this warning is about.
    warnings.filterwarnings("ignore", r"FSDP2-wrapped module \(FSDP\w+\) returned a view tensor")
    if torch.distributed.get_rank() == 0:
        print(f"FSDP: {len(units)} units and the root, sharded over {mesh.size()} processes")
    return [param for param in model.parameters() if param.requires_grad]


def _units(model: nn.Module) -> list[nn.Module]:
    blocks = model.backbone.transformer_blocks
    if model.mode == "av":  # the adapter calls each block as a module: its hooks gather and free it
        return list(blocks)
    # Single-stream forwards call a block's attention and feed-forward modules without calling the block, so a block
    # unit would never be gathered: one unit per child with weights instead (the block's own small tables: root).
    return [child for block in blocks for child in block.children() if next(child.parameters(), None) is not None]


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def prepare(accelerator: Accelerator, model: nn.Module, optimizer, blocks_to_swap: int):
    """`accelerator.prepare` for DDP or an already sharded model: (model, optimizer)."""
    if not is_sharded(model):
        # DDP neither broadcasts nor buckets the frozen base (every rank loads the same checkpoint; the swapped
        # blocks' weights are in host memory); accelerate must not move the swapped weights to the device.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, _frozen_names(model))
        return accelerator.prepare(model, optimizer, device_placement=[False, None] if blocks_to_swap else None)
    if accelerator.distributed_type == DistributedType.FSDP:  # GPUs: accelerate keeps a model that is sharded already
        return accelerator.prepare(model, optimizer)
    return model, accelerator.prepare(optimizer)  # CPU processes: accelerate would wrap the model in DDP


def _frozen_names(model: nn.Module) -> list[str]:
    """Names of the frozen parameters and the buffers: what DDP is told to leave alone."""
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    return frozen + [name for name, _ in model.named_buffers()]


def no_sync(accelerator: Accelerator, model: nn.Module):
    """Accumulate gradients without averaging them across processes (all micro-batches of a group but the last)."""
    if is_sharded(model):  # accelerate handles FSDP only in its GPU mode
        return _without_gradient_sync(model)
    return accelerator.no_sync(model)


@contextlib.contextmanager
def _without_gradient_sync(model) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextlib.contextmanager
def full_trainable(module: nn.Module) -> Iterator[None]:
    """Within: the module's trainable parameters are full tensors on every process (FSDP: gathered, collectives, so
    every process enters), for code that reads them from the module (LoRA files, the state's trainable.pt).
    Without FSDP it changes nothing."""
    from torch.distributed.tensor import DTensor

    sharded = [(owner, name, param) for owner in module.modules() for name, param in owner._parameters.items()
               if param is not None and param.requires_grad and isinstance(param, DTensor)]  # fmt: skip
    try:
        for owner, name, param in sharded:  # the same order on every process: the gathers pair up
            owner._parameters[name] = nn.Parameter(param.detach().full_tensor())
        yield
    finally:
        for owner, name, param in sharded:
            owner._parameters[name] = param


def full_optimizer_state(optimizer) -> dict:
    """The optimizer's state_dict with full tensors (FSDP: gathered on every process; DDP: as it is)."""
    from torch.distributed.tensor import DTensor

    state_dict = optimizer.state_dict()  # its per-parameter dicts are the live ones: build new dicts
    states = {}
    for index in sorted(state_dict["state"]):  # the same order on every process: the gathers pair up
        state = state_dict["state"][index]
        states[index] = {key: value.full_tensor().cpu() if isinstance(value, DTensor) else value
                         for key, value in sorted(state.items())}  # fmt: skip
    return {**state_dict, "state": states}


def shard_saved_state(saved: SavedState, module: nn.Module, optimizer) -> SavedState:
    """`saved` (full tensors, as written) with the tensors of sharded parameters cut like them, for ckpt.restore."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def like(tensor, param):
        if isinstance(param, DTensor) and isinstance(tensor, torch.Tensor) and tensor.shape == param.shape:
            # Every process read the same file: each keeps its own shard, nothing is sent.
            return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
        return tensor

    current = dict(module.named_parameters())
    trainable = {name: like(tensor, current.get(name)) for name, tensor in saved.trainable.items()}
    params = [param for group in optimizer.param_groups for param in group["params"]]
    states = {
        index: {key: like(value, params[index] if index < len(params) else None) for key, value in state.items()}
        for index, state in saved.optimizer["state"].items()
    }
    ema = None if saved.ema is None else {name: like(tensor, current.get(name)) for name, tensor in saved.ema.items()}
    return replace(saved, trainable=trainable, optimizer={**saved.optimizer, "state": states}, ema=ema)
