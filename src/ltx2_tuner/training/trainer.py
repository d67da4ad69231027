"""The LoRA training run: setup in dependency order, then one loop that reads top to bottom.

Works under `accelerate launch` (DDP, or FSDP with an FSDP config file: training/distributed.py; each rank takes
its own share of every epoch's batches and draws its own noise from seed + rank) and plain `python`. The learning
rate is a function of the optimizer step, set before each optimizer step, so it advances once per optimizer step
however many processes run. Gradient accumulation is
counted here (training/accumulation.py): the last, smaller group of an epoch makes an optimizer step too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.conditioning.spec import check_conditions, load_conditions
from ltx2_tuner.data.config import load_dataset_config, load_validation_datasets
from ltx2_tuner.dtypes import COMPUTE_DTYPES
from ltx2_tuner.errors import ConfigError, Ltx2TunerError
from ltx2_tuner.models import context_dims, load_transformer
from ltx2_tuner.models.block_swap import check_swap_count
from ltx2_tuner.models.checkpoint import CONFIG_SECTION
from ltx2_tuner.models.configs import transformer_config
from ltx2_tuner.models.fp8 import fp8_storage
from ltx2_tuner.models.model_files import model_files
from ltx2_tuner.networks.lora_files import lora_version_warning
from ltx2_tuner.roles import ModalityRoles, roles_for
from ltx2_tuner.training import accumulation as acc
from ltx2_tuner.training import checkpoints as ckpt
from ltx2_tuner.training import distributed
from ltx2_tuner.training.conditioned import condition_partner_problems, reference_metadata
from ltx2_tuner.training.ema import WeightEma
from ltx2_tuner.training.metrics import MetricLogger, sigma_bucket
from ltx2_tuner.training.optim import (
    known_optimizer,
    lr_factor,
    make_optimizer,
    optimizer_train_mode,
    set_learning_rate,
)
from ltx2_tuner.training.saving import save_checkpoint, weights_users_get
from ltx2_tuner.training.step import FlowSettings, compute_loss, prepare_inputs
from ltx2_tuner.training.validation import ValidationLoss

if TYPE_CHECKING:
    from ltx2_tuner.training.previews import PreviewRunner


class TrainingError(Ltx2TunerError):
    """Training cannot go on (e.g. the loss became NaN)."""


class _RankShare(Dataset):
    """This rank's batches of one epoch: every world_size-th, starting at `start` (to resume mid-epoch)."""

    def __init__(self, batches: CachedBatches, rank: int, world_size: int, start: int = 0):
        self.batches, self.rank, self.world_size, self.start = batches, rank, world_size, start

    def __len__(self) -> int:
        return max(0, len(self.batches) // self.world_size - self.start)

    def __getitem__(self, index: int) -> dict:
        return self.batches[(self.start + index) * self.world_size + self.rank]


@dataclass
class Run:
    """What the loop needs, built by `setup`."""

    args: object
    accelerator: Accelerator
    model: torch.nn.Module
    network_module: object
    spec: object
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]  # the network's parameters (the base is frozen)
    batches: CachedBatches
    flow: FlowSettings
    generator: torch.Generator
    state: ckpt.TrainState
    total_steps: int
    batches_per_rank: int  # batches of an epoch each process takes
    steps_per_epoch: int
    logger: MetricLogger | None
    fingerprint: dict
    weight_dtype: torch.dtype
    previews: PreviewRunner | None  # with --sample_prompts
    roles: ModalityRoles
    condition_metadata: dict  # trained conditions and reference scale factors, for the LoRA file
    model_version: str = ""  # "2.0", "2.3" or "2.5": recorded in the LoRA files
    ema: WeightEma | None = None  # with --ema_decay
    validation: ValidationLoss | None = None  # with --validate_every_n_steps
    progress_fields: dict = dataclasses.field(default_factory=dict)  # the progress bar's loss, lr, val


def check_precision(info, mixed_precision: str) -> None:
    """Refuse compute precisions the checkpoint's weights do not fit (fp8 files load with or without --fp8_base:
    without it their weights are dequantized to the compute dtype)."""
    dtypes = {info.header.tensors[name].dtype for name in info.tensor_names["transformer"]}
    if "BF16" in dtypes and mixed_precision == "fp16":
        raise ConfigError(f"{info.path}: bf16 weights overflow in fp16; use --mixed_precision bf16 (or no for fp32)")


def setup(args) -> Run:
    """Everything before the loop, in dependency order: process group, data, model, network, optimizer, state."""
    # Validate what can be validated before any process group or weights exist.
    roles = roles_for(args.ltx_mode, args.frozen_modality)
    files = model_files(
        args.ltx2_checkpoint, args.video_vae or args.vae, args.audio_vae, args.text_encoder or args.gemma_root
    )
    info = files.transformer
    check_precision(info, args.mixed_precision)
    if args.blocks_to_swap:  # before minutes of loading
        num_blocks = transformer_config(info.configs[CONFIG_SECTION["transformer"]])["num_layers"]
        check_swap_count(num_blocks, args.blocks_to_swap)
    datasets = load_dataset_config(args.dataset_config)
    validation_datasets = load_validation_datasets(args.dataset_config)
    if args.validate_every_n_steps and not validation_datasets:
        raise ConfigError(
            f"--validate_every_n_steps: {args.dataset_config} has no [[validation_datasets]]; add one (cached like "
            "the training datasets) or drop the flag"
        )
    conditions = load_conditions(args.dataset_config)  # one line per mistake, before anything loads
    problems = check_conditions(conditions, roles)
    if problems:
        raise ConfigError(f"{args.dataset_config}: " + "; ".join(problems))
    # No gradient_accumulation_steps here: accelerate cannot see the end of our per-epoch DataLoader, so its counter
    # would let the last, smaller group of an epoch spill into the next one. The loop counts groups itself.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # lets `accelerate launch --multi_gpu` run CPU processes (gloo)
        mixed_precision=args.mixed_precision,
        # A LoRA may have layers that a batch does not reach (audio layers on an image batch).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    fsdp = distributed.fsdp_settings(args)  # None: DDP (or one process); flags FSDP does not take fail here
    # A missing or damaged --resume folder fails here, before minutes of model loading and before any weight changes.
    saved = ckpt.read_saved_state(args.resume, rank, world) if args.resume else None
    generator = torch.Generator().manual_seed(args.seed + rank)  # each rank draws its own noise and sigmas
    torch.manual_seed(args.seed + rank)
    if args.dit is not None and accelerator.is_main_process:
        print("warning: --dit is ignored; the transformer comes from --ltx2_checkpoint")

    weight_dtype = COMPUTE_DTYPES[args.mixed_precision]
    # Previews encode their prompts (with Gemma, when their cache is stale) and I2V images now, before the transformer
    # takes the memory; their decoders wait on the CPU.
    previews = None
    if args.sample_prompts:
        from ltx2_tuner.training.previews import PreviewRunner  # imports the sampler and decoders: only when needed

        # Issue 14: the previews use the run's conditions (their --x / --src / --ra media encoded now).
        previews = PreviewRunner.prepare(args, files, accelerator, weight_dtype, conditions)
    # With --blocks_to_swap the model loads on the CPU: enable_block_swap moves all but the swapped weights.
    model = load_transformer(
        info, roles.build, dtype=weight_dtype, device="cpu" if args.blocks_to_swap else accelerator.device,
        attention_backend=args.attention_backend, gradient_checkpointing=args.gradient_checkpointing,
        fp8=fp8_storage(args.fp8_base, args.fp8_scaled),
    )  # fmt: skip
    context_dim = context_dims(model.config)[0]
    batches = CachedBatches(datasets, roles, args.seed, args.dataset_config, info.version, context_dim,
                            caption_dropout_rate=args.caption_dropout_rate)  # fmt: skip
    validation_batches = None
    if args.validate_every_n_steps:  # seed 0: the same batches in the same order whatever --seed
        validation_batches = CachedBatches(
            validation_datasets, roles, 0, args.dataset_config, info.version, context_dim
        )
    elif validation_datasets and accelerator.is_main_process:
        print("note: the [[validation_datasets]] are evaluated only with --validate_every_n_steps N")
    problems = condition_partner_problems(batches.items, conditions)  # e.g. a mask condition on a dataset without masks
    if validation_batches is not None:
        problems += condition_partner_problems(validation_batches.items, conditions)
    if problems:
        raise ConfigError(f"{args.dataset_config}: " + "; ".join(problems))
    condition_metadata = reference_metadata(batches, conditions)
    if previews is not None:  # issue 14: the previews' --r clips are read at the reference factors just measured
        previews.encode_references(condition_metadata)

    network_module = importlib.import_module(args.network_module)
    targets = network_module.select_targets(model.backbone, roles, args.network_args)
    spec = network_module.spec_from_args(
        args.network_dim, args.network_alpha, args.network_dropout, targets, args.network_args
    )
    params = network_module.add_lora(model.backbone, spec)
    if args.network_weights:
        mismatch = lora_version_warning(args.network_weights, info.version)
        if mismatch and accelerator.is_main_process:
            print(f"warning: {mismatch}")
        network_module.load_lora_weights(args.network_weights, model.backbone)
    if args.blocks_to_swap:  # after the LoRA exists: it goes to the device before the optimizer (and resume) sees it
        model.enable_block_swap(args.blocks_to_swap, accelerator.device)
    if args.compile:  # after LoRA injection and block swap: the first compile must see the final modules
        model.compile_blocks()
    model.train()
    if fsdp is not None:  # before the optimizer: sharding replaces the parameters
        params = distributed.shard(model, accelerator.device, fsdp)
    optimizer = make_optimizer(params, args.optimizer_type, args.learning_rate, args.optimizer_args)

    if len(batches) < world:
        raise ConfigError(f"{len(batches)} batch(es) per epoch cannot feed {world} processes; add data or processes")
    batches_per_rank = len(batches) // world
    steps_per_epoch = acc.steps_per_epoch(batches_per_rank, args.gradient_accumulation_steps)
    total_steps = args.max_train_epochs * steps_per_epoch if args.max_train_epochs else args.max_train_steps
    fingerprint = {
        "checkpoint": info.fingerprint, "mode": args.ltx_mode, "network_module": args.network_module,
        "rank": args.network_dim, "alpha": args.network_alpha, "targets": list(targets),
        "datasets": [dataset_digest(d) for d in datasets], "optimizer": _optimizer_name(args.optimizer_type),
        "lr_scheduler": args.lr_scheduler, "total_steps": total_steps, "processes": world,
        "batches_per_epoch": len(batches), "gradient_accumulation_steps": args.gradient_accumulation_steps,
    }  # fmt: skip
    if args.frozen_modality:  # only when set: states saved before the flag existed still resume
        fingerprint["frozen_modality"] = args.frozen_modality
    if conditions:
        fingerprint["conditions"] = [dataclasses.asdict(c) for c in conditions]
    # Only when used, so that states saved before these settings existed still resume.
    rates = [batches.dropout_rate(d) for d in datasets]  # the flag, or the dataset's own caption_dropout_rate
    if any(rates):
        fingerprint["caption_dropout_rates"] = rates
    if args.ema_decay is not None:
        fingerprint["ema_decay"] = args.ema_decay
    if not args.first_frame_keyframe:  # LTX 2.5's keyframe mark changes the inputs (the default, on, is not recorded)
        fingerprint["first_frame_keyframe"] = False
    if getattr(spec, "algo", "lora") != "lora":  # DoRA, LoKr, LoHa (networks/lora_ltx2.py)
        fingerprint["adapter"] = {key: getattr(spec, key) for key in ("algo", "factor", "decompose_both")}
    model, optimizer = distributed.prepare(accelerator, model, optimizer, args.blocks_to_swap)
    backbone = accelerator.unwrap_model(model).backbone
    ema = None
    if args.ema_decay is not None:
        ema = WeightEma({name: p for name, p in backbone.named_parameters() if p.requires_grad}, args.ema_decay)
    state = ckpt.TrainState(fingerprint=fingerprint)
    if saved is not None:
        state = _resume(args, saved, backbone, optimizer, generator, fingerprint, ema)
    logger = None
    if accelerator.is_main_process:
        logger = MetricLogger(args.logging_dir or args.output_dir / "logs", args.log_with, vars(args), state.step)
    # A first_frame condition in the dataset config sets the first-frame probability (the flag's otherwise).
    first_frame = next((c.probability for c in conditions if c.type == "first_frame"), None)
    flow = FlowSettings(
        args.timestep_sampling, args.discrete_flow_shift, args.sigmoid_scale,
        args.ltx2_first_frame_conditioning_p if first_frame is None else first_frame,
        args.independent_audio_timestep, args.video_loss_weight, args.audio_loss_weight, args.first_frame_keyframe,
        tuple(c for c in conditions if c.type != "first_frame"),
    )  # fmt: skip
    validation = None if validation_batches is None else ValidationLoss(validation_batches, roles, flow)
    return Run(args, accelerator, model, network_module, spec, optimizer, params, batches, flow, generator, state,
               total_steps, batches_per_rank, steps_per_epoch, logger, fingerprint, weight_dtype, previews, roles,
               condition_metadata, info.version, ema, validation)  # fmt: skip


def _optimizer_name(optimizer_type: str) -> str:
    """One spelling per optimizer in the resume fingerprint (prodigy and Prodigy, schedulefree and
    AdamWScheduleFree are the same run)."""
    known = known_optimizer(optimizer_type)
    return known.name if known else optimizer_type


def _resume(args, saved: ckpt.SavedState, backbone, optimizer, generator, fingerprint: dict,
            ema: WeightEma | None) -> ckpt.TrainState:  # fmt: skip
    """Check that the saved run is this one (its length aside with --resume_extend), then restore it."""
    state = saved.state
    ckpt.check_fingerprint(args.resume, state.fingerprint, fingerprint, ("total_steps",) if args.resume_extend else ())
    if args.resume_extend and fingerprint["total_steps"] <= state.step:
        raise ConfigError(
            f"--resume_extend: {args.resume} is at step {state.step} already and this run ends at step "
            f"{fingerprint['total_steps']}; pass a longer --max_train_steps or --max_train_epochs"
        )
    if ema is not None and (saved.ema is None or saved.ema.keys() != ema.average.keys()):
        raise ConfigError(
            f"{args.resume}: holds no EMA ({ckpt.EMA_FILE}) of this network's weights; resume a state saved by a run "
            "with the same --ema_decay"
        )
    # The files hold full tensors; under FSDP each process keeps its shard of them.
    saved = distributed.shard_saved_state(saved, backbone, optimizer)
    ckpt.restore(saved, backbone, optimizer, generator)
    if ema is not None:
        ema.load_state_dict(saved.ema)
    state.fingerprint = fingerprint  # later states carry the new length
    return state


def train(args) -> Path:
    """Train a LoRA; return the final LoRA file."""
    run = setup(args)
    args, accelerator, state = run.args, run.accelerator, run.state
    last_saved: Path | None = None
    progress = tqdm(total=run.total_steps, initial=state.step, unit="step", desc="training",
                    disable=not accelerator.is_main_process, dynamic_ncols=True)  # fmt: skip
    optimizer_train_mode(run.optimizer)  # schedule-free optimizers: the training weights
    try:
        if args.sample_at_first:
            _previews(run)
        if run.validation is not None and state.step == 0:  # the base model's value, to compare against
            _validate(run, progress)
        while state.step < run.total_steps:
            run.batches.set_epoch(state.epoch)
            share = _RankShare(run.batches, accelerator.process_index, accelerator.num_processes, state.batches_done)
            loader = DataLoader(share, batch_size=None, num_workers=args.max_data_loader_n_workers)
            window = _new_window()
            waited = time.perf_counter()
            for batch in loader:
                window["wait"] += time.perf_counter() - waited
                group = (state.batches_done, run.batches_per_rank, args.gradient_accumulation_steps)
                steps = acc.ends_group(*group)
                # Gradients are averaged across processes (DDP, FSDP) on the last backward of a group only.
                with contextlib.nullcontext() if steps else distributed.no_sync(accelerator, run.model):
                    loss, parts, inputs = _forward_backward(run, batch, acc.group_size(*group))
                _check_finite(loss, state, batch, last_saved)
                _collect(window, loss, parts, inputs)
                state.batches_done += 1
                if steps:
                    learning_rate = _optimizer_step(run)
                    state.step += 1
                    if run.ema is not None:
                        run.ema.update(state.step)
                    _log(run, window, learning_rate, progress)
                    every = args.validate_every_n_steps
                    if every and (state.step % every == 0 or state.step == run.total_steps):
                        _validate(run, progress)
                    if args.save_every_n_steps and state.step % args.save_every_n_steps == 0:
                        last_saved = save_checkpoint(run, step=state.step)
                    if args.sample_every_n_steps and state.step % args.sample_every_n_steps == 0:
                        _previews(run)
                    window = _new_window()  # after saving and previews: the next step's time excludes them
                    if state.step >= run.total_steps:
                        break
                waited = time.perf_counter()
            if state.batches_done >= run.batches_per_rank:  # this rank's share of the epoch is done
                state.epoch += 1
                state.batches_done = 0
                if args.save_every_n_epochs and state.epoch % args.save_every_n_epochs == 0:
                    last_saved = save_checkpoint(run, step=state.step)
                if args.sample_every_n_epochs and state.epoch % args.sample_every_n_epochs == 0:
                    _previews(run)
    except KeyboardInterrupt:
        path = save_checkpoint(run, step=state.step, name_suffix="-interrupted")
        accelerator.print(f"\ninterrupted at step {state.step}; saved {path}")
        raise
    finally:
        progress.close()
        if run.logger is not None:
            run.logger.close()
    final = save_checkpoint(run, step=None)
    accelerator.print(f"saved {final}")
    return final


def _previews(run: Run) -> None:
    with weights_users_get(run):  # the weights the saved LoRA holds (EMA, schedule-free's eval weights)
        run.previews.run(run.model, run.state.step, run.logger)


def _validate(run: Run, progress) -> None:
    """The validation loss of the weights users get, logged at the current step and shown in the progress bar."""
    with weights_users_get(run):
        metrics = run.validation.evaluate(run.model, run.accelerator, run.weight_dtype)
    if run.logger is not None:
        run.logger.log(metrics, run.state.step)
    run.progress_fields["val"] = f"{metrics['val_loss']:.4f}"
    progress.set_postfix(run.progress_fields)


def _forward_backward(run: Run, batch: dict, group_size: int):
    """Loss of one batch and its gradients, scaled so that a group's gradients are the mean over its batches."""
    inputs = prepare_inputs(batch, run.roles, run.flow, run.generator, run.accelerator.device, run.weight_dtype)
    with run.accelerator.autocast():
        predictions = run.model(inputs.video, inputs.audio)
        loss, parts = compute_loss(predictions, inputs, run.flow)
    run.accelerator.backward(loss / group_size)
    return loss, parts, inputs


def _optimizer_step(run: Run) -> float:
    """Set the scheduled learning rate, clip, step and clear the gradients; return the learning rate used."""
    args = run.args
    learning_rate = args.learning_rate * lr_factor(
        run.state.step, run.total_steps, args.lr_scheduler, args.lr_warmup_steps
    )
    set_learning_rate(run.optimizer, learning_rate)
    if args.max_grad_norm > 0:
        # Only the network's parameters: walking the frozen base costs ~3% of a step.
        run.accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return learning_rate


def _check_finite(loss: torch.Tensor, state: ckpt.TrainState, batch: dict, last_saved: Path | None) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"loss is {loss.item()} at step {state.step + 1} on {', '.join(batch['items'])}; last good LoRA: "
            f"{last_saved or 'none saved yet'}; lower --learning_rate or check those caches"
        )


def _new_window() -> dict:
    """What one optimizer step's micro-batches add up for the log."""
    return {"loss": [], "video": [], "audio": [], "wait": 0.0, "start": time.perf_counter()}


def _collect(window: dict, loss, parts, inputs) -> None:
    window["loss"].append(loss.detach().float())
    for modality, sigma in (("video", inputs.video_sigma), ("audio", inputs.audio_sigma)):
        if modality in parts:
            window[modality].append((parts[modality].detach().float(), sigma))


def _log(run: Run, window: dict, learning_rate: float, progress) -> None:
    """One record per optimizer step, on rank 0: total/video/audio loss, lr, loss per sigma bucket, data wait."""
    metrics = {
        "loss": torch.stack(window["loss"]).mean().item(),
        "lr": learning_rate,
        "step_time_s": time.perf_counter() - window["start"],
        "data_wait_s": window["wait"],
    }
    group = run.optimizer.param_groups[0]
    if "d" in group:  # Prodigy's own step-size estimate: the step it takes is d x lr
        metrics["lr_effective"] = float(group["d"]) * learning_rate
    for modality in ("video", "audio"):
        if window[modality]:
            metrics[f"loss_{modality}"] = torch.cat([v.cpu() for v, _ in window[modality]]).mean().item()
    # Per-sigma-bucket loss on the sigma of the mode's primary generated modality (video, else audio), as the
    # official trainer logs it on the video sigma.
    by_bucket: dict[str, list[float]] = {}
    for values, sigmas in window[run.roles.primary]:
        for value, sigma in zip(values.tolist(), sigmas.tolist(), strict=True):
            by_bucket.setdefault(f"loss_sigma_{sigma_bucket(sigma)}", []).append(value)
    metrics.update({key: sum(values) / len(values) for key, values in by_bucket.items()})
    if run.logger is not None:
        run.logger.log(metrics, run.state.step)
    postfix = run.progress_fields  # keeps the last validation loss
    postfix |= {"loss": f"{metrics['loss']:.4f}", "lr": f"{learning_rate:.2e}"}
    for modality in ("video", "audio"):
        if f"loss_{modality}" in metrics:
            postfix[modality] = f"{metrics[f'loss_{modality}']:.4f}"
    progress.set_postfix(postfix)
    progress.update(1)
