"""The device path (``sdd_edu/decoding/device``) against the readable reference beside it.

* the tensor drafter proposes the reference drafter's trees (tokens, parents, origins) under greedy;
* every method on the device path emits the baseline's tokens, reading the device once per step;
* the draft phase and the verify-and-commit phase trace whole with no read of the device;
* sampling on the device samples the baseline's distribution, and the check fails with a wrong rule.

The tree comparisons use float64 drafts: forwards over different batches of rows then round to the
same float32 logits, so the two drafters see the same distributions and any difference is the growth's.
"""

import numpy as np
import pytest
import torch

from sdd_edu import generate
from sdd_edu.decoding import baseline_decode, make_drafter, make_schedule
from sdd_edu.decoding.device import loop
from sdd_edu.decoding.device.capture import READS, traces_without_reads
from sdd_edu.decoding.device.drafter import DeviceDrafter
from sdd_edu.decoding.device.trees import Uniforms
from sdd_edu.decoding.drafters import ModelDrafter
from sdd_edu.ladders import make_ladder
from sdd_edu.ngram import KatzTrigram, PromptLookup
from sdd_edu.sampling import Sampling
from tests.test_speculative import (KEEPS_DRAFTING, chi_square_p_value, exact_two_token_distribution, random_lm,
                                    random_streams, sample_counts)

ORIGIN_NAMES = ["target", "draft", "ngram", "lookup"]
# (settings, whether the n-gram guesses): a GPU-sized tree, the CPU tree, a staged tree, the paper's fan-out,
# a chain
SHAPES = [(dict(width=4, depth=6, budget=16, beam=4), False), (dict(width=2, depth=3, budget=3, beam=1), False),
          (dict(width=3, depth=4, budget=9, beam=2, rounds=2, ngram_fanout=(4, 2, 1)), True),
          (dict(width=4, depth=8, budget=36, beam=4, rounds=1, ngram_fanout=(12, 7, 4, 1, 1, 1)), True),
          (dict(width=1, depth=4, budget=4, beam=1, rounds=4), False)]


@pytest.fixture(scope="module")
def float64_drafts():
    full = random_lm(2, family="llama", n_layer=1, scale=0.6)
    reduced = random_lm(5, family="llama", n_layer=1, scale=0.6, head_size=24)
    for lm in (full, reduced):
        lm.model.double()
    return {"full head": full, "reduced head": reduced}


def both_trees(draft, ngram, lookup, context, size, **settings):
    """The reference drafter's tree and the tensor drafter's, for the same context and size."""
    ref = ModelDrafter(draft, ngram=ngram, lookup=lookup, **settings)
    ref.max_size = max(size, ref.budget)
    ref.begin(context, len(context) + 64)
    ref.set_size(size)
    expected = ref.get_candidates(list(context), Sampling(), None)
    device = DeviceDrafter(ref)
    device.begin(context, 64, len(context) + 64 + device.shape(ref.max_size)["window"] + 4)
    ctx = torch.zeros(len(context) + 64, dtype=torch.long)
    ctx[:len(context)] = torch.tensor(context)
    tree = device.draft(ctx, torch.tensor(len(context)), len(context), size, Sampling(), None).tree
    n = int(tree.valid.sum())
    assert bool(tree.valid[:n].all()), "the valid nodes come first"
    got = (tree.tokens[:n].tolist(), tree.parents[:n].tolist(), [ORIGIN_NAMES[o] for o in tree.origin[:n].tolist()])
    return (expected.tokens, expected.parents, expected.origins), got


@pytest.mark.parametrize("head", ["full head", "reduced head"])
@pytest.mark.parametrize("settings, guesses", SHAPES)
def test_the_tensor_drafter_grows_the_reference_trees(float64_drafts, head, settings, guesses):
    trigram = KatzTrigram.fit(random_streams(61, 0), 61)
    rng = np.random.default_rng(len(head) + settings["budget"])
    sizes = sorted({1, 2, settings["budget"], settings["budget"] + 3})
    for trial in range(6):
        length = int(rng.integers(2, 30))
        motif = rng.integers(0, 61, 8).tolist()
        # repeated text (prompt lookup matches, its guesses and mixture in play) or random text
        context = (motif * 5)[:length] if trial % 2 else rng.integers(0, 61, length).tolist()
        for size in sizes:
            for lookup in (None, PromptLookup()):
                expected, got = both_trees(float64_drafts[head], trigram if guesses else None, lookup, context,
                                           size, **settings)
                assert got == expected, f"context {context}, size {size}, lookup {lookup is not None}"


@pytest.fixture(scope="module")
def agreeing_ladder():
    """A draft equal to the target: long accepted paths, so every part of the commit is exercised."""
    target = random_lm(3, family="llama")
    return make_ladder(target, target, KatzTrigram.fit(random_streams(61, 1), 61), PromptLookup())


METHODS = [("speculative", {}), ("tree", {"width": 3, "depth": 4, "budget": 8}),
           ("staged", {"width": 3, "depth": 5, "budget": 10, "ngram_fanout": (4, 2, 1), "rounds": 2}),
           ("staged", {})]


@pytest.mark.parametrize("method, settings", METHODS)
def test_every_method_on_the_device_emits_the_baseline_tokens_with_one_read_per_step(agreeing_ladder, method,
                                                                                       settings, monkeypatch):
    import sdd_edu.fast

    monkeypatch.setattr(sdd_edu.fast, "PAD", True)  # forwards padded to their buckets, as on a GPU
    target = agreeing_ladder.target
    for prompt, adaptive in (([5, 7, 11, 5, 7, 11, 5], False), ([60, 2, 33], True)):
        expected = baseline_decode(target, prompt, 30, stop_at_eos=False).token_ids
        before = READS.count
        res = generate(agreeing_ladder, prompt, method=method, max_new_tokens=30, stop_at_eos=False, fast=True,
                       adaptive=adaptive, node_cost=0.0, **settings)
        assert res.token_ids == expected
        assert READS.count - before == len(res.trace) + adaptive  # + the prompt read once before the first step
        assert res.stats.tokens_per_target_forward > 1.5  # the draft is the target: paths are accepted
        assert all(o in ORIGIN_NAMES for o in res.origins)
        step = next(s for s in res.trace if s["proposed"])
        assert len(step["tree"]["tokens"]) == step["proposed"] and len(step["accepted_nodes"]) == step["accepted"]


def test_the_device_baseline_reads_every_few_tokens_and_streams_every_token(agreeing_ladder):
    target = agreeing_ladder.target
    expected = baseline_decode(target, [1, 2, 3], 20, stop_at_eos=False).token_ids
    before = READS.count
    assert loop.baseline_decode(target, [1, 2, 3], 20, stop_at_eos=False).token_ids == expected
    assert READS.count - before == -(-20 // loop.READ_EVERY)
    streamed = []
    loop.baseline_decode(target, [1, 2, 3], 20, stop_at_eos=False, stream=streamed.append)
    assert sum(streamed, []) == expected and all(len(s) == 1 for s in streamed)


def test_a_generation_stops_at_eos_on_the_device_as_baseline_does(agreeing_ladder):
    target = agreeing_ladder.target
    prompt = [5, 7, 11]
    free = baseline_decode(target, prompt, 30, stop_at_eos=False).token_ids
    eos = free[9]  # make the tenth token the end of text
    target.model.config.eos_token_id = eos
    try:
        expected = baseline_decode(target, prompt, 30).token_ids
        for method in ("baseline", "staged"):
            res = generate(agreeing_ladder, prompt, method=method, max_new_tokens=30, fast=True)
            assert res.token_ids == expected and res.stats.finish_reason == "eos"
    finally:
        target.model.config.eos_token_id = None


# ----------------------------------------------------------------------------- capture-readiness

def test_reading_the_device_fails_the_trace():
    """The check itself: a branch on a value, ``.item()`` and a boolean mask all fail."""
    x = torch.arange(5)
    for bad in (lambda t: t[t > 2].sum(), lambda t: t * t.sum().item(), lambda t: t + 1 if t.sum() > 3 else t,
                lambda t: t[t.argmax()]):  # (a 0-d index tensor is read too)
        with pytest.raises(Exception):
            traces_without_reads(bad, x)
    assert torch.equal(traces_without_reads(lambda t: torch.where(t > 2, t, 0), x), torch.where(x > 2, x, 0))


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampling"])
def test_the_draft_and_verify_phases_trace_whole_without_reading_the_device(agreeing_ladder, greedy):
    """What a CUDA graph needs: each phase of a staged step is one trace with no read of the device."""
    ladder = agreeing_ladder
    sampling = Sampling() if greedy else Sampling(temperature=1.0)
    # a traced (or graph-replayed) phase reads its random numbers from a buffer filled before it
    generator = None if greedy else Uniforms(buffer=torch.rand(100_000, generator=torch.Generator().manual_seed(0)))
    drafter = make_drafter(ladder, "staged", width=2, depth=3, budget=4, ngram_fanout=(3, 1), rounds=1)
    make_schedule(ladder.target, drafter, adaptive=False)
    device = DeviceDrafter(drafter)
    prompt = [5, 7, 11, 5, 7]
    device.begin(prompt, 16, 64)
    device.committed = 0
    ctx = torch.zeros(32, dtype=torch.long)
    ctx[:5] = torch.tensor(prompt)
    length = torch.tensor(5)

    def draft_phase(ctx, length):
        return device.draft(ctx, length, 5, 4, sampling, generator)

    with torch.inference_mode():  # as decoding runs (the fast caches are inference tensors)
        drafted = traces_without_reads(draft_phase, ctx, length)
    with torch.inference_mode():
        target_step = loop._TargetStep(ladder.target, 64, sampling, "rrs", generator)
        target_step.cache.length = 0
        ladder.target.model(ctx[None, :4], target_step.cache)
    depth = device.shape(4)["depth"]

    def verify_phase(ctx, length):
        logits = target_step.forward(ctx, length, drafted, depth)
        packed, new_length, _ = loop.verify_and_commit(target_step, device, logits, ctx, length, drafted, False,
                                                        depth, 32, keep_trees=True)
        return packed, new_length

    with torch.inference_mode():
        packed, new_length = traces_without_reads(verify_phase, ctx, length)
    count = int(packed[0])
    assert int(new_length) == 5 + count + 1 and 0 <= count <= depth


# ----------------------------------------------------------------------------- sampling on the device

@pytest.fixture(scope="module")
def small_vocab_ladder():
    from tests.test_speculative import VOCAB

    target = random_lm(11, vocab=VOCAB, scale=0.6)
    draft = random_lm(12, vocab=VOCAB, scale=0.6, n_layer=1)
    return make_ladder(target, draft, KatzTrigram.fit(random_streams(VOCAB, 3, n=50, length=40), VOCAB),
                       PromptLookup())


@pytest.mark.parametrize("method, settings", [("speculative", {"fast": True, **KEEPS_DRAFTING}),
                                              ("staged", {"fast": True, "width": 3, "budget": 8, "rule": "target",
                                                          "ngram_fanout": (3, 2)})])
def test_sampling_on_the_device_matches_the_baseline_distribution(small_vocab_ladder, method, settings):
    probs = exact_two_token_distribution(small_vocab_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_ladder, method, settings, temperature=1.0, n=600)
    assert chi_square_p_value(counts, probs) > 1e-4


@pytest.mark.parametrize("wrong", ["always accept", "no residual"])
def test_the_device_sampling_check_catches_a_wrong_rule(small_vocab_ladder, monkeypatch, wrong):
    """Accepting every drafted token, or resampling from p instead of norm(max(0, p - q)) after a rejection,
    samples another distribution: the same chi-square test must reject it."""
    from sdd_edu.decoding.device import verify

    if wrong == "always accept":
        monkeypatch.setattr(verify, "accepts", lambda u, px, qx: qx > 0)
    else:
        monkeypatch.setattr(verify, "residual", lambda p, q: p)
    probs = exact_two_token_distribution(small_vocab_ladder.target, [2, 4, 1], temperature=1.0)
    # (measured: p = 0 and 5e-13 at 500 draws; a correct sampler fails 1e-4 one time in 10,000 at any count)
    counts = sample_counts(small_vocab_ladder, "speculative", {"fast": True, **KEEPS_DRAFTING}, temperature=1.0,
                           n=400)
    assert chi_square_p_value(counts, probs) < 1e-4


def test_a_step_keeps_its_state_in_the_same_buffers(agreeing_ladder):
    """What a recorded phase needs: every tensor of a generation's state is updated in place, so that a
    graph's replay, which reads and writes fixed addresses, sees the state move on (a tensor rebound to a
    new one would be invisible to it).  Two generations with the same settings share the buffers."""
    def buffers(session):
        d = session.drafter
        tensors = {"ctx": session.ctx, "length": session.length, "target kv": session.target_step.cache.kv,
                   "draft kv": d.cache.kv, "committed": d.committed_t, "lookup counts": d.lookup_counts,
                   "columns": d.column_of, "extra ids": d.extra_ids, "extra count": d.extra_count,
                   "support": d.support}
        return {name: t.data_ptr() for name, t in tensors.items()}

    settings = dict(method="staged", max_new_tokens=30, stop_at_eos=False, fast=True, adaptive=False)
    target = agreeing_ladder.target
    target.model.__dict__.pop("_device_sessions", None)
    generate(agreeing_ladder, [5, 7, 11, 5, 7], **settings)
    (session,) = target.model._device_sessions.values()
    before = buffers(session)
    res = generate(agreeing_ladder, [60, 2, 33, 60, 2], **settings)
    assert target.model._device_sessions == {k: session for k in target.model._device_sessions}
    assert buffers(session) == before and len(res.trace) > 3
    assert res.token_ids == baseline_decode(target, [60, 2, 33, 60, 2], 30, stop_at_eos=False).token_ids


class _Replay:
    """A recorded phase, on a CPU: replaying runs it again and writes its results into the tensors the
    recording returned, as a CUDA graph's replay writes into its recorded outputs; it reads the same
    stretch of the draws' buffer as the recording did."""

    def __init__(self, call, out, draws, start):
        self.call, self.out, self.draws, self.start = call, out, draws, start

    def replay(self):
        if self.draws is not None:
            self.draws.used = self.start
        _copy_into(self.out, self.call())


def _copy_into(dst, src):
    import dataclasses

    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src):
            _copy_into(d, s)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            _copy_into(getattr(dst, f.name), getattr(src, f.name))


def emulated_graphs():
    """``StepGraphs`` on a CPU with a stand-in for a CUDA graph that keeps its two rules: recording runs
    nothing (the step's state is put back as it was), and a replay reads and writes fixed tensors."""
    from sdd_edu.decoding.device.graphs import StepGraphs

    class EmulatedGraphs(StepGraphs):
        def __init__(self, device, caches, draws):
            super().__init__(device, caches, draws)
            self.enabled = True

        def run(self, shape, phases, clock):
            if self.failed is None and shape not in self.graphs:  # this step will be recorded after it runs
                self.before = [t.clone() for t in self.state]
            return super().run(shape, phases, clock)

        def _recorded(self, call):
            # a recording runs nothing: here it runs on the state the step started from (a real one would
            # index what it indexes then), and the state the step left is put back
            after = [t.clone() for t in self.state]
            for t, b in zip(self.state, self.before):
                t.copy_(b)
            draws = call.args[0]  # (the phase's first argument)
            start = draws.used if draws is not None else 0
            out = call()
            for t, a in zip(self.state, after):
                t.copy_(a)
            return _Replay(call, out, draws, start), out

    return EmulatedGraphs


@pytest.mark.parametrize("method, settings", METHODS[:3])
def test_the_step_graphs_replay_the_same_steps(agreeing_ladder, method, settings, monkeypatch):
    """The recording and replaying of a step's phases (``device/graphs.py``), checked on a CPU: the first
    step of each shape runs eagerly and is recorded, later ones replay it, and the tokens stay the baseline's."""
    monkeypatch.setattr(loop, "StepGraphs", emulated_graphs())
    target = agreeing_ladder.target
    target.model.__dict__.pop("_device_sessions", None)
    for prompt, adaptive in (([5, 7, 11, 5, 7, 11, 5], False), ([60, 2, 33], True), ([9, 9, 1, 4], False)):
        expected = baseline_decode(target, prompt, 30, stop_at_eos=False).token_ids
        res = generate(agreeing_ladder, prompt, method=method, max_new_tokens=30, stop_at_eos=False, fast=True,
                       adaptive=adaptive, node_cost=0.0, **settings)
        assert res.token_ids == expected and res.stats.graph_failure is None
    assert res.stats.graph_replays > len(res.trace) // 2  # most steps replayed a recording


def test_sampling_from_replayed_steps_matches_the_baseline_distribution(small_vocab_ladder, monkeypatch):
    """Replayed phases draw from a buffer the step fills first: the distribution is still the baseline's."""
    monkeypatch.setattr(loop, "StepGraphs", emulated_graphs())
    small_vocab_ladder.target.model.__dict__.pop("_device_sessions", None)
    probs = exact_two_token_distribution(small_vocab_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_ladder, "staged", {"fast": True, "width": 3, "budget": 8,
                                                          "ngram_fanout": (3, 2), "adaptive": False},
                           temperature=1.0, n=600)
    assert chi_square_p_value(counts, probs) > 1e-4
