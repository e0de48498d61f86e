"""Why small-batch decoding is slow: arithmetic intensity, the roofline, and latency vs tokens per forward.

``forward_counts`` counts, analytically, the floating-point operations and the bytes one forward
moves; their ratio is the arithmetic intensity (FLOP per byte).  ``device_ceilings`` measures
the reader's peak matrix-multiply rate and copy bandwidth, whose ratio is the ridge point: a
forward below it is limited by memory, above it by compute.  ``latency_curve`` measures real
forwards over 1, 2, 4, ... new tokens: while the forward is memory-bound, more tokens cost
little more time, and that flat stretch is what speculative decoding spends.

All results are plain records (dicts, lists of dicts) ready for a table or a plot.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..decoding.common import synchronize
from ..fast import new_cache
from ..loading import install_linear_paths, linear_paths_file, saved_linear_paths  # noqa: F401
from ..model import ModelConfig
from .timing import fastest_call, median, time_call

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


def forward_counts(config: ModelConfig, tokens: int = 1, context: int = 0, dtype: str = "fp32") -> dict:
    """FLOPs and bytes of one forward over ``tokens`` new tokens that attend to ``context`` cached ones.

    Counted: every weight matrix once (the head included; embedding rows only for the new tokens),
    the KV cache read (context + new) and written (new), the activations each layer reads and
    writes, and the fp32 logits.  Attention assumes every new token sees all cached and new slots,
    the upper bound a token tree approaches.
    """
    if tokens < 1 or context < 0:
        raise ValueError("tokens must be >= 1 and context >= 0")
    b = DTYPE_BYTES[dtype]
    c = config
    d, hd, L = c.d_model, c.head_dim, c.n_layer
    qkv_out = (c.n_head + 2 * c.n_kv_head) * hd
    gated = c.family == "llama"
    layer_weights = d * qkv_out + d * d + (3 if gated else 2) * d * c.d_ff
    layer_biases = 0 if gated else qkv_out + d + c.d_ff + d
    norm_params = (2 if gated else 4) * d  # per layer
    head_rows = c.head_size or c.vocab_size
    matmul_weights = L * layer_weights + head_rows * d
    slots = context + tokens
    flops_matmul = 2 * tokens * matmul_weights
    flops_attention = L * 2 * 2 * c.n_head * hd * tokens * slots  # q.k and p.v
    weight_bytes = b * (matmul_weights + L * (layer_biases + norm_params) + (1 if gated else 2) * d
                        + tokens * d * (1 if gated else 2))  # + final norm, + embedding rows read
    kv_read = b * L * 2 * c.n_kv_head * hd * slots
    kv_write = b * L * 2 * c.n_kv_head * hd * tokens
    # each layer reads/writes its input, q/k/v, attention output and the MLP's hidden activations
    activations = b * L * tokens * (4 * d + qkv_out + (3 if gated else 2) * c.d_ff)
    logits = 4 * tokens * c.vocab_size
    flops = flops_matmul + flops_attention
    total = weight_bytes + kv_read + kv_write + activations + logits
    return {"tokens": tokens, "context": context, "dtype": dtype, "flops": flops, "flops_matmul": flops_matmul,
            "flops_attention": flops_attention, "bytes": total, "bytes_weights": weight_bytes,
            "bytes_kv_read": kv_read, "bytes_kv_write": kv_write, "bytes_activations": activations,
            "bytes_logits": logits, "intensity": flops / total}


def intensity_table(config: ModelConfig, tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256), context: int = 256,
                    dtype: str = "fp32") -> list[dict]:
    return [forward_counts(config, n, context, dtype) for n in tokens]


def device_ceilings(device=None, dtype=torch.float32, size: int = 2048, copy_mb: int = 256,
                    repeats: int = 5, min_seconds: float = 0.25) -> dict:
    """Measured peak matmul FLOP/s for ``dtype`` and copy bandwidth (read + write) in bytes/s; the ridge point.
    Each is the fastest of at least ``repeats`` calls spread over ``min_seconds`` (``timing.fastest_call``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a = torch.randn(size, size, device=device, dtype=dtype)
    bm = torch.randn(size, size, device=device, dtype=dtype)
    # a ceiling is the best the device does: the fastest call, not the median (a busy moment only slows it)
    mm = fastest_call(lambda: a @ bm, device, repeats=repeats, warmup=2, min_seconds=min_seconds)
    n = copy_mb * 1024 * 1024 // 4
    src = torch.empty(n, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    cp = fastest_call(lambda: dst.copy_(src), device, repeats=repeats, warmup=2, min_seconds=min_seconds)
    synchronize(device)
    peak = 2 * size ** 3 / mm
    bandwidth = 2 * n * 4 / cp
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "peak_flops": peak,
            "bandwidth_bytes": bandwidth, "ridge_intensity": peak / bandwidth, "matmul_size": size,
            "copy_megabytes": copy_mb}


def roofline_time(counts: dict, ceilings: dict) -> float:
    """The roofline's lower bound on a forward's time: the slower of compute and memory."""
    return max(counts["flops"] / ceilings["peak_flops"], counts["bytes"] / ceilings["bandwidth_bytes"])


@torch.inference_mode()
def latency_curve(model, tokens=(1, 2, 4, 8, 16, 32, 64), context: int = 256, repeats: int = 5,
                  progress: bool = False, fast: Optional[bool] = None, first: Optional[dict] = None) -> list[dict]:
    """Measured median time of one forward over N new tokens after ``context`` cached tokens (N in ``tokens``).

    ``fast``: time the fast path's forward (``sdd_edu/fast.py``), as decoding runs it; by default on
    CUDA, as in ``generate`` (there the eager forward is several times slower, and not what runs).
    ``first``: gets the ms of each size's first call, before the warm-up (on the fast path, with no graph
    recorded yet, the capture of its bucket: the one-time cost a reader pays)."""
    m = model.model if hasattr(model, "model") else model
    fast = _decoding_path(m, fast)
    rows = []
    items = tokens
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(tokens, desc="latency", unit="size")
    cache = new_cache(m, context + max(tokens), fast=fast, role="timing")
    run = getattr(m, "timed_forward", m)  # a feature draft reads features too: timed over zeros
    run(torch.randint(0, m.config.vocab_size, (1, context), device=m.device), cache)
    for n in items:
        x = torch.randint(0, m.config.vocab_size, (1, n), device=m.device)

        def step():
            run(x, cache)
            cache.truncate(context)

        if first is not None:
            first[n] = 1000 * time_call(step, m.device, repeats=1, warmup=0)[0]
        seconds = median(time_call(step, m.device, repeats=repeats, warmup=1))
        rows.append({"tokens": n, "context": context, "seconds": seconds, "ms": 1000 * seconds,
                     "ms_per_token": 1000 * seconds / n})
    base = rows[0]["seconds"]
    for r in rows:
        r["relative_to_one"] = r["seconds"] / base
    return rows


def reference_configs() -> dict[str, ModelConfig]:
    """Configs of the paper's models (no download needed: counting FLOPs and bytes only needs the shapes)."""
    def gpt2(n_layer, d_model, n_head):
        return ModelConfig(family="gpt2", vocab_size=50257, n_layer=n_layer, n_head=n_head, n_kv_head=n_head,
                           d_model=d_model, d_ff=4 * d_model, max_seq_len=1024)

    return {"gpt2-large (the paper's target, 774M)": gpt2(36, 1280, 20),
            "gpt2 (124M)": gpt2(12, 768, 12),
            "SmolLM2-1.7B": ModelConfig(family="llama", vocab_size=49152, n_layer=24, n_head=32, n_kv_head=32,
                                        d_model=2048, d_ff=8192, max_seq_len=8192, rope_theta=130000.0)}


# ----------------------------------------------------------------------------- what a bigger forward costs

COST_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
_COSTS_IN_PROCESS: "weakref.WeakKeyDictionary" = None  # module -> {key: costs}


def _decoding_path(m, fast: Optional[bool]) -> bool:
    """Whether decoding on ``m``'s device runs the fast path (``generate``'s default: on CUDA only)."""
    from ..fast import on_by_default

    return on_by_default(m.device) if fast is None else bool(fast)


def forward_latency_ms(model, max_tokens: int, context: int = 256, repeats: int = 9,
                       fast: Optional[bool] = None) -> list[float]:
    """Milliseconds of a forward over n new tokens, for n = 0..max_tokens (index n; 0 costs nothing).

    Measured at a few sizes (taken in turn, medians of ``repeats``) and interpolated between them;
    made non-decreasing (a bigger forward never really costs less: a dip is noise).  The speculation schedule prices
    nodes with it.  Kept for the life of the process, and on disk for models that have a name to file
    them under (the embedded ladder, checkpoints), so that the same machine makes the same choices
    again: the record keeps the measured points, the device and the date.  ``fast``: as in
    ``latency_curve`` (the fast path is timed, and filed, apart from the eager forward).
    """
    import json
    import time
    import weakref

    from ..loading import cache_dir
    from .timing import device_description

    global _COSTS_IN_PROCESS
    m = model.model if hasattr(model, "model") else model
    fast = _decoding_path(m, fast)
    sizes = [n for n in COST_SIZES if n < max_tokens] + [max_tokens]
    sizes = sorted(set(n for n in sizes if n >= 1) | {1})
    context = min(context, m.config.max_seq_len - max(sizes))
    # "no grad": the forwards are timed as decoding runs them (records from before, timed with autograd on
    # and so on the slower product path, are not reused)
    key = (f"{device_description(m.device)}|{str(m.dtype)}|context {context}|sizes {sizes}|no grad"
           f"|{row_block_label(m.device, m.dtype)}"  # a curve belongs to the product paths it was timed with
           + ("|fast path" if fast else ""))
    if _COSTS_IN_PROCESS is None:
        _COSTS_IN_PROCESS = weakref.WeakKeyDictionary()
    mine = _COSTS_IN_PROCESS.setdefault(m, {})
    if key not in mine:
        source = getattr(model, "source", "")
        path = None
        if getattr(model, "name", "") and source not in ("", "test"):
            import hashlib
            digest = hashlib.sha1(f"{model.name}|{source}|{key}".encode()).hexdigest()[:16]
            path = cache_dir() / "costs" / f"{digest}.json"
        record = None
        if path is not None and path.exists():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                record = None
        if record is None:
            ms = _interleaved_latency_ms(m, sizes, max(context, 1), repeats, fast=fast)[0]
            record = {"model": getattr(model, "name", ""), "device": key.split("|")[0], "dtype": str(m.dtype),
                      "context": context, "measured": time.strftime("%Y-%m-%d %H:%M"),
                      "points": [[n, t / ms[0], t] for n, t in zip(sizes, _non_decreasing(ms))]}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1))
        mine[key] = record
    points = [(n, ms) for n, _, ms in mine[key]["points"]]
    out = [0.0]
    for n in range(1, max_tokens + 1):
        hi = next(i for i, p in enumerate(points) if p[0] >= n)
        if points[hi][0] == n or hi == 0:
            out.append(points[hi][1])
        else:
            (n0, ms0), (n1, ms1) = points[hi - 1], points[hi]
            out.append(ms0 + (ms1 - ms0) * (n - n0) / (n1 - n0))
    return out


@torch.inference_mode()
def _interleaved_latency_ms(m, sizes, context: int, repeats: int, variants=(None,),
                           fast: bool = False) -> list[list[float]]:
    """Median ms per size, the sizes taken in turn each round, so that a slow spell of the machine
    (a shared VM, a busy laptop) spreads over all sizes instead of landing on one.  ``variants``: callables
    that switch what the forward runs (a product path), each timed right after its switch; one list of
    medians per variant (None: the forward as it is).  ``fast``: over the fast path's cache."""
    cache = new_cache(m, context + max(sizes), fast=fast, role="timing")
    run = getattr(m, "timed_forward", m)  # a feature draft reads features too: timed over zeros
    run(torch.randint(0, m.config.vocab_size, (1, context), device=m.device), cache)
    inputs = {n: torch.randint(0, m.config.vocab_size, (1, n), device=m.device) for n in sizes}
    times: dict[tuple[int, int], list[float]] = {(i, n): [] for i in range(len(variants)) for n in sizes}

    def step(n):
        run(inputs[n], cache)
        cache.truncate(context)

    for round_ in range(repeats + 1):
        for n in sizes:
            for i, switch in enumerate(variants):
                if switch is not None:
                    switch()
                t = time_call(lambda: step(n), m.device, repeats=1, warmup=0)[0]
                if round_:  # the first round warms up
                    times[(i, n)].append(t)
    return [[1000 * median(times[(i, n)]) for n in sizes] for i in range(len(variants))]


def _non_decreasing(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence (pool adjacent violators): a dip in a latency curve is noise."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(c)]


# ----------------------------------------------------------------------------- which matrix product, per row count

LINEAR_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def row_block_label(device, dtype) -> str:
    """The row counts that take the row-block product on ``device`` in ``dtype``, in words ("row blocks 1-16")."""
    from ..model import Linear

    rows = sorted(Linear.ROW_BLOCK_ROWS.get((torch.device(device).type, dtype), ()))
    spans: list[list[int]] = []
    for n in rows:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return "row blocks " + (",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans) or "none")


def choose_linear_paths(model, max_rows: int = 32, context: int = 256, repeats: int = 5,
                        refresh: bool = False, save: bool = True) -> dict:
    """Time the model's forward over n new tokens with each matrix-product path (the row-block one of
    ``model.Linear`` and ``F.linear``), the paths taken in turn each round, and make the engine use the
    faster one at every row count up to ``max_rows`` on this CPU and dtype (measured at ``LINEAR_SIZES``
    up to it: a count between two measured sizes follows the nearer one; past them, F.linear).  Kept on
    disk per CPU (its name, threads and vector instructions) and dtype, so it is measured once;
    ``refresh`` measures again.

    Returns the record: ``points`` ([n, row-block ms, F.linear ms]), ``row_blocks`` (the row counts given to
    the row-block path), ``label``.  On a GPU there is one path (F.linear) and nothing is measured."""
    import json
    import time

    from ..model import Linear
    from .timing import device_description

    m = model.model if hasattr(model, "model") else model
    if m.device.type != "cpu":
        return {"device": device_description(m.device), "dtype": str(m.dtype), "points": [], "row_blocks": [],
                "label": "F.linear at every row count (the row-block path is for CPUs)"}
    key, path = linear_paths_file(m.device, m.dtype)
    record = None if refresh else saved_linear_paths(m.device, m.dtype, max_rows)
    if record is None:
        sizes = [n for n in LINEAR_SIZES if n < max_rows] + [max_rows]
        context = max(1, min(context, m.config.max_seq_len - sizes[-1]))
        table_key = ("cpu", m.dtype)
        before = Linear.ROW_BLOCK_ROWS.get(table_key)
        every = frozenset(range(1, sizes[-1] + 1))

        def set_rows(rows):
            return lambda: Linear.ROW_BLOCK_ROWS.__setitem__(table_key, rows)

        try:
            blocks_ms, blas_ms = _interleaved_latency_ms(m, sizes, context, repeats,
                                                         (set_rows(every), set_rows(frozenset())))
        finally:
            if before is None:
                Linear.ROW_BLOCK_ROWS.pop(table_key, None)
            else:
                Linear.ROW_BLOCK_ROWS[table_key] = before
        faster = {n: b < f for n, b, f in zip(sizes, blocks_ms, blas_ms)}
        nearest = {n: min(sizes, key=lambda s: (abs(s - n), -s)) for n in range(1, sizes[-1] + 1)}
        record = {"key": key, "device": key.split("|")[0], "dtype": str(m.dtype), "model": getattr(model, "name", ""),
                  "context": context, "measured": time.strftime("%Y-%m-%d %H:%M"),
                  "points": [[n, b, f] for n, b, f in zip(sizes, blocks_ms, blas_ms)],
                  "row_blocks": [n for n in nearest if faster[nearest[n]]]}
        if save:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))
    install_linear_paths(record)
    record["label"] = row_block_label(m.device, m.dtype)
    return record
