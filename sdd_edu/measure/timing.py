"""Honest timing: warm-up, device synchronisation, medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..decoding.common import synchronize
from ..loading import cpu_features, device_description  # noqa: F401 -- where the measurements name the machine


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    """One call of ``fn``, timed between device synchronisations."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn``, each measured between device synchronisations, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    return [_seconds(fn, device) for _ in range(repeats)]


def fastest_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
                 min_seconds: float = 0.25, max_calls: int = 2000) -> float:
    """The fastest of at least ``repeats`` calls of ``fn`` (seconds, between device synchronisations), calls
    going on until ``min_seconds`` have passed: a ceiling is the best the device does, and a short burst of
    other work on a shared CPU (a browser drawing the page beside the kernel) slows every call it overlaps,
    so the calls are spread over enough time to find a quiet moment."""
    for _ in range(warmup):
        fn()
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < repeats or (time.perf_counter() - start < min_seconds and calls < max_calls):
        best = min(best, _seconds(fn, device))
        calls += 1
    return best


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")
