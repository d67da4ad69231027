"""Block swap: the frozen weights of the last N transformer blocks live in host memory and are streamed in ahead of use.

`TransformerAdapter.enable_block_swap(n, device)` sets it up; the adapter calls `before_forward(i)` before block i
runs and `after_forward(i, out)` after it. Only frozen tensors move (parameters with requires_grad False, and
buffers): each has one host copy (pinned when CUDA is available, so copies run asynchronously), and a swapped-out
tensor simply points at it again; frozen weights never change, so nothing is copied back. Trainable parameters (LoRA)
stay on the device, are never copied, and keep their identity, so the optimizer steps the real ones. Which tensors
are frozen is decided when a block first runs, so LoRA layers injected after `enable_block_swap` are found too.

Why the last N blocks: backward runs the blocks in reverse, so the block the forward ends with is the first one
backward needs. It stays on the device across that turn, and the first swapped block that backward leaves on the
device is the first one the next forward needs. Forward prefetches block i+1 while block i runs; backward brings in
block i (and prefetches i-1) just before block i's backward, through an identity autograd node on block i's output.
With gradient checkpointing that node also runs before the block's recompute.

Memory: at any time at most 2 swapped blocks' frozen weights are referenced on the device (the one in use and the
one being prefetched), next to the resident blocks and the rest of the model. Without gradient checkpointing
autograd would keep every Linear weight it used alive (it saves `weight.t()`, a view of the device copy), so while
a swapped block runs forward with grad enabled, saved tensors that are views of its device weights are stored as a
reference to the parameter and rebuilt from it in backward (saved-tensor hooks), after the block is back.

On CUDA, copies run on a side stream (non_blocking, from pinned memory); the compute stream waits on an event before
the block runs, and each copy is recorded on the compute stream so the caching allocator does not reuse its memory
while kernels still read it. Before copying a block in, the CPU waits until the GPU is done with the copies dropped
last: the CPU runs ahead of the GPU, and without that wait the allocator, unable to reuse memory still in use, would
allocate fresh memory for every block (the CPU stays about one block ahead; the copy still overlaps the compute of
the block before). On the CPU the same code runs without streams: a "device copy" is a CPU clone, which lets tests
check every use. Host copies are pinned one tensor at a time (the pinned allocator rounds each size up to a power of
two; LTX weight shapes are powers of two already).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ltx2_tuner.errors import ConfigError


def check_swap_count(num_blocks: int, num_swapped: int) -> None:
    """One line when --blocks_to_swap asks for more blocks than the transformer has (or none)."""
    if not 0 < num_swapped <= num_blocks:
        raise ConfigError(
            f"--blocks_to_swap {num_swapped}: this transformer has {num_blocks} blocks; pass 1 to {num_blocks}"
        )


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The one host copy of a frozen tensor: pinned when CUDA is available (asynchronous uploads), else the CPU
    tensor itself (no second copy)."""
    host = tensor.detach().to("cpu")
    return host.pin_memory() if torch.cuda.is_available() else host


def device_copy(host: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
    """A fresh copy of a host tensor on `device` (a new tensor even when `device` is the CPU)."""
    return host.to(device, non_blocking=non_blocking, copy=True)


@dataclass(frozen=True, eq=False)
class _WeightView:
    """A saved tensor that was a view of a swapped weight, kept as the weight plus the view's geometry."""

    weight: torch.Tensor
    size: torch.Size
    stride: tuple[int, ...]
    storage_offset: int


class BlockSwap:
    """Streams the frozen tensors of `blocks[-num_swapped:]` between host memory and `device`."""

    def __init__(self, blocks: Sequence[nn.Module], num_swapped: int, device: torch.device | str):
        check_swap_count(len(blocks), num_swapped)
        self.blocks = blocks
        self.device = torch.device(device)
        self.swapped = range(len(blocks) - num_swapped, len(blocks))
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in self.swapped}
        self._incoming: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}  # prefetched, not in use
        self._on_device: set[int] = set()  # blocks whose frozen tensors point at device copies
        self._owners: dict[int, torch.Tensor] = {}  # device copy data_ptr -> the frozen tensor using it
        self._checked: set[int] = set()  # blocks split after their first use
        self._released: list[torch.cuda.Event] = []  # CUDA: recorded on the compute stream when copies are dropped
        self._hooks = None  # the saved-tensor hooks open while a swapped block runs forward with grad
        for index in self.swapped:
            self._split(index)

    def streamed_tensors(self) -> list[torch.Tensor]:
        """The frozen parameters and buffers that live in host memory between uses."""
        return [tensor for index in self.swapped for tensor, _ in self._frozen[index]]

    def before_forward(self, index: int) -> None:
        """Block `index` runs next: its weights on the device, the next swapped block on its way."""
        self._close_hooks()  # left open only if the previous block raised
        ahead = [i for i in self.swapped if i >= index][:2]
        self._release_all_but(ahead)
        if index in self.swapped:
            self._use(index)
            if torch.is_grad_enabled():
                self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
                self._hooks.__enter__()
        if index + 1 in self.swapped:
            self._fetch(index + 1)

    def after_forward(self, index: int, out):
        """Block `index` ran and returned `out` (a tensor or a tuple of tensors); swap it out unless backward needs
        it first, and have backward bring it back before its own backward."""
        if index not in self.swapped:
            return out
        self._close_hooks()
        tensors = out if isinstance(out, tuple) else (out,)
        backward_follows = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        if backward_follows:
            tensors = _BringBackForBackward.apply(self, index, *tensors)
            out = tensors if isinstance(out, tuple) else tensors[0]
        if not (backward_follows and index == self.swapped[-1]):
            self._release(index)
        return out

    def before_backward(self, index: int) -> None:
        """Block `index`'s backward (or recompute) runs next; block index+1's backward is done."""
        behind = [i for i in (index, index - 1) if i in self.swapped]
        self._release_all_but(behind)
        self._use(index)
        if index - 1 in self.swapped:
            self._fetch(index - 1)

    def release_all(self) -> None:
        """Point every swapped tensor back at its host copy (frees the device copies)."""
        self._close_hooks()
        self._release_all_but(())

    # Moving tensors.

    def _split(self, index: int) -> None:
        """Frozen tensors of block `index` to host memory, trainable ones to the device (once per tensor)."""
        known = {id(tensor) for tensor, _ in self._frozen[index]}
        block = self.blocks[index]
        for tensor in [*block.parameters(), *block.buffers()]:
            if id(tensor) in known:
                continue
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                if tensor.device != self.device:
                    tensor.data = tensor.data.to(self.device)
            else:
                host = host_copy(tensor)
                tensor.data = host
                self._frozen[index].append((tensor, host))

    def _fetch(self, index: int) -> None:
        """Start copying block `index`'s frozen tensors to the device (on the side stream on CUDA)."""
        if index in self._on_device or index in self._incoming:
            return
        if index not in self._checked:  # LoRA may have been injected after enable_block_swap
            self._split(index)
            self._checked.add(index)
        hosts = [host for _, host in self._frozen[index]]
        if self._copy_stream is None:
            self._incoming[index] = ([device_copy(host, self.device, False) for host in hosts], None)
            return
        # The CPU runs ahead of the GPU; without this wait the allocator could not reuse the memory of the block
        # released last (the GPU may still read it) and would allocate fresh memory for every block it copies.
        for released in self._released:
            released.synchronize()
        self._released.clear()
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            copies = [device_copy(host, self.device, True) for host in hosts]
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        for copy in copies:
            copy.record_stream(compute)  # its memory is not reused before the compute stream is done with it
        self._incoming[index] = (copies, done)

    def _use(self, index: int) -> None:
        """Point block `index`'s frozen tensors at their device copies; the current stream waits for the copies."""
        if index in self._on_device:
            return
        self._fetch(index)
        copies, done = self._incoming.pop(index)
        if any(tensor.requires_grad for tensor, _ in self._frozen[index]):
            raise ValueError(f"block swap streams frozen weights only; a weight of block {index} was unfrozen")
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        for (tensor, _), copy in zip(self._frozen[index], copies, strict=True):
            tensor.data = copy
            if copy.numel():  # empty tensors may share a data_ptr
                self._owners[copy.data_ptr()] = tensor
        self._on_device.add(index)

    def _release(self, index: int) -> None:
        """Drop block `index`'s device copies (its frozen tensors point at their host copies again)."""
        dropped = self._incoming.pop(index, None) is not None
        if index in self._on_device:
            for tensor, host in self._frozen[index]:
                self._owners.pop(tensor.data_ptr(), None)
                tensor.data = host
            self._on_device.discard(index)
            dropped = True
        if dropped and self._copy_stream is not None:  # marks when the GPU is done with the dropped copies
            released = torch.cuda.Event()
            released.record(torch.cuda.current_stream(self.device))
            self._released.append(released)

    def _release_all_but(self, keep) -> None:
        for index in [*self._on_device, *self._incoming]:
            if index not in keep:
                self._release(index)

    # Saved tensors of a swapped block (forward with grad): views of its device weights are kept as references.

    def _pack(self, tensor: torch.Tensor):
        if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.layout != torch.strided:
            return tensor  # tensor subclasses keep their own storage
        weight = self._owners.get(tensor.untyped_storage().data_ptr())
        if weight is None or weight.dtype != tensor.dtype or tensor.requires_grad:
            return tensor
        return _WeightView(weight, tensor.size(), tensor.stride(), tensor.storage_offset())

    @staticmethod
    def _unpack(saved):
        if isinstance(saved, _WeightView):  # the block is back on the device: before_backward ran
            return saved.weight.data.as_strided(saved.size, saved.stride, saved.storage_offset)
        return saved

    def _close_hooks(self) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None


class _BringBackForBackward(torch.autograd.Function):
    """Identity on a block's outputs whose backward brings the block's weights back before the block's backward."""

    @staticmethod
    def forward(ctx, swap: BlockSwap, index: int, *tensors):
        ctx.swap, ctx.index = swap, index
        return tensors

    @staticmethod
    def backward(ctx, *grads):
        ctx.swap.before_backward(ctx.index)
        return (None, None, *grads)
