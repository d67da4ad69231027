"""Resident-memory measurement for the benchmarks, from Linux /proc (no extra dependency).

    with PeakRss() as meter:
        work()
    meter.peak, meter.kept  # bytes above the RSS at entry: the high-water mark, and what is still resident

The high-water mark (VmHWM) is reset at entry through /proc/self/clear_refs; where the kernel refuses, a thread
samples VmRSS every 5 ms instead (`meter.sampled` says which).
"""

from __future__ import annotations

import threading
from pathlib import Path

MIB = 2**20


def available() -> bool:
    return Path("/proc/self/status").exists()


def proc_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM, RssFile, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS ("5" in clear_refs, Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return proc_bytes("VmHWM") <= proc_bytes("VmRSS") + MIB


class _Sampler(threading.Thread):
    """Fallback peak: sample VmRSS every 5 ms (file reads and torch kernels release the GIL)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = proc_bytes("VmRSS")
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, proc_bytes("VmRSS"))


class PeakRss:
    """Peak and kept resident memory of the `with` body, in bytes above the RSS at entry."""

    def __enter__(self) -> PeakRss:
        self.baseline = proc_bytes("VmRSS")
        self.baseline_file = proc_bytes("RssFile")
        self._sampler = None if _reset_high_water_mark() else _Sampler()
        if self._sampler:
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._sampler:
            self._sampler.stop.set()
            self._sampler.join()
            self._sampler.peak = max(self._sampler.peak, proc_bytes("VmRSS"))
        self.sampled = self._sampler is not None
        self.peak = (self._sampler.peak if self._sampler else proc_bytes("VmHWM")) - self.baseline
        self.kept = proc_bytes("VmRSS") - self.baseline
        self.kept_file = proc_bytes("RssFile") - self.baseline_file
