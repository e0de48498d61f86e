"""Honest timing: warm-up, device synchronisation, medians."""

from __future__ import annotations

import functools
import platform
import statistics
import time
from typing import Callable

import torch

from ..decoding.common import synchronize


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn``, each measured between device synchronisations, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def device_description(device: torch.device) -> str:
    """The device in words, with the CPU thread count (it changes CPU results a lot)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    cpu = _cpu_name() or platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=1)
def cpu_features() -> str:
    """The CPU's vector instructions that change which matrix product is fastest ("" if unknown): two CPUs
    with the same name can differ here (a cloud "AMD EPYC" with or without AVX-512)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    except OSError:
        pass
    return platform.machine()


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
