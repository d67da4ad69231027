"""`--compile`: regional torch.compile of the transformer blocks, with shapes that change per bucket.

Regional: what is compiled is the step function of one block (`_video_block`, `_audio_block`, `_av_block` in
models/transformer.py), not the whole model. The block module is the step's first argument, and torch >= 2.5 inlines
nn.Modules and lifts their parameters into graph inputs, so dynamo's guards check each parameter's shape, dtype,
device and requires_grad, not which module it belongs to: one compiled graph serves all 48 blocks (tested: the
number of graphs does not grow with the number of blocks). Block swap repoints `param.data` at a host or device copy
between blocks; the parameter is on the device, with the same shape and dtype, whenever its block runs, so no guard
fails (tested on the CPU, where the copies are CPU clones).

Shapes: compiled with `dynamic=True`. The token counts (video N_v = F*H*W, audio N_a), the text length and the
batch size are symbolic from the first compile, so a new bucket reuses the graph (torch's automatic dynamic would
compile the first shape static and the second one again). torch specialises sizes 0 and 1, which gives a bounded
set of variants per step function: timesteps shared by all tokens (a [B, 1, C] AdaLN input) or per token (first-frame
conditioning drawn: [B, N, C]), times a batch of 1 or of more than 1: at most 4 graphs per step function, within
dynamo's default recompile limit of 8 (tested with three buckets: 2 graphs, one per timestep layout).

Two more guards are kept out of the way:
- requires_grad of the block input: block 0 takes the output of frozen layers (no grad), every later block the
  output of a block with LoRA. A mismatch is a guard failure, so block 0's input is made to require grad (the cost
  is block 0's input gradient, a fraction of one block's backward of 48).
- grad mode: forwards without grad (previews, which also hook attention modules of the STG blocks) run eagerly;
  compiling them would add graphs per hooked block for a few sampling steps.

Gradient checkpointing wraps the compiled step in torch.utils.checkpoint (non-reentrant); the recompute in backward
calls the same compiled graph. `compile_counts()` reports the graphs so far (a benchmark prints it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ltx2_tuner.models import transformer

BLOCK_STEPS: tuple[Callable, ...] = (transformer._video_block, transformer._audio_block, transformer._av_block)
_HIDDEN_ARGS = {transformer._av_block: 2}  # leading tensor arguments after the block: the residual streams


def compile_blocks(adapter: transformer.TransformerAdapter, backend: str = "inductor") -> None:
    """Fill `adapter.compiled_steps` with compiled block steps (call after LoRA injection and block swap, which
    change the modules the first compile sees)."""
    adapter.compiled_steps = {step: _compiled(step, backend) for step in BLOCK_STEPS}


def _compiled(step: Callable, backend: str) -> Callable:
    compiled = torch.compile(step, backend=backend, dynamic=True)
    num_hidden = _HIDDEN_ARGS.get(step, 1)

    @functools.wraps(step)
    def run(block: nn.Module, *args):
        if not torch.is_grad_enabled():
            return step(block, *args)
        hidden = [x if x.requires_grad else x.detach().requires_grad_() for x in args[:num_hidden]]
        return compiled(block, *hidden, *args[num_hidden:])

    return run


def compile_counts() -> dict[str, int]:
    """Compiled graphs so far: per block step function (1 = compiled once, never recompiled), and "unique_graphs",
    dynamo's count of every graph it made (more than the sum would mean graph breaks)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch._dynamo.utils import counters

    counts = {step.__name__: len(_debug_get_cache_entry_list(step.__code__)) for step in BLOCK_STEPS}
    counts["unique_graphs"] = counters["stats"]["unique_graphs"]
    return counts
