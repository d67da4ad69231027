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
import errno
import glob
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import save as serialize

from ltx2_tuner.errors import CheckpointError, Ltx2TunerError

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


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_TEMP_INFIX = ".tmp"  # NAME's temporary file is .NAME.tmpPID (cache/store.py removes those of killed caching runs)
_FIX = "free space on that drive and run again (the file that was there before is unchanged)"


def save_atomically(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str],
    error_class: type[Ltx2TunerError] = CheckpointError,
    fix: str = _FIX,
    remove_abandoned: bool = True,
) -> None:
    """Write a safetensors file through `write_atomically`: no reader ever sees half a file."""
    data = serialize({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_atomically(path, lambda file: file.write(data), error_class, fix, remove_abandoned)


def write_atomically(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    error_class: type[Ltx2TunerError] = CheckpointError,
    fix: str = _FIX,
    remove_abandoned: bool = True,
) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`.

    We write the bytes ourselves (safetensors' `save_file` writes its own randomly named temporary file, which a
    killed run would leave behind where nothing removes it) so that a full disk surfaces as an OSError we can name:
    it becomes `error_class` with one line (file, disk full, `fix`). The temporary file goes whatever happens; one
    left by a killed process is removed by the next write of the same file (`remove_abandoned`; writers of many files
    to one folder clear it once instead, as the caching commands do: this lists the folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if remove_abandoned:
        _remove_abandoned_temporaries(path)
    tmp = path.with_name(f".{path.name}{_TEMP_INFIX}{os.getpid()}")
    try:
        with tmp.open("wb") as file:
            write(file)
        os.replace(tmp, path)
    except OSError as error:
        if is_disk_full(error):
            raise error_class(f"{path}: not written, the disk is full; {fix}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def is_disk_full(error: OSError) -> bool:
    """No space left, or the user's quota is used up."""
    return error.errno in DISK_FULL_ERRNOS


def process_is_gone(pid: int) -> bool:
    """True when no process `pid` runs on this machine (so a temporary file named after it is abandoned)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        pass
    return False


def _remove_abandoned_temporaries(path: Path) -> None:
    """Temporary files of `path` left by processes that were killed while writing it."""
    prefix = f".{path.name}{_TEMP_INFIX}"
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = leftover.name.removeprefix(prefix)
        if pid.isdigit() and int(pid) != os.getpid() and process_is_gone(int(pid)):
            leftover.unlink(missing_ok=True)
