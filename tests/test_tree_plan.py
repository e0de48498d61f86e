"""Trees chosen on the device: the plan measured on a tiny ladder, generate(budget="auto"), bench's predictions."""

import json

import pytest
import torch

from sdd_edu import SddError, generate
from sdd_edu.decoding import baseline_decode
from sdd_edu.decoding.autotree import optimal_tree, shape_of, tokens_per_forward
from sdd_edu.ladders import make_ladder
from sdd_edu.measure import tree_plan
from sdd_edu.loading import load_model
from sdd_edu.measure.acceptance import expected_tokens_per_forward
from sdd_edu.measure.bench import format_table, method_and_settings, run_bench
from sdd_edu.ngram import KatzTrigram, PromptLookup
from tests.helpers import save_tiny_checkpoint
from tests.test_speculative import random_lm, random_streams

PROMPTS = ([3, 5, 7, 11], [1, 2, 3, 4, 5, 6])


@pytest.fixture(scope="module")
def ladder():
    target = random_lm(21, family="llama")
    draft = random_lm(21, family="llama")  # the target itself: every rank-1 guess lands
    return make_ladder(target, draft, KatzTrigram.fit(random_streams(61, 4), 61), name="tiny-plan")


@pytest.fixture(scope="module")
def plans(ladder):
    return {m: tree_plan.plan_tree(ladder, m, prompts=PROMPTS, max_new_tokens=12, max_nodes=6)
            for m in ("speculative", "tree", "staged")}


def row_shape(method, row):
    """The method's settings of a plan's table row: the shape whose tree the row prices."""
    if method == "speculative":
        return {"gamma": row["nodes"]}
    return {"width": row["width"], "depth": row["depth"], "budget": row["nodes"]}


def assert_predicts_its_own_shapes(plan):
    """``predict`` reproduces the plan's own prediction and every row of its table, exactly: all are one pricing
    of a shape applied to the plan's measured numbers (whatever they came out as, nothing is timed here)."""
    again = tree_plan.predict(plan, plan["shape"])
    assert {k: again[k] for k in plan["predicted"] if k in again} == {
        k: v for k, v in plan["predicted"].items() if k in again}
    assert plan["predicted"]["speedup"] == again["tokens_per_second"] / plan["predicted"]["baseline_tokens_per_second"]
    for row in plan["table"]:
        if row["nodes"]:
            got = tree_plan.predict(plan, row_shape(plan["method"], row))
            assert (got["nodes"], got["tokens_per_forward"], got["seconds_per_step"], got["tokens_per_second"]) == (
                row["nodes"], row["tokens_per_forward"], row["seconds_per_step"], row["tokens_per_second"])
    fastest = max(row["tokens_per_second"] for row in plan["table"])
    if plan["predicted"]["tree_pays"]:
        assert plan["predicted"]["tokens_per_second"] == fastest
        assert plan["predicted"]["nodes"] > 0
    else:  # a baseline step is the fastest; the shape is the smallest tree, predicted at its own (lower) price
        assert plan["table"][0]["tokens_per_second"] == fastest and plan["table"][0]["nodes"] == 0
        assert set(plan["shape"].values()) == {1}
        assert plan["predicted"]["tokens_per_second"] <= fastest
        assert "no tree pays" in tree_plan.summary(plan)


def test_a_plan_keeps_its_measurements_and_predicts_its_own_shape(plans):
    for method, plan in plans.items():
        assert plan["method"] == method and len(plan["target_ms"]) == 8  # sizes 0..max_nodes + 1
        # the draft is the target: its first choice lands but for near-ties the two forwards break differently
        assert plan["rank_acceptance"][0] > 0.8
        assert set(plan["shape"]) == set(tree_plan.SHAPE_KEYS[method])
        assert_predicts_its_own_shapes(plan)  # whether a tree paid on this run's timings or not
    # a chain's tokens per forward is Leviathan et al.'s formula at its first rank's acceptance
    chain = plans["speculative"]
    a, gamma = chain["rank_acceptance"][0], chain["shape"]["gamma"]
    assert chain["predicted"]["tokens_per_forward"] == pytest.approx(expected_tokens_per_forward(a, gamma))


def plan_by_hand(method, rank_acceptance, target_ms, draft_ms, max_nodes, overhead=0.0, beam=1, staged_draft=None):
    """A plan's measurements set by hand (what ``_measure`` would have timed), run through the programme."""
    plan = {"method": method, "device": "by hand", "dtype": "torch.float32", "measured": "never",
            "rank_acceptance": rank_acceptance, "target_ms": target_ms, "draft_ms": draft_ms,
            "overhead_seconds": overhead, "beam": beam, "guesses": 0, "rounds": 1, "staged_draft": staged_draft}
    return tree_plan._choose(plan, max_nodes)


@pytest.mark.parametrize("method", ["speculative", "tree", "staged"])
def test_a_plan_where_no_tree_pays_predicts_the_smallest_tree_it_sets(method):
    """No tree pays (a forward over two tokens costs twice one): the plan sets the smallest tree, and predicts
    that tree, as predict does; it had predicted a baseline step, which that shape does not run (the flaky
    test above failed so on the runs whose timings made no tree pay)."""
    target_ms = [0.0] + [10.0 * n for n in range(1, 6)]
    plan = plan_by_hand(method, [0.5, 0.2], target_ms, [0.0, 2.0, 2.0, 2.0], 4, overhead=0.001,
                        staged_draft={"first_seconds": 0.002, "rounds": 1.0, "steps": 9})
    assert plan["shape"] == ({"gamma": 1} if method == "speculative" else {"width": 1, "depth": 1, "budget": 1})
    assert plan["predicted"]["tokens_per_second"] == tree_plan.predict(plan, plan["shape"])["tokens_per_second"]
    assert plan["table"][0]["tokens_per_second"] == max(row["tokens_per_second"] for row in plan["table"])
    assert plan["predicted"]["tokens_per_second"] < plan["table"][0]["tokens_per_second"]
    assert plan["predicted"]["tree_pays"] is False and plan["predicted"]["nodes"] == 1
    assert_predicts_its_own_shapes(plan)


@pytest.mark.parametrize("method", ["tree", "staged"])
def test_a_plan_prices_its_table_as_predict_does_at_near_ties(method):
    """Gains within the programme's tie margin: the tree it finds for a budget of 7 nodes in 3 levels is not the
    tree it finds for that tree's own shape (3 wide, 3 deep, 7 nodes), which drafts in more forwards.  The table
    listed the shape at the first tree's price (144 tok/s where predict gave 125); now a row is its shape."""
    p = [0.5, 4e-12, 4e-12, 1e-12]
    by_budget, _ = optimal_tree(p, 7, 3)
    width, depth, nodes = shape_of(by_budget)
    assert (width, depth, nodes) == (3, 3, 7) and optimal_tree(p, nodes, depth, width)[0] != by_budget
    plan = plan_by_hand(method, p, [0.0] + [10.0] * 9, [0.0] + [1.0] * 8, 7,
                        staged_draft={"first_seconds": 0.001, "rounds": 2.0, "steps": 9})
    assert_predicts_its_own_shapes(plan)
    # the numbers survive the plan's file: read back, it predicts the same
    again = json.loads(json.dumps(plan))
    assert tree_plan.predict(again, again["shape"]) == tree_plan.predict(plan, plan["shape"])


@pytest.mark.parametrize("method", ["tree", "staged"])
def test_a_plans_rate_of_a_tree_is_its_table_rows_price(plans, method):
    """``tree_rate`` prices any tree as the programme priced its table: each row's tree at the row's tok/s."""
    plan, rate = plans[method], tree_plan.tree_rate(plans[method])
    for row in plan["table"]:
        assert rate(row["parents"]) == pytest.approx(row["tokens_per_second"], rel=1e-12)


def test_predictions_follow_the_model_for_any_shape(plans):
    plan = plans["tree"]
    for shape in ({"width": 1, "depth": 3, "budget": 3}, {"width": 2, "depth": 2, "budget": 4}):
        parents, _ = optimal_tree(plan["rank_acceptance"], shape["budget"], shape["depth"], shape["width"])
        got = tree_plan.predict(plan, shape)
        assert got["tokens_per_forward"] == pytest.approx(tokens_per_forward(parents, plan["rank_acceptance"]))
        assert got["tokens_per_second"] == pytest.approx(got["tokens_per_forward"] / got["seconds_per_step"])


def test_a_staged_plan_prices_its_draft_from_the_probe_steps(plans):
    plan = plans["staged"]
    measured = plan["staged_draft"]  # from the probe's own steps, each run's first (the prompt read) left out
    assert measured["steps"] > 0 and measured["first_seconds"] > 0
    assert 0 <= measured["rounds"] <= tree_plan.PROBE["depth"]
    # the step's draft cost: the first forward, then as many rounds as the probe ran, no more than the depth
    toy = {**plan, "overhead_seconds": 0.001, "draft_ms": [0.0, 1.0, 2.0, 3.0], "beam": 2,
           "staged_draft": {"first_seconds": 0.004, "rounds": 1.5, "steps": 9}}
    cost = tree_plan._costs(toy)
    assert cost["draft_curve"] is None
    assert cost["overhead"](0) == pytest.approx(0.001)  # no tree, no draft forward
    assert cost["overhead"](1) == pytest.approx(0.001 + 0.004 + 1 * 0.002)
    assert cost["overhead"](3) == pytest.approx(0.001 + 0.004 + 1.5 * 0.002)
    # the prediction charges a tree the rounds its depth allows
    from sdd_edu.decoding.autotree import shape_of
    for shape in ({"width": 1, "depth": 3, "budget": 3}, {"width": 3, "depth": 1, "budget": 3}):
        parents, _ = optimal_tree(toy["rank_acceptance"], shape["budget"], shape["depth"], shape["width"])
        target = tree_plan._curve(toy["target_ms"])[1 + len(parents)]
        rounds = min(1.5, shape_of(parents)[1])
        assert tree_plan.predict(toy, shape)["seconds_per_step"] == pytest.approx(target + 0.005 + rounds * 0.002)


def test_a_plan_is_measured_once_per_process(ladder, plans):
    assert tree_plan.plan_tree(ladder, "tree", prompts=PROMPTS) is plans["tree"]
    assert tree_plan.cached_shape(ladder, "tree") == {}  # a test model's plan is never filed as a default


@pytest.mark.parametrize("method, auto", [("speculative", {"gamma": "auto"}), ("tree", {"budget": "auto"}),
                                          ("staged", {"budget": "auto"})])
def test_auto_keeps_greedy_identity(ladder, plans, method, auto):
    for prompt in PROMPTS:
        expected = baseline_decode(ladder.target, list(prompt), 20, stop_at_eos=False).token_ids
        res = generate(ladder, list(prompt), method=method, max_new_tokens=20, stop_at_eos=False, **auto)
        assert res.token_ids == expected


def test_auto_with_a_fixed_shape_is_refused(ladder, plans):
    with pytest.raises(SddError, match="auto"):
        generate(ladder, [1, 2, 3], method="tree", max_new_tokens=4, budget="auto", width=2)
    with pytest.raises(SddError, match="auto"):
        generate(ladder, [1, 2, 3], method="tree", max_new_tokens=4, budget="big")


def test_bench_variants_name_shapes_and_auto():
    assert method_and_settings("tree:2x3x4") == ("tree", {"width": 2, "depth": 3, "budget": 4, "adaptive": False})
    assert method_and_settings("speculative:g5") == ("speculative", {"gamma": 5, "adaptive": False})
    assert method_and_settings("staged:auto") == ("staged", {"budget": "auto", "adaptive": False})
    assert method_and_settings("speculative:auto") == ("speculative", {"gamma": "auto", "adaptive": False})
    assert method_and_settings("tree:lookup") == ("tree", {"lookup": True})
    assert method_and_settings("tree:features+lookup") == ("tree", {"draft": "features", "lookup": True})
    # a draft variant, then one shape
    assert method_and_settings("tree:features+lookup:auto") == (
        "tree", {"draft": "features", "lookup": True, "budget": "auto", "adaptive": False})
    assert method_and_settings("speculative:features:g2") == (
        "speculative", {"draft": "features", "gamma": 2, "adaptive": False})
    for bad in ("tree:2x3", "tree:g3", "speculative:2x2x2", "tree:0x1x1", "tree:auto:features", "tree:fixed:auto",
                "tree:features:lookup", "tree:features:huge", "speculative:features:2x2x2"):
        with pytest.raises(SddError, match="unknown method variant"):
            method_and_settings(bad)


@pytest.fixture(scope="module")
def text_ladder(tmp_path_factory):
    """A tiny ladder of checkpoints with a tokenizer: the plan probes it on HumanEval prompts and files it on
    disk (in a cache of its own), as for a real ladder, after choosing the matrix products (in a path table of
    its own: a tiny model's choice must not steer the other tests' forwards)."""
    from sdd_edu.model import Linear

    tdir = save_tiny_checkpoint(tmp_path_factory.mktemp("t"), "llama", seed=0, max_len=1024)
    ddir = save_tiny_checkpoint(tmp_path_factory.mktemp("d"), "llama", seed=1, max_len=1024, n_layer=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDD_EDU_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(Linear, "ROW_BLOCK_ROWS", dict(Linear.ROW_BLOCK_ROWS))
        yield make_ladder(load_model(str(tdir), device="cpu", dtype="fp32"),
                          load_model(str(ddir), device="cpu", dtype="fp32"), PromptLookup(), name="tiny-text")


def test_bench_puts_predictions_beside_measurements(text_ladder):
    plan = tree_plan.plan_tree(text_ladder, "tree", prompts=tree_plan.PROBE_PROMPTS[:2], max_new_tokens=16)
    res = run_bench(text_ladder, ["baseline", "tree:auto", "tree:1x2x2", "tree"], ["greedy"], prompts=1,
                    max_new_tokens=8, progress=False)
    predicted = {r["method"]: r for r in res["predicted"]}
    assert set(predicted) == {"tree:auto", "tree:1x2x2"}  # the adaptive default has no fixed shape to predict
    assert tree_plan.plan_tree(text_ladder, "tree") is plan  # measured once, then reused
    assert predicted["tree:auto"]["shape"] == plan["shape"]
    assert predicted["tree:1x2x2"]["shape"] == {"width": 1, "depth": 2, "budget": 2}
    for label, row in predicted.items():
        measured = next(s for s in res["summary"] if s["method"] == label)
        assert row["measured_tokens_per_second"] == pytest.approx(measured["decode_tokens_per_second"])
        assert row["predicted_tokens_per_second"] == pytest.approx(tree_plan.predict(plan, row["shape"])["tokens_per_second"])
        # beside it, the same model with the acceptance by rank of the benchmark's own prompts
        here = row["rank_acceptance_here"]
        assert 0 <= sum(here) <= 1 and all(x >= 0 for x in here) and here
        assert row["predicted_here"] == pytest.approx(
            tree_plan.predict({**plan, "rank_acceptance": here}, row["shape"])["tokens_per_second"])
        assert row["error_here"] == pytest.approx(row["predicted_here"] / row["measured_tokens_per_second"] - 1)
    assert "predicted (tree plan of this device) against measured" in format_table(res)
    assert "with p_k of these prompts" in format_table(res)
    # both fixed tree runs' trees were counted: rank 1 was at risk at least once per drafted step
    runs = [r for r in res["rows"] if r["method"] in ("tree:auto", "tree:1x2x2")]
    assert predicted["tree:1x2x2"]["rank_acceptance_here"] == predicted["tree:auto"]["rank_acceptance_here"]
    assert sum(r["drafted_steps"] for r in runs) > 0
    # filed on disk, the plan is now this ladder's default shape on this device (the constants were the fallback)
    assert tree_plan.cached_shape(text_ladder, "tree") == plan["shape"]
    assert res["settings"]["tree"] | plan["shape"] == res["settings"]["tree"]
    assert list((tree_plan._path("x").parent).glob("*.json"))
    # the products were chosen first, up to the largest tree's rows, and filed for this CPU
    from sdd_edu.measure.roofline import row_block_label, saved_linear_paths
    assert saved_linear_paths("cpu", torch.float32, max_rows=plan["max_nodes"] + 1) is not None
    assert plan["products"] == row_block_label("cpu", torch.float32)
    # a plan filed before a prediction was the price of its shape is priced again from its numbers when read
    key, name = tree_plan._key(text_ladder, "tree")
    filed = {**plan, "predicted": {k: v for k, v in plan["predicted"].items() if k != "tree_pays"}, "table": []}
    tree_plan._path(name).write_text(json.dumps(filed))
    del tree_plan._IN_PROCESS[key]
    try:
        again = tree_plan.cached_plan(text_ladder, "tree")
        assert (again["shape"], again["predicted"], again["table"]) == (plan["shape"], plan["predicted"], plan["table"])
    finally:
        tree_plan._IN_PROCESS[key] = plan


def test_a_feature_draft_gets_its_own_plan(ladder, plans):
    """``draft="features"`` with ``budget="auto"``: the tree planned with the feature draft's own acceptance and
    cost, kept apart from the small draft's plan; greedy decoding still emits the baseline's tokens."""
    from sdd_edu.feature_draft import FeatureDraft, feature_draft_config
    from sdd_edu.loading import LoadedModel

    target = ladder.target
    torch.manual_seed(3)
    features = FeatureDraft(feature_draft_config(target.config, 0)).eval().requires_grad_(False).attach(target.model)
    with_features = make_ladder(target, ladder.draft, ladder.ngram, name="tiny-plan-features",
                                feature_draft=LoadedModel("tiny-feature-draft", features, None, "test"))
    prompt = list(PROMPTS[1])
    expected = baseline_decode(target, prompt, 16, stop_at_eos=False).token_ids
    for method, auto in (("speculative", {"gamma": "auto"}), ("tree", {"budget": "auto"})):
        res = generate(with_features, prompt, method=method, max_new_tokens=16, stop_at_eos=False, draft="features",
                       **auto)
        assert res.token_ids == expected
        drafting = tree_plan.planning_ladder(with_features, method, {"draft": "features"})
        assert drafting.draft is with_features.feature_draft and with_features.draft is ladder.draft
        plan = tree_plan.plan_tree(drafting, method, prompts=[prompt])  # the plan generate measured, reused
        assert "draft tiny-feature-draft" in plan["ladder"]
        assert plan["key"] != tree_plan.plan_tree(with_features, method, prompts=[prompt])["key"]
        assert_predicts_its_own_shapes(plan)
    with pytest.raises(SddError, match="feature draft"):
        generate(with_features, prompt, method="staged", max_new_tokens=4, draft="features", budget="auto")


def test_bench_predicts_a_feature_drafts_fixed_shapes_from_its_own_plan(text_ladder):
    """``tree:features:1x2x2`` beside ``tree:1x2x2``: each priced by the plan of the draft it drafted with, each
    with the acceptance by rank of its own draft's steps."""
    from sdd_edu.feature_draft import FeatureDraft, feature_draft_config
    from sdd_edu.loading import LoadedModel

    target = text_ladder.target
    torch.manual_seed(5)
    features = FeatureDraft(feature_draft_config(target.config, 0)).eval().requires_grad_(False).attach(target.model)
    ladder = make_ladder(target, text_ladder.draft, text_ladder.ngram, name="tiny-text-features",
                         feature_draft=LoadedModel("tiny-feature-draft", features, target.tokenizer, "test"))
    for draft in (ladder, tree_plan.planning_ladder(ladder, "tree", {"draft": "features"})):
        tree_plan.plan_tree(draft, "tree", prompts=tree_plan.PROBE_PROMPTS[:1], max_new_tokens=12, save=False)
    res = run_bench(ladder, ["baseline", "tree:1x2x2", "tree:features:1x2x2"], ["greedy"], prompts=1,
                    max_new_tokens=8, progress=False)
    predicted = {r["method"]: r for r in res["predicted"]}
    assert set(predicted) == {"tree:1x2x2", "tree:features:1x2x2"}
    assert res["settings"]["tree:features:1x2x2"]["draft"] == "features"
    assert all(s["same_output_as_baseline"] == 1.0 for s in res["summary"] if s["method"] != "baseline")
    keys = set()
    for label, settings in (("tree:1x2x2", {}), ("tree:features:1x2x2", {"draft": "features"})):
        plan = tree_plan.plan_tree(tree_plan.planning_ladder(ladder, "tree", settings), "tree", save=False)
        keys.add(plan["key"])
        row = predicted[label]
        assert row["predicted_tokens_per_second"] == pytest.approx(tree_plan.predict(plan, row["shape"])["tokens_per_second"])
        assert row["predicted_here"] == pytest.approx(
            tree_plan.predict({**plan, "rank_acceptance": row["rank_acceptance_here"]}, row["shape"])["tokens_per_second"])
    assert len(keys) == 2  # two plans: one per draft


def test_a_plan_with_prompt_lookup_is_measured_with_it_and_kept_apart(ladder, plans):
    """tree with lookup=True (off by default for tree) plans with lookup in its probe, under its own key; the
    method's default lookup plans as before, under the plain key."""
    assert tree_plan.planning_ladder(ladder, "tree", {"lookup": False}) is ladder  # tree's default
    assert tree_plan.planning_ladder(ladder, "staged", {"lookup": True}) is ladder  # staged's default
    with_lookup = tree_plan.planning_ladder(ladder, "tree", {"lookup": True})
    assert with_lookup.plan_lookup is True and with_lookup.draft is ladder.draft and not hasattr(ladder, "plan_lookup")
    prompt = list(PROMPTS[1])
    expected = baseline_decode(ladder.target, prompt, 16, stop_at_eos=False).token_ids
    res = generate(ladder, prompt, method="tree", max_new_tokens=16, stop_at_eos=False, lookup=True, budget="auto")
    assert res.token_ids == expected
    plan = tree_plan.plan_tree(with_lookup, "tree", prompts=[prompt])  # the one generate measured
    assert plan["probe"]["lookup"] is True and "lookup on" in plan["key"]
    assert plan["key"] != plans["tree"]["key"] and "lookup" not in plans["tree"]["probe"]
