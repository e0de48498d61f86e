"""Tests for sdd_edu.decoding.device.ngram: the n-gram stage as fixed-shape tensor operations.

Every device answer is compared with the readable reference (``KatzTrigram.top_k``, ``PromptLookup``)
exactly: same tokens, same order, same probabilities.  Small vocabularies make ties and repeated
matches common, which is where a ranking rule shows its details.
"""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from sdd_edu.decoding.device.capture import traces_without_reads
from sdd_edu.decoding.device.ngram import TrigramTopK, lookup_match, lookup_propose
from sdd_edu.errors import SddError
from sdd_edu.ngram import KatzTrigram, PromptLookup

DRAFT_SAMPLES = Path(__file__).parents[1] / "sdd_edu" / "assets" / "draft-smollm2" / "draft-samples.npz"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- helpers


def _streams(seed: int, vocab_size: int, unused: int, num: int = 40, length: int = 60):
    """Random token streams with a skewed (Zipf-like) distribution; the last ``unused`` ids never occur."""
    rng = np.random.default_rng(seed)
    used = vocab_size - unused
    p = 1.0 / np.arange(1, used + 1) ** 1.1
    return [rng.choice(used, size=length, p=p / p.sum()) for _ in range(num)]


def _all_contexts(vocab_size: int) -> list[list[int]]:
    """The empty context, every one-token context and every two-token context."""
    V = vocab_size
    return [[]] + [[b] for b in range(V)] + [[a, b] for a in range(V) for b in range(V)]


def _history_tensors(contexts, device="cpu"):
    a = torch.tensor([c[-2] if len(c) >= 2 else -1 for c in contexts], device=device)
    b = torch.tensor([c[-1] if len(c) >= 1 else -1 for c in contexts], device=device)
    return a, b


def _trigram_mismatches(table: TrigramTopK, reference, contexts, k: int, device="cpu") -> list:
    """Contexts where the table's top-k differs from ``reference(context, k)`` (a list of token ids)."""
    a, b = _history_tensors(contexts, device)
    got = table.top_k(a, b, k).cpu()
    return [(c, got[i].tolist(), list(reference(c, k))) for i, c in enumerate(contexts)
            if got[i].tolist() != list(reference(c, k))]


def _ranked_from_distribution(trigram: KatzTrigram, tie_to_larger: bool = False):
    """An independent reference: sort the full ``next_distribution`` (ties to the smaller id, or a wrong rule)."""
    def top(context, k):
        p = trigram.next_distribution(context)
        ids = np.arange(len(p))
        return np.lexsort((-ids if tie_to_larger else ids, -p))[:k].tolist()
    return top


def _random_batch(rng, queries: int, max_len: int, vocab_size: int, min_len: int = 1):
    """(Q, T) padded contexts of random lengths; the padding holds junk (ids outside the vocabulary too)."""
    lengths = rng.integers(min_len, max_len + 1, size=queries)
    T = int(lengths.max())
    seqs = rng.integers(0, vocab_size, size=(queries, T))
    junk = rng.integers(-3, vocab_size + 3, size=(queries, T))
    seqs = np.where(np.arange(T) < lengths[:, None], seqs, junk)
    return torch.from_numpy(seqs), torch.from_numpy(lengths)


def _match_mismatches(seqs, lengths, k, max_ngram, min_ngram, reference) -> list:
    """Queries where ``lookup_match`` differs from ``reference(seq, k)`` = (n, tokens, probs)."""
    n, tokens, counts, total = lookup_match(seqs, lengths, k, max_ngram, min_ngram)
    bad = []
    for q in range(len(lengths)):
        seq = seqs[q, : int(lengths[q])].tolist()
        want = reference(seq, k)
        have_tokens = [t for t in tokens[q].tolist() if t >= 0]
        m = len(have_tokens)
        have = (int(n[q]), have_tokens, [c / int(total[q]) for c in counts[q, :m].tolist()])
        padded_ok = tokens[q, m:].eq(-1).all() and counts[q, m:].eq(0).all()
        if have != tuple(want) or not padded_ok:
            bad.append((seq, have, want))
    return bad


def _propose_mismatches(seqs, lengths, num_tokens, max_ngram, min_ngram, reference) -> list:
    tokens, count = lookup_propose(seqs, lengths, num_tokens, max_ngram, min_ngram)
    bad = []
    for q in range(len(lengths)):
        seq = seqs[q, : int(lengths[q])].tolist()
        want = reference(seq, num_tokens)
        c = int(count[q])
        if tokens[q, :c].tolist() != want or not tokens[q, c:].eq(-1).all():
            bad.append((seq, tokens[q].tolist(), c, want))
    return bad


# --------------------------------------------------------------------------- the trigram table


# (V, ids never seen, table k, streams, stream length): V=6 has k > V, and with every id used some
# histories are followed by all six tokens (alpha = 0, nothing left to back off to)
@pytest.mark.parametrize("vocab_size, unused, k, num, length", [(61, 4, 12, 40, 60), (6, 0, 12, 8, 30),
                                                              (6, 1, 4, 6, 20)])
def test_trigram_table_equals_reference(vocab_size, unused, k, num, length):
    trigram = KatzTrigram.fit(_streams(vocab_size, vocab_size, unused, num, length), vocab_size)
    if unused == 0 and vocab_size == 6:
        assert (trigram._bi.alpha == 0).any() and (trigram._tri.alpha == 0).any()
    table = TrigramTopK.build(trigram, k, keep_probs=True)
    contexts = _all_contexts(vocab_size)

    # every kind of history occurs: seen (a, b), seen b only, unseen b (when some ids never occur)
    rows = table.rows(*_history_tensors(contexts))
    kinds = {"trigram": rows < table.num_tri,
             "bigram": (rows >= table.num_tri) & (rows < table.num_tri + table.num_bi),
             "unigram": rows == table.num_tri + table.num_bi}
    assert all(int(mask[1 + vocab_size:].sum()) > 0 for name, mask in kinds.items() if name != "unigram")
    if unused:
        assert int(kinds["unigram"][1 + vocab_size:].sum()) > 0  # two-token contexts with an unseen last token

    for kk in sorted({1, 2, 3, min(5, k), k}):
        assert _trigram_mismatches(table, lambda c, kk: trigram.top_k(c, kk)[0].tolist(), contexts, kk) == []
    # the full sort of next_distribution agrees too (an independent check of the tie rule)
    assert _trigram_mismatches(table, _ranked_from_distribution(trigram), contexts, k) == []

    # the kept probabilities are the reference's, bit for bit, and ties do occur among them
    ties = 0
    for i, context in enumerate(contexts):
        _, probs = trigram.top_k(context, k)
        assert np.array_equal(table.probs[int(rows[i])][: len(probs)], probs)
        ties += int(np.sum(probs[1:] == probs[:-1]))
    assert ties > 0


def test_trigram_table_shapes_and_k():
    trigram = KatzTrigram.fit(_streams(1, 30, 2), 30)
    table = TrigramTopK.build(trigram, 8)
    a = torch.tensor([[3, -1, 7], [0, 4, 29]])  # any shape: a (2, 3) batch of histories
    b = torch.tensor([[5, 2, 28], [-1, 1, 0]])
    out = table.top_k(a, b, 5)
    assert out.shape == (2, 3, 5) and out.dtype == torch.long
    assert torch.equal(table.top_k(a, b, 3), out[..., :3])  # a smaller k is a prefix
    assert torch.equal(table.to("cpu").top_k(a, b, 5), out)
    for bad_k in (0, 9):
        with pytest.raises(SddError):
            table.top_k(a, b, bad_k)
    # a vocabulary smaller than k: rows are V wide, as the reference returns min(k, V) tokens
    tiny = KatzTrigram.fit(_streams(2, 3, 0), 3)
    t3 = TrigramTopK.build(tiny, 12)
    got = t3.top_k(torch.tensor([0]), torch.tensor([1]), 12)
    assert got.shape == (1, 3) and got[0].tolist() == tiny.top_k([0, 1], 12)[0].tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_embedded_trigram(device):
    """The embedded ladder's trigram (fitted on the shipped draft samples): a few thousand random histories."""
    if not DRAFT_SAMPLES.exists():
        pytest.skip("no draft samples in this checkout")
    z = np.load(DRAFT_SAMPLES)
    bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
    tokens = z["tokens"].astype(np.int64)
    trigram = KatzTrigram.fit([tokens[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)], 49152)
    t0 = time.perf_counter()
    table = TrigramTopK.build(trigram, 12)
    seconds = time.perf_counter() - t0
    print(f"\nbuilt {table} in {seconds:.2f} s")
    assert seconds < 20  # ~1 s when the CPU is free; generous for a shared machine
    table = table.to(device)

    rng = np.random.default_rng(0)
    V = trigram.vocab_size
    seen3, seen2 = trigram._tri.hist_keys, trigram._bi.hist_keys
    contexts = [[int(h // V), int(h % V)] for h in rng.choice(seen3, 800)]  # seen two-token histories
    contexts += [[int(rng.integers(V)), int(b)] for b in rng.choice(seen2, 800)]  # mostly seen b only
    contexts += [[int(rng.integers(V)), int(rng.integers(V))] for _ in range(300)]  # mostly unseen b
    contexts += [[int(b)] for b in rng.choice(seen2, 100)] + [[int(rng.integers(V))] for _ in range(50)] + [[]]
    reference = lambda c, k: trigram.top_k(c, k)[0].tolist()  # noqa: E731
    assert _trigram_mismatches(table, reference, contexts, 12, device) == []
    assert _trigram_mismatches(table, reference, contexts[::7], 3, device) == []


# --------------------------------------------------------------------------- prompt lookup


@pytest.mark.parametrize("max_ngram, min_ngram", [(3, 1), (2, 1), (3, 2), (1, 1)])
def test_lookup_equals_reference(max_ngram, min_ngram):
    rng = np.random.default_rng(max_ngram * 10 + min_ngram)
    reference = PromptLookup(max_ngram, min_ngram)
    matched = set()
    for trial in range(12):
        vocab_size = (2, 3, 5, 9)[trial % 4]
        seqs, lengths = _random_batch(rng, 10, 200, vocab_size)
        matched.update(lookup_match(seqs, lengths, 1, max_ngram, min_ngram)[0].tolist())
        for k in (1, 4):
            assert _match_mismatches(seqs, lengths, k, max_ngram, min_ngram, reference.match) == []
        for num_tokens in (1, 5):
            assert _propose_mismatches(seqs, lengths, num_tokens, max_ngram, min_ngram, reference.propose) == []
    assert matched == {0, *range(min_ngram, max_ngram + 1)}  # no match, and a match of every length, occurred


def test_lookup_edge_cases():
    reference = PromptLookup()
    # empty and one-token contexts, no match at all, k wider than the context, a context of one repeated token
    seqs = torch.tensor([[7, 0, 0, 0, 0], [7, 9, 9, 9, 9], [1, 2, 3, 4, 5], [4, 4, 4, 4, 4], [1, 2, 1, 2, 1]])
    lengths = torch.tensor([0, 1, 5, 5, 5])
    for k in (1, 8):
        assert _match_mismatches(seqs, lengths, k, 3, 1, reference.match) == []
    assert _propose_mismatches(seqs, lengths, 8, 3, 1, reference.propose) == []
    n, tokens, counts, total = lookup_match(seqs, lengths, 8)
    assert n.tolist() == [0, 0, 0, 3, 3] and total.tolist() == [0, 0, 0, 2, 1]
    assert tokens[3].tolist() == [4] + [-1] * 7 and counts[3].tolist() == [2] + [0] * 7
    # many matches: the reference counts them with numpy past PromptLookup.FEW_MATCHES
    rng = np.random.default_rng(5)
    seqs, lengths = _random_batch(rng, 4, 700, 2, min_len=600)
    assert _match_mismatches(seqs, lengths, 2, 1, 1, PromptLookup(1, 1).match) == []
    with pytest.raises(SddError):
        lookup_match(seqs, lengths, 4, max_ngram=1, min_ngram=2)


def test_checker_catches_a_wrong_rule():
    """The comparisons are not vacuous: a drafter ranking by recency first, or a trigram breaking ties
    towards the larger id, is flagged."""
    def recency_first(seq, k):
        n, pos = PromptLookup()._longest(np.asarray(seq, dtype=np.int64))
        if n == 0:
            return 0, [], []
        seen = {}
        for p in pos.tolist():
            count, _ = seen.get(seq[p + n], (0, -1))
            seen[seq[p + n]] = (count + 1, p)
        ranked = sorted(seen, key=lambda t: (-seen[t][1], -seen[t][0]))[:k]
        return n, ranked, [seen[t][0] / len(pos) for t in ranked]

    rng = np.random.default_rng(3)
    seqs, lengths = _random_batch(rng, 16, 120, 3, min_len=40)
    assert _match_mismatches(seqs, lengths, 3, 3, 1, PromptLookup().match) == []
    assert len(_match_mismatches(seqs, lengths, 3, 3, 1, recency_first)) > 0

    trigram = KatzTrigram.fit(_streams(61, 61, 4), 61)
    table = TrigramTopK.build(trigram, 6)
    contexts = _all_contexts(61)
    assert len(_trigram_mismatches(table, _ranked_from_distribution(trigram, tie_to_larger=True), contexts, 6)) > 0


# --------------------------------------------------------------------------- tracing: no host reads


def test_functions_trace_without_host_reads():
    torch._dynamo.reset()
    trigram = KatzTrigram.fit(_streams(7, 20, 2), 20)
    table = TrigramTopK.build(trigram, 6)
    a = torch.tensor([[-1, 3, 2], [5, 19, 0]])
    b = torch.tensor([[-1, 4, 7], [1, 18, 19]])
    assert torch.equal(traces_without_reads(lambda a, b: table.top_k(a, b, 4), a, b), table.top_k(a, b, 4))
    # a 0-d history, as the drafter asks (indexing by a 0-d tensor would read it)
    assert torch.equal(traces_without_reads(lambda a, b: table.top_k(a, b, 4), a[0, 1], b[0, 1]),
                       table.top_k(a[0, 1], b[0, 1], 4))

    rng = np.random.default_rng(8)
    seqs, lengths = _random_batch(rng, 6, 40, 3)
    traced = traces_without_reads(lambda s, n: lookup_match(s, n, 4), seqs, lengths)
    for got, want in zip(traced, lookup_match(seqs, lengths, 4)):
        assert torch.equal(got, want)
    traced = traces_without_reads(lambda s, n: lookup_propose(s, n, 5), seqs, lengths)
    for got, want in zip(traced, lookup_propose(seqs, lengths, 5)):
        assert torch.equal(got, want)
