"""The accelerator paths, exercised when the machine has one (skipped, with the reason shown, on CPU-only machines)."""

import pytest
import torch

from sdd_edu import generate
from sdd_edu.decoding import METHODS
from sdd_edu.ladders import make_ladder
from sdd_edu.loading import load_model
from sdd_edu.measure.roofline import device_ceilings, latency_curve
from sdd_edu.measure.timing import device_description, time_call
from sdd_edu.ngram import PromptLookup
from tests.helpers import save_tiny_checkpoint

ACCELERATORS = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")),
    pytest.param("mps", marks=pytest.mark.skipif(not (getattr(torch.backends, "mps", None)
                                                       and torch.backends.mps.is_available()),
                                                  reason="no Apple MPS here")),
]


@pytest.mark.parametrize("device", ACCELERATORS)
def test_decoders_and_timing_on_the_accelerator(device, tmp_path):
    tdir = save_tiny_checkpoint(tmp_path / "t", "llama", seed=0)
    ddir = save_tiny_checkpoint(tmp_path / "d", "llama", seed=1, n_layer=1)
    target = load_model(str(tdir), device=device, dtype="fp32")
    draft = load_model(str(ddir), device=device, dtype="fp32")
    ladder = make_ladder(target, draft, PromptLookup())
    base = generate(ladder, "def f(x):", method="baseline", max_new_tokens=16)
    for method in METHODS[1:]:
        assert generate(ladder, "def f(x):", method=method, max_new_tokens=16).token_ids == base.token_ids
    for method in METHODS:  # the fast path: fixed shapes, and on CUDA one graph per bucket
        for fast in (False, True):
            out = generate(ladder, "def f(x):", method=method, max_new_tokens=16, fast=fast).token_ids
            assert out == base.token_ids, (method, fast)
    if device == "cuda":  # the device path's phases, recorded once per step shape and replayed
        for method in ("speculative", "tree", "staged"):
            for sampled in (False, True):
                kw = {"temperature": 1.0, "seed": 1} if sampled else {}
                res = generate(ladder, "def f(x):", method=method, max_new_tokens=48, fast=True, adaptive=False, **kw)
                assert res.stats.graph_failure is None and res.stats.graph_replays > 0, (method, sampled)
                if not sampled:
                    assert res.token_ids[:16] == base.token_ids, method
    from sdd_edu.fast import StaticKVCache

    cache = StaticKVCache(target.model, 32)
    for n in (3, 1, 1):
        fast_logits = target.model(torch.ones(1, n, dtype=torch.long, device=target.device), cache)
    assert torch.isfinite(fast_logits).all()
    if device == "cuda":
        assert set(cache.graphs) == {4, 1} and cache.replays == 3  # captured once per bucket, replayed each time
    assert not device_description(target.device).startswith("CPU")  # the accelerator is named
    seconds = time_call(lambda: target.model(torch.zeros(1, 8, dtype=torch.long, device=target.device)),
                        target.device, repeats=2)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    rows = latency_curve(target, tokens=(1, 4), context=16, repeats=2)
    assert [r["tokens"] for r in rows] == [1, 4]
    ceil = device_ceilings(device, size=256, copy_mb=8, repeats=2)
    assert ceil["peak_flops"] > 0 and ceil["bandwidth_bytes"] > 0
