"""The fast path (``sdd_edu/fast.py``): fixed shapes, no host synchronisation, the same numbers.

A GPU is not needed to check it: the static forward runs eagerly on a CPU, and ``torch.compile``
with ``fullgraph=True`` fails on any host synchronisation, which is what breaks a CUDA graph."""

import pytest
import torch

from sdd_edu import SddError, generate
from sdd_edu.decoding.tree import tree_attention_mask
from sdd_edu.fast import BUCKETS, StaticKVCache, bucket_for, new_cache
from tests.test_speculative import random_lm


@pytest.fixture(autouse=True)
def padded(monkeypatch):
    """Forwards padded up to their bucket, as on a GPU (a CPU pads only when asked: no graph needs it)."""
    import sdd_edu.fast

    monkeypatch.setattr(sdd_edu.fast, "PAD", True)


def _forward_pair(model, cached, ids, pos=None, mask=None, **kw):
    """Logits of the same forward on an eager cache and on a fast one, after the same ``cached`` prompt."""
    out = []
    for fast in (False, True):
        cache = new_cache(model, cached + 80, fast=fast)
        if cached:
            model(torch.arange(cached)[None] % model.config.vocab_size, cache)
        out.append(model(ids, cache, position_ids=pos, attention_mask=mask, **kw))
        assert cache.length == cached + ids.shape[1]
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("cached", [0, 1, 9, 40])
def test_the_static_forward_equals_the_eager_one(family, cached):
    m = random_lm(5, family=family).model
    g = torch.Generator().manual_seed(cached)
    for n in (1, 3, 4, 13):  # one token, chains (padded up to their bucket, 4 exactly fills one)
        eager, fast = _forward_pair(m, cached, torch.randint(0, 61, (1, n), generator=g))
        torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)
    parents = [-1, -1, 0, 0, 1, 2, 5]  # a tree under the root, through its mask and positions
    mask, pos = tree_attention_mask(parents, cached=cached, chain=1)
    eager, fast = _forward_pair(m, cached, torch.randint(0, 61, (1, 8), generator=g), pos, mask)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)
    eager, fast = _forward_pair(m, cached, torch.randint(0, 61, (1, 5), generator=g), last_only=True)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)


def test_a_tree_of_64_nodes_after_its_new_token_stays_on_the_fast_path(monkeypatch):
    """65 tokens: the bucket of 128 (with buckets up to 64 it fell back to the eager forward)."""
    m = random_lm(5).model
    buckets = []
    run = StaticKVCache._run
    monkeypatch.setattr(StaticKVCache, "_run", lambda self, model, b: (buckets.append(b), run(self, model, b))[1])
    parents = [-1] * 4 + [i // 4 for i in range(60)]  # 4 children of the root, then 4 under each of the first 15
    mask, pos = tree_attention_mask(parents, cached=9, chain=1)
    ids = torch.randint(0, 61, (1, 65), generator=torch.Generator().manual_seed(0))
    eager, fast = _forward_pair(m, 9, ids, pos, mask)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)
    assert buckets == [16, 128]  # the 9-token prompt, then the tree


def test_a_reduced_head_with_run_time_columns_is_the_same_on_the_fast_path():
    m = random_lm(6, head_size=20).model
    extra = torch.tensor([33, 40, 59])
    eager, fast = _forward_pair(m, 7, torch.tensor([[3, 8, 1]]), reduced=True, extra_head_ids=extra)
    assert fast.shape == (1, 3, 23)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)


def test_a_model_made_in_inference_mode_runs_its_reduced_head():
    with torch.inference_mode():  # its weights are inference tensors, which keep no version counter
        m = random_lm(6, head_size=20).model
        assert m(torch.tensor([[3, 8]])).shape == (1, 2, 61)


def test_keep_and_truncate_work_on_the_fast_cache():
    m = random_lm(7).model
    outs = []
    for fast in (False, True):
        cache = new_cache(m, 60, fast=fast)
        m(torch.tensor([[1, 2, 3, 4, 5]]), cache)
        m(torch.tensor([[6, 7, 8, 9]]), cache)
        cache.keep(5, [0, 2])  # keep 6 and 8, as a verification keeps an accepted path
        m(torch.tensor([[10, 11]]), cache)
        cache.truncate(8)
        outs.append(m(torch.tensor([[12]]), cache))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_padded_tokens_never_touch_the_sequence_slots():
    m = random_lm(8).model
    cache = StaticKVCache(m, 30)
    m(torch.tensor([[1, 2, 3]]), cache)  # a bucket of 4: one padded token, written to a scratch slot
    before = cache.k[:, :, :, :30].clone()
    m(torch.tensor([[4, 5, 6]]), cache)
    assert torch.equal(cache.k[:, :, :, :3], before[:, :, :, :3])  # the prompt's slots are untouched
    assert torch.equal(cache.k[:, :, :, 7:30], before[:, :, :, 7:30])  # so are the slots past the tokens
    assert isinstance(cache, StaticKVCache) and cache.max_len == 30 and cache.k.shape[3] == 30 + BUCKETS[-1]
    assert [bucket_for(n) for n in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]


def test_fast_caches_are_kept_for_the_next_generation_one_per_role():
    from sdd_edu.fast import CAPACITY_STEP, release
    from sdd_edu.ladders import make_ladder
    from sdd_edu.ngram import PromptLookup

    target = random_lm(14)
    m = target.model
    first = new_cache(m, 40, fast=True)
    m(torch.tensor([[1, 2, 3]]), first)
    again = new_cache(m, 100, fast=True)
    assert again is first and again.length == 0 and again.max_len == CAPACITY_STEP  # reset, graphs kept
    assert new_cache(m, 40, fast=True, role="draft") is not first
    same = make_ladder(target, target, PromptLookup())  # a draft that is the target: two caches, no clash
    base = generate(same, [1, 2, 3], max_new_tokens=20, stop_at_eos=False)
    spec = generate(same, [1, 2, 3], method="speculative", max_new_tokens=20, stop_at_eos=False, fast=True,
                    adaptive=False)
    assert spec.token_ids == base.token_ids and spec.stats.tokens_per_target_forward > 2
    release(m)
    assert new_cache(m, 40, fast=True) is not first


def test_the_static_body_traces_with_no_graph_break_and_the_eager_one_does_not():
    """``fullgraph=True`` raises on a host synchronisation (``.item()``, ``int(tensor)``), which would
    also break a CUDA graph capture: the static body has none; the eager forward's range check does."""
    m = random_lm(9).model
    cache = new_cache(m, 40, fast=True)
    m(torch.tensor([[1, 2, 3, 4, 5]]), cache)  # fills the input buffers for a bucket of 8
    body = torch.compile(lambda: cache._body(m, 8), backend="eager", fullgraph=True)
    with torch.inference_mode():
        h = body()
    assert h.shape == (1, 8, m.config.d_model)
    eager = torch.compile(lambda x: m(x, None), backend="eager", fullgraph=True)
    with pytest.raises(Exception):  # torch._dynamo's Unsupported: the eager path reads a position back
        with torch.inference_mode():
            eager(torch.tensor([[1, 2]]))


def test_long_forwards_fall_back_to_the_eager_path_on_a_fast_cache():
    m = random_lm(10).model
    ids = torch.randint(0, 61, (1, 70))  # longer than the largest bucket: a prefill
    eager, fast = _forward_pair(m, 3, ids)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)


def test_the_fast_path_checks_its_limits_with_clear_errors():
    m = random_lm(11).model
    cache = StaticKVCache(m, 6)
    m(torch.tensor([[1, 2, 3, 4]]), cache)
    with pytest.raises(ValueError, match="KV cache full"):
        m(torch.tensor([[1, 2, 3]]), cache)
    ladder = random_lm(12)
    with pytest.raises(SddError, match="fast must be"):
        generate(ladder, [1, 2], max_new_tokens=2, fast="yes")


def _ops_per_forward(model, tokens=1, fast=False):
    from torch.profiler import ProfilerActivity, profile

    cache = new_cache(model, 64, fast=fast)
    with torch.inference_mode():
        model(torch.zeros(1, 16, dtype=torch.long), cache)
        x = torch.zeros(1, tokens, dtype=torch.long)
        model(x, cache)
        cache.truncate(16)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x, cache)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


@pytest.mark.parametrize("family, fast, measured", [("llama", False, 87), ("llama", True, 88),
                                                    ("gpt2", False, 82), ("gpt2", True, 83)])
def test_a_one_token_forward_stays_lean(family, fast, measured):
    """aten operators per layer in a one-token fp32 CPU forward of a small model, nested ones included, on the
    eager path and on the fast path's static forward.

    Measured for a llama: 198 before the lean layer; 163 with the one-expression norm, q and k rotated together
    by one product, the one-row product without a permute and copy, slices instead of ``chunk``; now 87 (fast
    path: 168, now 88), with the one-row product's columns as one strided view (12 operators a product, now 6),
    the norm without Python numbers (19, now 6), one rotation of the whole qkv output with the halves swapped by
    ``flip`` (v turned by angle zero), keys and values in one cache tensor written at once from a per-layer view,
    ``split`` instead of slices, and the boolean mask made additive once per forward, not in every layer's
    attention.  For a GPT-2: 125, now 82 (fast path: 130, now 83).  Of the rest, the fused attention call is 19.
    On a GPU the norm is also one fused kernel (``F.rms_norm``)."""
    def ops(n_layer):
        return _ops_per_forward(random_lm(13, family=family, d_model=64, n_layer=n_layer).model, fast=fast)

    per_layer = ops(2) - ops(1)
    assert per_layer <= measured + 5, f"{per_layer} aten operators per layer (measured: {measured})"


def test_gpu_check_runs_on_a_cpu_in_quick_mode(tmp_path, capsys):
    import json

    from sdd_edu.cli import main

    path = tmp_path / "check.json"
    assert main(["gpu-check", "--quick", "--device", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "fast ms" in out and "tok/s" in out
    res = json.loads(path.read_text())
    assert res["ok"] and len(res["shapes"]) == 3
    assert all(all(same.values()) for same in res["greedy"].values())
    assert set(res["greedy"]["random ladder (fp32)"]) >= {"baseline (fast)", "speculative", "tree:fixed", "staged"}
    for row in res["shapes"].values():
        assert row["logits_gap_fp32"] < 1e-4 and row["profile"]["eager"]["count"] > 0
        assert set(row["latency_ms"]["fast"]) == {"1", "4"}
    # the device path waits for the device once per step (the baseline once per few tokens)
    speeds = res["speed"]["methods"]
    assert all(speeds[m]["reads_per_step"] == 1.0 for m in ("speculative", "tree", "staged"))
    assert 0 < speeds["baseline"]["reads_per_step"] < 1 and speeds["baseline (eager)"]["reads_per_step"] is None
    assert "reads, host" in out


def test_gpu_check_reports_a_failing_check_and_keeps_the_others(tmp_path, capsys, monkeypatch):
    import json

    from sdd_edu.cli import main
    from sdd_edu.measure import gpu_check

    def broken(*args, **kwargs):
        raise RuntimeError("capture failed on this device")

    monkeypatch.setattr(gpu_check, "greedy_identity", broken)
    saved = []
    real_dump = json.dump
    monkeypatch.setattr(json, "dump",
                        lambda obj, fh, **kw: (saved.append(set(obj["shapes"])), real_dump(obj, fh, **kw)))
    path = tmp_path / "check.json"
    assert main(["gpu-check", "--quick", "--device", "cpu", "--json", str(path)]) != 0
    out = capsys.readouterr()
    assert "CHECKS FAILED" in out.out and "FAILED greedy tokens, random ladder: RuntimeError: capture failed" in out.out
    assert "Traceback" not in out.out + out.err
    res = json.loads(path.read_text())
    assert not res["ok"] and list(res["errors"]) == ["greedy tokens, random ladder"]
    assert len(res["shapes"]) == 3 and res["speed"]["methods"]  # the checks after the failing one ran
    assert saved[0] == {"tiny llama"} and len(saved) >= 5  # the file was written after each check


def test_the_compiled_fast_path_gives_the_same_tokens(monkeypatch):
    """``fast.COMPILE``: the forward goes through ``torch.compile`` before capture.  The tests compile with
    the "eager" backend (the same tracing and plumbing, no code generation: seconds, not minutes)."""
    from sdd_edu import fast
    from sdd_edu.ladders import make_ladder
    from sdd_edu.ngram import PromptLookup

    target, draft = random_lm(21), random_lm(22, n_layer=1)
    ladder = make_ladder(target, draft, PromptLookup())
    ids = [5, 9, 2, 7, 5, 9, 2, 7, 5, 9]
    reference = generate(ladder, ids, method="baseline", max_new_tokens=12, fast=False).token_ids
    monkeypatch.setattr(fast, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(fast, "COMPILE", True)
    for method in ("baseline", "staged"):
        assert generate(ladder, ids, method=method, max_new_tokens=12, fast=True).token_ids == reference, method
    assert "_compiled_body" in target.model.__dict__ and "_compiled_body" in draft.model.__dict__
    assert all(cache.compiled for cache in target.model._static_caches.values())


def test_on_the_fast_path_an_adaptive_tree_grows_only_as_far_as_the_largest_graph():
    """The schedule may grow a tree to twice its size; on the fast path no further than the largest bucket
    holds (a filed 64-node plan grew to 128 nodes, 129 tokens, and ran eagerly on the H100)."""
    from sdd_edu.decoding import make_drafter, make_schedule
    from sdd_edu.fast import BUCKETS
    from sdd_edu.ladders import make_ladder

    target = random_lm(23)
    ladder = make_ladder(target, random_lm(24, n_layer=1), None)
    drafter = make_drafter(ladder, "tree", width=4, depth=8, budget=100, beam=4)
    assert make_schedule(target, drafter, node_cost=0.1, fast=True).max_size == BUCKETS[-1] - 1
    assert make_schedule(target, drafter, node_cost=0.1, fast=False).max_size == 200
    drafter = make_drafter(ladder, "tree", width=4, depth=8, budget=200, beam=4)
    assert make_schedule(target, drafter, node_cost=0.1, fast=True).max_size == 200  # never below the budget


def test_gpu_check_times_the_compiled_fast_path_when_asked(tmp_path, capsys, monkeypatch):
    import json

    from sdd_edu import fast
    from sdd_edu.cli import main

    monkeypatch.setattr(fast, "COMPILE_BACKEND", "eager")  # the plumbing, without code generation
    path = tmp_path / "check.json"
    assert main(["gpu-check", "--quick", "--device", "cpu", "--compile", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "compiled ms" in out and "compiled, 1st" in out and "baseline (compiled)" in out
    res = json.loads(path.read_text())
    for row in res["shapes"].values():
        assert set(row["latency_ms"]["compiled"]) == {"1", "4"} and row["logits_gap_compiled"] < 1e-4
        assert row["profile"]["compiled"]["count"] > 0
    assert {"baseline (compiled)", "staged (compiled)"} <= set(res["speed"]["methods"])
    assert fast.COMPILE is False  # restored
