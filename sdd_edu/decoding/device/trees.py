"""Token trees as tensors: growth, the tree's attention structure, in fixed shapes.

The readable reference is ``Drafter._grow`` (``sdd_edu/decoding/drafters.py``): every candidate
node (a child that a node's distribution proposes) is scored by the product of the scores along its
path, and the tree is the ``budget`` best candidates; distributions cost a draft forward, except the
root's and the free ones (the staged drafter's n-gram guesses); each further forward takes the
``beam`` best candidates still without one.  Here the same growth is a fixed number of tensor
operations per round, over a *pool* of candidate slots laid out in blocks:

    block 0        the root's children             (width slots)
    block 1 + g    guessed node g's children       (width slots each, G guesses)
    block 1 + G + r * beam + i    the children of round r's i-th expanded node

Slot ``(b, j)`` is the j-th child proposed by the distribution of block b's node.  A block whose node
is not in the pool (a guess the draft did not choose) or lies too deep is invalid.  Choosing the
``beam`` best slots, or the final ``budget`` best, is one sort by (score, depth) over the pool; nothing
is read back to the host, so the whole growth can be replayed from a CUDA graph.

Ties in score go to the shallower slot, then to the lower slot index (the reference breaks ties the
same way, by the order in which it found them: equal cumulative scores from continuous distributions
at the same depth do not occur in practice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

def pick(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``t[i]`` for a 0-d index tensor ``i``, traced as a gather: ``t[i]`` itself would read ``i`` to the host."""
    return t.index_select(0, i.reshape(1)).squeeze(0)


class Uniforms:
    """Uniform draws in (0, 1] for sampling on the device: from a generator, or read in order from a buffer
    filled beforehand (``buffer``), which is how a traced phase, or a phase replayed from a CUDA graph,
    gets fresh randomness without a generator object inside it."""

    def __init__(self, generator: Optional[torch.Generator] = None, buffer: Optional[torch.Tensor] = None):
        self.generator, self.buffer, self.used = generator, buffer, 0

    def __call__(self, shape, device) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        if self.buffer is None:
            u = torch.rand(shape, generator=self.generator, device=device)
        else:
            u = self.buffer[self.used:self.used + n].view(shape)
        self.used += n  # (counted either way: a recording needs as many as the eager run drew)
        return u.clamp(1e-20, 1.0)


def uniforms(source) -> Uniforms:
    """``source`` as ``Uniforms``: one already, or a generator (None: torch's default)."""
    return source if isinstance(source, Uniforms) else Uniforms(source)


def choose_children(dists: torch.Tensor, width: int, greedy: bool, generator):
    """The children each row of ``dists`` (M, S) proposes: ``drafters.choose_children`` for many rows at once.

    Returns columns (M, w), scores (M, w) float64 (rank-j probabilities), probs (M, w) (the chosen
    entries' own probabilities) and ok (M, w) (a child exists: the distribution has at least j + 1
    entries above zero).  Greedy: the top ``width``.  Sampling: ``width`` draws without replacement
    (Gumbel top-k), in draw order; the scores stay the rank-j probabilities, independent of the draws.
    """
    S = dists.shape[-1]
    if width > S:  # fewer columns than children asked for: pad with zero probability (never a child)
        dists = torch.cat([dists, dists.new_zeros(*dists.shape[:-1], width - S)], -1)
    top = torch.topk(dists, width, dim=-1)  # (M, w)
    ok = top.values > 0
    scores = top.values.double()
    if greedy:
        return top.indices.clamp(max=S - 1), scores, top.values, ok
    u = uniforms(generator)(dists.shape, dists.device)
    keys = torch.log(dists) - torch.log(-torch.log(u))  # log q + Gumbel noise; -inf where q = 0
    drawn = torch.topk(keys, width, dim=-1).indices.clamp(max=S - 1)  # (M, w) in draw order
    return drawn, scores, dists[..., :S].gather(-1, drawn), ok


def rank_order(score: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Indices of the slots by (valid first, higher score, shallower, lower index): two stable sorts."""
    by_depth = torch.argsort(depth, stable=True)  # (P,) by depth, then index
    key = torch.where(valid, -score, torch.full_like(score, float("inf")))[by_depth]
    return by_depth[torch.argsort(key, stable=True)]


def ancestors(parents: torch.Tensor, levels: int) -> torch.Tensor:
    """(n, n) bool: [i, j] = node j is node i or one of its ancestors; ``parents`` (n,), -1 for the root.

    Start from "itself or its parent" and square the relation: after k squarings it reaches 2^k levels
    up, so ``levels`` (a bound on the depth) takes log2(levels) boolean matrix products."""
    n = parents.shape[0]
    up = torch.zeros(n, n + 1, device=parents.device).scatter_(1, torch.where(parents >= 0, parents, n)[:, None], 1.0)
    reach = up[:, :n] + torch.eye(n, device=parents.device)  # (n, n) 0/1: itself or its parent
    span = 1
    while span < levels:
        reach = (reach @ reach).clamp_(max=1.0)
        span *= 2
    return reach > 0


def tree_mask_rows(anc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Which tree nodes each node attends to: its ancestors and itself; an invalid node only itself."""
    eye = torch.eye(anc.shape[0], dtype=torch.bool, device=anc.device)
    return torch.where(valid[:, None], anc, eye)


@dataclass
class Pool:
    """The candidate slots of one step's growth (P = blocks * width), all on the device."""

    width: int
    cols: torch.Tensor  # (P,) long: column of the drafter's distribution (its token space)
    tokens: torch.Tensor  # (P,) long: token id
    parents: torch.Tensor  # (P,) long: the parent's slot, -1 for the root
    score: torch.Tensor  # (P,) float64: product of the scores along the path
    depth: torch.Tensor  # (P,) long
    probs: torch.Tensor  # (P,) float: the draft's probability of the token (display)
    valid: torch.Tensor  # (P,) bool
    origin: torch.Tensor  # (P,) long: index into ``common.ORIGINS``
    planned: torch.Tensor  # (P,) bool: the slot's own children are in the pool (it is some block's node)
    row_of: torch.Tensor  # (P,) long: the block (distribution row) of the slot's own children, -1 if none

    @classmethod
    def empty(cls, blocks: int, width: int, device) -> "Pool":
        P = blocks * width
        zeros = lambda dtype: torch.zeros(P, dtype=dtype, device=device)  # noqa: E731
        return cls(width, zeros(torch.long), zeros(torch.long), torch.full((P,), -1, dtype=torch.long, device=device),
                   zeros(torch.float64), zeros(torch.long), zeros(torch.float32), zeros(torch.bool),
                   zeros(torch.long), zeros(torch.bool), torch.full((P,), -1, dtype=torch.long, device=device))

    def fill(self, first_block: int, node_slots: torch.Tensor, node_ok: torch.Tensor, node_score: torch.Tensor,
             node_depth: torch.Tensor, cols, scores, probs, ok, token_of: Callable, origin: torch.Tensor,
             max_depth) -> None:
        """Blocks ``first_block ..`` get the children (cols/scores/probs/ok, (M, w)) of M nodes: their slots
        (-1: the root), whether each node exists, its score and depth; ``origin`` (M, w) per child."""
        M, w = cols.shape
        span = slice(first_block * w, (first_block + M) * w)
        exists = (node_ok & (node_depth < max_depth))[:, None] & ok  # (M, w) a node too deep gets no children
        self.cols[span] = cols.reshape(-1)
        self.tokens[span] = token_of(cols).reshape(-1)
        self.parents[span] = node_slots[:, None].expand(M, w).reshape(-1)
        self.score[span] = (node_score[:, None] * scores).reshape(-1)
        self.depth[span] = (node_depth[:, None] + 1).expand(M, w).reshape(-1)
        self.probs[span] = probs.reshape(-1).float()
        self.valid[span] = exists.reshape(-1)
        self.origin[span] = origin.reshape(-1)
        # the nodes are planned now: their children are these blocks
        rows = torch.arange(first_block, first_block + M, device=cols.device)
        slot = torch.where(node_slots >= 0, node_slots, self.cols.shape[0])  # the root has no slot: dropped
        planned = torch.cat([self.planned, self.planned.new_zeros(1)])
        row_of = torch.cat([self.row_of, self.row_of.new_zeros(1)])
        planned[slot] = planned[slot] | node_ok
        row_of[slot] = torch.where(node_ok, rows, row_of[slot])
        self.planned, self.row_of = planned[:-1], row_of[:-1]

    def best(self, count: int, among: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``count`` best slots (of ``among``, default every valid one), best first, and whether each exists."""
        valid = self.valid if among is None else among
        order = rank_order(self.score, self.depth, valid)[:count]
        return order, valid[order]


@dataclass
class TensorTree:
    """A drafted tree on the device: ``budget`` node slots in score order (parents first), -1 parents for
    the root's children; invalid slots (a tree smaller than its budget) carry no node."""

    tokens: torch.Tensor  # (B,) long token ids
    cols: torch.Tensor  # (B,) long columns of the drafter's distributions
    parents: torch.Tensor  # (B,) long: tree index, -1 = the root
    depth: torch.Tensor  # (B,) long
    valid: torch.Tensor  # (B,) bool
    origin: torch.Tensor  # (B,) long: index into ``common.ORIGINS``
    probs: torch.Tensor  # (B,) float
    slots: torch.Tensor  # (B,) long: the pool slot of each node (for the drafter's bookkeeping)
    child_row: torch.Tensor  # (B,) long: the distribution row that proposed each node's children, -1 if none
    anc: torch.Tensor  # (B, B) bool: [i, j] = node j is node i or an ancestor of it (``ancestors``)
    root_row: int = 0  # the root's children came from distribution row 0

    def __len__(self) -> int:
        return self.tokens.shape[0]


def select_tree(pool: Pool, budget: int, levels: int) -> TensorTree:
    """The ``budget`` best slots of the pool as a tree of at most ``levels`` levels, renumbered in score
    order (parents first)."""
    order, ok = pool.best(budget)  # (B,), (B,)
    P = pool.cols.shape[0]
    index = torch.full((P + 1,), -1, dtype=torch.long, device=order.device)
    index[order] = torch.arange(order.shape[0], device=order.device)
    parent_slot = pool.parents[order]
    parents = torch.where(ok & (parent_slot >= 0), index[parent_slot.clamp(min=0)], -1)
    return TensorTree(pool.tokens[order], pool.cols[order], parents, pool.depth[order], ok,
                      pool.origin[order], pool.probs[order], order,
                      torch.where(ok & pool.planned[order], pool.row_of[order], -1), ancestors(parents, levels))
