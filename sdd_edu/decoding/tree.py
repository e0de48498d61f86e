"""Token trees: the tree attention mask, and verifying a whole tree with one target forward.

A tree hangs below the *root*, the last committed token.  Node ``i`` holds ``tokens[i]``
and its parent ``parents[i]`` (-1 for the root).  Nodes are stored parents-first.

Verification walks down from the root.  At each node the target's distribution p
(from the one forward over root + tree) decides whether one of the node's children
is accepted:

* greedy: accept the child whose token is the target's argmax;
* sampling, rule ``"rrs"`` (default): recursive rejection sampling without
  replacement, the multi-candidate generalisation of speculative sampling used by
  SpecInfer-style tree decoders.  The children of a node were *drawn* from the
  draft's distribution q without replacement; child x_i is accepted with
  probability min(1, p_i(x_i) / q_i(x_i)); after a rejection p_{i+1} = norm(max(p_i - q_i, 0))
  and q_{i+1} = q_i with x_i removed, renormalised.  Each step is an exact
  speculative-sampling step for the current p_i, so the emitted token follows p.
* sampling, rule ``"target"``: the paper's code rule.  Sample t ~ p; if t is a child,
  follow it, else emit t and stop.  Exact for any tree, including deterministic
  top-k trees, but it gains nothing from the draft's probabilities.

When the walk stops (a leaf, or every child rejected) the target supplies one more
token from p (or from the final residual): every verification emits at least one token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..sampling import Sampling, probabilities, sample

ROOT = -1
RULES = ("rrs", "target")


@dataclass
class TokenTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # "draft" or "ngram": which stage proposed the node
    draft_probs: list[float] = field(default_factory=list)  # q(token | parent) for display
    # sampling only: node (or ROOT) -> the draft distribution its children were drawn from, in draw order
    child_dists: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, origin: str = "draft", prob: float = 1.0) -> int:
        if parent != ROOT and not 0 <= parent < len(self.tokens):
            raise ValueError(f"parent {parent} is not a node of the tree")
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        self.origins.append(origin)
        self.draft_probs.append(float(prob))
        return len(self.tokens) - 1

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def depth(self, node: int) -> int:
        d = 0
        while node != ROOT:
            node, d = self.parents[node], d + 1
        return d

    @property
    def max_depth(self) -> int:
        return max((self.depth(i) for i in range(len(self))), default=0)

    def path(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node``."""
        out = []
        while node != ROOT:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "parents": self.parents, "origins": self.origins,
                "draft_probs": [round(p, 4) for p in self.draft_probs]}


def tree_attention_mask(parents: list[int], cached: int, chain: int = 1, device=None):
    """Mask and position ids for a forward over ``chain`` committed tokens followed by a tree.

    The chain (its last token is the tree's root) is causal; tree node i sees the cache,
    the whole chain, its ancestors and itself.  Returns mask (n, cached + n), True = attend,
    and positions (n,), where n = chain + len(parents).
    """
    n_tree = len(parents)
    n = chain + n_tree
    # which tree nodes each node sees (its ancestors and itself) and its depth, in plain Python: one tensor
    # built at the end costs less than tensor operations node by node
    sees: list[list[bool]] = []
    depth: list[int] = []
    for i, p in enumerate(parents):
        if p >= i:
            raise ValueError("tree nodes must come after their parents")
        row = sees[p].copy() if p != ROOT else [False] * n_tree  # a node sees everything its parent sees
        row[i] = True
        sees.append(row)
        depth.append(depth[p] + 1 if p != ROOT else 1)
    mask = torch.zeros(n, cached + n, dtype=torch.bool)
    mask[:, :cached] = True
    mask[:chain, cached:cached + chain] = torch.tril(torch.ones(chain, chain, dtype=torch.bool))
    mask[chain:, cached:cached + chain] = True
    if n_tree:
        mask[chain:, cached + chain:] = torch.tensor(sees, dtype=torch.bool)  # (n_tree, n_tree)
    positions = torch.tensor([cached + j for j in range(chain)]
                             + [cached + chain - 1 + d for d in depth], dtype=torch.long)
    return mask.to(device), positions.to(device)


@dataclass
class Verdict:
    accepted: list[int]  # accepted node indices, root to leaf
    next_token: int  # the target's own token after the accepted path
    tested: int  # how many tree levels were tested (accepted + 1 when the walk ended in a rejection)


def verify(tree: TokenTree, logits: torch.Tensor, sampling: Sampling, generator: Optional[torch.Generator],
           rule: str = "rrs", rows_at_once: Optional[bool] = None) -> Verdict:
    """Walk the tree with the target's logits (row 0: the root, row 1 + i: node i).

    Greedy, ``rows_at_once`` (default: on any device but a CPU) takes the target's choice after every
    node in one operation and one transfer to the host: a GPU then waits once per step, not once per
    level.  On a CPU nothing waits, and the rows the walk never reaches are not worth their argmax
    (a 16-node tree: 1.0 ms at once against 0.6 ms row by row here)."""
    if rule not in RULES:
        raise ValueError(f"unknown verification rule {rule!r}; use one of {RULES}")
    node, accepted, tested = ROOT, [], 0
    if sampling.greedy:
        if rows_at_once is None:
            rows_at_once = logits.device.type != "cpu"
        choices = logits.argmax(-1).tolist() if rows_at_once else None  # (1 + nodes,)
        child: dict[tuple[int, int], int] = {}
        for i, key in enumerate(zip(tree.parents, tree.tokens)):
            child.setdefault(key, i)  # the first of equal siblings, as the walk tries them in order
        while True:
            row = 0 if node == ROOT else node + 1
            choice = choices[row] if choices is not None else int(logits[row].argmax())
            match = child.get((node, choice))
            tested += node in tree.parents  # the level had children to test
            if match is None:
                return Verdict(accepted, choice, tested)
            accepted.append(match)
            node = match
    while True:
        row = logits[0 if node == ROOT else node + 1]
        kids = tree.children(node)
        p = probabilities(row, sampling).cpu()
        if kids:
            tested += 1
        if rule == "target":
            t = sample(p, generator)
            match = next((c for c in kids if tree.tokens[c] == t), None)
        else:
            match, p = _recursive_rejection(tree, node, kids, p, generator)
            if match is None:
                t = sample(p, generator)
        if match is None:
            return Verdict(accepted, t, tested)
        accepted.append(match)
        node = match


def _recursive_rejection(tree: TokenTree, node: int, kids: list[int], p: torch.Tensor, generator):
    """Try the children in draw order; return (accepted child or None, distribution left to sample from)."""
    if not kids:
        return None, p
    q = tree.child_dists[node].float().cpu().clone()
    for c in kids:
        x = tree.tokens[c]
        qx, px = float(q[x]), float(p[x])
        u = float(torch.rand((), generator=generator))
        if qx > 0 and u * qx < px:  # accept with probability min(1, p/q)
            return c, p
        residual = torch.clamp(p - q, min=0)
        total = float(residual.sum())
        if total > 1e-12:  # p == q leaves nothing to correct: keep p
            p = residual / total
        q[x] = 0.0
        q_total = float(q.sum())
        if q_total <= 1e-12:
            break
        q = q / q_total
    return None, p
