"""Trees chosen for the reader's device: predict a tree's speedup, and find the best tree (Sequoia).

Which tree pays depends on two measurements: how often the target takes the draft's guesses, and
what a bigger forward costs on this device (``sdd_edu.measure.roofline.latency_curve``: on a GPU a
forward over 32 tokens costs about what one costs; on a CPU the cost climbs after two or three).
Sequoia (Chen et al. 2024, arXiv:2402.12374) turns both into a number and builds, by dynamic
programming, the tree that maximises expected tokens per unit of time.  This module does the same.

The model
---------
*Positional acceptance.*  ``rank_acceptance = [p_1, ..., p_K]``: p_k is the probability that the
target's next token is the draft's k-th ranked child (under sampling with recursive rejection: that
children 1..k-1 are rejected and child k accepted).  As in Sequoia, p_k is assumed the same at every
node and every depth, and independent from one level to the next.  At most one child is accepted, so
at a node with c children the walk goes on through child k with probability p_k (k <= c) and stops
with probability 1 - (p_1 + ... + p_c): p_k does not depend on how many siblings come after k, so
sum(p) <= 1, and a tree has a value

    E[accepted] = sum over nodes v of  prod over the nodes u on the path root -> v of p_rank(u)

(v is accepted iff every node on its path is; by the independence assumption the probabilities
multiply).  One verification emits 1 + E[accepted] tokens: the accepted path plus the target's own.
A chain (width 1) at p_1 = a gives 1 + a + ... + a^g = (1 - a^(g+1)) / (1 - a), the formula of
Leviathan et al. (``sdd_edu.measure.acceptance.expected_tokens_per_forward``).
``rank_acceptance_from_traces`` measures p_k from generation traces.

*Cost.*  A step costs the target's forward over root + n nodes, plus the draft forwards that grew
the tree, plus a fixed overhead (sampling, bookkeeping, Python).  The package's model drafter
(``drafters.ModelDrafter``) runs one forward over the tokens the draft has not seen yet (usually the
target's last token: ``pending``), which gives the root's children, then one forward per level over
that level's nodes that get children (the best ``beam`` waiting nodes at a time): a tree of depth d
takes d draft forwards, like ``Drafter.forwards_for``.  Forward times come from measured latency
curves, interpolated linearly between measured sizes (``forward_seconds``).

*Speed.*  tokens per second = (1 + E[accepted]) / seconds per step; a step with no tree (n = 0) is
a baseline step, one target forward over one token, and the speedup is measured against it.

The dynamic programme
---------------------
A tree below a node is the node's children, ranked 1, 2, ..., c (a prefix of the ranks: the drafters
add a node's children in the draft's rank order), each with a subtree of its own.  The value of the
child of rank i with a subtree of m nodes (itself included) is p_i * (1 + value of its subtree): it
is reached with p_i, and everything below it is reached only through it.  So, with

    F(n, d)    = best value below a node with at most n nodes and at most d levels,
    G(n, d, i) = best value of its children of ranks i, i+1, ... with at most n nodes,

    F(n, 0) = 0,   G(n, d, K + 1) = 0,   F(n, d) = G(n, d, 1),
    G(n, d, i) = max( 0,                                          (no child of rank i, nor after)
                      max over m = 1..n of  p_i * (1 + F(m - 1, d - 1)) + G(n - m, d, i + 1) ).

*Why it is optimal:* the value is a sum over the children, and a child's subtree enters it only
through its own value, scaled by p_i; so for a given split of the nodes between ranks, each child
wants the best subtree of its size and depth, F(m - 1, d - 1), and the recurrence tries every split
(the 0 option ends the ranks: a rank-3 child needs ranks 1 and 2 beside it, even a useless one).
Budgets are "at most n" (Sequoia's are "exactly n"); ties go to the smaller tree.
*Cost:* d * K * n^2 / 2 steps for all budgets up to n and all depth limits up to d at once (K: ranks
with p > 0, at most the width), a fraction of a second for n = 64.

``best_tree`` then prices the DP's tree for every node budget n = 0..max_nodes and every depth limit,
and keeps the fastest.  What it prices is a *shape*, the drafters' limits (width, depth, budget) of the
DP's tree, and a shape's price is computed in one place, ``price_shape``: the DP's tree within those
limits (``optimal_tree``), priced by ``price_tree``.  That tree is the DP's own tree in all but near
ties (``_EPS`` makes the tie-break depend on the order the splits are tried, so the tree for a budget of
n may differ from the tree for the shape it has); when it is not, the shape is taken down to the shape
of the tree ``optimal_tree`` gives for it, until the two agree.  So ``price_shape`` of any row's
(width, depth, nodes), as ``tree_plan.predict`` computes it, is that row's price, exactly.

The step time depends on the tree through its size and its levels; when it depends on them only
through (size, depth) and never falls as they grow (draft forwards of equal cost, as for a small
draft on a GPU, or no draft model at all; no ``beam`` cap), this is the fastest tree of all: the
fastest tree T has some size m and depth e, the DP's tree for (m, e) is worth at least as much and
is no bigger and no deeper, and so is the tree of its shape, so no slower.  Otherwise it is the best of the DP's
trees, the approximation Sequoia makes too (it charges a draft forward per level).  Latency curves
are made non-decreasing first (a bigger forward never really costs less: a dip is noise), as
``forward_latency_ms`` does.

Using the result
----------------
The package's drafters grow their trees best-first by *draft probability*, not by this model, under
three limits: ``width`` (children per node), ``depth`` and ``budget`` (nodes).  ``shape_of`` maps the
chosen tree to those limits, so it is used as ``generate(ladder, prompt, method="tree", width=w,
depth=d, budget=n)``: a tree of the same size and depth, of a shape that follows the draft's
confidence at each step rather than the average acceptance.  (An empty tree, n = 0, means: do not
speculate on this device with this draft.)  For the staged drafter the n-gram's nodes are still the
draft's ranked children, so the same p_k hold; only the draft forwards are fewer (pass its guesses in
``pending``, the first forward covers them).  For an n-gram drafter measure p_k on its own traces and
give no draft curve: its cost is CPU time, part of ``overhead``.
"""

from __future__ import annotations

import math
from collections import deque
from numbers import Integral, Real
from typing import Optional, Sequence

from ..errors import SddError
from .tree import ROOT

_EPS = 1e-12  # a gain smaller than this is no gain: prefer the smaller tree


# ----------------------------------------------------------------------------- inputs, checked

def check_rank_acceptance(rank_acceptance) -> list[float]:
    """``[p_1, ..., p_K]`` as floats, each in [0, 1] and summing to at most 1, or SddError."""
    try:
        p = list(rank_acceptance)
    except TypeError:
        raise SddError(f"rank_acceptance must be a list of probabilities [p_1, ..., p_K], got {rank_acceptance!r}")
    if not p:
        raise SddError("rank_acceptance is empty: give at least p_1, the acceptance of the draft's first choice")
    for k, x in enumerate(p, 1):
        if isinstance(x, bool) or not isinstance(x, Real) or not 0.0 <= x <= 1.0:  # NaN fails too
            raise SddError(f"rank_acceptance p_{k} must be a probability in [0, 1], got {x!r}")
    total = math.fsum(p)
    if total > 1.0 + 1e-9:
        # at most one child is accepted, so the events "the k-th child is the target's token" are disjoint
        raise SddError(f"rank_acceptance sums to {total:.4g} > 1; p_k is the probability that the draft's k-th "
                       "child is the target's token, and at most one child can be")
    return [float(x) for x in p]


def _check_parents(parents) -> list[int]:
    try:
        parents = list(parents)
    except TypeError:
        raise SddError(f"a tree is a parents list (ROOT = -1, nodes after their parents), got {parents!r}")
    for i, par in enumerate(parents):
        if isinstance(par, bool) or not isinstance(par, Integral) or not ROOT <= par < i:
            raise SddError(f"parents[{i}] = {par!r}: a node's parent must be ROOT (-1) or an earlier node")
    return [int(par) for par in parents]


def latency_points(curve) -> list[tuple[int, float]]:
    """A measured latency curve as sorted (tokens, seconds) points, made non-decreasing.

    ``curve``: the rows of ``latency_curve`` (dicts with ``tokens`` and ``seconds`` or ``ms``), a dict
    {tokens: seconds}, or (tokens, seconds) pairs.
    """
    if isinstance(curve, dict):
        pairs = list(curve.items())
    else:
        pairs = []
        for row in curve if curve is not None else []:
            if isinstance(row, dict):
                if "seconds" in row:
                    pairs.append((row.get("tokens"), row["seconds"]))
                elif "ms" in row:
                    pairs.append((row.get("tokens"), row["ms"] / 1000.0))
                else:
                    raise SddError(f"a latency curve row needs 'tokens' and 'seconds' (or 'ms'), got {row!r}")
            else:
                pairs.append(tuple(row))
    if not pairs:
        raise SddError("the latency curve is empty: measure one with sdd_edu.measure.roofline.latency_curve")
    points = []
    for pair in pairs:
        if len(pair) != 2:
            raise SddError(f"a latency curve point must be (tokens, seconds), got {pair!r}")
        n, s = pair
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise SddError(f"a latency curve's token count must be a positive integer, got {n!r}")
        if isinstance(s, bool) or not isinstance(s, Real) or not 0.0 <= s < math.inf:
            raise SddError(f"a latency curve's time must be a non-negative number of seconds, got {s!r}")
        points.append((int(n), float(s)))
    points.sort()
    if len({n for n, _ in points}) != len(points):
        raise SddError(f"the latency curve measures a token count twice: {[n for n, _ in points]}")
    out, top = [], 0.0
    for n, s in points:  # a bigger forward never really costs less: a dip is noise
        top = max(top, s)
        out.append((n, top))
    return out


def forward_seconds(curve, tokens: int) -> float:
    """Seconds of one forward over ``tokens`` tokens, read off a measured curve.

    Linear between measured sizes; beyond the last, the last segment's slope continues (one point:
    flat); below the first, the first point's time.
    """
    return _read(latency_points(curve), tokens)


def _read(points: list[tuple[int, float]], tokens: int) -> float:
    """``forward_seconds`` on a curve already made ``latency_points``."""
    if tokens <= points[0][0]:
        return points[0][1]
    for (n0, s0), (n1, s1) in zip(points, points[1:]):
        if tokens <= n1:
            return s0 + (s1 - s0) * (tokens - n0) / (n1 - n0)
    if len(points) == 1:
        return points[0][1]
    (n0, s0), (n1, s1) = points[-2], points[-1]
    return s1 + (s1 - s0) * (tokens - n1) / (n1 - n0)


# ----------------------------------------------------------------------------- a tree's value

def expected_accepted(parents: Sequence[int], rank_acceptance: Sequence[float]) -> float:
    """E[accepted nodes] of the tree ``parents`` under positional acceptance (see the module docstring).

    A node's rank is its order among its parent's children in ``parents`` (the drafters add children in
    the draft's rank order); ranks beyond ``rank_acceptance`` are never accepted.
    """
    p = check_rank_acceptance(rank_acceptance)
    parents = _check_parents(parents)
    reach: list[float] = []  # P(node accepted) = product of p_rank along its path
    kids: dict[int, int] = {}
    for par in parents:
        rank = kids.get(par, 0)
        kids[par] = rank + 1
        p_rank = p[rank] if rank < len(p) else 0.0
        reach.append(p_rank * (1.0 if par == ROOT else reach[par]))
    return math.fsum(reach)


def tokens_per_forward(parents: Sequence[int], rank_acceptance: Sequence[float]) -> float:
    """Expected tokens one verification of the tree emits: the accepted path plus the target's own token."""
    return 1.0 + expected_accepted(parents, rank_acceptance)


def shape_of(parents: Sequence[int]) -> tuple[int, int, int]:
    """(width = most children of any node, the root included; depth; budget = nodes): the drafters' limits."""
    parents = _check_parents(parents)
    kids: dict[int, int] = {}
    depth: list[int] = []
    for par in parents:
        kids[par] = kids.get(par, 0) + 1
        depth.append(1 if par == ROOT else depth[par] + 1)
    return max(kids.values(), default=0), max(depth, default=0), len(parents)


# ----------------------------------------------------------------------------- what a step costs

def draft_forward_sizes(parents: Sequence[int], pending: int = 1, beam: Optional[int] = None) -> list[int]:
    """Tokens in each draft forward that grows the tree, as ``ModelDrafter`` runs them.

    The first forward covers the ``pending`` tokens the draft has not seen yet (usually the target's
    last token; the staged drafter's guesses ride along) and yields the root's children; then each
    level's nodes that get children are forwarded, at most ``beam`` per forward.  No tree, no forward.
    """
    if isinstance(pending, bool) or not isinstance(pending, Integral) or pending < 1:
        raise SddError(f"pending must be a positive number of tokens for the draft's first forward, got {pending!r}")
    if beam is not None and (isinstance(beam, bool) or not isinstance(beam, Integral) or beam < 1):
        raise SddError(f"beam must be a positive integer or None (no limit), got {beam!r}")
    parents = _check_parents(parents)
    if not parents:
        return []
    depth: list[int] = []
    for par in parents:
        depth.append(1 if par == ROOT else depth[par] + 1)
    expanded: dict[int, int] = {}  # level -> nodes there that have children
    for par in set(parents) - {ROOT}:
        expanded[depth[par]] = expanded.get(depth[par], 0) + 1
    sizes = [pending]
    for level in range(1, max(depth)):
        k = expanded.get(level, 0)
        while k > 0:
            sizes.append(k if beam is None else min(k, beam))
            k -= sizes[-1]
    return sizes


def step_seconds(parents: Sequence[int], target_curve, draft_curve=None, overhead: float = 0.0,
                 pending: int = 1, beam: Optional[int] = None) -> dict:
    """Predicted seconds of one decoding step that drafts and verifies the tree ``parents``.

    target forward over root + nodes (``target_curve``) + the draft forwards (``draft_curve``; None for
    a drafter with no model, whose time belongs in ``overhead``) + ``overhead`` (fixed, per step).
    Curves: see ``latency_points``.
    """
    if isinstance(overhead, bool) or not isinstance(overhead, Real) or not 0.0 <= overhead < math.inf:
        raise SddError(f"overhead must be a non-negative number of seconds per step, got {overhead!r}")
    parents = _check_parents(parents)
    target = _read(latency_points(target_curve), 1 + len(parents))
    draft = 0.0
    if draft_curve is not None:
        sizes = draft_forward_sizes(parents, pending, beam)
        points = latency_points(draft_curve) if sizes else []
        draft = math.fsum(_read(points, k) for k in sizes)
    return {"target_seconds": target, "draft_seconds": draft, "overhead_seconds": float(overhead),
            "seconds": target + draft + overhead}


# ----------------------------------------------------------------------------- the dynamic programme

class _Solution:
    """The DP's tables for all budgets 0..max_nodes and depth limits 0..max_depth (module docstring)."""

    def __init__(self, p: list[float], max_nodes: int, max_depth: int):
        while p and p[-1] == 0.0:  # ranks past the last useful one never pay
            p = p[:-1]
        N, K = max_nodes, len(p)
        self.K, self.nodes, self.depth = K, max_nodes, max_depth
        self.value = [[0.0] * (N + 1)]  # value[d][n] = F(n, d); no levels, no value
        self.pick: list[list[list[int]]] = [[]]  # pick[d][i][n]: nodes given to rank i + 1 (0: stop)
        for d in range(1, max_depth + 1):
            below = self.value[d - 1]
            g_next = [0.0] * (N + 1)  # G(., d, K + 1): no ranks left
            picks: list[list[int]] = [[]] * K
            for i in reversed(range(K)):
                # the rank-(i+1) child with a subtree of m nodes, itself included, is worth p_i * (1 + F(m-1, d-1))
                child = [0.0] + [p[i] * (1.0 + below[m - 1]) for m in range(1, N + 1)]
                g, pick = [0.0] * (N + 1), [0] * (N + 1)
                for n in range(1, N + 1):
                    best, arg = 0.0, 0  # 0: no child of this rank (nor of any later one)
                    for m in range(1, n + 1):  # ties go to the smaller child, so to the smaller tree
                        v = child[m] + g_next[n - m]
                        if v > best + _EPS:
                            best, arg = v, m
                    g[n], pick[n] = best, arg
                picks[i], g_next = pick, g
            self.value.append(g_next)
            self.pick.append(picks)

    def tree(self, n: int, d: int) -> list[int]:
        """The optimal tree with at most ``n`` nodes and ``d`` levels, as a parents list (breadth-first)."""
        def children(n: int, d: int) -> list:  # nested: a list of the children's own children lists
            out, i = [], 0
            while d > 0 and i < self.K:
                m = self.pick[d][i][n]
                if m == 0:
                    break
                out.append(children(m - 1, d - 1))
                n, i = n - m, i + 1
            return out

        parents: list[int] = []
        queue = deque([(ROOT, children(n, d))])
        while queue:  # breadth-first: nodes after their parents, each parent's children in rank order
            parent, kids = queue.popleft()
            for grandkids in kids:
                parents.append(parent)
                queue.append((len(parents) - 1, grandkids))
        return parents


def _limits(max_nodes, max_depth, max_width) -> tuple[int, int]:
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 0:
        raise SddError(f"max_nodes must be a non-negative integer, got {max_nodes!r}")
    for label, value in (("max_depth", max_depth), ("max_width", max_width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SddError(f"{label} must be a positive integer or None (no limit), got {value!r}")
    depth = max_nodes if max_depth is None else min(max_depth, max_nodes)  # n nodes never need more levels
    return depth, max_width if max_width is not None else max_nodes


class _Trees:
    """The DP's tree for any limits, as ``optimal_tree`` gives it: one ``_Solution`` per number of useful
    ranks, kept, and computed again (larger) only when larger limits are asked for.

    A cell of the DP's tables depends on its budget, depth and ranks alone, not on how many budgets and
    depths the tables hold (each is computed from smaller cells, in the same order), so a tree read from a
    larger solution is the tree a solution of just its size gives: ``best_tree`` reads every shape's tree
    from one ``_Trees``, ``price_shape`` from its own, and they read the same tree.
    """

    def __init__(self, rank_acceptance, max_nodes: int = 0, max_depth: int = 0):
        self.p = check_rank_acceptance(rank_acceptance)
        self.solutions: dict[int, _Solution] = {}
        self.size = (max_nodes, max_depth)  # the smallest tables to compute: the limits that will be asked for

    def tree(self, max_nodes: int, max_depth: Optional[int] = None,
             max_width: Optional[int] = None) -> tuple[list[int], float]:
        depth, width = _limits(max_nodes, max_depth, max_width)
        p = self.p[:width]
        while p and p[-1] == 0.0:  # as _Solution does: these ranks never pay, so they share its tables
            p = p[:-1]
        solution = self.solutions.get(len(p))
        if solution is None or solution.nodes < max_nodes or solution.depth < depth:
            grown = (solution.nodes, solution.depth) if solution is not None else self.size
            solution = _Solution(p, max(max_nodes, grown[0]), max(depth, grown[1]))
            self.solutions[len(p)] = solution
        return solution.tree(max_nodes, depth), solution.value[depth][max_nodes]


def optimal_tree(rank_acceptance: Sequence[float], max_nodes: int, max_depth: Optional[int] = None,
                 max_width: Optional[int] = None) -> tuple[list[int], float]:
    """(parents, expected accepted) of the tree with at most ``max_nodes`` nodes, ``max_depth`` levels and
    ``max_width`` children per node that accepts the most tokens under positional acceptance."""
    return _Trees(rank_acceptance).tree(max_nodes, max_depth, max_width)


# ----------------------------------------------------------------------------- a shape's price

def price_tree(parents: Sequence[int], rank_acceptance: Sequence[float], target_curve, draft_curve=None,
               overhead=0.0, pending: int = 1, beam: Optional[int] = None) -> dict:
    """The predicted speed of a step that drafts and verifies the tree ``parents``: the one pricing that
    ``best_tree`` and ``price_shape`` (so ``tree_plan.predict``) share.

    ``parents``, its ``width``, ``depth`` and ``nodes`` (``shape_of``), ``expected_accepted`` and
    ``tokens_per_forward`` (``expected_accepted``), ``target_seconds``, ``draft_seconds``,
    ``overhead_seconds`` and their sum ``seconds_per_step`` (``step_seconds``), and ``tokens_per_second``.
    ``overhead`` may be a function of the tree's depth (a staged draft runs more rounds for a deeper tree);
    an empty tree is a baseline step: one target forward over one token, no draft forward.
    """
    p = check_rank_acceptance(rank_acceptance)
    parents = _check_parents(parents)
    width, depth, nodes = shape_of(parents)
    cost = step_seconds(parents, target_curve, draft_curve, overhead(depth) if callable(overhead) else overhead,
                        pending, beam)
    seconds = cost.pop("seconds")
    accepted = expected_accepted(parents, p)
    return {"parents": parents, "nodes": nodes, "width": width, "depth": depth, "expected_accepted": accepted,
            "tokens_per_forward": 1.0 + accepted, **cost, "seconds_per_step": seconds,
            "tokens_per_second": (1.0 + accepted) / seconds if seconds > 0 else math.inf}


def _price_shape(trees: _Trees, width: Optional[int], depth: Optional[int], budget: int, costs: dict) -> dict:
    parents, _ = trees.tree(budget, depth, width)
    return price_tree(parents, trees.p, **costs)


def price_shape(rank_acceptance: Sequence[float], target_curve, draft_curve=None, *, width: Optional[int],
                depth: Optional[int], budget: int, overhead=0.0, pending: int = 1, beam: Optional[int] = None) -> dict:
    """The predicted speed of the drafters' limits ``width``/``depth``/``budget`` (a chain: width 1, depth and
    budget gamma): the DP's tree within them (``optimal_tree``), priced by ``price_tree``.  ``best_tree``
    prices its rows this way, so ``price_shape`` of a row's (width, depth, nodes) is that row."""
    return _price_shape(_Trees(rank_acceptance), width, depth, budget,
                        {"target_curve": target_curve, "draft_curve": draft_curve, "overhead": overhead,
                         "pending": pending, "beam": beam})


def _settled_shape(trees: _Trees, parents: list[int]) -> Optional[tuple[int, int, int]]:
    """The shape (width, depth, budget) whose tree is the tree of that shape (None for no tree): ``parents``'s
    own shape, unless the DP gives another tree within it (a near tie), whose shape is then tried, and so on.
    Each step keeps the value and never grows a limit, so it ends."""
    shape = shape_of(parents)
    while shape[2] > 0:
        again = shape_of(trees.tree(shape[2], shape[1], shape[0])[0])
        if again == shape:
            return shape
        shape = again
    return None


def best_tree(rank_acceptance: Sequence[float], target_curve, draft_curve=None, max_nodes: int = 32,
              max_depth: Optional[int] = None, max_width: Optional[int] = None, overhead: float = 0.0,
              pending: int = 1, beam: Optional[int] = None) -> dict:
    """The tree with the most predicted tokens per second on the device the curves were measured on.

    For every node budget n = 0..``max_nodes`` (0: a baseline step) and every depth limit, the DP's
    tree gives a shape (the drafters' width/depth/budget), priced by ``price_shape``; each n keeps its
    fastest.  Returns the fastest row: ``parents``, ``width``, ``depth``, ``nodes`` (the shape: ``shape_of``
    of ``parents``), ``expected_accepted``, ``tokens_per_forward``, ``seconds_per_step`` (with its
    ``target_seconds``, ``draft_seconds``, ``overhead_seconds``), ``tokens_per_second``, ``speedup`` over a
    baseline step, and ``table``: the row of every n, for plotting.  ``overhead`` may be a function of the
    tree's depth (a staged draft runs more rounds for a deeper tree).
    """
    depth_limit, width = _limits(max_nodes, max_depth, max_width)
    trees = _Trees(rank_acceptance, max_nodes, depth_limit)
    costs = {"target_curve": latency_points(target_curve),
             "draft_curve": latency_points(draft_curve) if draft_curve is not None else None,
             "overhead": overhead, "pending": pending, "beam": beam}
    priced: dict = {}  # shape -> its price (None: no tree, a baseline step)

    def price(shape: Optional[tuple[int, int, int]]) -> dict:
        if shape not in priced:
            priced[shape] = (price_tree([], trees.p, **costs) if shape is None
                             else _price_shape(trees, *shape, costs))
        return priced[shape]

    table = []
    for n in range(max_nodes + 1):
        best = None
        for d in range(0 if n == 0 else 1, min(n, depth_limit) + 1):
            shape = _settled_shape(trees, trees.tree(n, d, width)[0]) if n > 0 else None
            row = price(shape)
            row = {"n": n, "depth_limit": d, **row, "parents": list(row["parents"])}
            if best is None or row["tokens_per_second"] > best["tokens_per_second"] * (1 + _EPS):
                best = row
        table.append(best)
    baseline = table[0]["tokens_per_second"]
    for row in table:
        row["speedup"] = row["tokens_per_second"] / baseline if math.isfinite(baseline) else 1.0
    chosen = table[0]
    for row in table[1:]:  # ties go to the smaller tree
        if row["tokens_per_second"] > chosen["tokens_per_second"] * (1 + _EPS):
            chosen = row
    return {**chosen, "table": table}


# ----------------------------------------------------------------------------- p_k measured

def _steps(results):
    """The step records of ``results``: GenerationResults, their ``to_dict(with_trace=True)``, or steps."""
    if hasattr(results, "trace") or (isinstance(results, dict) and "trace" in results):
        results = [results]
    for r in results:
        if isinstance(r, dict) and "trace" not in r:
            yield r
        else:
            yield from (r["trace"] if isinstance(r, dict) else r.trace)


def rank_counts(results) -> tuple[list[int], list[int], int]:
    """(accepted, at_risk, steps) per rank, from the token trees in generation traces.

    Each verification walks the tree from the root; at each node it reaches that has children
    c_1, ..., c_m (in rank order: the order they appear among the parent's children) the target's
    token is child R, or none of them.  Rank j is *at risk* there when the node has a j-th child and
    the walk did not take an earlier one; ``accepted[j]`` counts the walks that took it.
    """
    accepted: list[int] = []
    at_risk: list[int] = []
    steps = 0
    for number, step in enumerate(_steps(results)):
        tree = step.get("tree")
        if not tree or not tree.get("parents"):
            continue  # a baseline step (size 0): nothing was tested
        if "accepted_nodes" not in step:
            raise SddError(f"trace step {number} has a tree but no 'accepted_nodes'; generate with keep_trees")
        parents = _check_parents(tree["parents"])
        kids: dict[int, list[int]] = {}
        for i, par in enumerate(parents):
            kids.setdefault(par, []).append(i)
        steps += 1
        node, path = ROOT, list(step["accepted_nodes"])
        for level in range(len(path) + 1):
            here = kids.get(node, [])
            taken = path[level] if level < len(path) else None
            if taken is not None and taken not in here:
                raise SddError(f"trace step {number}: accepted node {taken} is not a child of node {node}")
            for j, child in enumerate(here):
                if j == len(at_risk):
                    accepted.append(0)
                    at_risk.append(0)
                at_risk[j] += 1
                if child == taken:
                    accepted[j] += 1
                    break
            if taken is None:
                break
            node = taken
    return accepted, at_risk, steps


def rank_acceptance_from_traces(results) -> list[float]:
    """Estimate ``[p_1, ..., p_K]`` from generation traces (each step's ``tree`` and ``accepted_nodes``).

    The draft's rank R of the target's token is a discrete variable that a node with m children
    observes only up to m: beyond, the walk just stops ("R > m", censored).  The Kaplan-Meier
    estimator handles that: the hazard h_j = accepted[j] / at_risk[j] estimates P(R = j | R >= j), and
    p_j = h_j * (1 - h_1) ... (1 - h_{j-1}).  It is the maximum-likelihood estimate, its p sum to at
    most 1, and when every node has the same number of children it is plainly accepted[j] / nodes
    reached.  (Dividing by every node reached would undercount ranks that small nodes lack.)  Like the
    model, it assumes a node's number of children says nothing about the target's token; the drafters in
    fact give more children where the draft is unsure, so read p_k as an average over the trees drafted.
    Ranks never at risk are left out: the vector is as long as the widest node the walks met.
    """
    accepted, at_risk, steps = rank_counts(results)
    if steps == 0:
        raise SddError("the traces hold no drafted token tree to measure rank acceptance from; generate with "
                       "method 'speculative', 'tree' or 'staged' (trees are kept in the trace by default)")
    return rank_acceptance_from_counts(accepted, at_risk)


def rank_acceptance_from_counts(accepted: Sequence[int], at_risk: Sequence[int]) -> list[float]:
    """The Kaplan-Meier ``[p_1, ..., p_K]`` of ``rank_acceptance_from_traces`` from counts already summed
    (``rank_counts`` of several runs added rank by rank)."""
    p, survive = [], 1.0
    for hits, risk in zip(accepted, at_risk):
        if risk == 0:
            break
        hazard = hits / risk
        p.append(survive * hazard)
        survive *= 1.0 - hazard
    return p


__all__ = ["check_rank_acceptance", "latency_points", "forward_seconds", "expected_accepted", "tokens_per_forward",
           "shape_of", "draft_forward_sizes", "step_seconds", "optimal_tree", "price_tree", "price_shape", "best_tree",
           "rank_counts", "rank_acceptance_from_traces", "rank_acceptance_from_counts"]
