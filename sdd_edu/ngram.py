"""Cheap n-gram drafters: a Katz-backoff trigram model and prompt lookup.

Staged speculative decoding (Spector & Ré, 2023) puts a *very* cheap model at the
bottom of the draft stack: an n-gram model whose "forward pass" is a table lookup.
This module provides two of them, both over integer token ids:

* ``KatzTrigram`` -- a classic trigram language model with Katz back-off and
  Good-Turing discounting, fitted on a token corpus.  It returns a proper,
  strictly positive distribution over the whole vocabulary, so it can serve as
  a draft model in *stochastic* speculative sampling, where q(x) > 0 matters.
* ``PromptLookup`` -- the "prompt lookup decoding" trick: copy what followed the
  most recent earlier occurrence of the current suffix.  No training at all;
  great for code and for summarising a document that is in the prompt.

Katz back-off in one paragraph.  For a history h (two tokens, then one) and a
next token w that was seen after h with count r, P(w | h) = d_r * r / c(h),
where d_r <= 1 is a Good-Turing discount for small counts (r <= k) and c(h) is
how often h was followed by anything.  The mass the discounts free up is given
to unseen words in proportion to the shorter history's distribution:
P(w | h) = alpha(h) * P(w | shorter h), with alpha(h) chosen so that the
distribution sums to exactly one.  The unigram level is add-one smoothed, so
every token keeps a non-zero probability.

Everything is vectorised with numpy: n-grams become int64 keys
(``a*V + b`` and ``(a*V + b)*V + c``) counted with ``np.unique``, and each level
is stored as sorted keys with per-history slices.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from sdd_edu.errors import SddError

__all__ = ["KatzTrigram", "PromptLookup"]

# Trigram keys (a*V + b)*V + c must fit in int64: V**3 < 2**63.
_MAX_VOCAB = 2_097_151
# A history whose discounted mass leaves less than this has, in exact arithmetic,
# nothing left for unseen words (every count was above k or the discount fell back
# to 1).  We then reserve 1/(c+1), as if one unseen event had been observed.
_NO_LEFTOVER = 1e-12
_FORMAT = 1


# --------------------------------------------------------------------------- helpers


def _check_vocab_size(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise SddError(f"vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < 1:
        raise SddError(f"vocab_size must be at least 1, got {vocab_size}")
    if vocab_size > _MAX_VOCAB:
        raise SddError(
            f"vocab_size {vocab_size} is too large: trigram keys (a*V+b)*V+c must fit in "
            f"int64, so vocab_size can be at most {_MAX_VOCAB}"
        )
    return int(vocab_size)


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SddError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise SddError(f"{name} must be at least 1, got {value}")
    return int(value)


def _katz_discounts(counts: np.ndarray, k: int) -> np.ndarray:
    """Discount table d[r] for r = 0..k+1 (index by min(r, k+1); d[0] is unused).

    Katz's formula d_r = ((r+1) n_{r+1} / (r n_r) - (k+1) n_{k+1} / n_1) / (1 - (k+1) n_{k+1} / n_1),
    where n_r is the number of distinct n-grams seen exactly r times.  Small or odd
    corpora can make it leave (0, 1]; there we use d_r = 1 (no discount).
    """
    d = np.ones(k + 2, dtype=np.float64)
    n = np.bincount(counts, minlength=k + 2)[: k + 2].astype(np.float64)
    if k < 1 or n[1] == 0:
        return d
    common = (k + 1) * n[k + 1] / n[1]
    if common == 1.0:
        return d
    for r in range(1, k + 1):
        if n[r] == 0:
            continue
        dr = ((r + 1) * n[r + 1] / (r * n[r]) - common) / (1.0 - common)
        if np.isfinite(dr) and 0.0 < dr <= 1.0:
            d[r] = dr
    return d


def _round_down_f32(p: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounding toward zero.

    Rounding to nearest could push a history's stored probabilities to sum above
    one and leave a negative back-off mass; rounding down keeps it >= the exact one.
    """
    p32 = p.astype(np.float32)
    up = p32.astype(np.float64) > p
    p32[up] = np.nextafter(p32[up], np.float32(0))
    return p32


def _history_index(keys: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct histories of sorted keys and where each one's slice starts (plus the end)."""
    hist = keys // V
    starts = np.flatnonzero(np.r_[True, hist[1:] != hist[:-1]]) if len(keys) else np.empty(0, np.int64)
    return hist[starts], np.r_[starts, len(keys)].astype(np.int64)


class _Level:
    """One back-off level: seen (history, token) pairs, grouped by history.

    ``keys`` are sorted ``history*V + token`` keys with their probabilities
    ``probs``; history g owns ``keys[hist_start[g]:hist_start[g+1]]``.  Within that
    slice, ``order`` lists the same entries by decreasing probability (for top-k),
    and ``alpha[g]`` scales the shorter history's distribution for unseen tokens.
    """

    # What is saved; the history index is cheap to rebuild from the sorted keys.
    NAMES = ("keys", "probs", "order", "alpha")

    def __init__(self, keys, probs, order, alpha, vocab_size: int):
        self.keys = keys  # int64, sorted
        self.probs = probs  # float32
        self.order = order  # int32 indices into keys
        self.alpha = alpha  # float64, one per history
        self.hist_keys, self.hist_start = _history_index(keys, vocab_size)

    def find(self, history: int) -> int:
        """Index of ``history`` among the seen histories, or -1."""
        g = int(np.searchsorted(self.hist_keys, history))
        if g < len(self.hist_keys) and self.hist_keys[g] == history:
            return g
        return -1

    def span(self, g: int) -> tuple[int, int]:
        return int(self.hist_start[g]), int(self.hist_start[g + 1])

    def lookup(self, g: int, key: int) -> int:
        """Index of ``key`` inside history g's slice, or -1 if that token was unseen."""
        s, e = self.span(g)
        i = s + int(np.searchsorted(self.keys[s:e], key))
        if i < e and self.keys[i] == key:
            return i
        return -1

    def contains(self, g: int, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which ``keys`` are seen in history g (vectorised)."""
        s, e = self.span(g)
        seen = self.keys[s:e]
        pos = np.searchsorted(seen, keys)
        hit = pos < len(seen)
        hit[hit] = seen[pos[hit]] == keys[hit]
        return hit


def _build_level(keys, counts, lower_prob, V: int, k: int) -> tuple[_Level, np.ndarray]:
    """Katz-discount one level, given its sorted keys and counts.

    ``lower_prob(hist, tokens)`` returns the back-off distribution's probability of
    each seen (history, token) pair; it is used to normalise alpha.
    Returns the level and its discount table.
    """
    hist = keys // V
    tokens = keys - hist * V
    _, hist_start = _history_index(keys, V)
    starts = hist_start[:-1]
    sizes = np.diff(hist_start)
    group = np.repeat(np.arange(len(starts)), sizes)

    ctx_count = np.add.reduceat(counts, starts).astype(np.float64)
    d = _katz_discounts(counts, k)
    probs = d[np.minimum(counts, k + 1)] * counts / ctx_count[group]

    # Histories with nothing left for unseen tokens: reserve 1/(c+1) for them.
    # A history that saw every token (tiny vocabularies only) has no unseen tokens:
    # renormalise instead; it then sums to 1 up to float32 rounding (~1e-7).
    full = sizes == V
    left = 1.0 - np.add.reduceat(probs, starts)
    starved = (left < _NO_LEFTOVER) & ~full
    if starved.any():
        rows = starved[group]
        probs[rows] = counts[rows] / (ctx_count[group[rows]] + 1.0)
    if full.any():
        rows = full[group]
        probs[rows] /= np.add.reduceat(probs, starts)[group[rows]]

    probs32 = _round_down_f32(probs)
    # alpha from the *stored* float32 values, so sums are exact in float64.
    left = 1.0 - np.add.reduceat(probs32.astype(np.float64), starts)
    lower_seen = np.add.reduceat(lower_prob(hist, tokens), starts)
    denom = 1.0 - lower_seen
    alpha = np.zeros(len(starts), dtype=np.float64)
    ok = ~full & (denom > 0)
    alpha[ok] = np.maximum(left[ok], 0.0) / denom[ok]

    # Within each history: decreasing probability; lexsort is stable, so ties
    # keep the key order (smaller token id first).
    order = np.lexsort((-probs32, group)).astype(np.int32)  # fine below 2**31 n-grams
    return _Level(keys, probs32, order, alpha, V), d


def _lazy_top(head, total: int, seen, k: int, bar: float):
    """Best (up to) k entries of one ranked part of the distribution.

    ``head(m)`` gives the first m (token, probability) pairs of the part, best
    first; ``seen(tokens)`` masks tokens that belong to a higher level and must be
    skipped.  Look at a short prefix first and widen it only while needed: stop
    once k entries are kept or the probabilities fall below ``bar`` (the k-th best
    found so far elsewhere), since nothing further down can make the top k.
    """
    m = 2 * k + 8
    while True:
        toks, probs = head(m)
        if len(toks) == 0:
            return toks, probs
        exhausted = len(toks) >= total or probs[-1] < bar
        if seen is not None:
            keep = ~seen(toks)
            toks, probs = toks[keep], probs[keep]
        if len(toks) >= k or exhausted:
            return toks[:k], probs[:k]
        m *= 4


# --------------------------------------------------------------------------- Katz trigram


class KatzTrigram:
    """Katz-backoff trigram language model over token ids in [0, vocab_size).

    Build with ``KatzTrigram.fit(streams, vocab_size)`` or ``KatzTrigram.load(path)``.
    """

    def __init__(self, vocab_size, max_discount_count, num_tokens, unigram, bigram, trigram,
                 discounts):
        self.vocab_size = int(vocab_size)
        self.max_discount_count = int(max_discount_count)
        self.num_tokens = int(num_tokens)
        self.unigram = unigram  # float64 (V,), add-one smoothed, sums to 1
        self._bi = bigram
        self._tri = trigram
        self.discounts = discounts  # {2: d_r table for bigrams, 3: for trigrams}
        # Tokens by decreasing unigram probability (ties: smaller id first).
        self._uni_order = np.argsort(-unigram, kind="stable")

    # ----------------------------------------------------------------- fitting

    @classmethod
    def fit(cls, token_streams: Iterable[Sequence[int]], vocab_size: int,
            max_discount_count: int = 5) -> "KatzTrigram":
        """Count 1/2/3-grams in each stream (never across streams) and build the model."""
        V = _check_vocab_size(vocab_size)
        if isinstance(max_discount_count, bool) or not isinstance(max_discount_count, (int, np.integer)) \
                or max_discount_count < 0:
            raise SddError(f"max_discount_count must be an integer >= 0, got {max_discount_count!r}")
        k = int(max_discount_count)

        arrays = []
        for i, stream in enumerate(token_streams):
            a = np.asarray(stream)
            if a.ndim != 1:
                raise SddError(f"token stream {i} must be a 1-D sequence of ints, got shape {a.shape}")
            if a.size == 0:
                continue
            if a.dtype.kind not in "iu":
                raise SddError(f"token stream {i} must contain integer token ids, got dtype {a.dtype}")
            arrays.append(a.astype(np.int64, copy=False))
        if not arrays:
            raise SddError("cannot fit a KatzTrigram on an empty corpus: no tokens were given")
        ids = np.concatenate(arrays)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise SddError(f"token id {bad} is out of range [0, {V}) for vocab_size={V}")

        # first[i] marks the first token of a stream: an n-gram may not cross it.
        first = np.zeros(len(ids), dtype=bool)
        first[np.cumsum([0] + [len(a) for a in arrays[:-1]])] = True

        uni_counts = np.bincount(ids, minlength=V)
        unigram = (uni_counts + 1.0) / (len(ids) + V)

        ok2 = ~first[1:]
        bi_keys, bi_counts = np.unique(ids[:-1][ok2] * V + ids[1:][ok2], return_counts=True)
        ok3 = ok2[:-1] & ok2[1:]
        tri_keys, tri_counts = np.unique(
            (ids[:-2][ok3] * V + ids[1:-1][ok3]) * V + ids[2:][ok3], return_counts=True)
        num_tokens = len(ids)
        del ids, first  # free the big arrays before building the levels

        bigram, d2 = _build_level(bi_keys, bi_counts, lambda h, w: unigram[w], V, k)

        def bigram_prob(h, w):
            # Every seen trigram (a, b, w) implies the bigram (b, w) was seen too.
            idx = np.searchsorted(bigram.keys, (h % V) * V + w)
            return bigram.probs[idx].astype(np.float64)

        trigram, d3 = _build_level(tri_keys, tri_counts, bigram_prob, V, k)
        return cls(V, k, num_tokens, unigram, bigram, trigram, {2: d2, 3: d3})

    # ----------------------------------------------------------------- queries

    def _history(self, context: Sequence[int]) -> tuple[int, int]:
        """The last two token ids of context as (a, b); -1 where the context is shorter."""
        n = len(context)
        a = int(context[-2]) if n >= 2 else -1
        b = int(context[-1]) if n >= 1 else -1
        if n >= 1 and not 0 <= b < self.vocab_size:
            raise SddError(f"context token id {b} is out of range [0, {self.vocab_size})")
        if n >= 2 and not 0 <= a < self.vocab_size:
            raise SddError(f"context token id {a} is out of range [0, {self.vocab_size})")
        return a, b

    def _groups(self, a: int, b: int) -> tuple[int, int]:
        """Seen-history indices (bigram group of b, trigram group of ab); -1 if unseen."""
        g2 = self._bi.find(b) if b >= 0 else -1
        # (a, b) can only be a trigram history if b is a bigram history.
        g3 = self._tri.find(a * self.vocab_size + b) if (a >= 0 and g2 >= 0) else -1
        return g2, g3

    def next_distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(. | last two tokens of context) as a float64 vector of length vocab_size."""
        a, b = self._history(context)
        g2, g3 = self._groups(a, b)
        V = self.vocab_size
        if g2 < 0:
            return self.unigram.copy()
        bi = self._bi
        s, e = bi.span(g2)
        dist = self.unigram * bi.alpha[g2]
        dist[bi.keys[s:e] - b * V] = bi.probs[s:e]
        if g3 >= 0:
            tri = self._tri
            s, e = tri.span(g3)
            dist *= tri.alpha[g3]
            dist[tri.keys[s:e] - (a * V + b) * V] = tri.probs[s:e]
        return dist

    def prob(self, context: Sequence[int], token: int) -> float:
        """P(token | last two tokens of context); same value as next_distribution(context)[token]."""
        a, b = self._history(context)
        w = int(token)
        if not 0 <= w < self.vocab_size:
            raise SddError(f"token id {w} is out of range [0, {self.vocab_size})")
        g2, g3 = self._groups(a, b)
        V = self.vocab_size
        if g3 >= 0:
            i = self._tri.lookup(g3, (a * V + b) * V + w)
            if i >= 0:
                return float(self._tri.probs[i])
        if g2 < 0:
            return float(self.unigram[w])
        i = self._bi.lookup(g2, b * V + w)
        p = float(self._bi.probs[i]) if i >= 0 else float(self.unigram[w] * self._bi.alpha[g2])
        return p * float(self._tri.alpha[g3]) if g3 >= 0 else p

    def top_k(self, context: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable next tokens and their probabilities, most probable first.

        No full distribution is built.  The backed-off distribution is a union of
        three disjoint parts, each a scaled copy of a pre-sorted list: seen trigram
        continuations (as is), bigram continuations not seen after the two-token
        history (times alpha_ab), and all remaining tokens (unigram probability
        times alpha_ab * alpha_b).  Scaling keeps each part's order, so the overall
        top k lies among the top k of each part; those are found lazily and merged.
        Ties are broken towards the smaller token id.  Answers are kept per (history, k): the model
        never changes, and a decoder asks again for the histories it guessed through a step before.
        """
        k = min(_check_positive("k", k), self.vocab_size)
        a, b = self._history(context)
        memo = self.__dict__.setdefault("_top_memo", {})
        if (a, b, k) not in memo:
            if len(memo) >= self.TOP_MEMO_SIZE:
                memo.clear()
            memo[(a, b, k)] = self._top_k(a, b, k)
        toks, probs = memo[(a, b, k)]
        return toks.copy(), probs.copy()

    TOP_MEMO_SIZE = 65536  # answers kept (each a few dozen bytes)

    def _top_k(self, a: int, b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        g2, g3 = self._groups(a, b)
        V = self.vocab_size
        bi, tri, uni = self._bi, self._tri, self.unigram
        found_t, found_p = [], []

        def add(toks, probs) -> float:
            """Collect a part; return the k-th best probability so far (-1 if fewer)."""
            found_t.append(toks)
            found_p.append(probs)
            allp = found_p[0] if len(found_p) == 1 else np.concatenate(found_p)
            return float(np.partition(allp, len(allp) - k)[len(allp) - k]) if len(allp) >= k else -1.0

        if g2 < 0:  # unseen last token: plain unigram
            idx = self._uni_order[:k]
            return idx.astype(np.int64), uni[idx]

        bar = -1.0
        base3 = (a * V + b) * V
        alpha3 = 1.0  # x * 1.0 == x exactly, so this is harmless without a trigram history
        if g3 >= 0:
            s, e = tri.span(g3)
            idx = tri.order[s:min(e, s + k)]
            bar = add(tri.keys[idx] - base3, tri.probs[idx].astype(np.float64))
            alpha3 = tri.alpha[g3]

        s2, e2 = bi.span(g2)

        def bigram_head(m):
            idx = bi.order[s2:min(e2, s2 + m)]
            # Same operations as next_distribution, so the values match bit for bit.
            return bi.keys[idx] - b * V, bi.probs[idx].astype(np.float64) * alpha3

        def unigram_head(m):
            idx = self._uni_order[:m]
            return idx, uni[idx] * bi.alpha[g2] * alpha3

        in_tri = (lambda t: tri.contains(g3, base3 + t)) if g3 >= 0 else None
        bar = add(*_lazy_top(bigram_head, e2 - s2, in_tri, k, bar))
        rest_t, rest_p = _lazy_top(unigram_head, V, lambda t: bi.contains(g2, b * V + t), k, bar)
        found_t.append(rest_t)
        found_p.append(rest_p)

        toks = np.concatenate(found_t)
        probs = np.concatenate(found_p)
        best = np.lexsort((toks, -probs))[:k]
        return toks[best].astype(np.int64), probs[best]

    # ----------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to one uncompressed ``.npz`` file, exactly at ``path``."""
        arrays = {
            "format": np.array(_FORMAT),
            "meta": np.array([self.vocab_size, self.max_discount_count, self.num_tokens], dtype=np.int64),
            "unigram": self.unigram,
            "discounts2": self.discounts[2],
            "discounts3": self.discounts[3],
        }
        for prefix, level in (("bi_", self._bi), ("tri_", self._tri)):
            for name in _Level.NAMES:
                arrays[prefix + name] = getattr(level, name)
        # A file handle stops numpy from appending ".npz" to a path without it.
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KatzTrigram":
        """Read a model written by ``save``."""
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or int(z["format"]) != _FORMAT:
                raise SddError(f"{os.fspath(path)!r} is not a KatzTrigram file (format {_FORMAT})")
            V, k, n = (int(x) for x in z["meta"])
            levels = [_Level(*(z[prefix + name] for name in _Level.NAMES), V) for prefix in ("bi_", "tri_")]
            return cls(V, k, n, z["unigram"], levels[0], levels[1],
                       {2: z["discounts2"], 3: z["discounts3"]})

    def __repr__(self) -> str:
        return (f"KatzTrigram(vocab_size={self.vocab_size}, tokens={self.num_tokens}, "
                f"bigrams={len(self._bi.keys)} over {len(self._bi.hist_keys)} histories, "
                f"trigrams={len(self._tri.keys)} over {len(self._tri.hist_keys)} histories, "
                f"k={self.max_discount_count})")


# --------------------------------------------------------------------------- prompt lookup


class PromptLookup:
    """Prompt-lookup drafter: continue the current suffix the way it continued before.

    Tries the last ``max_ngram`` tokens first and shortens down to ``min_ngram``;
    longer matches are more specific and so more likely to be copied correctly.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        max_ngram = _check_positive("max_ngram", max_ngram)
        min_ngram = _check_positive("min_ngram", min_ngram)
        if max_ngram < min_ngram:
            raise SddError(f"max_ngram ({max_ngram}) must be >= min_ngram ({min_ngram})")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    @staticmethod
    def _as_array(context: Sequence[int]) -> np.ndarray:
        arr = np.asarray(context, dtype=np.int64)
        if arr.ndim != 1:
            raise SddError(f"context must be a 1-D sequence of token ids, got shape {arr.shape}")
        return arr

    @staticmethod
    def _matches(arr: np.ndarray, n: int) -> np.ndarray:
        """Start positions i < len-n with arr[i:i+n] == the last n tokens.

        Excluding start len-n (the suffix itself) also guarantees that every match
        is followed by at least one token.
        """
        m = len(arr) - n
        if m <= 0:
            return np.empty(0, dtype=np.int64)
        suffix = arr[m:]
        # Sliding-window comparison, one shifted view per n-gram position.
        hit = arr[:m] == suffix[0]
        for j in range(1, n):
            hit &= arr[j:j + m] == suffix[j]
        return np.flatnonzero(hit)

    def _longest(self, arr: np.ndarray) -> tuple[int, np.ndarray]:
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            pos = self._matches(arr, n)
            if len(pos):
                return n, pos
        return 0, np.empty(0, dtype=np.int64)

    def propose(self, context: Sequence[int], num_tokens: int) -> list[int]:
        """Up to ``num_tokens`` tokens that followed the most recent earlier match; [] if none."""
        num_tokens = _check_positive("num_tokens", num_tokens)
        arr = self._as_array(context)
        n, pos = self._longest(arr)
        if n == 0:
            return []
        start = int(pos[-1]) + n
        return arr[start:start + num_tokens].tolist()

    def top_k(self, context: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """Distinct next tokens after all matches of the longest matching n-gram.

        Ranked by frequency, then by recency; probabilities are empirical
        frequencies (they sum to 1 over all candidates, so over the returned ones
        when k covers them all).  Empty lists if nothing matches.
        """
        _, tokens, probs = self.match(context, k)
        return tokens, probs

    FEW_MATCHES = 256  # up to this many matches ``match`` counts them in Python (measured: faster up to ~300)

    def match(self, context: Sequence[int], k: int) -> tuple[int, list[int], list[float]]:
        """``top_k`` with the length of the matched suffix first (0: no match); longer matches copy better."""
        n, tokens, counts, total = self.match_counts(context, k)
        return n, tokens, [c / total for c in counts]

    def match_counts(self, context: Sequence[int], k: int) -> tuple[int, list[int], list[int], int]:
        """``match`` with each token's number of matches instead of its frequency, and the matches' total."""
        k = _check_positive("k", k)
        arr = self._as_array(context)
        n, pos = self._longest(arr)
        if n == 0:
            return 0, [], [], 0
        if len(pos) > self.FEW_MATCHES:  # many matches (a short n-gram): count them in numpy
            tokens, inverse, counts = np.unique(arr[pos + n], return_inverse=True, return_counts=True)
            last = np.full(len(tokens), -1, dtype=np.int64)
            np.maximum.at(last, inverse, pos)
            rank = np.lexsort((-last, -counts))[:k]  # frequency, then recency
            return n, tokens[rank].tolist(), counts[rank].tolist(), len(pos)
        # a few: in plain Python, where each numpy call above would cost more than the whole loop
        seen: dict[int, list[int]] = {}  # token -> [count, latest start]; pos is in increasing order
        for p, t in zip(pos.tolist(), arr[pos + n].tolist()):
            entry = seen.get(t)
            if entry is None:
                seen[t] = [1, p]
            else:
                entry[0] += 1
                entry[1] = p
        ranked = sorted(seen, key=lambda t: (-seen[t][0], -seen[t][1]))[:k]  # frequency, then recency
        return n, ranked, [seen[t][0] for t in ranked], len(pos)

    def __repr__(self) -> str:
        return f"PromptLookup(max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"
