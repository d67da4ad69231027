"""Reading and writing `.safetensors` files with control over what is read and when.

We parse the header ourselves so that a bad file gets a precise message (not a safetensors file, truncated)
and read each tensor with one positioned read into its own buffer, cast right away if asked. safetensors'
`safe_open` hands out tensors backed by a map of the file: copying or casting them out of the map keeps the map's
pages resident too (measured: 2x the weights at peak for a copy, 3x the bf16 bytes for an fp32 -> bf16 cast).
Here the peak stays near one copy in every case, and the weights do not depend on the file staying in place
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ltx2_tuner.errors import CheckpointError

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int
    file: Path | None = None  # set in a merged header (`merge_headers`): the file this tensor lives in

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    header_bytes: bytes


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header; raise CheckpointError with the fix for any defect."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass the .safetensors checkpoint file")
    file_size = path.stat().st_size
    not_safetensors = (
        f"{path}: not a safetensors file; pass an official LTX-2 checkpoint such as ltx-2-19b-dev.safetensors"
    )
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(not_safetensors)
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > _MAX_HEADER_BYTES:
            raise CheckpointError(not_safetensors)
        if 8 + header_len > file_size:
            raise CheckpointError(
                f"{path}: file is truncated ({file_size} bytes, its header alone needs {8 + header_len}); "
                "download it again"
            )
        header_bytes = f.read(header_len)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(not_safetensors) from None
    if not isinstance(header, dict):
        raise CheckpointError(not_safetensors)

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, TensorEntry] = {}
    data_end = data_start
    try:
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            tensors[name] = TensorEntry(entry["dtype"], tuple(entry["shape"]), data_start + begin, data_start + end)
            data_end = max(data_end, data_start + end)
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(not_safetensors) from None
    if data_end > file_size:
        raise CheckpointError(f"{path}: file is truncated ({file_size} of {data_end} bytes); download it again")
    return SafetensorsHeader(path, tensors, dict(metadata), header_bytes)


def read_tensors(
    header: SafetensorsHeader, names: Iterable[str], dtype: torch.dtype | None = None
) -> Iterable[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for the requested names only, each read into its own buffer.

    Floating-point tensors are cast to `dtype` when it is given; the uncast buffer is dropped right away.
    """
    with contextlib.ExitStack() as stack:
        handles: dict[Path, object] = {}
        for name in names:
            entry = header.tensors[name]
            path = entry.file or header.path
            if path not in handles:
                handles[path] = stack.enter_context(path.open("rb", buffering=0))
            f = handles[path]
            torch_dtype = _DTYPES.get(entry.dtype)
            if torch_dtype is None:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry.dtype}")
            buffer = bytearray(entry.nbytes)
            f.seek(entry.start)
            if f.readinto(buffer) != entry.nbytes:
                raise CheckpointError(f"{path}: file is truncated inside tensor {name}; download it again")
            if entry.nbytes:
                tensor = torch.frombuffer(buffer, dtype=torch_dtype).reshape(entry.shape)
            else:
                tensor = torch.empty(entry.shape, dtype=torch_dtype)
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            yield name, tensor


def merge_headers(primary: SafetensorsHeader, other: SafetensorsHeader, names: Iterable[str]) -> SafetensorsHeader:
    """`primary` plus `names` of `other` (a split pack keeps the text projections in the text encoder's file), read
    from their own file by `read_tensors`. Path and metadata stay `primary`'s; the header bytes are both files' (so a
    fingerprint of the merged view changes when either file does)."""
    tensors = dict(primary.tensors)
    for name in names:
        entry = other.tensors[name]
        tensors[name] = dataclasses.replace(entry, file=entry.file or other.path)
    return dataclasses.replace(primary, tensors=tensors, header_bytes=primary.header_bytes + other.header_bytes)


def rename_tensors(header: SafetensorsHeader, rename) -> SafetensorsHeader:
    """The same file seen under other tensor names (`rename(name) -> new name`)."""
    return dataclasses.replace(header, tensors={rename(name): entry for name, entry in header.tensors.items()})


def save_atomically(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file under a temporary name, then rename it, so no reader sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
