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
"""

from __future__ import annotations

import heapq
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import SddError
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
        return self.budget

    @property
    def context_limit(self) -> Optional[int]:
        """Longest context the drafter can hold, if it has a limit (a draft model's window)."""
        return None

    def begin(self, prompt_ids: Sequence[int], max_len: int) -> None:
        self.forwards, self.seconds, self.ngram_seconds = 0, 0.0, 0.0

    def get_candidates(self, context: list[int], sampling: Sampling, generator) -> TokenTree:
        raise NotImplementedError

    def update(self, context: list[int], tree: TokenTree, accepted: list[int]) -> None:
        pass

    # -- hooks for _grow
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
        tree = TokenTree()
        heap: list = []  # (-score, tie, parent, j): the j-th child of parent, not yet in the tree
        plans: dict[int, tuple[list[int], list[float], list[float]]] = {}  # tokens, scores, probs
        score = {ROOT: 1.0}
        depth = {ROOT: 0}
        waiting: dict[int, float] = {}  # nodes that could be expanded after another draft forward
        tie = [0]

        def plan(node: int, dist: torch.Tensor):
            tokens, scores, probs = choose_children(dist, self.width, sampling, generator)
            if self.support is not None:
                tokens = self.support[tokens].tolist()
            plans[node] = (tokens, scores, probs)
            if not sampling.greedy:
                tree.child_dists[node] = self._full(dist)
            if tokens:
                tie[0] += 1
                heapq.heappush(heap, (-score[node] * scores[0], tie[0], node, 0))

        plan(ROOT, root_dist)
        while len(tree) < self.budget:
            # a node that waits for a draft forward only competes while forwards are left
            best_waiting = max(waiting.values(), default=-1.0) if rounds > 0 else -1.0
            if heap and -heap[0][0] >= best_waiting:
                neg, _, parent, j = heapq.heappop(heap)
                tokens, scores, probs = plans[parent]
                child = tree.add(tokens[j], parent, self._origin(tree, parent, tokens[j]), probs[j])
                score[child], depth[child] = -neg, depth[parent] + 1
                if j + 1 < len(tokens):
                    tie[0] += 1
                    heapq.heappush(heap, (-score[parent] * scores[j + 1], tie[0], parent, j + 1))
                if depth[child] < self.depth:
                    dist = self._known_dist(tree, child, context, sampling)
                    if dist is not None:
                        plan(child, dist)
                    else:
                        waiting[child] = score[child]
            elif waiting and rounds > 0:
                rounds -= 1
                chosen = sorted(waiting, key=lambda n: (-waiting[n], n))[:self.beam]
                for node, dist in zip(chosen, self._forward(tree, chosen, sampling)):
                    del waiting[node]
                    plan(node, dist)
            else:
                break
        return tree


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
        return "ngram" if hasattr(self.ngram, "next_distribution") else "prompt"  # prompt lookup copies context

    def get_candidates(self, context, sampling, generator):
        return self._grow(self._dist(context), context, sampling, generator)


# ----------------------------------------------------------------------------- a draft model (+ n-gram stage)

class ModelDrafter(Drafter):
    """A small transformer drafts; with ``ngram`` set, an n-gram stage speculates the draft itself (staged)."""

    def __init__(self, draft: LoadedModel, width: int = 4, depth: int = 8, budget: int = 36, beam: int = 4,
                 rounds: Optional[int] = None, ngram=None, ngram_fanout: Sequence[int] = (12, 7, 4, 1, 1, 1)):
        super().__init__(width, depth, budget, beam)
        if any((not isinstance(f, int)) or f < 1 for f in ngram_fanout):
            raise SddError(f"n-gram fan-out must be positive integers, got {list(ngram_fanout)}")
        self.draft, self.ngram, self.fanout = draft, ngram, tuple(ngram_fanout)
        self.rounds = depth if rounds is None else rounds
        # a reduced head: work on its logits, not on a mostly -inf full-vocabulary row per node
        # (measured: softmax and top-k for four nodes took 1.4 ms over 49,152 entries, 0.1 ms over 8,192)
        if draft.config.head_size:
            self.support, self.vocab_size = draft.model.head_ids.cpu(), draft.config.vocab_size
        self.name = "staged" if ngram is not None else "draft"

    def _extra_slots(self) -> int:
        return (sum(self.fanout) if self.ngram is not None else 0) + self.budget + 2

    @property
    def context_limit(self) -> int:
        return self.draft.config.max_seq_len - self._extra_slots()

    def begin(self, prompt_ids, max_len):
        super().begin(prompt_ids, max_len)
        self.cache = self.draft.model.new_cache(min(max_len + self._extra_slots(), self.draft.config.max_seq_len))
        self.cached = 0  # context tokens whose keys/values are committed in the draft cache

    # -- stage two: the n-gram guesses what the draft will propose
    def guess(self, context: list[int]) -> tuple[list[int], list[int]]:
        if self.ngram is None:
            return [], []
        t0 = time.perf_counter()
        tokens, parents = [], []
        parent, ctx = ROOT, list(context)
        for fan in self.fanout[:self.depth]:
            cand, _ = self.ngram.top_k(ctx, fan)
            cand = [int(c) for c in cand]
            if not cand:
                break
            first = len(tokens)
            tokens += cand
            parents += [parent] * len(cand)
            parent = first  # continue below the likeliest guess
            ctx.append(cand[0])
        self.ngram_seconds += time.perf_counter() - t0
        return tokens, parents

    def get_candidates(self, context, sampling, generator):
        model = self.draft.model
        pending = context[self.cached:]
        g_tokens, g_parents = self.guess(context)
        synchronize(model.device)
        t0 = time.perf_counter()
        mask, pos = tree_attention_mask(g_parents, cached=self.cache.length, chain=len(pending), device=model.device)
        x = torch.tensor([pending + g_tokens], device=model.device)
        logits = model(x, self.cache, position_ids=pos, attention_mask=mask,
                       reduced=self.support is not None)[0]  # (pending + G, V or head size)
        self.forwards += 1
        self.base = self.cached + len(pending)  # committed part of the draft cache after this forward
        self._logits = logits[len(pending):]  # rows of the guessed nodes
        self._g_child = {(p, t): i for i, (p, t) in enumerate(zip(g_parents, g_tokens))}
        self._g_of = {ROOT: ROOT}  # tree node -> guessed node
        self._slot = {}  # tree node -> cache slot of its keys/values
        root_dist = _draft_dist(logits[len(pending) - 1], sampling)
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        return self._grow(root_dist, context, sampling, generator, rounds=self.rounds)

    def _origin(self, tree, parent, token):
        g = self._g_of.get(parent)
        return "ngram" if g is not None and (g, token) in self._g_child else "draft"

    def _known_dist(self, tree, node, context, sampling):
        g_parent = self._g_of.get(tree.parents[node])
        g = self._g_child.get((g_parent, tree.tokens[node])) if g_parent is not None else None
        if g is None:
            return None
        self._g_of[node] = g
        self._slot[node] = self.base + g
        return _draft_dist(self._logits[g], sampling)

    def _forward(self, tree, nodes, sampling):
        """One draft forward over ``nodes``; each sees the committed cache, its ancestors' slots and itself."""
        model = self.draft.model
        synchronize(model.device)
        t0 = time.perf_counter()
        start = self.cache.length
        mask = torch.zeros(len(nodes), start + len(nodes), dtype=torch.bool)
        mask[:, :self.base] = True
        for row, node in enumerate(nodes):
            for anc in tree.path(node)[:-1]:
                mask[row, self._slot[anc]] = True
            mask[row, start + row] = True
        pos = torch.tensor([self.base - 1 + tree.depth(n) for n in nodes])
        x = torch.tensor([[tree.tokens[n] for n in nodes]], device=model.device)
        logits = model(x, self.cache, position_ids=pos.to(model.device), attention_mask=mask.to(model.device),
                       reduced=self.support is not None)[0]
        self.forwards += 1
        for row, node in enumerate(nodes):
            self._slot[node] = start + row
        dists = [_draft_dist(logits[row], sampling) for row in range(len(nodes))]
        synchronize(model.device)
        self.seconds += time.perf_counter() - t0
        return dists

    def update(self, context, tree, accepted):
        # keep the draft keys/values of the accepted path as far as the draft computed them
        kept = []
        for node in accepted:
            if node not in self._slot:
                break
            kept.append(self._slot[node] - self.base)
        self.cache.length = max(self.cache.length, self.base)
        self.cache.keep(self.base, kept)
        self.cached = self.base + len(kept)


def check_compatible(target: LoadedModel, draft: LoadedModel) -> None:
    """Draft and target must share a tokenizer: the draft's token ids must mean the same text."""
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise SddError(f"draft {draft.name!r} and target {target.name!r} have different vocabularies "
                       f"({dv} vs {tv} tokens); speculative decoding needs one shared tokenizer")
    if target.tokenizer is not None and draft.tokenizer is not None:
        probe = "def f(x):\n    return x  # héllo 123"
        if target.encode(probe) != draft.encode(probe):
            raise SddError(f"draft {draft.name!r} and target {target.name!r} tokenize text differently; "
                           "speculative decoding needs one shared tokenizer")
