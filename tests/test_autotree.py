"""Trees chosen for the device (``sdd_edu.decoding.autotree``): the DP against brute force, the cost model,
and rank acceptance measured from traces."""

import itertools
import math
import random
from types import SimpleNamespace

import pytest

from sdd_edu.decoding.autotree import (_Trees, best_tree, draft_forward_sizes, expected_accepted, forward_seconds,
                                       optimal_tree, price_shape, price_tree, rank_acceptance_from_traces,
                                       rank_counts, shape_of, step_seconds, tokens_per_forward)
from sdd_edu.errors import SddError
from sdd_edu.measure.acceptance import expected_tokens_per_forward


# ----------------------------------------------------------------------------- every tree, by brute force

def forests(n):
    """Every ordered forest of exactly n nodes: a list of the trees' own child forests (children in rank order)."""
    if n == 0:
        yield []
        return
    for first_size in range(1, n + 1):
        for first in forests(first_size - 1):
            for rest in forests(n - first_size):
                yield [first] + rest


def to_parents(forest, parent=-1, out=None):
    """Depth-first (unlike the module's breadth-first) parents list; children stay in rank order."""
    out = [] if out is None else out
    for kids in forest:
        out.append(parent)
        to_parents(kids, len(out) - 1, out)
    return out


def value(forest, p):
    return sum((p[i] if i < len(p) else 0.0) * (1.0 + value(kids, p)) for i, kids in enumerate(forest))


def depth(forest):
    return 1 + max(depth(kids) for kids in forest) if forest else 0


def width(forest):
    return max([len(forest)] + [width(kids) for kids in forest])


ALL_TREES = [f for n in range(7) for f in forests(n)]  # 197 trees with up to 6 nodes


def random_acceptance(rng):
    """A random p_1..p_K with sum <= 1, sometimes not decreasing, sometimes with zeros."""
    k = rng.randint(1, 4)
    raw = [rng.random() ** 2 for _ in range(k + 1)]  # the last share is "none of them"
    if rng.random() < 0.3:
        raw[rng.randrange(k)] = 0.0
    p = [x / sum(raw) for x in raw[:k]]
    if rng.random() < 0.5:
        p.sort(reverse=True)
    return p


def test_brute_force_enumerates_the_catalan_numbers():
    assert [sum(1 for _ in forests(n)) for n in range(7)] == [1, 1, 2, 5, 14, 42, 132]


@pytest.mark.parametrize("seed", range(8))
def test_the_dp_finds_the_best_tree_of_all(seed):
    rng = random.Random(seed)
    p = random_acceptance(rng)
    trees = [(f, value(f, p), len(to_parents(f)), depth(f), width(f)) for f in ALL_TREES]
    for f, v, *_ in trees[:60]:  # the module's formula agrees with the recursive one
        assert expected_accepted(to_parents(f), p) == pytest.approx(v, abs=1e-12)
    for n, max_depth, max_width in itertools.product(range(7), (1, 2, 3, None), (1, 2, None)):
        best = max(v for _, v, size, d, w in trees
                   if size <= n and (max_depth is None or d <= max_depth) and (max_width is None or w <= max_width))
        parents, got = optimal_tree(p, n, max_depth=max_depth, max_width=max_width)
        assert got == pytest.approx(best, abs=1e-9), (p, n, max_depth, max_width)
        assert expected_accepted(parents, p) == pytest.approx(got, abs=1e-9)
        w, d, size = shape_of(parents)
        assert size <= n and (max_depth is None or d <= max_depth) and (max_width is None or w <= max_width)
        assert all(-1 <= par < i for i, par in enumerate(parents))  # nodes after their parents


def test_the_dp_uses_a_useless_rank_to_reach_a_useful_one():
    # children come in rank order, so the rank-2 child needs a rank-1 sibling, even one never accepted
    parents, got = optimal_tree([0.0, 0.5], 2, max_depth=1)
    assert parents == [-1, -1] and got == pytest.approx(0.5)
    assert optimal_tree([0.0, 0.5], 1, max_width=2) == ([], 0.0)  # one node could only be the useless child
    # at most n nodes: a fifth node would add nothing here, so the tree keeps four
    parents, got = optimal_tree([0.0, 0.5], 5)
    assert parents == [-1, -1, 1, 1] and got == pytest.approx(0.5 + 0.5 * 0.5)


def test_more_budget_depth_or_width_never_lowers_the_value():
    rng = random.Random(1)
    for _ in range(5):
        p = random_acceptance(rng)
        values = [[optimal_tree(p, n, max_depth=d)[1] for n in range(13)] for d in (1, 2, 3, 4, None)]
        for row in values:
            assert all(a <= b + 1e-12 for a, b in zip(row, row[1:]))
        for shallow, deep in zip(values, values[1:]):
            assert all(a <= b + 1e-12 for a, b in zip(shallow, deep))
        assert optimal_tree(p, 10, max_width=1)[1] <= optimal_tree(p, 10, max_width=2)[1] + 1e-12


def test_a_chain_gives_the_chain_formula():
    for alpha in (0.0, 0.3, 0.8, 1.0):
        for gamma in range(7):
            chain = list(range(-1, gamma - 1))
            assert shape_of(chain) == ((1 if gamma else 0), gamma, gamma)
            assert tokens_per_forward(chain, [alpha]) == pytest.approx(expected_tokens_per_forward(alpha, gamma))
            second = [alpha, (1 - alpha) / 2]  # a chain never uses rank 2
            assert tokens_per_forward(chain, second) == pytest.approx(expected_tokens_per_forward(alpha, gamma))
            parents, got = optimal_tree([alpha], gamma)  # with one rank, the best tree is the chain
            if alpha > 0:
                assert parents == chain
                assert 1 + got == pytest.approx(expected_tokens_per_forward(alpha, gamma))


def test_expected_accepted_by_hand():
    # 0 (rank 1) and 1 (rank 2) below the root; 2, 3 below 0; 4 below 2
    parents = [-1, -1, 0, 0, 2]
    assert expected_accepted(parents, [0.5, 0.3]) == pytest.approx(0.5 + 0.3 + 0.25 + 0.15 + 0.125)
    assert expected_accepted(parents, [0.5]) == pytest.approx(0.5 + 0.25 + 0.125)  # rank 2 never accepted
    assert shape_of(parents) == (2, 3, 5)
    assert shape_of([]) == (0, 0, 0)


# ----------------------------------------------------------------------------- the cost model

def test_latency_is_interpolated_and_extrapolated_linearly():
    curve = [(1, 1.0), (4, 2.5)]
    assert [forward_seconds(curve, n) for n in (1, 2, 4, 6)] == pytest.approx([1.0, 1.5, 2.5, 3.5])
    rows = [{"tokens": 1, "ms": 1000.0}, {"tokens": 4, "ms": 2500.0}]  # latency_curve's rows, in ms only
    assert forward_seconds(rows, 2) == pytest.approx(1.5)
    assert forward_seconds({8: 2.0}, 100) == 2.0  # one point: flat
    assert forward_seconds({1: 1.0, 2: 0.8, 4: 2.0}, 2) == pytest.approx(1.0)  # a dip is noise


def test_draft_forwards_follow_the_model_drafter():
    assert draft_forward_sizes([]) == []
    assert draft_forward_sizes([-1, 0, 1, 2]) == [1, 1, 1, 1]  # a chain of 4: 4 forwards, as forwards_for says
    tree = [-1, -1, 0, 0, 1, 2]  # level 1 expands nodes 0 and 1, level 2 node 2; level 3 is leaves
    assert draft_forward_sizes(tree) == [1, 2, 1]
    assert draft_forward_sizes(tree, pending=3, beam=1) == [3, 1, 1, 1]
    cost = step_seconds(tree, {1: 10.0, 8: 17.0}, {1: 1.0, 3: 2.0}, overhead=0.5)
    # target over 7 tokens: 16; draft: 1 + 1.5 + 1
    assert cost == pytest.approx({"target_seconds": 16.0, "draft_seconds": 3.5, "overhead_seconds": 0.5,
                                  "seconds": 20.0})
    assert step_seconds([], {1: 10.0}, {1: 1.0})["seconds"] == 10.0  # a baseline step runs no draft


@pytest.mark.parametrize("draft", [None, {1: 0.002, 64: 0.002}])
def test_best_tree_is_the_fastest_of_all_trees(draft):
    """With draft forwards of equal cost the DP's choice is the fastest tree (the module's argument)."""
    rng = random.Random(2)
    for _ in range(4):
        p = random_acceptance(rng)
        target = {1: 0.010, 2: 0.0115, 4: 0.014, 8: 0.025}
        got = best_tree(p, target, draft, max_nodes=6, overhead=0.001)
        speeds = [tokens_per_forward(to_parents(f), p) / step_seconds(to_parents(f), target, draft, 0.001)["seconds"]
                  for f in ALL_TREES]
        assert got["tokens_per_second"] == pytest.approx(max(speeds), rel=1e-9)
        assert got["tokens_per_forward"] == pytest.approx(tokens_per_forward(got["parents"], p))
        assert got["seconds_per_step"] == pytest.approx(
            step_seconds(got["parents"], target, draft, 0.001)["seconds"])
        assert [row["n"] for row in got["table"]] == list(range(7))
        assert got["table"][0]["parents"] == [] and got["table"][0]["speedup"] == 1.0
        assert got["tokens_per_second"] == max(row["tokens_per_second"] for row in got["table"])


def test_costly_draft_forwards_favour_shallow_trees():
    """Draft forwards (one per level) as dear as 0.6 of a target forward: each budget tries every depth limit."""
    p, target, draft = [0.5, 0.3, 0.2], {1: 0.010, 8: 0.011}, {1: 0.006}
    got = best_tree(p, target, draft, max_nodes=6)
    for n in range(7):
        fastest = max(tokens_per_forward(to_parents(f), p) / step_seconds(to_parents(f), target, draft)["seconds"]
                      for f in ALL_TREES if len(to_parents(f)) <= n)
        assert max(row["tokens_per_second"] for row in got["table"][:n + 1]) == pytest.approx(fastest, rel=1e-9)
    assert got["depth"] == 1 and got["nodes"] == 3  # a star: one draft forward, the best deep tree needs more


@pytest.mark.parametrize("target", [{1: 0.01, 2: 0.011, 4: 0.013}, {1: 0.01, 128: 0.01}])
def test_a_useless_draft_means_no_tree(target):
    got = best_tree([0.0, 0.0], target, {1: 0.001}, max_nodes=16)
    assert got["n"] == 0 and got["nodes"] == 0 and got["parents"] == [] and got["speedup"] == 1.0
    assert best_tree([0.0], target, None, max_nodes=16)["n"] == 0  # even a free draft: ties go to no tree


def test_a_flat_latency_curve_pays_for_a_big_tree_and_a_steep_one_does_not():
    p = [0.7, 0.15, 0.05]
    draft = {1: 0.0005, 64: 0.0006}
    flat = best_tree(p, {1: 0.02, 128: 0.0205}, draft, max_nodes=24)  # a GPU: 24 more tokens cost nothing
    steep = best_tree(p, {1: 0.02, 2: 0.034, 4: 0.068}, draft, max_nodes=24)  # a CPU in fp32: 1.7x at 2 tokens
    assert flat["nodes"] >= 16 and flat["speedup"] > 2.5 and flat["width"] >= 2
    assert steep["nodes"] <= 2 and steep["speedup"] < 1.1
    assert flat["depth"] > 1 and (flat["width"], flat["depth"], flat["nodes"]) == shape_of(flat["parents"])
    shallow = best_tree(p, {1: 0.02, 128: 0.0205}, draft, max_nodes=24, max_depth=2, max_width=3)
    assert shallow["depth"] <= 2 and shallow["width"] <= 3 and shallow["speedup"] < flat["speedup"]


# ----------------------------------------------------------------------------- one price per shape

NEAR_TIE = [0.5, 4e-12, 4e-12, 1e-12]  # gains within the programme's tie margin (_EPS)


def test_a_dp_table_gives_the_same_trees_whatever_its_size():
    """best_tree reads every shape's tree from tables as large as its largest limits, optimal_tree (so
    price_shape, so tree_plan.predict) from tables of just the shape's size: the trees must be the same."""
    rng = random.Random(4)
    for p in [random_acceptance(rng) for _ in range(4)] + [NEAR_TIE, [0.4, 0.4, 0.0, 0.1]]:
        big, grown = _Trees(p, 9, 9), _Trees(p)  # grown: tables computed again as larger limits come
        for n, d, w in itertools.product(range(10), (1, 2, 3, 5, None), (1, 2, 3, None)):
            assert big.tree(n, d, w) == grown.tree(n, d, w) == optimal_tree(p, n, d, w), (p, n, d, w)


def test_the_tree_for_a_budget_need_not_be_the_tree_for_its_shape():
    """Why best_tree prices shapes, not the programme's trees: near a tie the tree it finds for 7 nodes in 3
    levels is not the one it finds for that tree's own limits, and the two draft in different forwards."""
    by_budget, value = optimal_tree(NEAR_TIE, 7, 3)
    by_shape, same = optimal_tree(NEAR_TIE, 7, 3, 3)
    assert shape_of(by_budget) == (3, 3, 7) and by_shape != by_budget and same == pytest.approx(value, abs=1e-10)
    assert draft_forward_sizes(by_budget, beam=1) != draft_forward_sizes(by_shape, beam=1)
    # the row of 7 nodes had listed the shape (3, 3, 7) at 144 tok/s, the price of the first tree; its shape's
    # tree makes 125 tok/s, so that row is now another shape
    target, draft = {1: 0.01, 16: 0.01}, {1: 0.001}
    assert price_tree(by_budget, NEAR_TIE, target, draft, beam=1)["tokens_per_second"] == pytest.approx(144.2307692)
    assert price_shape(NEAR_TIE, target, draft, width=3, depth=3, budget=7, beam=1)["tokens_per_second"] == \
        pytest.approx(125.0)
    row = best_tree(NEAR_TIE, target, draft, max_nodes=7, beam=1)["table"][7]
    assert (row["width"], row["depth"], row["nodes"]) != (3, 3, 7)


@pytest.mark.parametrize("beam", [1, 2, None])
def test_every_row_of_best_tree_is_the_price_of_its_shape(beam):
    """price_shape of a row's (width, depth, nodes) is that row, float for float: the plan's prediction and
    tree_plan.predict are one computation.  Costs that depend on the tree's levels (draft forwards of
    unequal cost, a beam, an overhead that grows with the depth) are where the shapes' trees matter."""
    rng = random.Random(5)
    target, draft = {1: 0.010, 2: 0.0104, 4: 0.011, 16: 0.013}, {1: 0.001, 2: 0.0013, 4: 0.002}
    for p in [random_acceptance(rng) for _ in range(4)] + [NEAR_TIE, [0.7, 0.0, 2e-12, 5e-13], [0.3, 0.3, 0.3]]:
        for overhead in (0.0005, lambda depth: 0.0005 + 0.0007 * min(depth, 2.5)):
            got = best_tree(p, target, draft, max_nodes=8, overhead=overhead, beam=beam)
            for row in got["table"]:
                assert (row["width"], row["depth"], row["nodes"]) == shape_of(row["parents"])
                price = (price_tree([], p, target, draft, overhead, beam=beam) if row["nodes"] == 0 else
                         price_shape(p, target, draft, width=row["width"], depth=row["depth"], budget=row["nodes"],
                                     overhead=overhead, beam=beam))
                assert {k: row[k] for k in price} == price, (p, beam, row["n"])
            assert got["tokens_per_second"] == max(row["tokens_per_second"] for row in got["table"])


def test_price_tree_is_the_cost_model():
    tree = [-1, -1, 0, 0, 1, 2]
    target, draft = {1: 10.0, 8: 17.0}, {1: 1.0, 3: 2.0}
    got = price_tree(tree, [0.5, 0.3], target, draft, overhead=lambda depth: 0.1 * depth)
    assert got["overhead_seconds"] == pytest.approx(0.3)  # a function of the tree's depth (3 levels)
    assert got["seconds_per_step"] == step_seconds(tree, target, draft, 0.1 * 3)["seconds"]
    assert got["tokens_per_forward"] == tokens_per_forward(tree, [0.5, 0.3])
    assert (got["width"], got["depth"], got["nodes"]) == (2, 3, 6)
    assert got["tokens_per_second"] == got["tokens_per_forward"] / got["seconds_per_step"]
    baseline = price_tree([], [0.5], target, draft, overhead=lambda depth: 0.1 * (depth + 1))
    assert baseline["seconds_per_step"] == pytest.approx(10.1) and baseline["draft_seconds"] == 0.0


# ----------------------------------------------------------------------------- p_k measured from traces

def synthetic_trace(p, steps, seed):
    """Steps of random trees, verified by a target whose token is the draft's rank-R child, R ~ p (else none)."""
    rng = random.Random(seed)
    trace = []
    for _ in range(steps):
        parents = []
        for i in range(rng.randint(1, 10)):
            candidates = [-1] + list(range(i))
            counts = {c: parents.count(c) for c in candidates}
            parents.append(rng.choice([c for c in candidates if counts[c] < 3]))
        kids = {}
        for i, par in enumerate(parents):
            kids.setdefault(par, []).append(i)
        node, accepted = -1, []
        while kids.get(node):
            r = rng.choices(range(len(p) + 1), weights=p + [1 - sum(p)])[0]  # rank r + 1, or none
            if r >= len(kids[node]):
                break
            node = kids[node][r]
            accepted.append(node)
        trace.append({"proposed": len(parents), "accepted": len(accepted), "accepted_nodes": accepted,
                      "tree": {"tokens": [0] * len(parents), "parents": parents}})
    return trace


def test_rank_acceptance_is_recovered_from_traces_of_uneven_trees():
    p = [0.5, 0.2, 0.1]
    trace = synthetic_trace(p, 4000, seed=3)
    got = rank_acceptance_from_traces([SimpleNamespace(trace=trace)])
    assert len(got) == 3
    assert got == pytest.approx(p, abs=0.03)
    # every form a trace comes in: results, their to_dict(with_trace=True), bare steps (baseline steps skipped)
    assert rank_acceptance_from_traces({"trace": trace}) == got
    assert rank_acceptance_from_traces(trace + [{"proposed": 0, "accepted": 0, "tree": {"parents": []}}]) == got


def test_the_estimator_handles_censored_ranks_by_hand():
    # step A: one child, taken; step B: two children, the second taken.  Rank 1 at risk twice, taken once;
    # rank 2 at risk once (B), taken once: p_1 = 1/2, p_2 = (1 - 1/2) * 1 (not 1/2 + 1, which sums past 1)
    trace = [{"tree": {"parents": [-1]}, "accepted_nodes": [0]},
             {"tree": {"parents": [-1, -1]}, "accepted_nodes": [1]}]
    assert rank_counts(trace) == ([1, 1], [2, 1], 2)
    assert rank_acceptance_from_traces(trace) == pytest.approx([0.5, 0.5])


def test_traces_without_trees_or_with_a_wrong_path_are_refused():
    with pytest.raises(SddError, match="no drafted token tree"):
        rank_acceptance_from_traces([{"proposed": 0, "accepted": 0, "tree": {"parents": []}}])
    with pytest.raises(SddError, match="not a child"):
        rank_acceptance_from_traces([{"tree": {"parents": [-1, -1, 0]}, "accepted_nodes": [0, 1]}])


def test_a_real_generation_with_a_perfect_draft_accepts_only_first_choices():
    import torch

    from sdd_edu import generate
    from sdd_edu.ladders import make_ladder
    from sdd_edu.loading import LoadedModel
    from sdd_edu.model import ModelConfig, Transformer
    from sdd_edu.ngram import PromptLookup

    torch.manual_seed(0)
    cfg = ModelConfig(family="llama", vocab_size=61, n_layer=1, n_head=4, n_kv_head=2, d_model=32, d_ff=64,
                      max_seq_len=128, eos_token_id=None)
    model = Transformer(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for w in model.parameters():
            w.normal_(0, 0.4)
    lm = LoadedModel("random", model, None, "test")
    ladder = make_ladder(lm, lm, PromptLookup())
    res = generate(ladder, [5, 7, 11], method="tree", max_new_tokens=24, stop_at_eos=False, adaptive=False,
                   width=2, depth=3, budget=5)
    for step in res.trace:  # the assumption behind ranks: a parent's children appear in the draft's rank order
        tree = step["tree"]
        for par in set(tree["parents"]):
            probs = [q for q, pp in zip(tree["draft_probs"], tree["parents"]) if pp == par]
            assert probs == sorted(probs, reverse=True)
    p = rank_acceptance_from_traces([res])
    assert p[0] == 1.0 and all(q == 0.0 for q in p[1:])  # the target's token is always the draft's first choice
    assert best_tree(p, {1: 0.01, 16: 0.01}, None, max_nodes=6)["parents"] == [-1, 0, 1, 2, 3, 4]  # so: a chain


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("call", [
    lambda: best_tree([1.2], {1: 0.01}),
    lambda: best_tree([-0.1], {1: 0.01}),
    lambda: best_tree([math.nan], {1: 0.01}),
    lambda: best_tree([0.7, 0.5], {1: 0.01}),  # sums past 1: at most one child is the target's token
    lambda: best_tree([], {1: 0.01}),
    lambda: best_tree([True], {1: 0.01}),
    lambda: expected_accepted([-1], [0.6, 0.6]),
    lambda: optimal_tree("0.5", 3),
    lambda: best_tree([0.5], []),
    lambda: best_tree([0.5], {}),
    lambda: best_tree([0.5], None),
    lambda: best_tree([0.5], {1: 0.01}, []),  # an empty draft curve (None means: no draft model)
    lambda: best_tree([0.5], [{"tokens": 0, "seconds": 0.01}]),
    lambda: best_tree([0.5], {1: -0.01}),
    lambda: best_tree([0.5], [(1, 0.01), (1, 0.02)]),
    lambda: best_tree([0.5], [{"tokens": 1}]),
    lambda: best_tree([0.5], {1: 0.01}, max_nodes=-1),
    lambda: best_tree([0.5], {1: 0.01}, max_depth=0),
    lambda: best_tree([0.5], {1: 0.01}, overhead=-1.0),
    lambda: expected_accepted([0], [0.5]),
    lambda: shape_of([-1, 3]),
    lambda: shape_of(3),
    lambda: draft_forward_sizes([-1], pending=0),
    lambda: best_tree([0.5], {1: 0.01}, {1: 0.001}, beam=0),
])
def test_bad_inputs_raise_one_line_errors(call):
    with pytest.raises(SddError) as info:
        call()
    assert "\n" not in str(info.value) and str(info.value)
