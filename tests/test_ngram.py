"""Tests for sdd_edu.ngram: the Katz trigram model and the prompt-lookup drafter."""

import time
from collections import Counter

import numpy as np
import pytest

from sdd_edu.ngram import KatzTrigram, PromptLookup

# --------------------------------------------------------------------------- a corpus worked by hand
#
# V = 4, k = max_discount_count = 2; token 0 never occurs.
#   stream A: 2 1 1 1 3 3 3 3      stream B: 3 1 1 1 1 3 1 3
# unigram counts [0, 8, 1, 7], N = 16  ->  add-one: P1 = [1, 9, 2, 8] / 20
#
# bigrams: (1,1)=5 (1,3)=3 (3,3)=3 (3,1)=2 (2,1)=1; n1=1 n2=1 n3=2
#   Katz: common = 3*n3/n1 = 6;  d1 = (2*1/1 - 6)/(1 - 6) = 4/5;  d2 = (3*2/(2*1) - 6)/(-5) = 3/5
#   h=2 (c=1): P(1|2) = 4/5;  alpha = (1/5)/(1 - 9/20) = 4/11
#   h=3 (c=5): P(3|3) = 3/5, P(1|3) = (3/5)*2/5 = 6/25;  alpha = (4/25)/(3/20) = 16/15
#   h=1 (c=8): counts 5 and 3 are > k, nothing is left for 0 and 2, so the model
#              reserves 1/(c+1): P(1|1) = 5/9, P(3|1) = 3/9;  alpha = (1/9)/(3/20) = 20/27
# trigrams: (1,1,1)=3 (1,1,3)=2 (3,3,3)=2, five seen once; n1=5 n2=2 n3=1
#   common = 3/5;  d1 = (2*2/5 - 3/5)/(2/5) = 1/2;  d2 = (3*1/(2*2) - 3/5)/(2/5) = 3/8
#   (1,1) c=5: P(1) = 3/5, P(3) = (3/8)*2/5 = 3/20;  alpha = (1/4)/(1 - 8/9) = 9/4
#   (3,3) c=2: P(3) = (3/8)*2/2 = 3/8;              alpha = (5/8)/(1 - 3/5) = 25/16
#   (2,1) c=1: P(1) = (1/2)*1/1 = 1/2;              alpha = (1/2)/(1 - 5/9) = 9/8

HAND_STREAMS = [[2, 1, 1, 1, 3, 3, 3, 3], [3, 1, 1, 1, 1, 3, 1, 3]]
HAND_EXPECTED = {
    (): [1 / 20, 9 / 20, 2 / 20, 8 / 20],
    (0,): [1 / 20, 9 / 20, 2 / 20, 8 / 20],  # token 0 never seen: unigram
    (2,): [1 / 55, 4 / 5, 2 / 55, 8 / 55],
    (3,): [4 / 75, 6 / 25, 8 / 75, 3 / 5],
    (1,): [1 / 27, 5 / 9, 2 / 27, 3 / 9],
    (1, 1): [1 / 12, 3 / 5, 1 / 6, 3 / 20],
    (3, 3): [1 / 12, 3 / 8, 1 / 6, 3 / 8],
    (2, 1): [1 / 24, 1 / 2, 1 / 12, 3 / 8],
    (0, 3): [4 / 75, 6 / 25, 8 / 75, 3 / 5],  # unseen pair, seen last token: bigram level
    (2, 3): [4 / 75, 6 / 25, 8 / 75, 3 / 5],
    (0, 0): [1 / 20, 9 / 20, 2 / 20, 8 / 20],  # nothing seen: unigram
}


@pytest.fixture(scope="module")
def hand_model():
    return KatzTrigram.fit(HAND_STREAMS, vocab_size=4, max_discount_count=2)


def test_hand_discounts(hand_model):
    np.testing.assert_allclose(hand_model.discounts[2][1:3], [4 / 5, 3 / 5])
    np.testing.assert_allclose(hand_model.discounts[3][1:3], [1 / 2, 3 / 8])
    # Counts above k are never discounted.
    assert hand_model.discounts[2][3] == 1.0 and hand_model.discounts[3][3] == 1.0


@pytest.mark.parametrize("context", list(HAND_EXPECTED))
def test_hand_distributions(hand_model, context):
    dist = hand_model.next_distribution(list(context))
    assert dist.shape == (4,)
    np.testing.assert_allclose(dist, HAND_EXPECTED[context], rtol=1e-6)
    assert abs(dist.sum() - 1.0) < 1e-6
    assert (dist > 0).all()
    for token in range(4):
        assert hand_model.prob(context, token) == pytest.approx(dist[token], rel=1e-12)


def test_seen_trigrams_are_discounted_count_over_context_count(hand_model):
    d3 = hand_model.discounts[3]
    assert hand_model.prob([1, 1], 3) == pytest.approx(d3[2] * 2 / 5, rel=1e-6)
    assert hand_model.prob([3, 3], 3) == pytest.approx(d3[2] * 2 / 2, rel=1e-6)
    assert hand_model.prob([2, 1], 1) == pytest.approx(d3[1] * 1 / 1, rel=1e-6)
    assert hand_model.prob([1, 1], 1) == pytest.approx(3 / 5, rel=1e-6)  # r = 3 > k: no discount


def test_ngrams_do_not_cross_streams():
    model = KatzTrigram.fit([[0, 1], [2, 3]], vocab_size=4)
    # 1 is never followed by anything inside a stream: P(. | 1) is the unigram.
    np.testing.assert_allclose(model.next_distribution([1]), model.unigram)
    np.testing.assert_allclose(model.next_distribution([0, 1]), model.unigram)


def test_streams_too_short_for_bigrams_or_trigrams():
    for streams in ([[0], [1]], [[0, 1], [1, 2]]):
        model = KatzTrigram.fit(streams, vocab_size=4)
        for ctx in ([], [0], [0, 1], [1, 2]):
            dist = model.next_distribution(ctx)
            assert abs(dist.sum() - 1.0) < 1e-6 and (dist > 0).all()
            np.testing.assert_array_equal(model.top_k(ctx, 2)[1], np.sort(dist)[::-1][:2])


# --------------------------------------------------------------------------- an independent reference


def reference_katz(streams, V, k):
    """Straightforward dict-based Katz trigram, for comparison on small corpora."""
    uni, bi, tri = Counter(), Counter(), Counter()
    for s in streams:
        uni.update(s)
        bi.update(zip(s, s[1:]))
        tri.update(zip(s, s[1:], s[2:]))
    n_tokens = sum(uni.values())
    p1 = [(uni[w] + 1) / (n_tokens + V) for w in range(V)]

    def discounts(counts):
        n = Counter(counts.values())
        d = {}
        for r in range(1, k + 1):
            d[r] = 1.0
            if n[1] and n[r]:
                common = (k + 1) * n[k + 1] / n[1]
                if common != 1:
                    x = ((r + 1) * n[r + 1] / (r * n[r]) - common) / (1 - common)
                    d[r] = x if 0 < x <= 1 else 1.0
        return d

    def level(counts, lower):
        d = discounts(counts)
        by_hist = {}
        for key, r in counts.items():
            by_hist.setdefault(key[:-1], {})[key[-1]] = r
        table = {}
        for h, conts in by_hist.items():
            c = sum(conts.values())
            seen = {w: d.get(r, 1.0) * r / c for w, r in conts.items()}
            if 1 - sum(seen.values()) < 1e-12 and len(conts) < V:
                seen = {w: r / (c + 1) for w, r in conts.items()}
            low = lower(h[1:])
            if len(conts) == V:
                total = sum(seen.values())
                table[h] = [seen[w] / total for w in range(V)]
                continue
            alpha = (1 - sum(seen.values())) / (1 - sum(low[w] for w in seen))
            table[h] = [seen.get(w, alpha * low[w]) for w in range(V)]
        return table

    bigram = level(bi, lambda h: p1)
    trigram = level(tri, lambda h: bigram.get(h, p1))

    def dist(context):
        context = tuple(context)
        if len(context) >= 2 and context[-2:] in trigram:
            return np.array(trigram[context[-2:]])
        if len(context) >= 1 and context[-1:] in bigram:
            return np.array(bigram[context[-1:]])
        return np.array(p1)

    return dist


def zipf_streams(rng, V, n_streams, length, a=1.3):
    return [(rng.zipf(a, size=length) - 1) % V for _ in range(n_streams)]


@pytest.mark.parametrize("k", [2, 5])
def test_matches_reference(k):
    rng = np.random.default_rng(k)
    V = 30
    streams = [s.tolist() for s in zipf_streams(rng, V, 4, 400, a=1.2)]
    model = KatzTrigram.fit(streams, V, max_discount_count=k)
    ref = reference_katz(streams, V, k)
    contexts = [[], [0], [0, 0], [V - 1, V - 1]] + [list(rng.integers(0, V, 2)) for _ in range(60)]
    contexts += [s[i:i + 2] for s in streams for i in range(0, 300, 29)]  # seen histories
    for ctx in contexts:
        # The model stores float32 probabilities: agreement to float32 precision.
        np.testing.assert_allclose(model.next_distribution(ctx), ref(ctx), rtol=1e-5, atol=2e-7)


# --------------------------------------------------------------------------- distributions and top-k


@pytest.fixture(scope="module", params=[50, 2000])
def random_model(request):
    V = request.param
    rng = np.random.default_rng(V)
    streams = zipf_streams(rng, V, 5, 4000)
    return KatzTrigram.fit(streams, V), streams


def random_contexts(rng, V, streams, n=40):
    ctxs = [[], [0], [V - 1]]
    ctxs += [rng.integers(0, V, size=rng.integers(1, 4)).tolist() for _ in range(n)]  # mostly unseen
    for s in streams[:2]:  # seen histories
        ctxs += [s[i:i + 2].tolist() for i in rng.integers(0, len(s) - 2, size=n)]
    return ctxs


def test_distributions_sum_to_one_and_are_positive(random_model):
    model, streams = random_model
    rng = np.random.default_rng(0)
    for ctx in random_contexts(rng, model.vocab_size, streams):
        dist = model.next_distribution(ctx)
        assert dist.shape == (model.vocab_size,)
        assert abs(dist.sum() - 1.0) < 1e-6
        assert (dist > 0).all()


@pytest.mark.parametrize("k", [1, 3, 12, 64, 5000])
def test_top_k_matches_full_distribution(random_model, k):
    model, streams = random_model
    rng = np.random.default_rng(k)
    for ctx in random_contexts(rng, model.vocab_size, streams):
        dist = model.next_distribution(ctx)
        tokens, probs = model.top_k(ctx, k)
        n = min(k, model.vocab_size)
        assert len(tokens) == len(probs) == n
        assert len(set(tokens.tolist())) == n
        # Same probabilities as the full distribution, descending, and truly the
        # k largest (compared as values, so ties between tokens do not matter).
        np.testing.assert_array_equal(dist[tokens], probs)
        assert (np.diff(probs) <= 0).all()
        np.testing.assert_array_equal(probs, np.sort(dist)[::-1][:n])
        assert model.prob(ctx, int(tokens[0])) == probs[0]


def test_top_k_answers_again_from_its_memo_unchanged(random_model, monkeypatch):
    """Asked again for a history, top_k answers from its memo: the same arrays, which the caller may change
    without changing the next answer; a full memo starts over."""
    model, streams = random_model
    contexts = random_contexts(np.random.default_rng(7), model.vocab_size, streams)
    fresh = [model._top_k(*model._history(ctx), 5) for ctx in contexts]
    for tokens, probs in [model.top_k(ctx, 5) for ctx in contexts]:
        tokens[:] = -1  # the caller's arrays
        probs[:] = 2.0
    for small_memo in (False, True):  # from the memo, then through a memo that keeps starting over
        if small_memo:
            monkeypatch.setattr(KatzTrigram, "TOP_MEMO_SIZE", 3)
            model._top_memo.clear()
        for (tokens, probs), (want_tokens, want_probs) in zip([model.top_k(ctx, 5) for ctx in contexts], fresh):
            np.testing.assert_array_equal(tokens, want_tokens)
            np.testing.assert_array_equal(probs, want_probs)
    assert len(model._top_memo) <= 3


def test_top_k_larger_than_vocab_returns_everything(hand_model):
    tokens, probs = hand_model.top_k([1, 1], 10)
    assert sorted(tokens.tolist()) == [0, 1, 2, 3]
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert tokens[0] == 1  # P(1 | 1 1) = 3/5


def test_repetitive_corpus_predicts_obvious_continuation():
    sentence = [5, 17, 3, 9, 5, 42, 8]  # "the cat sat on the mat ."
    model = KatzTrigram.fit([sentence * 20, sentence * 7], vocab_size=64)
    # "the" is followed by "cat" or "mat": the two-token history decides.
    assert model.top_k([3, 9, 5], 1)[0][0] == 42
    assert model.top_k([8, 5], 1)[0][0] == 17
    assert model.top_k([17], 1)[0][0] == 3
    assert int(np.argmax(model.next_distribution([9, 5]))) == 42
    assert model.prob([9, 5], 42) > 0.8


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path, random_model):
    model, streams = random_model
    path = tmp_path / "katz"  # no suffix: saved exactly here
    model.save(path)
    assert path.exists()
    loaded = KatzTrigram.load(path)
    assert loaded.vocab_size == model.vocab_size
    assert repr(loaded) == repr(model)
    rng = np.random.default_rng(1)
    for ctx in random_contexts(rng, model.vocab_size, streams, n=15):
        np.testing.assert_array_equal(loaded.next_distribution(ctx), model.next_distribution(ctx))
        for got, want in zip(loaded.top_k(ctx, 7), model.top_k(ctx, 7)):
            np.testing.assert_array_equal(got, want)


def test_repr_mentions_sizes(hand_model):
    text = repr(hand_model)
    assert "vocab_size=4" in text and "tokens=16" in text and "trigrams=8" in text


def test_fit_is_vectorised():
    # 300k tokens over a GPT-2-sized vocabulary: a per-token Python loop would crawl.
    rng = np.random.default_rng(0)
    streams = zipf_streams(rng, 49152, 3, 100_000, a=1.2)
    start = time.perf_counter()
    model = KatzTrigram.fit(streams, 49152)
    assert time.perf_counter() - start < 5.0
    assert model.top_k(streams[0][:2], 12)[0].shape == (12,)


# --------------------------------------------------------------------------- bad input


def test_katz_bad_input_messages(hand_model):
    with pytest.raises(ValueError, match="empty corpus"):
        KatzTrigram.fit([], vocab_size=4)
    with pytest.raises(ValueError, match="empty corpus"):
        KatzTrigram.fit([[], []], vocab_size=4)
    with pytest.raises(ValueError, match=r"token id 4 is out of range \[0, 4\)"):
        KatzTrigram.fit([[0, 1, 4]], vocab_size=4)
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        KatzTrigram.fit([[0, -1]], vocab_size=4)
    with pytest.raises(ValueError, match="vocab_size must be at least 1"):
        KatzTrigram.fit([[0]], vocab_size=0)
    with pytest.raises(ValueError, match="integer token ids"):
        KatzTrigram.fit([[0.5, 1.0]], vocab_size=4)
    with pytest.raises(ValueError, match="k must be at least 1"):
        hand_model.top_k([1], 0)
    with pytest.raises(ValueError, match=r"context token id 9 is out of range \[0, 4\)"):
        hand_model.next_distribution([1, 9])
    with pytest.raises(ValueError, match="out of range"):
        hand_model.prob([1], 4)


# --------------------------------------------------------------------------- prompt lookup


def test_prompt_lookup_finds_continuation():
    pl = PromptLookup(max_ngram=3)
    assert pl.propose([1, 2, 3, 4, 5, 9, 9, 1, 2, 3], 2) == [4, 5]


def test_prompt_lookup_prefers_longest_ngram():
    # [1 2 3] occurred at the start (then 10); the lone [3] occurred more recently (then 11).
    ctx = [1, 2, 3, 10, 0, 3, 11, 1, 2, 3]
    assert PromptLookup(max_ngram=3).propose(ctx, 1) == [10]
    assert PromptLookup(max_ngram=1).propose(ctx, 1) == [11]


def test_prompt_lookup_prefers_most_recent_match():
    ctx = [1, 2, 5, 1, 2, 6, 1, 2]
    assert PromptLookup(max_ngram=2).propose(ctx, 3) == [6, 1, 2]


def test_prompt_lookup_no_match_and_not_itself():
    pl = PromptLookup(max_ngram=3, min_ngram=1)
    assert pl.propose([1, 2, 3], 4) == []
    assert pl.propose([7], 4) == []  # the suffix alone must not match itself
    assert pl.propose([], 4) == []
    assert PromptLookup(max_ngram=3, min_ngram=3).propose([1, 2, 3, 1, 2], 4) == []


def test_prompt_lookup_respects_num_tokens():
    ctx = list(range(20)) + [0, 1]
    pl = PromptLookup(max_ngram=2)
    assert pl.propose(ctx, 5) == [2, 3, 4, 5, 6]
    assert pl.propose(ctx, 1) == [2]
    # A match near the end may have fewer tokens after it than asked for.
    assert pl.propose([1, 2, 1, 2], 5) == [1, 2]


def test_prompt_lookup_long_context():
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 50_000, size=4000).tolist()
    ctx += ctx[100:103]
    assert PromptLookup(max_ngram=3).propose(ctx, 4) == ctx[103:107]


def test_prompt_lookup_top_k():
    pl = PromptLookup(max_ngram=1)
    ctx = [1, 5, 1, 6, 1, 5, 1, 7, 1]
    # after "1": 5, 6, 5, 7 -> 5 most frequent, then 7 (more recent than 6)
    assert pl.top_k(ctx, 3) == ([5, 7, 6], [0.5, 0.25, 0.25])
    assert pl.top_k(ctx, 2) == ([5, 7], [0.5, 0.25])
    # The longest matching n-gram decides: only "9 1" counts here.
    assert PromptLookup(max_ngram=2).top_k([9, 1, 5, 8, 1, 6, 9, 1], 3) == ([5], [1.0])
    assert pl.top_k([1, 2, 3], 3) == ([], [])


def test_prompt_lookup_bad_input():
    with pytest.raises(ValueError, match=r"max_ngram \(1\) must be >= min_ngram \(2\)"):
        PromptLookup(max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="min_ngram must be at least 1"):
        PromptLookup(max_ngram=3, min_ngram=0)
    with pytest.raises(ValueError, match="num_tokens must be at least 1"):
        PromptLookup().propose([1, 2, 1], 0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        PromptLookup().top_k([1, 2, 1], 0)


def test_lookup_counts_its_matches_alike_in_python_and_in_numpy(monkeypatch):
    """``match`` counts a few matches in plain Python and many in numpy: the two rank alike (frequency, then
    recency), on random contexts with small vocabularies (many matches, many ties)."""
    rng = np.random.default_rng(0)
    cases = [(PromptLookup(max_ngram=int(rng.integers(1, 5)), min_ngram=1),
              rng.integers(0, int(rng.integers(2, 12)), int(rng.integers(1, 300))), int(rng.integers(1, 6)))
             for _ in range(300)]
    monkeypatch.setattr(PromptLookup, "FEW_MATCHES", 10**9)
    in_python = [lookup.match(context, k) for lookup, context, k in cases]
    monkeypatch.setattr(PromptLookup, "FEW_MATCHES", 0)
    in_numpy = [lookup.match(context, k) for lookup, context, k in cases]
    assert in_python == in_numpy and sum(1 for n, _, _ in in_numpy if n) > 250
