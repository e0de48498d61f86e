"""Every decoder is exact: greedy emits baseline's tokens; sampling samples baseline's distribution."""


import numpy as np
import pytest
import torch

from sdd_edu import SddError, generate
from sdd_edu.decoding import baseline_decode
from sdd_edu.ladders import make_ladder
from sdd_edu.loading import LoadedModel
from sdd_edu.model import ModelConfig, Transformer
from sdd_edu.ngram import KatzTrigram, PromptLookup

SPECULATIVE = [("speculative", {}), ("speculative", {"gamma": 1}), ("tree", {}),
               ("tree", {"width": 2, "depth": 3, "budget": 5}), ("staged", {}),
               ("staged", {"rounds": 3, "budget": 12})]


def random_lm(seed, vocab=61, family="llama", n_layer=2, d_model=32, scale=0.4, name=None,
              head_size=0) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, vocab_size=vocab, n_layer=n_layer, n_head=4,
                      n_kv_head=2 if family == "llama" else 4, d_model=d_model, d_ff=64, max_seq_len=256,
                      eos_token_id=None, head_size=head_size)
    model = Transformer(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return LoadedModel(name or f"random-{family}-{seed}", model, None, "test")


def random_streams(vocab, seed, n=40, length=60):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, length).tolist() for _ in range(n)]


def explain_mismatch(target: LoadedModel, prompt, expected, got) -> str:
    """Where two greedy outputs split, and the target's top-2 margin there (a genuine near-tie is tiny)."""
    i = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
    logits = target.model(torch.tensor([list(prompt) + expected[:i]]))[0, -1]
    top = torch.topk(logits, 2).values
    return f"outputs split at token {i}: baseline {expected[i]}, other {got[i]}; target top-2 margin {float(top[0] - top[1]):.2e}"


@pytest.fixture(scope="module")
def tiny_ladder():
    target = random_lm(1, family="llama")
    draft = random_lm(2, family="llama", n_layer=1)
    trigram = KatzTrigram.fit(random_streams(61, 0), 61)
    return make_ladder(target, draft, trigram, name="tiny")


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
@pytest.mark.parametrize("method, settings", SPECULATIVE)
def test_greedy_equals_baseline_with_a_random_draft(tiny_ladder, method, settings, fast):
    rng = np.random.default_rng(0)
    for trial in range(8):
        prompt = rng.integers(0, 61, int(rng.integers(1, 12))).tolist()
        expected = baseline_decode(tiny_ladder.target, prompt, 40, stop_at_eos=False).token_ids
        res = generate(tiny_ladder, prompt, method=method, max_new_tokens=40, stop_at_eos=False, fast=fast,
                       **settings)
        assert res.token_ids == expected, explain_mismatch(tiny_ladder.target, prompt, expected, res.token_ids)
        assert len(res.origins) == 40 and set(res.origins) <= {"target", "draft", "ngram", "lookup"}
        if method == "staged":
            assert res.stats.ngram_seconds > 0
        assert res.stats.target_forwards == len(res.trace)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["speculative", "tree", "staged"])
def test_a_draft_equal_to_the_target_is_always_accepted(family, method):
    target = random_lm(3, family=family)
    ladder = make_ladder(target, target, KatzTrigram.fit(random_streams(61, 1), 61))
    prompt = [5, 7, 11]
    # deeper than the random trigram's guesses; no prompt lookup, whose copies the target may reject; a fixed
    # schedule (this draft costs as much as the target, so the adaptive one would rightly stop drafting)
    settings = {"rounds": 4, "lookup": False} if method == "staged" else {}
    settings["adaptive"] = False
    res = generate(ladder, prompt, method=method, max_new_tokens=30, stop_at_eos=False, **settings)
    assert res.token_ids == baseline_decode(target, prompt, 30, stop_at_eos=False).token_ids
    from sdd_edu.decoding import trace_summary

    summary = trace_summary(res.trace)
    assert summary["acceptance_rate"] == 1.0
    assert res.stats.target_forwards < 30 // 2  # several tokens per target forward


def test_ngram_only_ladder_greedy_equals_baseline(tiny_ladder):
    lookup = make_ladder(tiny_ladder.target, None, PromptLookup())
    tri = make_ladder(tiny_ladder.target, None, KatzTrigram.fit(random_streams(61, 5), 61))
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
    expected = baseline_decode(tiny_ladder.target, prompt, 30, stop_at_eos=False).token_ids
    for lad in (lookup, tri):
        for method in ("speculative", "tree"):
            res = generate(lad, prompt, method=method, max_new_tokens=30, stop_at_eos=False)
            assert res.token_ids == expected
            assert set(res.origins) <= {"target", "ngram" if lad is tri else "lookup"}
    with pytest.raises(SddError, match="no draft model"):
        generate(lookup, prompt, method="staged", max_new_tokens=5)


@pytest.mark.slow
def test_embedded_target_greedy_equals_baseline_for_every_method():
    from sdd_edu.data import humaneval_prompt
    from sdd_edu.ladders import load_ladder

    ladder = load_ladder("embedded", device="cpu", dtype="fp32")
    # a random draft with the target's vocabulary exercises the draft-model paths on the real target:
    # the greedy guarantee does not depend on the draft being any good
    stand_in = random_lm(4, vocab=ladder.target.config.vocab_size, d_model=32, n_layer=1)
    with_draft = make_ladder(ladder.target, stand_in, ladder.ngram)
    for task in (0, 10):  # (the notebooks check other prompts, method by method)
        ids = ladder.target.encode(humaneval_prompt(task))
        expected = baseline_decode(ladder.target, ids, 24, stop_at_eos=False).token_ids
        runs = [(ladder, "speculative", {}), (ladder, "tree", {}), (with_draft, "speculative", {}),
                (with_draft, "tree", {}), (with_draft, "staged", {})]
        if ladder.feature_draft is not None:  # the shipped feature draft, on the target's own features
            runs += [(ladder, "speculative", {"draft": "features"}), (ladder, "tree", {"draft": "features"})]
        for lad, method, settings in runs:
            got = generate(lad, ids, method=method, max_new_tokens=24, stop_at_eos=False, **settings).token_ids
            assert got == expected, f"HumanEval/{task} {method}: " + explain_mismatch(ladder.target, ids, expected, got)


def test_stops_at_eos_like_baseline():
    target = random_lm(6, vocab=61)
    target.model.config.eos_token_id = None
    base = baseline_decode(target, [1, 2, 3], 30, stop_at_eos=False).token_ids
    eos = base[7]  # pretend the 8th token is EOS: every method must stop right there
    target.model.config.eos_token_id = eos
    ladder = make_ladder(target, random_lm(7, vocab=61, n_layer=1), KatzTrigram.fit(random_streams(61, 2), 61))
    first = base.index(eos)
    for method in ("baseline", "speculative", "tree", "staged"):
        res = generate(ladder, [1, 2, 3], method=method, max_new_tokens=30)
        assert res.token_ids == base[:first + 1] and res.stats.finish_reason == "eos", method
    target.model.config.eos_token_id = None


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="speculative", gamma=0), "gamma"),
    (dict(method="speculative", gamma=2.5), "gamma"),
    (dict(method="tree", budget=0), "budget"),
    (dict(method="tree", depth=0), "depth"),
    (dict(method="tree", width=0), "width"),
    (dict(method="staged", ngram_fanout=(3, 0)), "fan-out"),
    (dict(method="tree", gamma=3), "no setting"),
    (dict(method="tree", rule="always-accept"), "rule"),
    (dict(method="speculative", temperature=-1.0), "temperature"),
    (dict(method="tree", node_cost="fast"), "node_cost"),
    (dict(method="tree", node_cost=-1), "node_cost"),
    (dict(method="staged", adaptive="yes"), "adaptive must be True or False"),
    (dict(method="staged", lookup=1), "lookup must be True or False"),
])
def test_bad_settings_give_clear_errors(tiny_ladder, kwargs, message):
    with pytest.raises(SddError, match=message):
        generate(tiny_ladder, [1, 2], max_new_tokens=4, **kwargs)


def test_draft_with_a_different_vocabulary_is_refused():
    with pytest.raises(SddError, match="different vocabularies"):
        make_ladder(random_lm(1, vocab=61), random_lm(2, vocab=50))


def test_trace_records_every_step(tiny_ladder):
    # a fixed tree: this random draft cannot predict the prompt, so the adaptive schedule would start off
    res = generate(tiny_ladder, [3, 1, 4], method="staged", max_new_tokens=20, stop_at_eos=False, adaptive=False)
    d = res.to_dict()
    assert len(d["origins"]) == 20 and d["trace_summary"]["steps"] == len(res.trace)
    step = res.trace[0]
    assert {"proposed", "accepted", "tested", "emitted", "depth", "draft_forwards", "tree"} <= set(step)
    assert sum(s["emitted"] for s in res.trace) >= 20
    drafted = [s for s in res.trace if s["size"] > 0]  # size 0: the schedule chose a baseline step
    assert drafted and res.stats.draft_forwards >= len(drafted)  # at least one draft forward per drafted step
    idle = [s for s in res.trace if s["size"] == 0]
    assert all(s["proposed"] == 0 and s["draft_forwards"] == s["shadow"] for s in idle)


# ----------------------------------------------------------------------------- sampling: same distribution

VOCAB = 6
N_SAMPLES = 800  # the wrong rules below land at p = 0 and 2e-25 with this many draws; a right one fails 1 time in 10,000


def exact_two_token_distribution(target: LoadedModel, prompt, temperature):
    """P(t1, t2 | prompt) under baseline sampling, enumerated exactly."""
    from sdd_edu.sampling import Sampling, probabilities

    s = Sampling(temperature=temperature)
    p1 = probabilities(target.model(torch.tensor([prompt]))[0, -1], s)
    table = np.zeros((VOCAB, VOCAB))
    for t1 in range(VOCAB):
        p2 = probabilities(target.model(torch.tensor([prompt + [t1]]))[0, -1], s)
        table[t1] = float(p1[t1]) * p2.numpy()
    return table.ravel()


def chi_square_p_value(counts, probs):
    """Goodness of fit with cells of tiny expectation pooled; p-value from the chi-square survival function."""
    from scipy.stats import chisquare

    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()  # float32 probabilities sum to 1 only to ~1e-7
    return chisquare(obs, exp).pvalue


def sample_counts(ladder, method, settings, temperature, n=N_SAMPLES, prompt=(2, 4, 1)):
    counts = np.zeros(VOCAB * VOCAB)
    for seed in range(n):
        res = generate(ladder, list(prompt), method=method, max_new_tokens=2, temperature=temperature,
                       seed=seed, stop_at_eos=False, **settings)
        counts[res.token_ids[0] * VOCAB + res.token_ids[1]] += 1
    return counts


@pytest.fixture(scope="module")
def small_vocab_ladder():
    target = random_lm(11, vocab=VOCAB, scale=0.6)
    draft = random_lm(12, vocab=VOCAB, scale=0.6, n_layer=1)  # a different, mediocre draft
    trigram = KatzTrigram.fit(random_streams(VOCAB, 3, n=50, length=40), VOCAB)
    return make_ladder(target, draft, trigram)


# the adaptive schedule with nodes priced at zero: sizes still follow acceptance, but rarely fall to 0
KEEPS_DRAFTING = {"node_cost": 0.0}
SAMPLING_CASES = [("baseline", {}), ("speculative", {}), ("speculative", KEEPS_DRAFTING),
                  ("speculative", {"adaptive": False}), ("staged", {"adaptive": False, "lookup": False}), ("tree", {"width": 3, "depth": 2, "budget": 6}),
                  ("tree", {"width": 2, "depth": 2, "budget": 4, "rule": "target"}),
                  ("staged", {"width": 3, "budget": 8, "ngram_fanout": (3, 2)}),
                  # the fast path (fixed shapes; CUDA graphs on a GPU) samples the same distribution
                  ("baseline", {"fast": True}), ("tree", {"width": 3, "depth": 2, "budget": 6, "fast": True}),
                  ("staged", {"width": 3, "budget": 8, "ngram_fanout": (3, 2), "fast": True}),
                  # the tree planned for this device (measured once on this ladder, then reused)
                  ("staged", {"budget": "auto"})]


@pytest.fixture(scope="module")
def reduced_head_ladder():
    """The draft's head covers 4 of the 6 tokens, as the shipped draft's covers 8,192 of 49,152."""
    target = random_lm(11, vocab=VOCAB, scale=0.6)
    draft = random_lm(13, vocab=VOCAB, scale=0.6, n_layer=1, head_size=4)
    trigram = KatzTrigram.fit(random_streams(VOCAB, 3, n=50, length=40), VOCAB)
    return make_ladder(target, draft, trigram)


@pytest.mark.parametrize("method, settings", SAMPLING_CASES)
def test_sampling_matches_the_baseline_distribution(small_vocab_ladder, method, settings):
    probs = exact_two_token_distribution(small_vocab_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_ladder, method, settings, temperature=1.0)
    p = chi_square_p_value(counts, probs)
    # the bound: a correct sampler fails this 1 time in 10,000; a wrong one (below) lands near 1e-20
    assert p > 1e-4, f"{method} {settings}: chi-square p = {p:.2e}"


@pytest.mark.parametrize("method, settings", [("speculative", {}), ("staged", {"width": 3, "budget": 8,
                                                                            "ngram_fanout": (3, 2)})])
def test_sampling_with_a_reduced_head_draft_matches_baseline(reduced_head_ladder, method, settings):
    probs = exact_two_token_distribution(reduced_head_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(reduced_head_ladder, method, settings, temperature=1.0)
    assert chi_square_p_value(counts, probs) > 1e-4


def test_a_reduced_head_draft_proposes_what_its_full_vocabulary_logits_give():
    """Working in the head's own space is only a shortcut: same tree, same draft probabilities."""
    from sdd_edu.decoding.drafters import ModelDrafter
    from sdd_edu.sampling import Sampling

    draft = random_lm(14, vocab=61, n_layer=1, head_size=20)
    trees = []
    for reduced in (True, False):
        d = ModelDrafter(draft, width=3, depth=3, budget=9)
        if not reduced:
            d.head_ids, d.vocab_size = None, None  # the full-vocabulary path
        d.begin([1, 2, 3], 64)
        trees.append(d.get_candidates([1, 2, 3], Sampling(), None))
    fast, slow = trees
    assert fast.tokens == slow.tokens and fast.parents == slow.parents
    assert set(fast.tokens) <= set(draft.model.head_ids.tolist())
    np.testing.assert_allclose(fast.draft_probs, slow.draft_probs, rtol=1e-5)


def test_greedy_equals_baseline_with_a_reduced_head_draft(tiny_ladder):
    ladder = make_ladder(tiny_ladder.target, random_lm(15, n_layer=1, head_size=24), tiny_ladder.ngram)
    for method in ("speculative", "tree", "staged"):
        for prompt in ([5], [1, 9, 33, 2], [60, 4, 4, 17, 8, 21]):
            expected = baseline_decode(ladder.target, prompt, 30, stop_at_eos=False).token_ids
            res = generate(ladder, prompt, method=method, max_new_tokens=30, stop_at_eos=False)
            assert res.token_ids == expected, explain_mismatch(ladder.target, prompt, expected, res.token_ids)


def test_sampling_with_temperature_and_top_k_matches_baseline(small_vocab_ladder):
    from sdd_edu.sampling import Sampling, probabilities

    s = Sampling(temperature=0.7, top_k=3)
    p1 = probabilities(small_vocab_ladder.target.model(torch.tensor([[2, 4, 1]]))[0, -1], s).numpy()
    counts = np.zeros(VOCAB)
    for seed in range(N_SAMPLES):
        res = generate(small_vocab_ladder, [2, 4, 1], method="tree", max_new_tokens=1, temperature=0.7, top_k=3,
                       seed=seed, width=2, depth=2, budget=4)
        counts[res.token_ids[0]] += 1
    assert chi_square_p_value(counts, p1) > 1e-4
    assert counts[p1 == 0].sum() == 0  # nothing outside the top-k


def test_the_statistical_test_catches_a_wrong_acceptance_rule(small_vocab_ladder, monkeypatch):
    """Always accepting the draft's first candidate is the classic bug: the test must reject it."""
    import sdd_edu.decoding.tree as tree_mod

    def always_accept(tree, node, kids, p, generator):
        return (kids[0], p) if kids else (None, p)

    monkeypatch.setattr(tree_mod, "_recursive_rejection", always_accept)
    probs = exact_two_token_distribution(small_vocab_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_ladder, "speculative", KEEPS_DRAFTING, temperature=1.0)
    assert chi_square_p_value(counts, probs) < 1e-6


def test_the_statistical_test_catches_a_missing_residual(small_vocab_ladder, monkeypatch):
    """Resampling from p instead of norm(max(0, p - q)) after a rejection is biased too."""
    import sdd_edu.decoding.tree as tree_mod

    def no_residual(tree, node, kids, p, generator):
        if not kids:
            return None, p
        q = tree.child_dists[node]
        for c in kids:
            x = tree.tokens[c]
            if float(torch.rand((), generator=generator)) * float(q[x]) < float(p[x]):
                return c, p
        return None, p

    monkeypatch.setattr(tree_mod, "_recursive_rejection", no_residual)
    probs = exact_two_token_distribution(small_vocab_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_ladder, "speculative", KEEPS_DRAFTING, temperature=1.0)
    assert chi_square_p_value(counts, probs) < 1e-4


@pytest.mark.parametrize("method, extra", [("tree", {}), ("staged", {"rounds": 3})])
def test_trees_fill_their_node_budget(tiny_ladder, method, extra):
    """Nodes still waiting for a draft forward must not stop the growth once no forward is left."""
    res = generate(tiny_ladder, [3, 5, 7, 9], method=method, max_new_tokens=12, width=4, depth=6, budget=16,
                   adaptive=False, **extra)
    assert [s["proposed"] for s in res.trace] == [16] * len(res.trace)
