"""The fast path: the same forward with fixed shapes, replayed from CUDA graphs on a GPU.

On a GPU, one forward of a small model is hundreds of kernels, each a few microseconds of work,
and launching them from Python costs far more than running them: the forward is bound by launches,
not by its weights or its arithmetic.  A CUDA graph records the launches once and replays them as
one.  It needs a forward whose shapes and memory addresses never change and that never waits for
the GPU from the host.  The engine's forward (``Transformer.body``) is that forward when it is
given, instead of host integers:

* the N new tokens padded up to a bucket (1, 2, 4, ..., 128 tokens): one graph per bucket (128, so
  that a tree of 64 nodes after its one new token still fits);
* the cache slots to write as a tensor of indices on the device (``KVCache.write`` then uses
  ``index_copy_``), the padded tokens going to scratch slots past the end of the cache;
* an attention mask over every slot of the cache, built on the device, and positions likewise.

Range checks are done on host integers before the forward.  ``StaticKVCache`` holds the input
buffers and the graphs; ``Transformer.forward`` hands any forward over it of at most 128 tokens to
``StaticKVCache.forward`` (longer ones, such as a prefill, take the eager path over the same cache).

Capture is explicit (``torch.cuda.CUDAGraph``), not ``torch.compile(mode="reduce-overhead")``: it
costs a warm-up forward and a capture per bucket (64-110 ms together on an H100), needs no compiler,
and leaves the kernels as they are, so that its effect alone can be measured (that H100, bf16, the
embedded target's one-token forward: 8.6 ms eager, 1.5 ms replayed; 64 tokens: 8.8 and 1.8 ms).
On a CPU there is nothing to capture: the same static forward then runs eagerly over the exact rows
(no padding: ``PAD``), which is how the tests check it against the readable eager path
(``generate(..., fast=True)``; on by default on CUDA; the tests pad as a GPU does).

A graph removes the launches, not the kernels: a one-token forward of the embedded target is still
some 470 kernels of a few microseconds each (measured on an H100 in bf16: 1.2 ms of kernel time,
1.5 ms a replayed forward, against 0.1 ms to read the weights).  ``COMPILE = True`` (``--compile``
on the command line) first fuses them with ``torch.compile`` (the norms, the rotation, the
activations and the residual additions become a few generated kernels around the matrix
products), then captures the compiled forward the same way.  Measured on that H100, the embedded
target's shape with random weights, context 256: 498 -> 339 kernels, one-token forward 1.52 ->
1.10 ms, 64 tokens 1.84 -> 1.51 ms; the draft's shape 0.42 -> 0.37 ms.  The compilation took 28 s
for the first bucket and 26 s for the second (then every bucket and cache size reuses it), 4 + 8 s
for the draft: too long to be the default, so it is opt-in.
"""

from __future__ import annotations

import torch

from .model import KVCache

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
COMPILE = False  # fuse the forward's kernels with torch.compile before capturing it (see above)
PAD = None  # pad the tokens up to their bucket: None, only where a graph is captured (the tests pad on a CPU too)
COMPILE_BACKEND = "inductor"  # the tests use "eager": the same plumbing, no code generation
CAPACITY_STEP = 256  # fast caches come in multiples of this many slots, so that generations can share them


def on_by_default(device) -> bool:
    """Whether decoding takes the fast path when not told: on CUDA, where graphs pay; not on a CPU or MPS."""
    return torch.device(device).type == "cuda"


def bucket_for(n: int) -> int:
    """The smallest bucket that holds n tokens."""
    return next(b for b in BUCKETS if b >= n)


def new_cache(model, max_len: int, fast: bool = True, role: str = "target") -> KVCache:
    """A cache for ``max_len`` tokens: the fast path's (``static_cache``), or with ``fast=False`` the
    engine's own (``model.new_cache``)."""
    if max_len > model.config.max_seq_len:
        raise ValueError(f"cache length {max_len} exceeds the model's context ({model.config.max_seq_len})")
    return static_cache(model, max_len, role) if fast else model.new_cache(max_len)


def static_cache(model, max_len: int, role: str = "target") -> "StaticKVCache":
    """A fast cache for at least ``max_len`` tokens, reset and reused across generations.

    Capturing a bucket's graph costs a warm-up forward and a capture, so a cache, and the graphs
    recorded on its buffers, are kept on the model, one per ``role`` (a target's cache and a draft's
    must differ even when the draft is the target) and per capacity, a multiple of
    ``CAPACITY_STEP`` slots.  ``release(model)`` frees them."""
    capacity = min(-(-max_len // CAPACITY_STEP) * CAPACITY_STEP, model.config.max_seq_len)
    pool = model.__dict__.setdefault("_static_caches", {})
    key = (role, capacity, COMPILE, PAD, model.dtype, str(model.device))  # (a copied model may change dtype)
    cache = pool.get(key)
    if cache is None:
        kind = FeatureStaticCache if getattr(model, "reads_features", False) else StaticKVCache
        cache = pool[key] = kind(model, capacity)
    cache.length = 0
    return cache


def release(model) -> None:
    """Forget the fast caches (and their graphs) kept on ``model``."""
    model.__dict__.pop("_static_caches", None)


class StaticKVCache(KVCache):
    """A KV cache whose forwards have fixed shapes (and, on CUDA, are replayed from graphs).

    ``max_len`` slots hold the sequence; ``BUCKETS[-1]`` scratch slots after them take the padded
    tokens' keys and values.  Attention covers all of them, through the mask.
    """

    static = True
    max_bucket = BUCKETS[-1]

    def __init__(self, model, max_len: int, capture: bool | None = None, compiled: bool | None = None,
                 pad: bool | None = None):
        super().__init__(model.config, max_len + self.max_bucket, 1, model.device, model.dtype)
        self.max_len = max_len  # the scratch slots are not the sequence's
        device = model.device
        total = max_len + self.max_bucket
        self.slot_index = torch.arange(total, device=device)  # slot_index[i] == i
        self.ids = torch.zeros(1, self.max_bucket, dtype=torch.long, device=device)  # (1, bucket)
        self.pos = torch.zeros(1, self.max_bucket, dtype=torch.long, device=device)  # (1, bucket)
        self.slots = torch.zeros(self.max_bucket, dtype=torch.long, device=device)  # (bucket,)
        self.mask = torch.zeros(self.max_bucket, total, dtype=torch.bool, device=device)  # (bucket, S)
        self.capture = (device.type == "cuda") if capture is None else capture
        # tokens padded up to a bucket: what a graph needs; without one (a CPU) the padded rows would only cost
        self.pad = (self.capture if PAD is None else PAD) if pad is None else pad
        self.compiled = COMPILE if compiled is None else compiled
        self.graphs: dict[int, tuple] = {}  # bucket -> (graph, its output)
        self.model = None
        self.replays = 0

    def forward(self, model, input_ids, position_ids=None, attention_mask=None, last_only=False, reduced=False,
                extra_head_ids=None, features=False):
        """What ``Transformer.forward`` returns, computed at the bucket's fixed shapes (with ``features``, the
        normalised hidden states too: a copy, since a replayed graph writes its output buffer again)."""
        N, start = input_ids.shape[1], self.length
        self._admit(model, input_ids, "KV cache")
        # positions are start + depth <= start + N - 1, for a chain and for a tree alike
        if start + N > model.config.max_seq_len:
            raise ValueError(f"position {start + N - 1} is past the model's context of "
                             f"{model.config.max_seq_len} tokens")
        b = self._fill(input_ids, position_ids, attention_mask)
        h = self._run(model, b)  # (1, b, d)
        self.length = start + N
        if features:
            h = h[:, :N].clone()  # (1, N, d), kept past the next replay
            return model.head_logits(h[:, N - 1:N] if last_only else h, reduced, extra_head_ids), h
        h = h[:, N - 1:N] if last_only else h[:, :N]
        return model.head_logits(h, reduced, extra_head_ids)

    def _admit(self, model, input_ids, what: str) -> None:
        """The checks before a forward: one sequence, room in the cache, the model that first used it."""
        B, N = input_ids.shape
        if B != 1:
            raise ValueError("the fast path decodes one sequence (batch size 1)")
        if self.length + N > self.max_len:
            raise ValueError(f"{what} full: {self.length} + {N} > {self.max_len} slots")
        if self.model is None:
            self.model = model
        elif self.model is not model:
            raise ValueError("a fast cache serves the model that first used it")

    def _fill(self, input_ids, position_ids, attention_mask) -> int:
        """Write a forward's inputs into the fixed buffers, from slot ``self.length`` on; returns the bucket.
        Padded rows keep stale ids and positions (their results are dropped)."""
        N, start = input_ids.shape[1], self.length
        b = bucket_for(N) if self.pad else N
        self.ids[:, :N].copy_(input_ids)
        if position_ids is None:
            self.pos[0, :N].copy_(self.slot_index[start:start + N])
        else:
            self.pos[0, :N].copy_(position_ids.reshape(-1))
        self.slots[:N].copy_(self.slot_index[start:start + N])
        self.slots[N:b].copy_(self.slot_index[self.max_len:self.max_len + b - N])  # scratch slots
        if attention_mask is None:  # causal: slot j visible to new token i iff j <= start + i
            self.mask[:N].copy_(self.slot_index[None, :] <= self.slot_index[start:start + N, None])
        else:
            m = attention_mask.reshape(N, start + N)
            if m.dtype != torch.bool:
                m = m.bool()
            self.mask[:N].zero_()
            self.mask[:N, :start + N].copy_(m)
        self.mask[N:b].copy_(self.slot_index[None, :] == self.slots[N:b, None])  # a padded token sees itself
        return b

    def forward_rows(self, model, ids, pos, slots, mask, reduced=False, extra_head_ids=None) -> torch.Tensor:
        """A forward over N rows whose inputs are already on the device: token ids, positions and cache
        slots (N,), and the mask (N, slots of the cache, scratch included).  Nothing is read back; the
        caller keeps the cache's length (the device step writes where it decided to).  Logits (N, ...)."""
        N = ids.shape[0]
        b = bucket_for(N) if self.pad else N
        self.ids[0, :N].copy_(ids)
        self.pos[0, :N].copy_(pos)
        self.slots[:N].copy_(slots)
        self.slots[N:b].copy_(self.slot_index[self.max_len:self.max_len + b - N])  # scratch slots
        self.mask[:N].copy_(mask)
        self.mask[N:b].copy_(self.slot_index[None, :] == self.slots[N:b, None])  # a padded row sees itself
        h = self._run(model, b)  # (1, b, d)
        return model.head_logits(h[0, :N], reduced, extra_head_ids)

    def _body(self, model, b: int) -> torch.Tensor:
        body = compiled_body(model) if self.compiled else model.body
        return body(self.ids[:, :b], self.pos[:, :b], self, self.slots[:b], self.mask[:b])

    def _run(self, model, b: int) -> torch.Tensor:
        if not self.capture:
            return self._body(model, b)
        if b not in self.graphs:
            self.graphs[b] = record(lambda: self._body(model, b), model.device, pool=self._pool())
        graph, out = self.graphs[b]
        graph.replay()  # the warm-up wrote the same keys and values to the same slots: replaying is harmless
        self.replays += 1
        return out

    def _pool(self):
        if not hasattr(self, "_graph_pool"):
            self._graph_pool = torch.cuda.graph_pool_handle()
        return self._graph_pool


class FeatureStaticCache(StaticKVCache):
    """The fast path of a feature draft (``sdd_edu.feature_draft``): a ``StaticKVCache`` whose forwards also
    read the features of their rows, from one more fixed buffer (1, bucket, d)."""

    def __init__(self, model, max_len: int, **kw):
        super().__init__(model, max_len, **kw)
        self.feats = torch.zeros(1, self.max_bucket, model.config.d_model, dtype=model.dtype, device=model.device)

    def forward_features(self, model, features, next_ids, position_ids=None, attention_mask=None) -> torch.Tensor:
        """The draft's layer output (1, N, d) for rows reading ``features`` (1, N, d) beside ``next_ids`` (1, N),
        computed at the bucket's fixed shapes; a copy, kept past the next replay."""
        N, start = next_ids.shape[1], self.length
        self._admit(model, next_ids, "feature draft cache")
        self.feats[:, :N].copy_(features)
        b = self._fill(next_ids, position_ids, attention_mask)
        h = self._run(model, b)
        self.length = start + N
        return h[:, :N].clone()

    def _body(self, model, b: int) -> torch.Tensor:
        body = compiled_body(model) if self.compiled else model.body
        return body(self.feats[:, :b], self.ids[:, :b], self.pos[:, :b], self, self.slots[:b], self.mask[:b])


def compiled_body(model):
    """``model.body`` fused by ``torch.compile``, made once per model.

    The first bucket compiles for its exact shapes; the next one that differs makes torch.compile
    treat the changing sizes (tokens, cache slots) as symbols and compile once more, for every
    later bucket and cache size (measured on this CPU, a tiny model over four forwards: 16 s this
    way, 29 s with every shape compiled on its own).  The limit on recompilations is raised so that
    the target, the draft and a few cache sizes never fall back to the uncompiled forward."""
    body = model.__dict__.get("_compiled_body")
    if body is None:
        import os

        import torch._dynamo

        from .loading import cache_dir

        # the generated kernels kept beside the package's other caches, so that a later run (a later process)
        # loads them instead of compiling again (PyTorch's default place is a temporary folder)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))

        config = torch._dynamo.config
        for limit in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
            if hasattr(config, limit):
                setattr(config, limit, max(getattr(config, limit), 256))
        body = model.__dict__["_compiled_body"] = torch.compile(model.body, fullgraph=True, dynamic=None,
                                                                backend=COMPILE_BACKEND)
    return body


# ----------------------------------------------------------------------------- recording a forward (notebook 02)

class RecordedGraph:
    """A CUDA graph's contract, kept on any device: ``capture(fn)`` runs ``fn`` once and records it; ``replay()``
    runs the recorded work again on whatever its input tensors hold now and writes the result into the same
    output tensor.  On a CPU there are no launches to save, so this stand-in saves nothing; code written
    against it (fill the inputs in place, replay, copy the output out) runs unchanged with ``torch.cuda.CUDAGraph``.

    A CUDA graph reads its inputs at the addresses they had when it was captured, so ``replay`` refuses to run
    once one of them has moved (``x.set_(y)``, ``x.data = y``): a real graph would have read the old memory."""

    def __init__(self):
        self._fn, self.output, self._inputs = None, None, []

    def capture(self, fn):
        with torch.no_grad(), _InputsRead() as read:
            self.output = fn()
        self._fn = fn
        self._inputs = [(t, t.data_ptr()) for t in read.inputs]
        return self.output

    def replay(self) -> None:
        moved = sum(t.data_ptr() != ptr for t, ptr in self._inputs)
        if moved:
            raise RuntimeError(f"{moved} of the graph's input tensors moved to other memory since the capture "
                               "(set_ or .data =): a CUDA graph reads the old addresses; fill inputs in place "
                               "with copy_")
        with torch.no_grad():
            self.output.copy_(self._fn())


class _InputsRead(torch.overrides.TorchFunctionMode):
    """The tensors a function reads that it did not make itself: its inputs, weights included."""

    def __init__(self):
        super().__init__()
        self.inputs, self._seen, self._made = [], set(), set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in (*args, *kwargs.values()):
            for t in (value if isinstance(value, (list, tuple)) else (value,)):
                if isinstance(t, torch.Tensor) and id(t) not in self._made and id(t) not in self._seen:
                    self._seen.add(id(t))
                    self.inputs.append(t)
        out = func(*args, **kwargs)
        for t in (out if isinstance(out, (list, tuple)) else (out,)):
            if isinstance(t, torch.Tensor):
                self._made.add(id(t))
        return out


def record(fn, device, pool=None) -> tuple:
    """(graph, its output tensor): ``fn`` (no arguments, fixed shapes, nothing read back to the host) recorded
    as a CUDA graph on a CUDA device (in the memory ``pool`` given, shared by a cache's graphs), else with
    ``RecordedGraph``.  The graph reads the tensors ``fn`` read, at their addresses, at every replay."""
    if torch.device(device).type != "cuda":
        graph = RecordedGraph()
        return graph, graph.capture(fn)
    with torch.no_grad():
        # warm up on a side stream (allocations settle, lazy initialisation happens), then record
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    return graph, out
