"""The n-gram stage on the device: the Katz trigram's top-k and prompt lookup as fixed-shape tensor ops.

The readable references are ``sdd_edu.ngram.KatzTrigram`` and ``sdd_edu.ngram.PromptLookup``; everything
here returns exactly what they return, but without a single read from the device back to the host, so
that a whole decoding step can be captured in a CUDA graph.

* ``TrigramTopK`` -- the trigram's answer depends only on the last two tokens (a, b), and there are few
  distinct *kinds* of answer: one per seen two-token history, one per seen one-token history (the back-off
  when (a, b) was never seen), and the plain unigram ranking.  So we precompute every answer once, on the
  host, into a table of rows, and a lookup on the device is two ``torch.searchsorted`` calls and a gather.
* ``lookup_match`` / ``lookup_propose`` -- prompt lookup for a batch of padded contexts.  Matching the
  suffix is a few shifted comparisons; counting the continuations is a sort and run lengths.

Rules for the device functions (so that ``torch.compile(..., fullgraph=True)`` can trace them): shapes
depend only on the inputs' shapes and Python ints, never on tensor values; no ``.item()``, ``.tolist()``,
``nonzero`` or boolean-mask indexing; where a value decides, ``torch.where`` chooses instead of ``if``.
"""

from __future__ import annotations

import numpy as np
import torch

from sdd_edu.errors import SddError
from sdd_edu.ngram import KatzTrigram

__all__ = ["TrigramTopK", "lookup_match", "lookup_propose"]


# --------------------------------------------------------------------------- build helpers (numpy, host)


def _first_free(rows: np.ndarray, ranks: np.ndarray, n_rows: int, k: int, width: int) -> np.ndarray:
    """For every row, the first k positions of a ranked list that are NOT in the row's excluded set.

    Row r excludes the positions ``ranks[rows == r]`` (distinct within a row, each in [0, width)).
    Returns (n_rows, k) positions; a row with fewer than k free positions runs past its list's end, and
    the caller treats positions >= the list's length as missing.

    Why it works: sort a row's excluded positions s_0 < s_1 < ...; then s_i - i counts the free positions
    before s_i, and it never decreases.  The j-th free position (from 0) is j plus the number of excluded
    positions before it, which is the number of i with s_i - i <= j: one ``searchsorted`` per (row, j),
    for all rows at once, with no Python loop over rows.
    """
    order = np.lexsort((ranks, rows))
    rows, ranks = rows[order], ranks[order]
    row_start = np.searchsorted(rows, np.arange(n_rows))  # (n_rows,) first excluded entry of each row
    free_before = ranks - (np.arange(len(rows)) - row_start[rows])  # s_i - i, nondecreasing in a row
    stride = width + k + 1  # > any free_before or j: rows do not mix in the flat key
    keys = rows * stride + free_before  # sorted
    j = np.arange(k)
    query = np.arange(n_rows)[:, None] * stride + j  # (n_rows, k)
    excluded_before = np.searchsorted(keys, query, side="right") - row_start[:, None]
    return j + excluded_before  # (n_rows, k)


def _head(order: np.ndarray, starts: np.ndarray, ends: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k entries of each slice ``order[starts[g]:ends[g]]``: (G, k) indices and a (G, k) valid mask."""
    pos = starts[:, None] + np.arange(k)  # (G, k)
    valid = pos < ends[:, None]
    return order[np.minimum(pos, len(order) - 1)], valid  # (clamped: the invalid ones are never used)


def _rank_rows(tokens: np.ndarray, probs: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row's candidates by decreasing probability, ties to the smaller token id; keep k.

    Missing candidates get probability -inf so they sort last (there are always at least k real ones).
    """
    probs = np.where(valid, probs, -np.inf)
    # two stable sorts: by token first, then by -probability, so equal probabilities keep the token order
    by_token = np.argsort(tokens, axis=1, kind="stable")
    tokens, probs = np.take_along_axis(tokens, by_token, 1), np.take_along_axis(probs, by_token, 1)
    by_prob = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(tokens, by_prob, 1), np.take_along_axis(probs, by_prob, 1)


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` for an index of any shape, a 0-d one included (indexing by a 0-d tensor reads it)."""
    return t.index_select(0, index.reshape(-1)).reshape(index.shape)


# --------------------------------------------------------------------------- the trigram's top-k table


class TrigramTopK:
    """A Katz trigram's top-k next tokens for every history, as sorted tensors for ``torch.searchsorted``.

    Rows of ``table`` (R, k), each a ranking of k token ids, most probable first:

    * rows 0 .. H3-1: one per seen two-token history (a, b), in the order of ``tri_keys`` = a*V + b;
    * rows H3 .. H3+H2-1: one per seen one-token history b (``bi_keys``), used when (a, b) is unseen;
    * row H3+H2: the unigram ranking, for an unseen b or a context shorter than one token.

    The rankings are built on the host with the very float64 operations of ``KatzTrigram.top_k``, so
    the ties come out the same.  ``build`` makes one; ``top_k`` looks rows up on the device.
    """

    def __init__(self, tri_keys: torch.Tensor, bi_keys: torch.Tensor, table: torch.Tensor, vocab_size: int,
                 num_tri: int, num_bi: int, k: int, probs: np.ndarray | None = None):
        self.tri_keys = tri_keys  # (H3 + 1,) int64 sorted, a sentinel last so searchsorted never runs off the end
        self.bi_keys = bi_keys  # (H2 + 1,) int64 sorted, sentinel last
        self.table = table  # (H3 + H2 + 1, width) int32 token ids
        self.vocab_size, self.num_tri, self.num_bi = vocab_size, num_tri, num_bi
        self.k = k  # the largest k a lookup may ask for (the table is min(k, V) wide)
        self.probs = probs  # (R, width) float64 on the host, or None: for checks only, the decoder needs none

    # ----------------------------------------------------------------- building (host, numpy)

    @classmethod
    def build(cls, trigram: KatzTrigram, k: int = 12, keep_probs: bool = False) -> "TrigramTopK":
        """Precompute every history's ranking of ``trigram`` (vectorised: no Python loop over histories).

        A history's distribution has three disjoint parts, each a scaled copy of a list that is already
        sorted (see ``KatzTrigram.top_k``): the seen trigram continuations, the bigram continuations of b
        not seen after (a, b) (times alpha_ab), and every other token (unigram times alpha_b * alpha_ab).
        The top k overall lies among the top k of each part, so each row merges at most 3k candidates.
        For the embedded ladder's trigram (129k rows, V = 49,152) this takes about a second on two CPU
        cores, and the table is 7 MB.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SddError(f"k must be a positive integer, got {k!r}")
        V = trigram.vocab_size
        width = min(int(k), V)
        bi, tri, uni = trigram._bi, trigram._tri, trigram.unigram
        H2, H3 = len(bi.hist_keys), len(tri.hist_keys)

        # --- the unigram part of bigram row g: the top `width` tokens of the unigram order not seen after b
        uni_order = trigram._uni_order  # tokens by decreasing unigram probability, ties: smaller id first
        uni_rank = np.empty(V, dtype=np.int64)
        uni_rank[uni_order] = np.arange(V)
        bi_sizes = np.diff(bi.hist_start)  # (H2,)
        bi_group = np.repeat(np.arange(H2), bi_sizes)  # (E2,) each bigram's history index
        bi_tokens = bi.keys - bi.hist_keys[bi_group] * V  # (E2,)
        pos = _first_free(bi_group, uni_rank[bi_tokens], H2, width, V)  # (H2, width)
        uni_part_ok = pos < V
        uni_part_tok = uni_order[np.minimum(pos, V - 1)]  # (H2, width)

        # --- bigram rows: seen bigram continuations (float32 -> float64) and the unigram part times alpha_b
        idx, ok = _head(bi.order.astype(np.int64), bi.hist_start[:-1], bi.hist_start[1:], width)
        seen_tok = bi.keys[idx] - bi.hist_keys[:, None] * V
        seen_p = bi.probs[idx].astype(np.float64)
        uni_p = uni[uni_part_tok] * bi.alpha[:, None]  # (H2, width), as uni[idx] * bi.alpha[g2] in _top_k
        bi_rows, bi_rows_p = _rank_rows(np.concatenate([seen_tok, uni_part_tok], 1),
                                        np.concatenate([seen_p, uni_p], 1),
                                        np.concatenate([ok, uni_part_ok], 1), width)

        # --- trigram rows
        tri_sizes = np.diff(tri.hist_start)
        tri_group = np.repeat(np.arange(H3), tri_sizes)  # (E3,)
        hist_b = tri.hist_keys % V  # (H3,) the key is a*V + b
        g2 = np.searchsorted(bi.hist_keys, hist_b)  # (H3,) b's bigram row: a seen (a, b, w) implies a seen (b, w)
        alpha3 = tri.alpha  # (H3,)
        # part 1: the seen trigram continuations, as they are
        idx, ok3 = _head(tri.order.astype(np.int64), tri.hist_start[:-1], tri.hist_start[1:], width)
        tri_tok = tri.keys[idx] - tri.hist_keys[:, None] * V
        tri_p = tri.probs[idx].astype(np.float64)
        # part 2: b's bigram continuations, skipping those seen after (a, b).  Exclude them by their rank
        # in b's sorted bigram list (bi.order), then take the first `width` free ranks.
        bi_rank_of = np.empty(len(bi.keys), dtype=np.int64)  # bigram entry -> its rank within its history
        bi_rank_of[bi.order] = np.arange(len(bi.keys)) - bi.hist_start[bi_group[bi.order]]
        tri_w = tri.keys - tri.hist_keys[tri_group] * V  # (E3,) each seen trigram's last token
        entry = np.searchsorted(bi.keys, hist_b[tri_group] * V + tri_w)  # its bigram (b, w)
        rank = _first_free(tri_group, bi_rank_of[entry], H3, width, int(bi_sizes.max(initial=0)))  # (H3, width)
        ok2 = rank < bi_sizes[g2][:, None]
        bidx = bi.order[np.minimum(bi.hist_start[g2][:, None] + rank, len(bi.keys) - 1)]
        back_tok = bi.keys[bidx] - hist_b[:, None] * V
        back_p = bi.probs[bidx].astype(np.float64) * alpha3[:, None]
        # part 3: the unigram part of b's row (every token it holds is unseen after b, hence after (a, b))
        rest_tok = uni_part_tok[g2]
        rest_p = uni[rest_tok] * bi.alpha[g2][:, None] * alpha3[:, None]  # same order of products as _top_k
        tri_rows, tri_rows_p = _rank_rows(np.concatenate([tri_tok, back_tok, rest_tok], 1),
                                          np.concatenate([tri_p, back_p, rest_p], 1),
                                          np.concatenate([ok3, ok2, uni_part_ok[g2]], 1), width)

        # --- the unigram row
        uni_row = uni_order[:width][None, :]
        table = np.concatenate([tri_rows, bi_rows, uni_row]).astype(np.int32)  # (H3 + H2 + 1, width)
        probs = np.concatenate([tri_rows_p, bi_rows_p, uni[uni_row]]) if keep_probs else None
        sentinel = np.array([np.iinfo(np.int64).max])
        return cls(torch.from_numpy(np.concatenate([tri.hist_keys, sentinel]).astype(np.int64)),
                   torch.from_numpy(np.concatenate([bi.hist_keys, sentinel]).astype(np.int64)),
                   torch.from_numpy(table), V, H3, H2, int(k), probs)

    def to(self, device) -> "TrigramTopK":
        """A copy whose tensors live on ``device``."""
        return TrigramTopK(self.tri_keys.to(device), self.bi_keys.to(device), self.table.to(device),
                           self.vocab_size, self.num_tri, self.num_bi, self.k, self.probs)

    @property
    def nbytes(self) -> int:
        """Bytes of the device tensors."""
        return sum(t.numel() * t.element_size() for t in (self.tri_keys, self.bi_keys, self.table))

    # ----------------------------------------------------------------- lookup (device, traceable)

    def rows(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The table row of each history (a, b): a = -1 for a context shorter than two, b = -1 for an empty one."""
        V = self.vocab_size
        # a seen two-token history?  (its key a*V + b is in tri_keys)
        key3 = a * V + b
        i3 = torch.searchsorted(self.tri_keys, key3)  # <= H3: the sentinel is never passed
        hit3 = (_take(self.tri_keys, i3) == key3) & (a >= 0) & (b >= 0)
        # a seen one-token history?
        i2 = torch.searchsorted(self.bi_keys, b)
        hit2 = (_take(self.bi_keys, i2) == b) & (b >= 0)
        unigram = torch.full_like(b, self.num_tri + self.num_bi)
        return torch.where(hit3, i3, torch.where(hit2, self.num_tri + i2, unigram))

    def top_k(self, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        """(..., min(k, V)) long: the k likeliest next tokens after a context ending (a, b), likeliest first.

        Equal to ``trigram.top_k(context, k)[0]``; a smaller k is a prefix of the same ranking.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.k:
            raise SddError(f"k must be an integer in [1, {self.k}] (the table's k), got {k!r}")
        rows = self.rows(a, b)
        picked = self.table.index_select(0, rows.reshape(-1))[:, : min(k, self.vocab_size)]
        return picked.reshape(*rows.shape, -1).long()

    def __repr__(self) -> str:
        return (f"TrigramTopK(vocab_size={self.vocab_size}, k={self.k}, rows={self.table.shape[0]} "
                f"({self.num_tri} trigram + {self.num_bi} bigram histories + unigram), "
                f"{self.nbytes / 2**20:.1f} MB on {self.table.device})")


# --------------------------------------------------------------------------- prompt lookup


def _check_ngram(max_ngram: int, min_ngram: int) -> None:
    for name, v in (("max_ngram", max_ngram), ("min_ngram", min_ngram)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SddError(f"{name} must be a positive integer, got {v!r}")
    if max_ngram < min_ngram:
        raise SddError(f"max_ngram ({max_ngram}) must be >= min_ngram ({min_ngram})")


def _longest_matches(seqs: torch.Tensor, lengths: torch.Tensor, max_ngram: int,
                     min_ngram: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The longest matching suffix of each query and where it matched.

    Returns n (Q,) long (0: no match) and hits (Q, T) bool, marking the END position e of every earlier
    occurrence of the last n tokens, i.e. seqs[q, e-n+1 : e+1] == the suffix, with e <= length-2 so the
    suffix itself is excluded and a continuation token seqs[q, e+1] exists (``PromptLookup._matches``).
    """
    Q, T = seqs.shape
    pos = torch.arange(T, device=seqs.device)  # (T,)
    L = lengths[:, None]  # (Q, 1)
    n = torch.zeros_like(lengths)  # (Q,)
    hits = torch.zeros(Q, T, dtype=torch.bool, device=seqs.device)
    same = torch.ones(Q, T, dtype=torch.bool, device=seqs.device)  # the last j tokens match, ending at e
    for j in range(max_ngram):
        # the j-th token from the end of each query (garbage where length <= j: masked below by e's range)
        back = (lengths - 1 - j).clamp(min=0)[:, None]  # (Q, 1)
        tail = seqs.gather(1, back)  # (Q, 1)
        # seqs shifted right by j: shifted[q, e] = seqs[q, e - j] (the fill never counts: e >= n-1 >= j below)
        shifted = torch.cat([seqs[:, :1].expand(Q, min(j, T)), seqs[:, : T - min(j, T)]], 1)  # (Q, T)
        same = same & (shifted == tail)
        size = j + 1
        if size < min_ngram:
            continue
        # a match of `size` tokens ending at e: start e-size+1 >= 0, and followed by a token before the end
        ok = same & (pos >= size - 1) & (pos <= L - 2)  # (Q, T)
        found = ok.any(1)  # (Q,)
        # sizes grow in this loop, so a longer match overrides a shorter one, as _longest tries longest first
        n = torch.where(found, torch.full_like(n, size), n)
        hits = torch.where(found[:, None], ok, hits)
    return n, hits


def lookup_match(seqs: torch.Tensor, lengths: torch.Tensor, k: int, max_ngram: int = 3,
                 min_ngram: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched ``PromptLookup(max_ngram, min_ngram).match(seqs[q, :lengths[q]], k)``.

    seqs (Q, T) long, padded past each query's length with anything; lengths (Q,) long.
    Returns n (Q,) the matched suffix length (0: no match); tokens (Q, k) the distinct tokens that followed
    the matches, by frequency then recency (latest match first), -1 where fewer; counts (Q, k) how often
    each followed (0 for padding); total (Q,) the number of matches, so probs = counts / total.

    Counting without a Python dict: sort each query's continuation tokens (non-matches get a sentinel
    that sorts last); equal tokens then sit in runs, a run's length is the token's count, and since the
    sort is stable the run's last element holds its latest match.
    """
    _check_ngram(max_ngram, min_ngram)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SddError(f"k must be a positive integer, got {k!r}")
    Q, T = seqs.shape
    n, hits = _longest_matches(seqs, lengths, max_ngram, min_ngram)  # (Q,), (Q, T)
    total = hits.sum(1)  # (Q,)

    nxt = torch.cat([seqs[:, 1:], seqs[:, -1:]], 1)  # (Q, T) the token after each end position
    NONE = torch.iinfo(torch.long).max
    cont = torch.where(hits, nxt, torch.full_like(nxt, NONE))  # (Q, T)
    tok, where = torch.sort(cont, dim=1, stable=True)  # (Q, T) tokens ascending, positions ascending in a tie

    pos = torch.arange(T, device=seqs.device)
    first = torch.ones_like(hits)
    first[:, 1:] = tok[:, 1:] != tok[:, :-1]  # a run starts here
    last = torch.ones_like(hits)
    last[:, :-1] = first[:, 1:]  # a run ends here
    run_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), dim=1).values  # (Q, T)
    count = pos - run_start + 1  # the run's length, read at its last element

    # one score per run, at its end: count first, then recency (end positions differ, so no two are equal)
    real = last & (tok != NONE)
    score = torch.where(real, count * T + where, torch.full_like(count, -1))  # (Q, T)
    if T < k:  # topk needs at least k columns (a static shape, so this branch is fine)
        score = torch.cat([score, score.new_full((Q, k - T), -1)], 1)
        tok = torch.cat([tok, tok.new_full((Q, k - T), NONE)], 1)
        count = torch.cat([count, count.new_zeros((Q, k - T))], 1)
    best, at = score.topk(k, dim=1)  # (Q, k)
    got = best >= 0
    tokens = torch.where(got, tok.gather(1, at), torch.full_like(at, -1))
    counts = torch.where(got, count.gather(1, at), torch.zeros_like(at))
    return n, tokens, counts, total


def lookup_propose(seqs: torch.Tensor, lengths: torch.Tensor, num_tokens: int, max_ngram: int = 3,
                   min_ngram: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``PromptLookup(max_ngram, min_ngram).propose(seqs[q, :lengths[q]], num_tokens)``.

    Copies what followed the latest match of the longest matching suffix.  Returns tokens (Q, num_tokens)
    long, -1 past ``count``, and count (Q,): how many were copied (fewer when the context ends first, 0
    when nothing matches).
    """
    _check_ngram(max_ngram, min_ngram)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise SddError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    Q, T = seqs.shape
    _, hits = _longest_matches(seqs, lengths, max_ngram, min_ngram)  # (Q, T)
    pos = torch.arange(T, device=seqs.device)
    latest = torch.where(hits, pos, torch.full_like(pos, -1)).amax(1)  # (Q,) -1: no match
    start = latest + 1  # the match ends at `latest`, its continuation starts right after
    count = torch.where(latest >= 0, (lengths - start).clamp(0, num_tokens), torch.zeros_like(lengths))
    j = torch.arange(num_tokens, device=seqs.device)
    at = (start[:, None] + j).clamp(max=T - 1)  # (Q, num_tokens)
    tokens = torch.where(j < count[:, None], seqs.gather(1, at), torch.full_like(at, -1))
    return tokens, count
