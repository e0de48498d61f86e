"""A step's phases replayed from CUDA graphs: the draft phase, the target's forward, the walk and commit.

The phases are written so that a graph can hold them (``capture.traces_without_reads`` checks it on
any device): shapes fixed by the step's shape (its size, the pending tokens' bucket), every value they
read a tensor at a fixed address, the state they keep updated in place.  ``StepGraphs`` then runs a
step's phases eagerly the first time a shape occurs (a real step, which also warms everything up), and
right after records each phase as a ``torch.cuda.CUDAGraph`` (recording runs nothing), the later phases
reading the earlier ones' recorded outputs.  Every later step of that shape replays the three graphs:
three launches instead of hundreds of kernels launched one by one from Python.

Random numbers: a recorded phase reads its draws from a buffer (``trees.Uniforms``) that the step fills
from the generation's generator before the replay (one kernel).  The fast caches' own graphs (one per
bucket, ``sdd_edu/fast.py``) are not replayed inside a recording: their forwards are recorded inline.

Only on CUDA.  If recording fails on a device, the step runs eagerly from then on, and ``failed`` says
why (``gpu-check`` reports it); greedy outputs are checked against the eager baseline there.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from .trees import Uniforms

ENABLED = True  # record and replay the phases on CUDA (False: run them eagerly, as on a CPU)


class StepGraphs:
    """Phase graphs per step shape, with the caches whose own bucket graphs a recording must not replay."""

    def __init__(self, device: torch.device, caches, draws: Optional[Uniforms]):
        self.enabled = ENABLED and torch.device(device).type == "cuda"
        self.caches = [c for c in caches if c is not None]
        self.draws = draws  # the generation's draws (None: greedy, nothing random)
        self.graphs: dict = {}  # shape -> (noise buffer or None, [(name, graph, outputs)])
        self.failed: Optional[str] = None
        self.replays = 0
        self.state: list = []  # the tensors a step updates in place (the loop names them; a recording keeps them)
        self._pool = None

    def run(self, shape, phases: list[tuple[str, Callable]], clock) -> list:
        """Run a step's ``phases`` [(name, fn)], where ``fn(draws, *outputs of the phase before)`` returns a
        tuple; each timed by ``clock`` under its name.  Returns every phase's outputs."""
        if not self.enabled or self.failed is not None:
            return self._eager(phases, clock, self.draws)
        if shape in self.graphs:
            noise, recorded = self.graphs[shape]
            if noise is not None:
                noise.copy_(torch.rand(noise.shape, generator=self.draws.generator, device=noise.device))
            outs = []
            for name, graph, out in recorded:
                with clock(name):
                    graph.replay()
                outs.append(out)
            self.replays += 1
            return outs
        counting = Uniforms(self.draws.generator) if self.draws is not None else None
        outs = self._eager(phases, clock, counting)  # a real step, and the warm-up of the recording
        try:
            self.graphs[shape] = self._record(phases, counting.used if counting is not None else 0)
        except Exception as e:  # noqa: BLE001 -- the step ran; later ones run eagerly, and the reason is kept
            self.failed = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return outs

    @staticmethod
    def _eager(phases, clock, draws) -> list:
        outs, previous = [], ()
        for name, fn in phases:
            with clock(name):
                previous = fn(draws, *previous)
            outs.append(previous)
        return outs

    def _record(self, phases, draws_used: int):
        device = self.caches[0].kv.device
        noise = torch.zeros(draws_used, device=device) if self.draws is not None else None
        draws = Uniforms(buffer=noise) if noise is not None else None
        if self._pool is None and torch.device(device).type == "cuda":
            self._pool = torch.cuda.graph_pool_handle()
        saved = [c.capture for c in self.caches]
        for c in self.caches:
            c.capture = False  # record the forwards inline, not as a replay of the cache's own graph
        recorded, previous = [], ()
        try:
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            for name, fn in phases:
                graph, previous = self._recorded(functools.partial(fn, draws, *previous))
                recorded.append((name, graph, previous))
        finally:
            for c, s in zip(self.caches, saved):
                c.capture = s
        return noise, recorded

    def _recorded(self, call: Callable):
        """(a graph of what ``call`` launches, its outputs): recorded, not run."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = call()
        return graph, out
