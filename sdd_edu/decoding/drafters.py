"""Drafters: whatever proposes the token tree that the target verifies.

The interface is small, as in ``transformers``' assisted generation:

* ``begin(prompt_ids, max_len)``: start a new generation;
* ``get_candidates(context, sampling, generator) -> TokenTree``: a tree below ``context[-1]``;
* ``update(context, tree, accepted)``: the target kept ``accepted`` (node indices); ``context``
  now ends with the target's own next token.

Every drafter grows its tree the same way (``Drafter._grow``): best-first by a cumulative
score, at most ``width`` children per node, at most ``depth`` levels and ``budget`` nodes,
as the paper's code keeps the nodes with the highest cumulative draft probability.
Under greedy decoding a node's children are the draft's top-``width`` tokens and the score
is the cumulative draft probability.  Under sampling the children are *drawn* from the
draft distribution without replacement (Gumbel top-k), which recursive rejection
sampling needs to stay exact; the score then uses the rank-j probability of the
distribution instead of the drawn token's own probability, so whether a child is kept
never depends on what was drawn for it.

* ``NgramDrafter``: an n-gram model (Katz trigram or prompt lookup) is the whole draft.
* ``ModelDrafter``: a small transformer; one forward per round over the nodes it expands.
  With ``ngram`` set it becomes the **staged** drafter: first the n-gram guesses the draft's
  own continuations (fan-out 12, 7, 4, 1, 1, 1 along the likeliest path), the draft scores
  all of them in the same single forward, and every guessed node it keeps comes with its
  distribution for free, so the tree grows deep without more draft forwards.

**The context is always draftable.**  A small draft cannot copy: the shipped one predicts the next
word of "hello world, hello world, ..." 4 times in 18, and the 41k tokens outside its 8k head
(" green", " SELECT", most Japanese) it can never propose.  With ``lookup`` set (the staged
default), prompt lookup joins in twice.  It guesses beside the trigram (its continuation of the
latest match is one more guessed chain, so the draft scores it in the same forward), and every
node's distribution becomes the mixture (1 - w) q_draft + w q_lookup, where q_lookup is what
followed earlier matches of the node's context and w the lookup's recent precision on this text.
The draft's head is extended with every token of the prompt and of the output (their rows of the
tied embedding), so the mixture lives in the drafter's own token space.  A mixture is a
distribution like any other, so tree verification stays exact.

Every drafter also takes a **size** per step (``set_size``: node budget, and depth for chains) from
the speculation schedule (``schedule.DraftSchedule``); size 0 proposes nothing and runs no forward.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import SddError
from ..fast import new_cache
from ..loading import LoadedModel
from ..sampling import Sampling, probabilities
from .common import synchronize
from .tree import ROOT, TokenTree, tree_attention_mask


def choose_children(dist: torch.Tensor, width: int, sampling: Sampling, generator):
    """(indices, scores, probs): top-``width`` under greedy; draws without replacement under sampling.

    ``indices`` index ``dist``; ``probs`` are those entries' own probabilities.
    """
    k = min(width, int((dist > 0).sum()))
    if k == 0:
        return [], [], []
    top = torch.topk(dist, k)
    if sampling.greedy:
        values = top.values.tolist()
        return top.indices.tolist(), values, values
    # Gumbel top-k: the order of log q + Gumbel noise is a draw without replacement from q
    u = torch.rand(dist.shape, generator=generator).clamp_(1e-20, 1.0)
    keys = torch.log(dist) - torch.log(-torch.log(u))
    drawn = torch.topk(keys, k).indices
    # scores: rank-j probabilities, independent of the draws
    return drawn.tolist(), top.values.tolist(), dist[drawn].tolist()


class Drafter:
    """Base class: tree growth and counters.  Subclasses say where node distributions come from."""

    name = "drafter"

    def __init__(self, width: int = 4, depth: int = 8, budget: int = 36, beam: int = 4):
        for label, value in (("width", width), ("depth", depth), ("budget (tree size)", budget), ("beam", beam)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SddError(f"{label} must be a positive integer, got {value!r}")
        self.width, self.depth, self.budget, self.beam = width, depth, budget, beam
        self.size = budget  # nodes to propose this step (see set_size); budget is the configured size
        self.max_size = budget  # most nodes a step may propose (the schedule may grow trees up to it)
        self.lookup_landed: Optional[bool] = None  # would a free guess have given the last step's first token
        self.forwards = 0
        self.seconds = 0.0
        self.ngram_seconds = 0.0
        # Node distributions may cover only part of the vocabulary (a draft with a reduced head):
        # then ``support`` lists the token id of each entry and every other token has probability 0.
        self.support: Optional[torch.Tensor] = None
        self.vocab_size: Optional[int] = None

    def _full(self, dist: torch.Tensor) -> torch.Tensor:
        """``dist`` over the whole vocabulary (what the sampling rules compare with the target's)."""
        if self.support is None:
            return dist
        full = torch.zeros(self.vocab_size, dtype=dist.dtype)
        full[self.support] = dist
        return full

    @property
    def max_nodes(self) -> int:
        return self.max_size

    def set_size(self, size: int) -> None:
        """Propose at most ``size`` nodes next step (0: nothing; a chain drafter's depth follows)."""
        if not 0 <= size <= self.max_size:
            raise ValueError(f"draft size {size} outside [0, {self.max_size}]")
        self.size = size

    def limits(self, size: Optional[int] = None) -> tuple[int, int]:
        """(node budget, depth) for a tree of ``size`` nodes.

        At the configured size these are ``budget`` and ``depth``.  Smaller trees keep the depth no
        deeper than the nodes; bigger ones (the schedule grows trees where drafts land) go deeper by
        as many levels as nodes were added, so a chain stays a chain.
        """
        size = self.size if size is None else size
        if self.width == 1:
            return size, size
        depth = min(size, self.depth) if size <= self.budget else min(size, self.depth + size - self.budget)
        return size, depth

    def forwards_for(self, size: int) -> int:
        """Draft forwards a tree of ``size`` nodes takes (the schedule's cost model)."""
        return 0

    @property
    def context_limit(self) -> Optional[int]:
        """Longest context the drafter can hold, if it has a limit (a draft model's window)."""
        return None

    fast = False  # the fast path's fixed-shape caches (``sdd_edu/fast.py``), set by the decoding loop

    def begin(self, prompt_ids: Sequence[int], max_len: int) -> None:
        self.forwards, self.seconds, self.ngram_seconds = 0, 0.0, 0.0

    def get_candidates(self, context: list[int], sampling: Sampling, generator) -> TokenTree:
        raise NotImplementedError

    def update(self, context: list[int], tree: TokenTree, accepted: list[int]) -> None:
        pass

    def prefill(self, context: list[int]):
        """Read the context before the first step; how often the drafter's first choice was the context's
        next token (None: it cannot tell at no cost).  Only model drafters can."""
        return None

    # -- hooks for _grow
    def _mix(self, tree: TokenTree, node: int, context: list[int], dist: torch.Tensor) -> torch.Tensor:
        """The distribution the children of ``node`` are drawn from (the draft's, or a mixture with it)."""
        return dist

    def _known_dist(self, tree: TokenTree, node: int, context: list[int], sampling: Sampling):
        """The draft distribution after ``node`` if it costs nothing more, else None."""
        return None

    def _forward(self, tree: TokenTree, nodes: list[int], sampling: Sampling) -> list[torch.Tensor]:
        """Distributions after each of ``nodes`` (one draft forward).  Only model drafters have one."""
        raise NotImplementedError

    def _origin(self, tree: TokenTree, parent: int, token: int) -> str:
        return "draft"

    def _grow(self, root_dist: torch.Tensor, context: list[int], sampling: Sampling, generator,
              rounds: int = 0) -> TokenTree:
        """The tree: the ``budget`` best candidates by cumulative score, grown best-first.

        A *candidate* is a child that a node's distribution proposes (its top ``width``, or ``width``
        draws), scored by the product of the scores along its path.  Every candidate scores at most
        what its parent does, and a later sibling at most what an earlier one does, so the best
        ``budget`` candidates always form a tree whose siblings are the first draws.

        The root's distribution is known; a candidate's own distribution (which proposes its children)
        is known for free when an earlier forward computed it (the staged drafter's n-gram guesses:
        ``_known_dist``), and costs a draft forward otherwise.  Free ones are used as soon as their node
        is among the best; then each of ``rounds`` draft forwards takes the ``beam`` best candidates
        still without one (one forward per level of a tree a few nodes wide, as EAGLE-2 grows its
        trees).  Ties in score go to the shallower candidate, then to the one found first.
        ``sdd_edu.decoding.device.trees`` grows the same tree with tensor operations.
        """
        budget, max_depth = self.limits()
        pool = TokenTree()  # every candidate found so far, in the order found (parents before children)
        score: list[float] = []
        depth: list[int] = []
        planned: set[int] = set()  # nodes whose children are in the pool

        def plan(node: int, dist: torch.Tensor) -> None:
            """Add ``node``'s children to the pool (ROOT: the root's)."""
            dist = self._mix(pool, node, context, dist)
            tokens, scores, probs = choose_children(dist, self.width, sampling, generator)
            if self.support is not None:
                tokens = self.support[tokens].tolist()
            if not sampling.greedy:
                pool.child_dists[node] = self._full(dist)
            above, level = (1.0, 0) if node == ROOT else (score[node], depth[node])
            for token, s, prob in zip(tokens, scores, probs):
                pool.add(token, node, self._origin(pool, node, token), prob)
                score.append(above * s)
                depth.append(level + 1)
            planned.add(node)

        def best() -> list[int]:
            """The ``budget`` best candidates, best first (a parent before its children)."""
            return sorted(range(len(pool)), key=lambda c: (-score[c], depth[c], c))[:budget]

        def unplanned_best() -> list[int]:
            return [c for c in best() if c not in planned and depth[c] < max_depth]

        def plan_free() -> None:
            """Plan every best candidate whose distribution costs nothing, until none is left."""
            while True:
                free = [(c, d) for c in unplanned_best()
                        if (d := self._known_dist(pool, c, context, sampling)) is not None]
                if not free:
                    return
                for c, dist in free:
                    plan(c, dist)

        plan(ROOT, root_dist)
        plan_free()
        for _ in range(rounds):
            waiting = unplanned_best()[:self.beam]
            if not waiting:
                break
            for node, dist in zip(waiting, self._forward(pool, waiting, sampling)):
                plan(node, dist)
            plan_free()
        return self._subtree(pool, best())

    def _subtree(self, pool: TokenTree, nodes: list[int]) -> TokenTree:
        """The tree of ``nodes`` of the pool (parents first), renumbered; ``pool_nodes`` maps it back."""
        index = {ROOT: ROOT}
        tree = TokenTree()
        for c in nodes:
            index[c] = tree.add(pool.tokens[c], index[pool.parents[c]], pool.origins[c], pool.draft_probs[c])
        tree.child_dists = {index[n]: d for n, d in pool.child_dists.items() if n in index}
        self.pool_nodes = nodes
        return tree


def prompt_agreement(guesses: list[int], context: list[int], lookup=None) -> float:
    """The share of the context's positions 1.. where the draft's first choice (``guesses[i - 1]``), or prompt
    lookup's, was the token there: how well the drafter predicts this text."""
    hits = [g == t for g, t in zip(guesses, context[1:])]
    if lookup is not None:
        for i in range(1, len(context)):
            _, tokens, _ = lookup.match(context[:i], 1)
            hits[i - 1] = hits[i - 1] or (bool(tokens) and tokens[0] == context[i])
    return sum(hits) / len(hits)


def _draft_dist(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The draft's distribution: the same sampling settings as the target (plain softmax for greedy ranking).

    ``logits`` may be a reduced head's: tokens outside it have logit -inf, so the softmax, top-k and
    top-p over the head alone equal those over the whole vocabulary, restricted to the head.
    """
    if sampling.greedy:
        return torch.softmax(logits.float(), -1).cpu()
    return probabilities(logits, sampling).cpu()


# ----------------------------------------------------------------------------- n-gram as the whole draft

class NgramDrafter(Drafter):
    """An n-gram model drafts alone: a chain (width 1) or a tree, with no neural forward at all."""

    name = "ngram"

    def __init__(self, ngram, vocab_size: int, width: int = 1, depth: int = 4, budget: Optional[int] = None):
        super().__init__(width, depth, budget if budget is not None else width * depth, beam=1)
        self.ngram, self.vocab_size = ngram, vocab_size

    def _dist(self, ctx: list[int]) -> torch.Tensor:
        t0 = time.perf_counter()
        if hasattr(self.ngram, "next_distribution"):
            dist = torch.from_numpy(np.asarray(self.ngram.next_distribution(ctx), dtype=np.float32))
        else:  # prompt lookup: the empirical distribution of what followed earlier matches
            tokens, probs = self.ngram.top_k(ctx, max(self.width, 1))
            dist = torch.zeros(self.vocab_size)
            if tokens:
                dist[torch.tensor(tokens)] = torch.tensor(probs, dtype=torch.float32)
                dist /= dist.sum()
        self.ngram_seconds += time.perf_counter() - t0
        return dist

    def _known_dist(self, tree, node, context, sampling):
        return self._dist(context + [tree.tokens[i] for i in tree.path(node)])

    def _origin(self, tree, parent, token):
        return "ngram" if hasattr(self.ngram, "next_distribution") else "lookup"  # prompt lookup copies context

    def get_candidates(self, context, sampling, generator):
        if self.size == 0:
            return TokenTree()
        return self._grow(self._dist(context), context, sampling, generator)


# ----------------------------------------------------------------------------- a draft model (+ n-gram stage)

class ModelDrafter(Drafter):
    """A small transformer drafts; with ``ngram`` set, an n-gram stage speculates the draft itself (staged).

    ``lookup`` (a ``PromptLookup``): copy from the context too, in the guesses and in every node's
    distribution (see the module docstring).
    """

    # the lookup's weight in the mixture starts here and follows its hits, a decayed count over recent tokens
    LOOKUP_PRIOR, LOOKUP_DECAY = 0.5, 0.9

    def __init__(self, draft: LoadedModel, width: int = 4, depth: int = 8, budget: int = 36, beam: int = 4,
                 rounds: Optional[int] = None, ngram=None, ngram_fanout: Sequence[int] = (12, 7, 4, 1, 1, 1),
                 lookup=None):
        super().__init__(width, depth, budget, beam)
        if any((not isinstance(f, int)) or f < 1 for f in ngram_fanout):
            raise SddError(f"n-gram fan-out must be positive integers, got {list(ngram_fanout)}")
        self.draft, self.ngram, self.fanout, self.lookup = draft, ngram, tuple(ngram_fanout), lookup
        self.rounds = depth if rounds is None else rounds
        # a reduced head: work on its logits, not on a mostly -inf full-vocabulary row per node
        # (measured: softmax and top-k for four nodes took 1.4 ms over 49,152 entries, 0.1 ms over 8,192)
        self.head_ids = draft.model.head_ids.cpu() if draft.config.head_size else None
        self.vocab_size = draft.config.vocab_size if self.head_ids is not None else None
        self.name = "staged" if ngram is not None else "draft"

    def _extra_slots(self) -> int:
        guesses = (sum(self.fanout) if self.ngram is not None else 0) + (self.max_size if self.lookup else 0)
        return guesses + max(self.max_size, self._rounds(self.max_size) * self.beam) + 2

    @property
    def context_limit(self) -> int:
        return self.draft.config.max_seq_len - self._extra_slots()

    def _rounds(self, size: int) -> int:
        """Draft forwards after the first: one per node for a chain; never more than the levels below the first."""
        return max(0, min(size if self.width == 1 else self.rounds, self.limits(size)[1] - 1))

    def forwards_for(self, size: int) -> int:
        return 0 if size == 0 else 1 + self._rounds(size)

    def begin(self, prompt_ids, max_len):
        super().begin(prompt_ids, max_len)
        self.cache = new_cache(self.draft.model, min(max_len + self._extra_slots(), self.draft.config.max_seq_len),
                               fast=self.fast, role="draft")
        self.cached = 0  # context tokens whose keys/values are committed in the draft cache
        self.skipped = False
        self.lookup_hits, self.lookup_tries = 0.0, 0.0
        self.seen = 0  # context tokens already scored against the lookup and added to the head
        if self.head_ids is not None:
            # the head, extended with the context's tokens: support[i] is the token id of column i
            self.support = self.head_ids
            self.extra_ids = torch.zeros(0, dtype=torch.long)
            self.column = {int(t): i for i, t in enumerate(self.head_ids.tolist())}
        self._extend(prompt_ids)
        self.seen = len(prompt_ids)

    def _extend(self, tokens) -> None:
        """Add ``tokens`` that the head lacks to its run-time extension (with a lookup to propose them)."""
        if self.head_ids is None or self.lookup is None:
            return
        new = sorted(t for t in {int(t) for t in tokens} if t not in self.column)  # (set - keys() copies every key)
        if not new:
            return
        for t in new:
            self.column[t] = len(self.column)
        added = torch.tensor(new, dtype=torch.long)
        self.extra_ids = torch.cat([self.extra_ids, added])
        self.support = torch.cat([self.support, added])
        self._extra_on_device = self.extra_ids.to(self.draft.model.device)

    def _logits(self, x, **kw):
        extra = getattr(self, "_extra_on_device", None) if self.head_ids is not None else None
        return self.draft.model(x, self.cache, reduced=self.head_ids is not None, extra_head_ids=extra, **kw)[0]

    def prefill(self, context):
        """The draft forward over the context that the first draft would run anyway (all but the root),
        and its agreement with the context: the share of positions where the draft's first choice, or the
        lookup's, was the next token.  A draft that cannot predict the prompt rarely predicts the target."""
        if len(context) < 2 or self.cached:
            return None
        model = self.draft.model
        synchronize(model.device)
        t0 = time.perf_counter()
        logits = self._logits(torch.tensor([context[:-1]], device=model.device))  # (L - 1, columns)
        self.forwards += 1
        self.cached = len(context) - 1
        best = logits.argmax(-1).cpu()
        guesses = (self.support[best] if self.head_ids is not None else best).tolist()
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        agreement = prompt_agreement(guesses, context, self.lookup)
        self.ngram_seconds += time.perf_counter() - t0
        return agreement

    # -- prompt lookup, mixed into every node's distribution
    @property
    def lookup_weight(self) -> float:
        """The lookup's share of the mixture: its recent precision on this text (prior counted as one try)."""
        return (self.lookup_hits + self.LOOKUP_PRIOR) / (self.lookup_tries + 1.0)

    def _mix(self, tree, node, context, dist):
        if self.lookup is None:
            return dist
        # the context as an array once per step (``get_candidates``), the node's path appended
        ctx = self._context_array if node == ROOT else np.concatenate(
            [self._context_array, np.asarray([tree.tokens[i] for i in tree.path(node)], dtype=np.int64)])
        _, tokens, counts, _ = self.lookup.match_counts(ctx, max(self.width, 4))
        if not tokens:
            return dist
        w = self.lookup_weight
        # (an index tensor: indexing by a Python list costs more than all the arithmetic here)
        index = torch.tensor([self.column[t] for t in tokens] if self.head_ids is not None else tokens)
        counts = torch.tensor(counts, dtype=dist.dtype)
        copied = w * (counts / counts.sum())  # the lookup's share, on its tokens, in proportion to their matches
        mixed = ((1 - w) * dist).index_add_(0, index, copied)  # the tokens are distinct: (1 - w) q + w c
        self._copied[node] = dict(zip(tokens, zip(copied.tolist(), mixed.index_select(0, index).tolist())))
        return mixed

    # -- stage two: the n-gram (and the lookup) guess what the draft will propose
    def guess(self, context: list[int]) -> tuple[list[int], list[int]]:
        """Guessed nodes (tokens, parents) for the draft to score in one forward; sources in ``guess_sources``."""
        t0 = time.perf_counter()
        tokens, parents, sources = [], [], []
        index: dict[tuple[int, int], int] = {}

        def add(parent: int, token: int, source: str) -> int:
            if (parent, token) not in index:
                index[(parent, token)] = len(tokens)
                tokens.append(token)
                parents.append(parent)
                sources.append(source)
            return index[(parent, token)]

        depth = self.limits()[1]
        if self.lookup is not None:  # the continuation of the latest match, as deep as the tree may go
            parent = ROOT
            for t in self.lookup.propose(context, depth) if depth else []:
                parent = add(parent, int(t), "lookup")
        if self.ngram is not None:
            parent, ctx = ROOT, list(context)
            for fan in self.fanout[:depth]:
                cand, _ = self.ngram.top_k(ctx, fan)
                cand = [int(c) for c in cand]
                if not cand:
                    break
                below = [add(parent, c, "ngram") for c in cand]
                parent = below[0]  # continue below the likeliest guess
                ctx.append(cand[0])
        self.guess_sources = sources
        self.ngram_seconds += time.perf_counter() - t0
        return tokens, parents

    def get_candidates(self, context, sampling, generator):
        self._copied: dict[int, dict[int, tuple[float, float]]] = {}  # node -> token -> (lookup's, mixed prob)
        self.skipped = self.size == 0
        if self.skipped:  # a baseline step: no draft forward; the context waits for the next one
            return TokenTree()
        model = self.draft.model
        pending = context[self.cached:]
        self._context_array = np.asarray(context, dtype=np.int64)
        g_tokens, g_parents = self.guess(context)
        synchronize(model.device)
        t0 = time.perf_counter()
        mask, pos = tree_attention_mask(g_parents, cached=self.cache.length, chain=len(pending), device=model.device)
        x = torch.tensor([pending + g_tokens], device=model.device)
        logits = self._logits(x, position_ids=pos, attention_mask=mask)  # (pending + G, V or head columns)
        self.forwards += 1
        self.base = self.cached + len(pending)  # committed part of the draft cache after this forward
        # the distributions after the root and after every guessed node, moved to the host in one transfer
        # (node by node, a GPU would wait once per node)
        dists = _draft_dist(logits[len(pending) - 1:], sampling)  # (1 + G, V or head columns)
        self._guessed = dists[1:]  # after each guessed node
        self._g_child = {(p, t): i for i, (p, t) in enumerate(zip(g_parents, g_tokens))}
        self._g_of = {ROOT: ROOT}  # tree node -> guessed node
        self._slot = {}  # tree node -> cache slot of its keys/values
        root_dist = dists[0]
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        return self._grow(root_dist, context, sampling, generator, rounds=self._rounds(self.size))

    def _origin(self, tree, parent, token):
        g = self._g_of.get(parent)
        guessed = self._g_child.get((g, token)) if g is not None else None
        if guessed is not None:
            return self.guess_sources[guessed]
        copied, mixed = self._copied.get(parent, {}).get(token, (0.0, 0.0))
        return "lookup" if copied > mixed / 2 else "draft"  # most of its probability came from the lookup

    def _known_dist(self, tree, node, context, sampling):
        g_parent = self._g_of.get(tree.parents[node])
        g = self._g_child.get((g_parent, tree.tokens[node])) if g_parent is not None else None
        if g is None:
            return None
        self._g_of[node] = g
        self._slot[node] = self.base + g
        return self._guessed[g]

    def _forward(self, tree, nodes, sampling):
        """One draft forward over ``nodes``; each sees the committed cache, its ancestors' slots and itself."""
        model = self.draft.model
        synchronize(model.device)
        t0 = time.perf_counter()
        start = self.cache.length
        mask = torch.zeros(len(nodes), start + len(nodes), dtype=torch.bool)
        mask[:, :self.base] = True
        rows, slots = [], []  # (row, slot) pairs to open: each node's ancestors' slots and its own
        for row, node in enumerate(nodes):
            for slot in [self._slot[anc] for anc in tree.path(node)[:-1]] + [start + row]:
                rows.append(row)
                slots.append(slot)
        mask[rows, slots] = True  # one indexing operation, not one per pair
        pos = torch.tensor([self.base - 1 + tree.depth(n) for n in nodes])
        x = torch.tensor([[tree.tokens[n] for n in nodes]], device=model.device)
        logits = self._logits(x, position_ids=pos.to(model.device), attention_mask=mask.to(model.device))
        self.forwards += 1
        for row, node in enumerate(nodes):
            self._slot[node] = start + row
        dists = list(_draft_dist(logits[:len(nodes)], sampling))  # one transfer to the host for the beam
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        return dists

    def update(self, context, tree, accepted):
        self._extend(context[self.seen:])
        self._score_lookup(context)
        self.seen = len(context)
        if self.skipped:
            return
        # keep the draft keys/values of the accepted path as far as the draft computed them
        kept = []
        for node in accepted:
            node = self.pool_nodes[node]  # the tree's node as the growth found it
            if node not in self._slot:
                break
            kept.append(self._slot[node] - self.base)
        self.cache.length = max(self.cache.length, self.base)
        self.cache.keep(self.base, kept)
        self.cached = self.base + len(kept)

    def _score_lookup(self, context) -> None:
        """Would the lookup's first choice have been each newly committed token?  (Its mixture weight.)"""
        self.lookup_landed = None
        if self.lookup is None:
            return
        t0 = time.perf_counter()
        array = np.asarray(context, dtype=np.int64)  # once, not once per token
        for i in range(self.seen, len(context)):
            _, tokens, _ = self.lookup.match(array[:i], 1)
            if tokens:
                hit = tokens[0] == context[i]
                self.lookup_hits = self.LOOKUP_DECAY * self.lookup_hits + hit
                self.lookup_tries = self.LOOKUP_DECAY * self.lookup_tries + 1
                if i == self.seen:
                    self.lookup_landed = hit
        self.ngram_seconds += time.perf_counter() - t0




# ----------------------------------------------------------------------------- a feature draft (EAGLE)

class FeatureDrafter(ModelDrafter):
    """A feature draft (``sdd_edu.feature_draft``) drafts from the target's own features.

    The decoding loop hands it the target's features of every committed token (``observe``): from the
    prefill, then from each verification forward, the root's and the accepted path's.  Row i of the
    draft reads (feature of token i, token i + 1); the last committed row, (feature before the root,
    the root), gives the root's children and the root's *predicted* feature.  Below the root there are no
    target features yet, so a node reads its parent's predicted feature, one draft forward per level
    expanded (``_forward``), as EAGLE grows its trees.

    After verification the rows of the accepted nodes are not kept: they read predicted features, and the
    target has now computed the true ones.  They are read again, with the true features, at the start
    of the next draft (EAGLE does the same).  An n-gram stage cannot score its guesses in the first
    forward here (a guess needs its parent's predicted feature, which that forward computes), so a
    feature draft drafts alone or with prompt lookup mixed into its distributions.
    """

    wants_features = True

    def __init__(self, draft: LoadedModel, width: int = 4, depth: int = 8, budget: int = 36, beam: int = 4,
                 rounds: Optional[int] = None, lookup=None):
        super().__init__(draft, width, depth, budget, beam, rounds, ngram=None, lookup=lookup)
        self.name = "feature-draft"

    def begin(self, prompt_ids, max_len):
        super().begin(prompt_ids, max_len)
        model = self.draft.model
        self.features = torch.zeros(self.cache.max_len, model.config.d_model, dtype=model.dtype, device=model.device)
        self.n_features = 0  # committed tokens whose target feature is known (all but the last, once decoding)

    def observe(self, features: torch.Tensor) -> None:
        """The target's features (n, d) of the next n committed tokens, in order."""
        n = features.shape[0]
        self.features[self.n_features:self.n_features + n] = features.to(self.features.dtype)
        self.n_features += n

    def _run(self, feats, next_ids, **kw):
        """(logits, predicted features) of one draft forward over rows (feats (N, d), next_ids (N,))."""
        extra = getattr(self, "_extra_on_device", None) if self.head_ids is not None else None
        logits, h = self.draft.model(feats[None], torch.as_tensor(next_ids, device=feats.device)[None], self.cache,
                                     extra_head_ids=extra, **kw)
        return logits[0], h[0]

    def _pending(self, context, upto: int):
        """The rows [cached, upto) not yet in the draft cache: their features and next tokens."""
        if self.n_features != len(context) - 1:
            raise RuntimeError(f"the feature draft holds {self.n_features} target features for a context of "
                               f"{len(context)} tokens; the decoding loop must observe() every committed token's")
        return self.features[self.cached:upto], context[self.cached + 1:upto + 1]

    def prefill(self, context):
        """The rows of the context but its last (the first draft reads that one), and their agreement with it."""
        if len(context) < 3 or self.cached:
            return None
        model = self.draft.model
        synchronize(model.device)
        t0 = time.perf_counter()
        feats, next_ids = self._pending(context, len(context) - 2)
        self.cache.truncate(self.cached)
        positions = torch.arange(1, len(context) - 1, device=model.device)  # row i sits at token i + 1's position
        logits, _ = self._run(feats, next_ids, position_ids=positions)  # row i predicts token i + 2
        self.forwards += 1
        self.cached = len(context) - 2
        best = logits.argmax(-1).cpu()
        guesses = [-1] + (self.support[best] if self.head_ids is not None else best).tolist()
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        agreement = prompt_agreement(guesses, context, self.lookup)
        self.ngram_seconds += time.perf_counter() - t0
        return agreement

    def get_candidates(self, context, sampling, generator):
        self._copied = {}
        self.skipped = self.size == 0
        if self.skipped:
            return TokenTree()
        model = self.draft.model
        if self.n_features == 0:  # a one-token prompt: no target feature yet, nothing to draft from
            self.skipped = True
            return TokenTree()
        self._context_array = np.asarray(context, dtype=np.int64)
        synchronize(model.device)
        t0 = time.perf_counter()
        feats, next_ids = self._pending(context, self.n_features)
        self.cache.truncate(self.cached)
        positions = torch.arange(self.cached + 1, self.n_features + 1, device=model.device)  # each next token's
        logits, h = self._run(feats, next_ids, position_ids=positions)
        self.forwards += 1
        self.base = self.cached = self.n_features
        self._predicted = {ROOT: h[-1]}  # node -> its predicted feature (what its children's rows read)
        self._slot = {}
        root_dist = _draft_dist(logits[-1:], sampling)[0]
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        return self._grow(root_dist, context, sampling, generator, rounds=self._rounds(self.size))

    def _known_dist(self, tree, node, context, sampling):
        return None  # every level costs a forward: a node's row needs its parent's predicted feature

    def _origin(self, tree, parent, token):
        copied, mixed = self._copied.get(parent, {}).get(token, (0.0, 0.0))
        return "lookup" if copied > mixed / 2 else "draft"

    def _forward(self, tree, nodes, sampling):
        """One draft forward over ``nodes``: row (parent's predicted feature, node's token); each row sees the
        committed rows, its ancestors' rows and itself."""
        model = self.draft.model
        synchronize(model.device)
        t0 = time.perf_counter()
        start = self.cache.length
        mask = torch.zeros(len(nodes), start + len(nodes), dtype=torch.bool)
        mask[:, :self.base] = True
        rows, slots = [], []
        for row, node in enumerate(nodes):
            for slot in [self._slot[anc] for anc in tree.path(node)[:-1]] + [start + row]:
                rows.append(row)
                slots.append(slot)
        mask[rows, slots] = True
        pos = torch.tensor([self.base + tree.depth(n) for n in nodes], device=model.device)
        feats = torch.stack([self._predicted[tree.parents[n]] for n in nodes])  # (N, d)
        logits, h = self._run(feats, [tree.tokens[n] for n in nodes], position_ids=pos,
                              attention_mask=mask.to(model.device))
        self.forwards += 1
        for row, node in enumerate(nodes):
            self._slot[node] = start + row
            self._predicted[node] = h[row]
        dists = list(_draft_dist(logits, sampling))
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        return dists

    def update(self, context, tree, accepted):
        self._extend(context[self.seen:])
        self._score_lookup(context)
        self.seen = len(context)
        # the tree's rows read predicted features: forget them; the accepted tokens are read again next draft
        self.cache.truncate(min(self.cache.length, self.cached))
