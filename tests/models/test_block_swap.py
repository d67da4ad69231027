"""Block swap on the CPU: swapped equals plain bit for bit (outputs, LoRA gradients, optimizer steps), frozen weights
sit in their host copies between uses, and at most two swapped blocks' weights are alive at once.

The host copies are poisoned (NaN) and the real values come back only through `device_copy`, so any computation
that reads a swapped weight outside its block's turn (forward, backward or recompute) turns the result into NaN.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import block_swap, load_transformer
from ltx2_tuner.networks import lora_ltx2
from ltx2_tuner.testing.poisoned_host import PoisonedHost
from ltx2_tuner.testing.transformer_inputs import make_inputs

NUM_BLOCKS = 5  # the tiny checkpoint's 2 blocks, deepened with copies so that "at most 2" means something


class FakeDevice(PoisonedHost):
    """Poisoned host copies, and which block each live device copy belongs to (at most two at once)."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)
        self.block_of: dict[int, int] = {}  # poisoned host copy data_ptr -> block index (set by `track`)
        self.most_alive = 0

    def label(self, host):
        return self.block_of[host.data_ptr()]

    def before_copy(self) -> None:
        self.check()

    def track(self, model) -> None:
        """Note which block each host copy belongs to; check the bound before every block runs or recomputes."""
        blocks = model.backbone.transformer_blocks
        for index in model.block_swap.swapped:
            for param in blocks[index].parameters():
                if not param.requires_grad:
                    self.block_of[param.data_ptr()] = index
        for block in blocks:
            block.register_forward_pre_hook(lambda module, args: self.check())

    def check(self) -> None:
        blocks = set(self.alive())
        self.most_alive = max(self.most_alive, len(blocks))
        assert len(blocks) <= 2, f"device copies of blocks {sorted(blocks)} alive at once"


def _deepened(tiny_path, mode: str):
    model = load_transformer(tiny_path, mode=mode)
    blocks = model.backbone.transformer_blocks
    generator = torch.Generator().manual_seed(0)
    for _ in range(NUM_BLOCKS - len(blocks)):
        extra = copy.deepcopy(blocks[len(blocks) % 2])
        for param in extra.parameters():  # distinct weights per block: a mixed-up block changes the result
            param.data.add_(torch.randn(param.shape, generator=generator) * 0.01)
        blocks.append(extra)
    return model


def _with_lora(model, mode: str) -> list[torch.nn.Parameter]:
    targets = lora_ltx2.select_targets(model.backbone, mode, ["preset=full"])
    params = lora_ltx2.add_lora(model.backbone, lora_ltx2.LoraSpec(4, 4.0, 0.0, targets))
    generator = torch.Generator().manual_seed(1)
    for param in params:  # lora_B starts at 0; random values make lora_A's gradients non-zero too
        param.data.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return params


def _pair(tiny_path, mode: str, num_swapped: int, monkeypatch, lora_after: bool = False):
    """(plain model, swapped model, fake device) with equal weights and LoRAs."""
    plain = _deepened(tiny_path, mode)
    _with_lora(plain, mode)
    swapped = _deepened(tiny_path, mode)
    fake = FakeDevice(monkeypatch)
    if lora_after:
        swapped.enable_block_swap(num_swapped, "cpu")
        _with_lora(swapped, mode)
    else:
        _with_lora(swapped, mode)
        swapped.enable_block_swap(num_swapped, "cpu")
    fake.track(swapped)
    return plain, swapped, fake


def _inputs(model, mode: str) -> dict:
    video, audio = make_inputs(model.config, audio_sigma=(0.6, 0.1), first_frame_clean=True)
    return {"video": video, "audio": audio if mode == "av" else None}


def _loss_and_grads(model, inputs: dict):
    model.zero_grad(set_to_none=True)
    outputs = [o for o in model(**inputs) if o is not None]
    sum((o**2).mean() for o in outputs).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs, grads


def _streamed_at_host(model, fake: FakeDevice) -> dict[int, bool]:
    """Per swapped block: whether every frozen tensor points at its (poisoned) host copy."""
    blocks = model.backbone.transformer_blocks
    return {
        index: all(p.data_ptr() in fake.real for p in blocks[index].parameters() if not p.requires_grad)
        for index in model.block_swap.swapped
    }


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("num_swapped", [1, 3, NUM_BLOCKS])
@pytest.mark.parametrize("mode", ["video", "av"])
def test_swapped_outputs_and_lora_gradients_equal_plain(tiny_checkpoints, monkeypatch, mode, num_swapped,
                                                        checkpointing):  # fmt: skip
    plain, swapped, fake = _pair(tiny_checkpoints["2.3"].path, mode, num_swapped, monkeypatch)
    for model in (plain, swapped):
        model.enable_gradient_checkpointing(checkpointing)
    inputs = _inputs(plain, mode)
    for _ in range(2):  # the second step starts from what the first backward left on the device
        plain_out, plain_grads = _loss_and_grads(plain, inputs)
        swapped_out, swapped_grads = _loss_and_grads(swapped, inputs)
        assert all(torch.equal(a, b) for a, b in zip(plain_out, swapped_out, strict=True))
        assert plain_grads.keys() == swapped_grads.keys() and len(plain_grads) > 0
        assert all(torch.equal(plain_grads[n], swapped_grads[n]) for n in plain_grads)
        assert all(g.abs().sum() > 0 for g in swapped_grads.values())
    assert fake.most_alive == min(2, num_swapped)
    # Backward ends on the first swapped block, which the next forward needs first: only it stays on the device.
    at_host = _streamed_at_host(swapped, fake)
    assert [index for index, home in at_host.items() if not home] == [NUM_BLOCKS - num_swapped]


def test_no_grad_forward_leaves_every_swapped_block_in_host_memory(tiny_checkpoints, monkeypatch):
    plain, swapped, fake = _pair(tiny_checkpoints["2.3"].path, "av", 3, monkeypatch)
    inputs = _inputs(plain, "av")
    assert all(_streamed_at_host(swapped, fake).values())  # right after enable_block_swap
    with torch.no_grad():
        for ours, theirs in zip(swapped(**inputs), plain(**inputs), strict=True):
            assert torch.equal(ours, theirs)
    assert all(_streamed_at_host(swapped, fake).values())
    assert fake.most_alive == 2
    _loss_and_grads(swapped, inputs)
    swapped.block_swap.release_all()
    assert all(_streamed_at_host(swapped, fake).values()) and not fake.alive()


def test_after_forward_with_grad_only_the_last_block_stays_on_the_device(tiny_checkpoints, monkeypatch):
    # Without checkpointing autograd saves views of the weights; they must not keep device copies alive.
    _, swapped, fake = _pair(tiny_checkpoints["2.3"].path, "av", NUM_BLOCKS, monkeypatch)
    outputs = swapped(**_inputs(swapped, "av"))
    assert set(fake.alive()) == {NUM_BLOCKS - 1}
    assert [i for i, home in _streamed_at_host(swapped, fake).items() if not home] == [NUM_BLOCKS - 1]
    sum((o**2).mean() for o in outputs).backward()
    assert set(fake.alive()) == {0}


def test_lora_stays_the_same_objects_on_the_device_and_steps_identically(tiny_checkpoints, monkeypatch):
    plain, swapped, _ = _pair(tiny_checkpoints["2.3"].path, "video", 3, monkeypatch, lora_after=False)
    before = {name: (p, p.data_ptr()) for name, p in swapped.named_parameters() if p.requires_grad}
    streamed = {id(t) for t in swapped.block_swap.streamed_tensors()}
    assert not any(id(p) in streamed for p, _ in before.values())
    inputs = _inputs(plain, "video")
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (plain, swapped)]
    for _ in range(2):
        for model, optimizer in zip((plain, swapped), optimizers, strict=True):
            _loss_and_grads(model, inputs)
            optimizer.step()
    after = {name: p for name, p in swapped.named_parameters() if p.requires_grad}
    assert all(after[name] is p and p.data_ptr() == ptr and p.device.type == "cpu" for name, (p, ptr) in before.items())
    plain_lora = {name: p for name, p in plain.named_parameters() if p.requires_grad}
    assert all(torch.equal(plain_lora[name], after[name]) for name in after)
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in after.values())


def test_lora_injected_after_enable_block_swap_is_kept_on_the_device(tiny_checkpoints, monkeypatch):
    plain, swapped, _ = _pair(tiny_checkpoints["2.3"].path, "av", 2, monkeypatch, lora_after=True)
    inputs = _inputs(plain, "av")
    plain_out, plain_grads = _loss_and_grads(plain, inputs)
    swapped_out, swapped_grads = _loss_and_grads(swapped, inputs)
    assert all(torch.equal(a, b) for a, b in zip(plain_out, swapped_out, strict=True))
    assert all(torch.equal(plain_grads[n], swapped_grads[n]) for n in plain_grads)
    streamed = {id(t) for t in swapped.block_swap.streamed_tensors()}
    lora = [p for p in swapped.parameters() if p.requires_grad]
    assert lora and not any(id(p) in streamed for p in lora)
    assert len(streamed) == sum(1 for i in swapped.block_swap.swapped
                                for p in swapped.backbone.transformer_blocks[i].parameters() if not p.requires_grad)  # fmt: skip


def test_more_blocks_than_the_transformer_has_is_one_line(tiny_checkpoints):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    with pytest.raises(ConfigError, match=r"^--blocks_to_swap 3: this transformer has 2 blocks; pass 1 to 2$"):
        model.enable_block_swap(3, "cpu")
    assert model.block_swap is None


def test_real_host_copies_on_the_cpu_are_the_loaded_tensors(tiny_checkpoints):
    # Without CUDA nothing is pinned and no second host copy is made: the host copy is the loaded tensor itself.
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    last = model.backbone.transformer_blocks[-1]
    pointers = {p.data_ptr() for p in last.parameters()}
    reference = copy.deepcopy(model)
    model.enable_block_swap(1, "cpu")
    assert {p.data_ptr() for p in last.parameters()} == pointers
    video, _ = make_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(video)[0], reference(video)[0])
    assert {p.data_ptr() for p in last.parameters()} == pointers


class _SavesWeight(torch.autograd.Function):
    """A Linear that saves its (frozen) weight itself for backward, as custom fp8 matmuls do."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None


def _save_weights_in_a_custom_function(model) -> None:
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad:
            module.forward = lambda x, m=module: _SavesWeight.apply(x, m.weight, m.bias)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_weights_saved_by_a_custom_function_are_back_for_backward(tiny_checkpoints, monkeypatch, checkpointing):
    plain, swapped, fake = _pair(tiny_checkpoints["2.3"].path, "video", 3, monkeypatch)
    for model in (plain, swapped):
        _save_weights_in_a_custom_function(model)
        model.enable_gradient_checkpointing(checkpointing)
    inputs = _inputs(plain, "video")
    plain_out, plain_grads = _loss_and_grads(plain, inputs)
    swapped_out, swapped_grads = _loss_and_grads(swapped, inputs)
    assert torch.equal(plain_out[0], swapped_out[0]) and plain_grads.keys() == swapped_grads.keys()
    assert all(torch.equal(plain_grads[n], swapped_grads[n]) for n in plain_grads)
    assert fake.most_alive == 2


class FakeCuda:
    """Stands in for torch.cuda's streams and events and logs what BlockSwap asks of them (no GPU in CI)."""

    def __init__(self, monkeypatch):
        self.log: list[tuple] = []
        fake = self

        class Stream:
            def __init__(self, name):
                self.name = name

            def wait_event(self, event):
                fake.log.append(("wait", self.name, event))

        class Event:
            def record(self, stream):
                fake.log.append(("record", self, stream.name))

            def synchronize(self):
                fake.log.append(("synchronize", self))

        @contextlib.contextmanager
        def stream(chosen):
            previous, self.current = self.current, chosen
            yield
            self.current = previous

        self.compute, self.copy = Stream("compute"), Stream("copy")
        self.current = self.compute
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, on: self.log.append(("uses", t, on.name)))
        monkeypatch.setattr(block_swap, "device_copy", self.device_copy)

    def device_copy(self, host, device, non_blocking):
        copy = host.clone()
        self.log.append(("copy", self.current.name, non_blocking, copy))
        return copy


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_cuda_stream_protocol(tiny_checkpoints, monkeypatch, checkpointing):
    """Copies are made on the side stream and marked as used by the compute stream; the compute stream waits for a
    block's copies before the block runs; the CPU waits for the GPU to finish with dropped copies before copying."""
    model = _deepened(tiny_checkpoints["2.3"].path, "av")
    _with_lora(model, "av")
    model.enable_block_swap(3, "cpu")
    model.enable_gradient_checkpointing(checkpointing)
    cuda = FakeCuda(monkeypatch)
    model.block_swap._copy_stream = cuda.copy
    blocks = model.backbone.transformer_blocks
    for index, block in enumerate(blocks):
        weight = next(p for p in block.parameters() if not p.requires_grad)
        block.register_forward_pre_hook(lambda m, a, i=index, w=weight: cuda.log.append(("run", i, w.data_ptr())))
    outputs = model(**_inputs(model, "av"))
    sum((o**2).mean() for o in outputs).backward()

    log = cuda.log
    copies = [entry for entry in log if entry[0] == "copy"]
    assert copies and all(stream == "copy" and non_blocking for _, stream, non_blocking, _ in copies)
    marked = {id(e[1]) for e in log if e[0] == "uses" and e[2] == "compute"}
    assert all(id(copy) in marked for *_, copy in copies)
    copied = [e[1] for e in log if e[0] == "record" and e[2] == "copy"]
    released = [e[1] for e in log if e[0] == "record" and e[2] == "compute"]
    # 3 blocks in for forward, 3 for backward, less the last one, which stays on the device across the turn.
    assert len(copied) == 5 and len(released) == 4  # the first swapped block stays after backward
    for position, entry in enumerate(log):
        if entry[0] == "run" and entry[1] in model.block_swap.swapped:  # the compute stream waited for its copies
            made = max(i for i, e in enumerate(log[:position]) if e[0] == "copy" and e[3].data_ptr() == entry[2])
            event = next(e[1] for e in log[made:] if e[0] == "record" and e[2] == "copy")
            assert ("wait", "compute", event) in log[made:position]
        if entry[0] == "copy":  # the CPU waited until the GPU was done with every copy dropped so far
            earlier = log[:position]
            waited = {id(e[1]) for e in earlier if e[0] == "synchronize"}
            assert all(id(e[1]) in waited for e in earlier if e[0] == "record" and e[2] == "compute")
