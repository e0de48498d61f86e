"""Honest timing: warm-up, device synchronisation, medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..decoding.common import synchronize
from ..loading import cpu_features, device_description  # noqa: F401 -- where the measurements name the machine


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
