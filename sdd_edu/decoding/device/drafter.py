"""The draft phase of ``ModelDrafter`` (chain, tree or staged, with prompt lookup) on the device.

Everything the readable drafter does with Python lists, dicts and heaps happens here in tensor
operations of fixed shapes, for one step at a time:

1. **Guesses** (staged): the Katz trigram's top-k chain from the precomputed table and prompt lookup's
   continuation, as one small guessed tree (duplicates of the lookup chain dropped, as the reference's
   ``guess`` does).
2. **First draft forward** over the pending context tokens and every guess, through the tree mask.
3. **Growth** (``trees.Pool``): the root's and the guesses' distributions, mixed with prompt lookup's,
   propose their children; guesses the draft itself would propose come for free; each of ``rounds``
   further forwards expands the ``beam`` best candidates that still lack a distribution.
4. The **tree**: the ``budget`` best candidates, in score order.

The host supplies the step's shape (its size, the number of pending tokens, the context window) as
Python numbers; every value the drafter depends on stays on the device.  ``DeviceDrafter`` holds the
per-generation state (the draft's cache, the head extended with the context's tokens, prompt lookup's
recent precision) and the commit after verification (``commit``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from ...fast import BUCKETS, static_cache
from ...sampling import Sampling, probabilities
from ..common import ORIGINS
from ..drafters import ModelDrafter, prompt_agreement
from .capture import host_read
from .ngram import TrigramTopK, lookup_match, lookup_propose
from .trees import Pool, TensorTree, ancestors, choose_children, pick, select_tree, tree_mask_rows
from .verify import keep_path

DRAFT, NGRAM, LOOKUP = ORIGINS.index("draft"), ORIGINS.index("ngram"), ORIGINS.index("lookup")
MAX_PENDING = 16  # more context tokens than this waiting for the draft: a catch-up forward first
MIX_TOKENS = 4  # prompt lookup mixes in its top max(width, 4) tokens, as the reference's ``_mix``


def trigram_table(ngram, k: int, device) -> TrigramTopK:
    """The trigram's top-k table on ``device``, built once per trigram (the model never changes)."""
    tables = ngram.__dict__.setdefault("_device_tables", {})
    key = (k, str(device))
    if key not in tables:
        host = tables.get((k, "cpu")) or TrigramTopK.build(ngram, k)
        tables[(k, "cpu")] = host
        tables[key] = host.to(device)
    return tables[key]


@contextmanager
def untimed(name: str):
    """A clock that times nothing (the drafter's default, and inside a recorded phase)."""
    yield


@dataclass
class DraftedStep:
    """What the draft phase hands to verification."""

    tree: TensorTree
    rows: torch.Tensor  # (rows, columns) the mixed distribution that proposed each block's children


class DeviceDrafter:
    """``ModelDrafter``'s draft phase with device tensors; ``reference`` supplies every setting."""

    def __init__(self, reference: ModelDrafter):
        self.ref = reference
        self.model = reference.draft.model
        self.device = self.model.device
        self.width, self.beam = reference.width, reference.beam
        self.lookup = reference.lookup
        self.ngram = reference.ngram
        # the Katz trigram as a table of top-k answers; prompt lookup as the n-gram stage needs none
        trigram = self.ngram is not None and hasattr(self.ngram, "next_distribution")
        self.table = trigram_table(self.ngram, max(reference.fanout), self.device) if trigram else None
        self.reduced = reference.head_ids is not None
        self.vocab = self.model.config.vocab_size
        self.forwards = 0
        self.clock = untimed  # the decoding loop's ``PhaseClock``: draft forwards and n-gram work, timed

    # ------------------------------------------------------------------ per generation
    def begin(self, prompt_ids: list[int], max_new_tokens: int, capacity: int) -> None:
        """Start a generation.  Every tensor of the drafter's state is a buffer made once per capacity and
        updated in place from then on, so that a phase recorded as a CUDA graph reads and writes the same
        memory at every replay (a tensor rebound to a new one would be invisible to the graph)."""
        dev, V = self.device, self.vocab
        self.cache = static_cache(self.model, capacity, role="draft")
        if getattr(self, "capacity", None) != self.cache.max_len:  # the buffers, once per cache
            self.capacity = self.cache.max_len
            self.committed_t = torch.zeros((), dtype=torch.long, device=dev)
            # prompt lookup's recent precision (``ModelDrafter.lookup_weight``): hits and tries, float64 as the
            # reference's Python floats
            self.lookup_counts = torch.zeros(2, dtype=torch.float64, device=dev)
            self.column_buf = torch.full((V + 1,), -1, dtype=torch.long, device=dev)  # token -> column; V: spare
            self.column_of = self.column_buf
            spare = self.capacity if self.reduced and self.lookup is not None else 0  # every context token, at most
            head = self.model.head_ids.to(dev) if self.reduced else torch.arange(V, device=dev)
            self.head_size = head.shape[0]
            self.extra_buf = torch.zeros(spare + 1, dtype=torch.long, device=dev)  # the last entry: a spare
            self.extra_ids = self.extra_buf[:spare]
            self.extra_count = torch.zeros((), dtype=torch.long, device=dev)
            self.support_buf = torch.cat([head, torch.full((spare + 1,), V, dtype=torch.long, device=dev)])
            self.support = self.support_buf[:-1]  # column -> token (V: a column not given a token yet)
            self.head = head
        self.committed = 0  # context tokens with keys/values in the draft cache (the host's copy)
        self.committed_t.zero_()
        self.forwards = 0
        self.lookup_counts.zero_()
        self.column_buf.fill_(-1)
        self.column_buf[self.head] = torch.arange(self.head_size, device=dev)
        self.extra_buf.zero_()
        self.extra_count.zero_()
        self.support_buf[self.head_size:].fill_(V)
        if self.reduced and self.lookup is not None:
            self.extend(torch.tensor(prompt_ids, dtype=torch.long, device=dev))

    def state(self) -> list:
        """The tensors a step updates in place: what the draft has read, lookup's precision, the head."""
        return [self.cache.kv, self.committed_t, self.lookup_counts, self.column_buf, self.extra_buf,
                self.extra_count, self.support_buf]

    def extend(self, tokens: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """Give the head a column for each of ``tokens`` it lacks (``ModelDrafter._extend``): new ones in
        increasing token order, after the columns already there."""
        if not self.reduced or self.lookup is None:
            return
        V = self.vocab
        ok = self.column_of[tokens] < 0 if valid is None else valid & (self.column_of[tokens] < 0)
        key = torch.where(ok, tokens, V)
        key, _ = torch.sort(key)
        new = (key < V) & torch.cat([torch.ones(1, dtype=torch.bool, device=key.device), key[1:] != key[:-1]])
        rank = torch.cumsum(new.long(), 0) - 1  # among the new tokens, in token order
        column = self.head_size + self.extra_count + rank
        spare = self.extra_ids.shape[0]
        self.extra_buf[torch.where(new, column - self.head_size, spare)] = key  # (the rest to the spare entry)
        self.column_buf[torch.where(new, key, V)] = torch.where(new, column, -1)
        self.column_buf[V] = -1
        self.support_buf[torch.where(new, column, self.support_buf.shape[0] - 1)] = key
        self.support_buf[-1] = V
        self.extra_count.add_(new.sum())

    def prefill(self, context: list[int]) -> Optional[float]:
        """The draft reads the context but its last token (the first step's forward would), and how often
        its first choice, or the lookup's, was the next token: ``ModelDrafter.prefill``, once per generation."""
        if len(context) < 2:
            return None
        x = torch.tensor([context[:-1]], device=self.device)
        self.cache.length = 0
        logits = self.model(x, self.cache, reduced=self.reduced, extra_head_ids=self._extra())[0]
        logits = self._mask_spare(logits)
        self.forwards += 1
        self.committed = len(context) - 1
        self.committed_t.fill_(self.committed)
        return prompt_agreement(host_read(self.support[logits.argmax(-1)]), context, self.lookup)

    def _extra(self):
        return self.extra_ids if self.reduced and self.lookup is not None else None

    def _mask_spare(self, logits: torch.Tensor) -> torch.Tensor:
        """Columns of the extension not given to a token yet get -inf (probability zero)."""
        if not self.reduced or self.lookup is None:
            return logits
        col = torch.arange(logits.shape[-1], device=logits.device)
        return logits.masked_fill(col >= self.head_size + self.extra_count, float("-inf"))

    def _dists(self, logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """The draft's distributions (``drafters._draft_dist``), kept on the device."""
        logits = self._mask_spare(logits)
        if sampling.greedy:
            return torch.softmax(logits.float(), -1)
        return probabilities(logits, sampling)

    # ------------------------------------------------------------------ one step
    def shape(self, size: int) -> dict:
        """The static shape of a step of ``size`` nodes: budget, depth, guesses, rounds."""
        budget, depth = self.ref.limits(size)
        lookup = depth if self.lookup is not None else 0
        fans = [min(f, self.vocab) for f in self.ref.fanout[:depth]] if self.ngram is not None else []
        rounds = self.ref._rounds(size)
        return {"budget": budget, "depth": depth, "lookup": lookup, "fans": fans, "guesses": lookup + sum(fans),
                "rounds": rounds, "window": lookup + sum(fans) + rounds * self.beam}

    def pending_bucket(self, pending: int) -> int:
        return next(b for b in BUCKETS if b >= pending)

    def _ngram_top(self, ctx, length, chain, d: int, fan: int):
        """The n-gram stage's ``fan`` likeliest next tokens after the context and the chain's first ``d``
        guesses, and which exist: the Katz trigram's table, or prompt lookup's matches (fewer, or none)."""
        if self.table is not None:
            seq = torch.cat([ctx[:1].new_full((2,), -1), ctx])
            if d >= 2:
                a, b = chain[d - 2], chain[d - 1]
            elif d == 1:
                a, b = pick(seq, length + 1), chain[0]  # (seq is ctx shifted by two: -1 before the start)
            else:
                a, b = pick(seq, length), pick(seq, length + 1)
            cand = self.table.top_k(a, b, fan)
            return cand, torch.ones_like(cand, dtype=torch.bool)
        T = ctx.shape[0]
        seq = torch.cat([ctx, chain])[None]
        seq = seq.scatter(1, (length + torch.arange(d, device=ctx.device))[None], chain[None, :d]) if d else seq
        _, cand, _, _ = lookup_match(seq[:, :T + d], (length + d).view(1), fan, self.ngram.max_ngram,
                                     self.ngram.min_ngram)
        return cand[0], cand[0] >= 0

    def guesses(self, ctx: torch.Tensor, length: torch.Tensor, shape: dict):
        """The guessed tree (``ModelDrafter.guess``): tokens, parents (-1: the root), depth, valid, source, all (G,)."""
        dev = ctx.device
        D, nl = shape["depth"], shape["lookup"]
        tokens, parents, depth, valid, source = [], [], [], [], []
        if nl:
            lk, count = lookup_propose(ctx[None], length.view(1), D, self.lookup.max_ngram, self.lookup.min_ngram)
            lk, count = lk[0], count[0]
            i = torch.arange(nl, device=dev)
            tokens.append(lk.clamp(min=0))
            parents.append(i - 1)
            depth.append(i + 1)
            valid.append(i < count)
            source.append(torch.full((nl,), LOOKUP, device=dev))
        if shape["fans"]:
            on_chain = torch.ones((), dtype=torch.bool, device=dev)  # the chain so far follows the lookup's
            alive = torch.ones((), dtype=torch.bool, device=dev)  # the n-gram still had a guess (the reference breaks)
            offset, previous = nl, None
            chain = torch.zeros(len(shape["fans"]), dtype=torch.long, device=dev)  # the likeliest guess per level
            for d, fan in enumerate(shape["fans"]):
                cand, ok = self._ngram_top(ctx, length, chain, d, fan)  # (fan,)
                alive = alive & ok[0]
                if nl > d:  # the same token below the same parent as the lookup's node: one node, not two
                    dup = on_chain & (d < count) & (cand == lk[d])
                else:
                    dup = torch.zeros_like(ok)
                if d == 0:
                    parent = torch.full((fan,), -1, device=dev)
                else:
                    parent = torch.where(on_chain, d - 1, previous).expand(fan)
                tokens.append(cand.clamp(min=0))
                parents.append(parent)
                depth.append(torch.full((fan,), d + 1, device=dev))
                valid.append(~dup & ok & alive)
                source.append(torch.full((fan,), NGRAM, device=dev))
                previous = torch.full((), offset, device=dev)
                on_chain = on_chain & dup[0]
                offset += fan
                chain[d] = cand[0]
        if not tokens:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty, empty, empty.bool(), empty
        return (torch.cat(tokens), torch.cat(parents).long(), torch.cat(depth).long(), torch.cat(valid),
                torch.cat(source).long())

    def _mix(self, dists: torch.Tensor, ctx: torch.Tensor, length: torch.Tensor, path: torch.Tensor,
             path_len: torch.Tensor):
        """``ModelDrafter._mix`` for many rows: (1 - w) q + w c, with c what followed prompt lookup's matches
        of each row's context (the context, then the row's path).  Returns the mixtures and the lookup's
        share of each column (for the origins: ``lookup`` when it gave most of a token's probability)."""
        R, S = dists.shape
        if self.lookup is None:
            return dists, torch.zeros_like(dists)
        T, D = ctx.shape[0], path.shape[1]
        seqs = torch.cat([ctx, ctx.new_zeros(D)])[None].expand(R, T + D).clone()  # (R, T + D)
        at = (length + torch.arange(D, device=ctx.device))[None].expand(R, D)
        seqs.scatter_(1, at, path)  # the path after the context (entries past path_len are never read)
        k = max(self.width, MIX_TOKENS)
        n, tokens, counts, _ = lookup_match(seqs, length + path_len, k, self.lookup.max_ngram, self.lookup.min_ngram)
        hits, tries = self.lookup_counts[0], self.lookup_counts[1]
        w = (hits + self.ref.LOOKUP_PRIOR) / (tries + 1.0)  # float64, as the reference's Python floats
        counts = counts.to(dists.dtype)
        share = w.to(dists.dtype) * (counts / counts.sum(-1, keepdim=True).clamp(min=1))  # (R, k)
        cols = torch.where(tokens >= 0, self.column_of[tokens.clamp(min=0)], S)  # (R, k); S: a spare column
        cols = torch.where(cols >= 0, cols, S)
        mixed = torch.cat([(1 - w).to(dists.dtype) * dists, dists.new_zeros(R, 1)], 1)
        mixed.scatter_add_(1, cols, share)
        shares = torch.zeros(R, S + 1, dtype=dists.dtype, device=dists.device).scatter_(1, cols, share)
        found = (n > 0)[:, None]
        return torch.where(found, mixed[:, :S], dists), torch.where(found, shares[:, :S], 0.0)

    def prepare(self, ctx: torch.Tensor, L: int) -> int:
        """The host's part of a draft phase, before it: the number of context tokens the draft has not read
        (known from the last read), a forward over all but the last of them when too many wait (after a long
        run of baseline steps), and their bucket, the phase's shape."""
        pending = L - self.committed
        if pending > MAX_PENDING:  # a long run of baseline steps: catch the draft's cache up first
            self.cache.length = self.committed
            with self.clock("draft"):
                self.model(ctx[self.committed:L - 1][None], self.cache, reduced=self.reduced,
                           extra_head_ids=self._extra())
            self.forwards += 1
            self.committed, pending = L - 1, 1
            self.committed_t.fill_(self.committed)
        return self.pending_bucket(pending)

    def draft(self, ctx: torch.Tensor, length: torch.Tensor, L: int, size: int, sampling: Sampling,
              generator) -> DraftedStep:
        """One step's draft phase.  ctx (T,): the context buffer (T >= L + depth + 1); ``length`` its length
        on the device and ``L`` the same on the host."""
        Pb = self.prepare(ctx, L)
        self.forwards += 1 + self.shape(size)["rounds"]
        return self.draft_phase(ctx, length, size, Pb, sampling, generator)

    def draft_phase(self, ctx: torch.Tensor, length: torch.Tensor, size: int, Pb: int, sampling: Sampling,
                    generator) -> DraftedStep:
        """The draft phase on the device alone: every value it depends on is a tensor, and its shape is
        (``size``, ``Pb`` pending slots), so that it can be recorded as a CUDA graph and replayed."""
        s = self.shape(size)
        B, D, G, R, W, w, beam = s["budget"], s["depth"], s["guesses"], s["rounds"], s["window"], self.width, self.beam
        dev, cache = self.device, self.cache
        total = cache.kv.shape[3]  # slots, scratch included
        slot = torch.arange(total, device=dev)
        greedy = sampling.greedy
        committed = self.committed_t
        pending = length - committed

        # 1. the guessed tree
        with self.clock("ngram"):
            g_tok, g_par, g_depth, g_ok, g_src = self.guesses(ctx, length, s)
        g_anc = ancestors(g_par, D) if G else torch.zeros(0, 0, dtype=torch.bool, device=dev)  # (G, G)
        g_ok = g_ok & ~(g_anc & ~g_ok[None, :]).any(1)  # a guess below a dropped one is dropped too

        # 2. the first forward: pending tokens (causal, after the committed cache), then the guesses
        i = torch.arange(Pb, device=dev)
        p_ok = i < pending
        p_slot = torch.where(p_ok, committed + i, cache.max_len + BUCKETS[-1] - Pb + i)
        p_mask = torch.where(p_ok[:, None], slot[None, :] <= p_slot[:, None], slot[None, :] == p_slot[:, None])
        window = torch.zeros(G, W, dtype=torch.bool, device=dev)
        window[:, :G] = tree_mask_rows(g_anc, g_ok)
        g_mask = self._place(window, length, total) | (g_ok[:, None] & (slot[None, :] < length))
        ids = torch.cat([ctx[(committed + i).clamp(max=ctx.shape[0] - 1)], g_tok])
        pos = torch.cat([committed + i, length - 1 + g_depth])
        slots = torch.cat([p_slot, length + torch.arange(G, device=dev)])
        with self.clock("draft"):
            logits = cache.forward_rows(self.model, ids, pos, slots, torch.cat([p_mask, g_mask]), self.reduced,
                                        self._extra())
        root = logits.index_select(0, (pending - 1).view(1))  # the last pending token is the root
        dists = self._dists(torch.cat([root, logits[Pb:]]), sampling)  # (1 + G, S)

        # paths (token ids below the root) of the root and the guesses, for prompt lookup
        levels = torch.arange(1, D + 1, device=dev)
        at_depth = g_anc[:, :, None] & (g_depth[None, :, None] == levels[None, None, :])  # (G, G, D)
        g_path = (at_depth.long() * g_tok[None, :, None]).sum(1)  # (G, D)
        rows_path = torch.cat([torch.zeros(1, D, dtype=torch.long, device=dev), g_path])
        rows_len = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), g_depth])
        with self.clock("ngram"):
            mixed, share = self._mix(dists, ctx, length, rows_path, rows_len)
        cols, scores, probs, ok = choose_children(mixed, w, greedy, generator)  # (1 + G, w)

        # which guesses the draft itself proposes: those are in the pool, their distributions free
        g_col = self.column_of[g_tok]
        parent_row = g_par + 1
        same = (cols[parent_row] == g_col[:, None]) & ok[parent_row]  # (G, w)
        j = same.long().argmax(1)
        hit = g_ok & same.any(1) & (g_col >= 0)
        in_pool = hit & ~(g_anc & ~hit[None, :]).any(1)
        g_slot = torch.where(in_pool, parent_row * w + j, -1)
        g_score = torch.ones(G, dtype=torch.float64, device=dev)
        step = scores[parent_row, j]
        for _ in range(D):  # along the path, in order: the same products as the reference's
            g_score = torch.where(g_par >= 0, g_score[g_par.clamp(min=0)] * step, step)

        pool = Pool.empty(1 + G + R * beam, w, dev)
        origin = torch.where(share.gather(1, cols) > probs / 2, LOOKUP, DRAFT)
        minus_one = torch.full((1,), -1, dtype=torch.long, device=dev)
        pool.fill(0, torch.cat([minus_one, g_slot]), torch.cat([torch.ones(1, dtype=torch.bool, device=dev), in_pool]),
                  torch.cat([torch.ones(1, dtype=torch.float64, device=dev), g_score]),
                  torch.cat([torch.zeros(1, dtype=torch.long, device=dev), g_depth]),
                  cols, scores, probs, ok, self._token_of, origin, D)
        P = pool.origin.shape[0]
        origins = torch.cat([pool.origin, pool.origin.new_zeros(1)])
        origins[torch.where(in_pool, g_slot, P)] = g_src
        pool.origin = origins[:P]

        rows_mixed = torch.zeros(1 + G + R * beam, mixed.shape[1], dtype=mixed.dtype, device=dev)
        rows_mixed[:1 + G] = mixed
        row_kv = torch.zeros(1 + G + R * beam, W, dtype=torch.bool, device=dev)  # each row's ancestors' KV slots
        row_kv[1:1 + G] = window[:, :]
        row_path = torch.zeros(1 + G + R * beam, D, dtype=torch.long, device=dev)
        row_path[:1 + G] = rows_path

        # 3. rounds: the beam best candidates without a distribution, one draft forward each round
        for r in range(R):
            expandable = pool.valid & ~pool.planned & (pool.depth < D)
            chosen, c_ok = pool.best(beam, among=expandable)  # (beam,)
            first = 1 + G + r * beam
            b = torch.arange(beam, device=dev)
            own = torch.zeros(beam, W, dtype=torch.bool, device=dev)
            own[b, G + r * beam + b] = True
            parent_row = chosen // w
            kv = torch.where(c_ok[:, None], row_kv[parent_row] | own, own)
            row_kv[first:first + beam] = kv
            depth = pool.depth[chosen]
            path = row_path[parent_row].scatter(1, (depth - 1).clamp(min=0)[:, None], pool.tokens[chosen][:, None])
            row_path[first:first + beam] = path
            mask = self._place(kv, length, total) | (c_ok[:, None] & (slot[None, :] < length))
            with self.clock("draft"):
                logits = cache.forward_rows(self.model, pool.tokens[chosen], length - 1 + depth,
                                            length + G + r * beam + b, mask, self.reduced, self._extra())
            with self.clock("ngram"):
                mixed, share = self._mix(self._dists(logits, sampling), ctx, length, path, depth)
            cols, scores, probs, ok = choose_children(mixed, w, greedy, generator)
            origin = torch.where(share.gather(1, cols) > probs / 2, LOOKUP, DRAFT)
            pool.fill(first, chosen, c_ok, pool.score[chosen], depth, cols, scores, probs, ok, self._token_of,
                      origin, D)
            rows_mixed[first:first + beam] = mixed

        return DraftedStep(select_tree(pool, B, D), rows_mixed)

    def committed_after(self, L: int, kept: int, verified: bool) -> None:
        """The host's copy of the draft's committed length after a step (from the step's read)."""
        self.committed = L + kept if verified else L
        # (the device's copy is set by ``commit``, inside the step)

    def _token_of(self, cols: torch.Tensor) -> torch.Tensor:
        return self.support[cols]

    @staticmethod
    def _place(window: torch.Tensor, length: torch.Tensor, total: int) -> torch.Tensor:
        """(n, W) window columns placed at cache slots length .. length + W - 1 of an (n, total) mask."""
        n, W = window.shape
        out = torch.zeros(n, total + 1, dtype=torch.bool, device=window.device)
        at = (length + torch.arange(W, device=window.device)).clamp(max=total)[None].expand(n, W)
        out.scatter_(1, at, window)
        return out[:, :total]

    # ------------------------------------------------------------------ after verification
    def commit(self, step: DraftedStep, path: torch.Tensor, count: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """Keep the draft's keys/values of the accepted path as far as the draft computed them (a node that
        got its own distribution has them); returns how many (``ModelDrafter.update``)."""
        rows = torch.where(path >= 0, step.tree.child_row[path.clamp(min=0)], -1)  # (D,)
        on_path = torch.arange(path.shape[0], device=path.device) < count
        computed = torch.cumprod((on_path & (rows >= 1)).long(), 0)  # stop at the first node without
        kept = computed.sum()
        keep_path(self.cache.kv, length, (rows - 1).clamp(min=0))
        self.committed_t.copy_(length + kept)
        return kept

    def read_context(self, length: torch.Tensor) -> None:
        """After a shadow draft (not verified): the draft's cache holds the context it read, nothing more."""
        self.committed_t.copy_(length)

    def score_lookup(self, ctx: torch.Tensor, start: torch.Tensor, new: int, count: torch.Tensor) -> torch.Tensor:
        """``ModelDrafter._score_lookup`` for the ``count`` tokens committed at ``start``, ``start + 1``, ...
        (at most ``new``): would prompt lookup's first choice have been each?  Updates the decayed hits and
        tries; returns whether it would have given the first one (-1: it had no guess)."""
        if self.lookup is None:
            return torch.full((), -1, dtype=torch.long, device=ctx.device)
        T = ctx.shape[0]
        i = torch.arange(new, device=ctx.device)
        ends = start + i  # the context before each new token
        n, tokens, _, _ = lookup_match(ctx[None].expand(new, T), ends, 1, self.lookup.max_ngram, self.lookup.min_ngram)
        truth = ctx[ends.clamp(max=T - 1)]
        guessed = (n > 0) & (i < count)
        hit = (tokens[:, 0] == truth) & guessed
        decay = self.ref.LOOKUP_DECAY
        counts = self.lookup_counts  # (2,) hits and tries, float64, updated as the reference's Python floats
        add = torch.stack([hit.double(), torch.ones(new, dtype=torch.float64, device=ctx.device)], 1)  # (new, 2)
        for j in range(new):  # in order: each decays the ones before
            counts = torch.where(guessed[j], counts * decay + add[j], counts)  # (two roundings, as in Python)
        self.lookup_counts.copy_(counts)
        return torch.where(guessed[0], hit[0].long(), -1)
