"""Capture-readiness without a GPU, and the one counted way to read the device from the host.

A CUDA graph replays a recorded sequence of kernels; it cannot contain a point where the host waits
for a value from the device (a token id, a count) and decides what to launch next.  So every phase
that a graph replays must be written with tensor operations of fixed shapes: no ``.item()``,
``.tolist()`` or ``int(tensor)``, no ``nonzero`` or boolean-mask indexing (their output's size is a
value on the device), and no Python ``if`` on a tensor.

``traces_without_reads(fn, *args)`` checks this on any device: it traces ``fn`` with
``torch.compile(fullgraph=True)`` (a Python branch on a tensor fails the trace) through a backend that
also rejects every *data-dependent* size or scalar in the traced graph (recent PyTorch traces
``.item()`` and ``nonzero`` without a graph break, as "unbacked" symbols that still read the device
when run).  The backend runs the graph eagerly, so the result can be compared with the plain call.

``host_read`` is how the decoding loop reads the device: once per step, counted in ``READS``, so that
the tests and ``gpu-check`` can say how many times a step waited for the device.
"""

from __future__ import annotations

import time

import torch


class HostRead(RuntimeError):
    """A traced function reads a value from the device (or sizes a tensor by one)."""


def _no_host_reads(gm, example_inputs):
    """A ``torch.compile`` backend: the traced graph as it is, refused if anything in it is data-dependent."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for node in gm.graph.nodes:
        value = node.meta.get("example_value")
        if value is not None and free_unbacked_symbols(value):
            raise HostRead(f"reads the device: {node.format_node()}")
    return gm.forward


def traces_without_reads(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` traced whole, with no read of the device; its result.

    Raises (``torch._dynamo`` wraps the backend's ``HostRead``) when ``fn`` branches on a tensor's value,
    reads one to the host, or makes a tensor whose size is a value on the device."""
    import torch._dynamo

    torch._dynamo.reset()  # a fresh trace, not one cached from an earlier call with other settings
    return torch.compile(fn, backend=_no_host_reads, fullgraph=True, dynamic=False)(*args, **kwargs)


class ReadCounter:
    """How many times the host read the device (``host_read``), and how long it waited there in all: on a
    GPU the host runs ahead of the device until it reads, so a step's host time is its time outside."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0


READS = ReadCounter()


def host_read(t: torch.Tensor) -> list:
    """The values of ``t`` on the host, as a (nested) list: the one place decoding waits for the device."""
    t0 = time.perf_counter()
    values = t.tolist()
    READS.count += 1
    READS.seconds += time.perf_counter() - t0
    return values
