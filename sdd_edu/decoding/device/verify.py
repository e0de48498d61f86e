"""Verification and commit on the device: the walk down a ``TensorTree`` with the target's logits.

The readable reference is ``sdd_edu.decoding.tree.verify``; these functions give the same verdicts
(greedy) or the same distribution (sampling) with tensor operations of fixed shapes, so that the
host learns only the outcome, once per step.

* Greedy: a node is accepted when its token is the target's choice after its parent and every
  ancestor is accepted too: one argmax over all rows, one comparison per node, one reduction over
  the ancestor matrix.  Siblings hold distinct tokens, so the accepted nodes form one path.
* Sampling, rule ``"rrs"``: recursive rejection sampling, level by level (``depth`` + 1 fixed steps),
  trying each level's children in draw order (``width`` fixed steps): accept child x with
  probability min(1, p(x)/q(x)); after a rejection p <- norm(max(p - q, 0)) and q loses x.
* Sampling, rule ``"target"``: sample t ~ p at each level and follow the child holding t.

Draws use the Gumbel-max trick (argmax of log p + Gumbel noise), which needs no host read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .trees import TensorTree, pick, uniforms


@dataclass
class DeviceVerdict:
    path: torch.Tensor  # (depth,) long: accepted tree nodes, root to leaf; -1 past ``count``
    count: torch.Tensor  # () long: accepted nodes
    next_token: torch.Tensor  # () long: the target's own token after the accepted path
    tested: torch.Tensor  # () long: tree levels tested (accepted, + 1 if the walk ended at a node with children)


def _accepted_path(ok: torch.Tensor, depth: torch.Tensor, levels: int) -> torch.Tensor:
    """The accepted nodes ordered by depth: (levels,), -1 where the path is shorter."""
    B = ok.shape[0]
    at = torch.where(ok, depth - 1, levels)  # one accepted node per depth; others to a spare column
    path = torch.full((levels + 1,), -1, dtype=torch.long, device=ok.device)
    path.scatter_(0, at, torch.arange(B, device=ok.device))
    return path[:levels]


def _has_children(tree: TensorTree) -> torch.Tensor:
    """(1 + B,) bool: row 0 the root, row 1 + i node i."""
    B = len(tree)
    rows = torch.where(tree.valid, tree.parents + 1, B + 1)
    has = torch.zeros(B + 2, dtype=torch.bool, device=rows.device)
    has[rows] = True
    return has[:B + 1]


def greedy_walk(tree: TensorTree, logits: torch.Tensor, levels: int) -> DeviceVerdict:
    """Greedy verification: logits (1 + B, V), row 0 the root's, row 1 + i node i's."""
    choice = logits.argmax(-1)  # (1 + B,)
    parent_row = tree.parents + 1  # the root's children read row 0
    match = tree.valid & (tree.tokens == choice[parent_row])  # (B,)
    ok = match & ~(tree.anc & ~match[None, :]).any(1)  # the node and every ancestor match
    count = ok.sum()
    path = _accepted_path(ok, tree.depth, levels)
    last_row = torch.where(count > 0, pick(path, (count - 1).clamp(min=0)) + 1, 0)
    tested = count + pick(_has_children(tree), last_row).long()
    return DeviceVerdict(path, count, pick(choice, last_row), tested)


def children_table(tree: TensorTree, width: int) -> torch.Tensor:
    """(1 + B, width) long: each row's children (row 0 the root, row 1 + i node i) in draw order, -1 padded.

    A tree's nodes are in score order, and siblings' scores never rise with their draw rank (ties keep
    the draw order), so a node's children appear in the tree in the order they were drawn."""
    B = len(tree)
    idx = torch.arange(B, device=tree.parents.device)
    same = (tree.parents[:, None] == tree.parents[None, :]) & tree.valid[None, :] & (idx[None, :] < idx[:, None])
    rank = same.sum(1)  # earlier valid siblings
    flat = torch.where(tree.valid & (rank < width), (tree.parents + 1) * width + rank, (B + 1) * width)
    table = torch.full(((B + 2) * width,), -1, dtype=torch.long, device=idx.device)
    table[flat] = idx
    return table[:(B + 1) * width].view(B + 1, width)


def accepts(u: torch.Tensor, px: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
    """Speculative sampling's test: accept a token drawn from q with probability min(1, p/q)."""
    return (qx > 0) & (u * qx < px)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What to sample from after a rejection: norm(max(p - q, 0)); p itself when p == q leaves nothing."""
    left = torch.clamp(p - q, min=0)
    total = left.sum()
    return torch.where(total > 1e-12, left / total.clamp(min=1e-30), p)


def _gumbel_sample(p: torch.Tensor, generator) -> torch.Tensor:
    """One draw from p (V,) without a host read: argmax of log p + Gumbel noise."""
    u = uniforms(generator)(p.shape, p.device)
    return torch.argmax(torch.log(p) - torch.log(-torch.log(u)))


def sampled_walk(tree: TensorTree, target_probs: torch.Tensor, child_dists: Optional[torch.Tensor], width: int,
                 levels: int, generator, rule: str = "rrs") -> DeviceVerdict:
    """Sampling verification.  target_probs (1 + B, V): the target's distribution after the root and each
    node.  child_dists (rows, V): the draft distribution each planned node's children were drawn from,
    in the whole vocabulary; ``tree.child_row`` says which row is a node's, row ``tree.root_row`` the root's."""
    device = target_probs.device
    draw = uniforms(generator)
    kids = children_table(tree, width)  # (1 + B, w)
    node_rows = torch.cat([torch.full((1,), tree.root_row, device=device), tree.child_row])  # (1 + B,)
    path = torch.full((levels,), -1, dtype=torch.long, device=device)
    cur = torch.zeros((), dtype=torch.long, device=device)  # row: 0 the root, 1 + i node i
    active = torch.ones((), dtype=torch.bool, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    tested = torch.zeros((), dtype=torch.long, device=device)
    next_token = torch.zeros((), dtype=torch.long, device=device)
    for level in range(levels + 1):
        p = pick(target_probs, cur)  # (V,)
        row_kids = pick(kids, cur)  # (w,)
        has = (row_kids >= 0).any() & active
        tested = tested + has.long()
        child = torch.full((), -1, dtype=torch.long, device=device)
        if rule == "target":
            t = _gumbel_sample(p, draw)
            hit = (row_kids >= 0) & (tree.tokens[row_kids.clamp(min=0)] == t)
            child = torch.where(hit.any(), pick(row_kids, hit.long().argmax()), child)
            leftover = t
        else:
            q = pick(child_dists, pick(node_rows, cur).clamp(min=0)).float()  # (V,)
            done = ~has
            for j in range(width):
                c = row_kids[j]
                x = pick(tree.tokens, c.clamp(min=0))
                trying = ~done & (c >= 0)
                qx, px = pick(q, x), pick(p, x)
                u = draw((), device)
                accept = trying & accepts(u, px, qx)
                child = torch.where(accept, c, child)
                reject = trying & ~accept
                p = torch.where(reject, residual(p, q), p)
                q_left = q.scatter(0, x.view(1), torch.zeros(1, device=device, dtype=q.dtype))
                q_total = q_left.sum()
                q = torch.where(reject, q_left / q_total.clamp(min=1e-30), q)
                done = done | accept | (reject & (q_total <= 1e-12))  # q used up: no further child can be tried
            leftover = _gumbel_sample(p, draw)
        accepted = active & (child >= 0)
        ended = active & ~accepted
        next_token = torch.where(ended, leftover, next_token)
        if level < levels:
            path[level] = torch.where(accepted, child, path[level])
        count = count + accepted.long()
        cur = torch.where(accepted, child + 1, cur)
        active = accepted
    return DeviceVerdict(path, count, next_token, tested)


def keep_path(kv: torch.Tensor, start: torch.Tensor, offsets: torch.Tensor) -> None:
    """Move the keys/values at slots ``start + offsets`` down to ``start, start + 1, ...`` (a fixed number
    of slots; the entries past the kept ones carry copies the next forward overwrites).

    kv: the cache tensor (layers, B, 2 nkv, slots, hs); offsets (n,) long.  ``index_select`` copies first,
    so overlapping sources and destinations are safe, as in ``KVCache.keep``."""
    n = offsets.shape[0]
    dest = start + torch.arange(n, device=kv.device)
    kv.index_copy_(3, dest, kv.index_select(3, start + offsets))
