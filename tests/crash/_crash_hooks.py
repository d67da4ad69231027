"""Run a command's module as `python -m` would, SIGKILLing the process at a chosen point (test-only; no hook lives in
the product code).

    python _crash_hooks.py ltx2_tuner.cli.cache_latents --dataset_config ...

CRASH_AT=<point>:<n> kills at the n-th time the point is reached; CRASH_MATCH limits the file points to paths that
contain it. Points:
    before_write    a file write (models/safetensors_io.py `write_atomically`) is about to start: between items
    inside_write    a file write is half done: half its bytes are in the temporary file, none renamed
    optimizer_step  the trainer is about to take an optimizer step
    mp4_audio       the mp4 writer is muxing a chunk of audio: frames are in the temporary file, the file is unfinished
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(limit: int):
    hits = 0

    def reached() -> bool:
        nonlocal hits
        hits += 1
        return hits == limit

    return reached


def _install(point: str, limit: int, match: str) -> None:
    reached = _counter(limit)
    if point in ("before_write", "inside_write"):
        from ltx2_tuner.models import safetensors_io

        real_write_atomically = safetensors_io.write_atomically

        def write_atomically(path, write, *args, **kwargs):
            if match not in str(path) or not reached():
                return real_write_atomically(path, write, *args, **kwargs)
            if point == "before_write":
                _kill()

            def half_then_kill(file) -> None:
                buffer = io.BytesIO()
                write(buffer)
                data = buffer.getvalue()
                file.write(data[: len(data) // 2])
                file.flush()
                _kill()

            return real_write_atomically(path, half_then_kill, *args, **kwargs)

        safetensors_io.write_atomically = write_atomically
    elif point == "optimizer_step":
        from ltx2_tuner.training import trainer

        real_step = trainer._optimizer_step

        def optimizer_step(run):
            if reached():
                _kill()
            return real_step(run)

        trainer._optimizer_step = optimizer_step
    elif point == "mp4_audio":
        from ltx2_tuner.sampling import media_writers

        real_encode = media_writers._encode_audio

        def encode_audio(container, *args, **kwargs):
            if reached():
                _kill()
            return real_encode(container, *args, **kwargs)

        media_writers._encode_audio = encode_audio
    else:
        raise SystemExit(f"unknown CRASH_AT point {point!r}")


if __name__ == "__main__":
    point, limit = os.environ["CRASH_AT"].rsplit(":", 1)
    _install(point, int(limit), os.environ.get("CRASH_MATCH", ""))
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
