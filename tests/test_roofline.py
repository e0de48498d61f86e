"""Analytic FLOP and byte counts, checked by hand and against the parameter count; measurements in reduced mode."""

import pytest
import torch

from sdd_edu.measure.roofline import (device_ceilings, forward_counts, intensity_table, latency_curve,
                                      roofline_time)
from sdd_edu.model import ModelConfig, Transformer

TINY = ModelConfig(family="llama", vocab_size=10, n_layer=1, n_head=2, n_kv_head=1, d_model=8, d_ff=12,
                   max_seq_len=64)


def test_counts_match_a_hand_computation():
    c = forward_counts(TINY, tokens=2, context=3, dtype="fp32")
    # weights in matmuls: qkv 8x16 + out 8x8 + mlp 3x8x12 = 480, head 10x8 = 80
    assert c["flops_matmul"] == 2 * 2 * 560
    # attention: layers x 2 matmuls x 2 flops x heads x head_dim x new tokens x slots (3 + 2)
    assert c["flops_attention"] == 1 * 2 * 2 * 2 * 4 * 2 * 5
    assert c["bytes_weights"] == 4 * (560 + 16 + 8 + 2 * 8)  # + norms, final norm, two embedding rows
    assert c["bytes_kv_read"] == 4 * 2 * 1 * 4 * 5 and c["bytes_kv_write"] == 4 * 2 * 1 * 4 * 2
    assert c["bytes_activations"] == 4 * 2 * (4 * 8 + 16 + 3 * 12)
    assert c["bytes_logits"] == 4 * 2 * 10
    assert c["bytes"] == 2400 + 160 + 64 + 672 + 80
    assert c["intensity"] == pytest.approx(2560 / 3376)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weight_bytes_agree_with_the_parameter_count(family):
    cfg = ModelConfig(family=family, vocab_size=97, n_layer=3, n_head=4, n_kv_head=2 if family == "llama" else 4,
                      d_model=32, d_ff=80, max_seq_len=128)
    params = Transformer(cfg).num_parameters
    for dtype, b in (("fp32", 4), ("bf16", 2)):
        c = forward_counts(cfg, tokens=1, context=0, dtype=dtype)
        rows = (1 if family == "llama" else 2) * cfg.d_model  # one token and (GPT-2) one position embedding row
        unread = cfg.max_seq_len * cfg.d_model if family == "gpt2" else 0  # the position table is not read
        assert c["bytes_weights"] == b * (params - unread + rows)


def test_intensity_grows_with_tokens_per_forward_and_is_near_one_at_batch_one_in_16_bit():
    from sdd_edu.model import ModelConfig

    smollm = ModelConfig(family="llama", vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, d_model=576,
                         d_ff=1536, max_seq_len=8192)
    table = intensity_table(smollm, context=256, dtype="bf16")
    values = [r["intensity"] for r in table]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert 0.5 < values[0] < 1.5  # memory-bound: about one FLOP per byte
    assert values[-1] > 50 * values[0]


def test_measurements_run_in_reduced_mode():
    ceilings = device_ceilings("cpu", size=128, copy_mb=4, repeats=2, min_seconds=0.01)
    assert ceilings["peak_flops"] > 0 and ceilings["bandwidth_bytes"] > 0 and ceilings["ridge_intensity"] > 0
    model = Transformer(TINY).eval()
    rows = latency_curve(model, tokens=(1, 2, 4), context=8, repeats=2)
    assert [r["tokens"] for r in rows] == [1, 2, 4] and rows[0]["relative_to_one"] == 1.0
    assert roofline_time(forward_counts(TINY, 4, 8), ceilings) > 0
    with pytest.raises(ValueError):
        forward_counts(TINY, tokens=0)


def test_a_ceiling_is_the_fastest_call_over_a_spread_of_time():
    """A burst of other work slows every call it overlaps (on a 2-core CPU a browser drawing the page beside
    the kernel once made all five of a matmul's calls 12x slower): the calls go on for ``min_seconds`` and the
    fastest counts, however many slow ones came first."""
    import time

    from sdd_edu.measure.timing import fastest_call

    delays = iter([0.02] * 8)  # the first 8 calls fall in the burst; the rest are quiet
    calls = []

    def work():
        calls.append(1)
        time.sleep(next(delays, 0.0))

    best = fastest_call(work, torch.device("cpu"), repeats=3, warmup=2, min_seconds=0.3)
    assert best < 0.01 and len(calls) > 10
    # repeats is a floor: with no time to spread over, exactly that many calls after the warm-up
    calls.clear()
    delays = iter([])
    fastest_call(work, torch.device("cpu"), repeats=4, warmup=1, min_seconds=0.0)
    assert len(calls) == 5


def test_forward_costs_are_timed_as_decoding_runs_them():
    """Decoding runs under inference mode, where the one-row product takes its faster path; costs timed with
    autograd on took the other path (measured on a 2-core CPU: a 2-token forward at 1.8x a one-token one)."""
    from sdd_edu.measure.roofline import forward_latency_ms
    from tests.test_speculative import random_lm

    lm = random_lm(31, n_layer=1)
    grad_seen = []
    lm.model.register_forward_pre_hook(lambda module, args: grad_seen.append(torch.is_grad_enabled()))
    ms = forward_latency_ms(lm, 3, context=8, repeats=2)
    assert len(ms) == 4 and ms[0] == 0.0 and all(x > 0 for x in ms[1:])
    assert grad_seen and not any(grad_seen)


def test_forward_costs_are_timed_on_the_path_decoding_takes(monkeypatch):
    """On CUDA decoding runs the fast path (several times faster there than the eager forward), so its costs
    are timed on it, filed apart; ``generate(fast=...)`` passes its choice on to the schedule's costs."""
    from sdd_edu.fast import StaticKVCache
    from sdd_edu.ladders import make_ladder
    from sdd_edu.measure import roofline
    from tests.test_speculative import random_lm

    lm = random_lm(32, n_layer=1)
    caches = []
    real_new_cache = roofline.new_cache
    monkeypatch.setattr(roofline, "new_cache", lambda *a, **k: caches.append(real_new_cache(*a, **k)) or caches[-1])
    roofline.forward_latency_ms(lm, 3, context=8, repeats=1, fast=True)
    assert isinstance(caches[-1], StaticKVCache)
    roofline.forward_latency_ms(lm, 3, context=8, repeats=1)  # on a CPU: the eager forward, measured apart
    assert not isinstance(caches[-1], StaticKVCache)
    assert len(roofline._COSTS_IN_PROCESS[lm.model]) == 2
    assert roofline.latency_curve(lm, tokens=(1, 2), context=8, repeats=1, fast=True)[1]["tokens"] == 2
    assert isinstance(caches[-1], StaticKVCache)

    from sdd_edu import generate

    asked = []
    monkeypatch.setattr(roofline, "forward_latency_ms",
                        lambda model, n, fast=None: asked.append(fast) or [1.0] * (n + 1))
    ladder = make_ladder(lm, random_lm(33, n_layer=1), None)
    generate(ladder, [1, 2, 3], method="tree", max_new_tokens=2, fast=True)
    assert asked == [True, True]  # the target's costs and the draft's
