"""The best tree for this device, measured: ``generate(..., budget="auto")`` and ``--tree auto``.

``sdd_edu.decoding.autotree`` predicts a tree's speed from two measurements and finds the fastest
tree; this module takes them on the reader's device and keeps the result:

1. **acceptance by rank**: greedy generations (five HumanEval prompts, 64 tokens) with a wide fixed
   tree (every rank up to ``PROBE["width"]`` gets tested at every level), read by
   ``rank_acceptance_from_traces``;
2. **forward costs**: the target's and the draft's forward time against tokens per forward
   (``roofline.forward_latency_ms``: interleaved medians, kept on disk per model, device and dtype);
3. **the rest of a step**: the probe runs' time outside the forwards, per step (trees, the walk,
   bookkeeping), and for a staged draft the time of its forwards per step, read from the probe's steps.

Before all this, a plan that will be filed as the device's default chooses the matrix product per row
count (``roofline.choose_linear_paths``), so that every measurement sees the best this device can do.

``plan_tree`` joins them (``autotree.best_tree``) and returns the shape for the method's settings
(``width``/``depth``/``budget``, or ``gamma`` for a chain) with the measurements it came from and its
prediction, ``predict`` of that shape (one pricing, ``autotree.price_shape``, for the shapes the
programme compares and for any shape ``predict`` is asked about; when no tree pays, the shape is the
smallest tree, predicted at its own price, and ``predicted["tree_pays"]`` is False).  A plan
is kept for the life of the process and, for named models (the embedded ladder, checkpoints, hub
models), on disk under ``cache_dir()/tree-plans`` keyed by device, dtype, ladder and method; a cached
plan also supplies the method's default shape on that device (``cached_shape``), so the hand-set
``CPU_DEFAULTS`` are only the fallback before anything was measured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from typing import Optional

from ..decoding import SHAPE_KEYS
from ..errors import SddError

PROBE = {"width": 4, "depth": 4, "budget": 16}  # wide enough to see ranks 1..4 at every level
# Five prompts of 64 tokens: with three of 32 the rank-1 acceptance came out 0.40 where a 1-node tree then
# accepted 0.48 on the benchmark's prompts (the first tokens of an answer are the hardest to guess, and 50
# steps are few).  Not the benchmark's first prompts (HumanEval/0-4), so that bench checks a plan on prompts
# it was not measured on.
PROBE_PROMPTS = tuple(f"HumanEval/{i}" for i in range(10, 15))
_IN_PROCESS: dict = {}


def planning_ladder(ladder, method: str, settings: dict):
    """The ladder as a plan for ``method`` with ``settings`` sees it: with ``draft="features"`` its draft is the
    ladder's feature draft, and a ``lookup`` other than the method's default is kept with it, so that the
    plan is measured with what will draft (the probe drafts so) and filed apart."""
    from ..decoding import defaults_for, with_feature_draft

    features = settings.get("draft") == "features" and getattr(ladder, "feature_draft", None) is not None
    lookup = settings.get("lookup")
    if lookup is not None and lookup == defaults_for(method, ladder.target.device, ladder.target.dtype)["lookup"]:
        lookup = None
    if not features and lookup is None:
        return ladder
    ladder = with_feature_draft(ladder) if features else copy.copy(ladder)
    ladder.plan_lookup = lookup
    return ladder


def _key(ladder, method: str) -> tuple[str, Optional[str]]:
    """(the plan's key, its file name, or None for models without a name to file them under)."""
    from .timing import device_description

    target, draft = ladder.target, ladder.draft
    parts = [device_description(target.device), str(target.dtype), method, f"{target.name}|{target.source}",
             f"{draft.name}|{draft.source}" if draft is not None else "no draft"]
    if getattr(ladder, "plan_lookup", None) is not None:  # prompt lookup other than the method's default
        parts.append(f"lookup {'on' if ladder.plan_lookup else 'off'}")
    named = target.name and target.source not in ("", "test") and (draft is None or draft.source not in ("", "test"))
    if not named:  # test models share names: in this process, the plan belongs to these very objects
        parts.append(f"objects {id(target.model)} {id(draft.model) if draft is not None else 0}")
    key = " / ".join(parts)
    return key, (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json") if named else None


def _path(name: str):
    from ..loading import cache_dir

    return cache_dir() / "tree-plans" / name


def cached_plan(ladder, method: str) -> Optional[dict]:
    """The plan measured before for this ladder, method, device and dtype (this process, or on disk), or None."""
    key, name = _key(ladder, method)
    if key in _IN_PROCESS:
        return _IN_PROCESS[key]
    if name is not None and _path(name).exists():
        try:
            plan = json.loads(_path(name).read_text())
        except (OSError, ValueError):
            return None
        if plan.get("key") == key:
            if "tree_pays" not in plan.get("predicted", {}):  # filed before predictions were prices of shapes
                plan = _choose({k: v for k, v in plan.items() if k not in ("shape", "predicted", "table")},
                               plan["max_nodes"])
            _IN_PROCESS[key] = plan
            return plan
    return None


def filed_plan(ladder, method: str) -> Optional[dict]:
    """The plan filed on disk for this ladder, method, device and dtype (None when there is none): its shape is
    the method's default shape here.  A plan kept only in this process (``save=False``, test models) is not a
    default: it changes nothing for calls that did not ask for it."""
    if method not in SHAPE_KEYS or _key(ladder, method)[1] is None:
        return None
    plan = cached_plan(ladder, method)
    return plan if plan and plan.get("saved") else None


def cached_shape(ladder, method: str) -> dict:
    """The shape of ``filed_plan`` ({} when there is none)."""
    plan = filed_plan(ladder, method)
    return dict(plan["shape"]) if plan else {}


def plan_tree(ladder, method: str, prompts=PROBE_PROMPTS, max_new_tokens: int = 64, max_nodes: Optional[int] = None,
              refresh: bool = False, save: bool = True) -> dict:
    """Measure (or reuse) what ``autotree`` needs on this device and return the plan: ``shape`` (the
    method's settings), ``predicted`` (its tokens per forward, seconds per step, tok/s, speedup), the
    measurements (``rank_acceptance``, ``target_ms``, ``draft_ms``, ``overhead_seconds``) and ``table``
    (the best tree of every size).  ``max_nodes``: the largest tree considered (default 64 on a GPU, 16
    on a CPU, where forwards over more tokens cost too much to be worth measuring)."""
    if method not in SHAPE_KEYS:
        raise SddError(f"method {method!r} has no tree to plan; choose speculative, tree or staged")
    if ladder.draft is None and method == "staged":
        raise SddError("staged decoding needs a draft model; this ladder has none")
    key, name = _key(ladder, method)
    if not refresh:
        plan = cached_plan(ladder, method)
        if plan is not None and (max_nodes is None or max_nodes == plan["max_nodes"]):
            return plan
        if plan is not None and max_nodes < plan["max_nodes"]:
            return replan(plan, max_nodes)  # a smaller limit: the same measurements, the programme again
    plan = _measure(ladder, method, prompts, max_new_tokens, max_nodes, calibrate=bool(save and name is not None))
    plan["key"] = key
    _IN_PROCESS[key] = plan
    plan["saved"] = bool(save and name is not None)
    if plan["saved"]:
        path = _path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan, indent=1))
    return plan


def _measure(ladder, method, prompts, max_new_tokens, max_nodes, calibrate: bool) -> dict:
    from ..decoding import defaults_for, generate
    from ..decoding.autotree import rank_acceptance_from_traces
    from .roofline import choose_linear_paths, forward_latency_ms, row_block_label
    from .timing import device_description

    target, draft = ladder.target, ladder.draft
    if max_nodes is None:
        max_nodes = 64 if target.device.type == "cuda" else 16
    # a plan filed as this device's default first sets the faster matrix product at each row count up to
    # the largest tree (root included; measured once per CPU and dtype), so that the probe and the forward
    # costs below see the best this device can do.  Other plans use the products as they are.
    if calibrate:
        choose_linear_paths(target, max_rows=max_nodes + 1)
    products = row_block_label(target.device, target.model.dtype)
    defaults = defaults_for(method, target.device, target.dtype)
    probe = {"gamma": PROBE["depth"]} if method == "speculative" else dict(PROBE)
    lookup = getattr(ladder, "plan_lookup", None)
    if lookup is not None:
        probe["lookup"] = lookup
    runs = [generate(ladder, p, method=method, max_new_tokens=max_new_tokens, stop_at_eos=False, adaptive=False,
                     **probe) for p in prompts]
    rank_acceptance = rank_acceptance_from_traces(runs)
    steps = sum(len(r.trace) for r in runs)
    # the rest of a step: what the probe runs spent outside the forwards and the n-gram, per step
    overhead = sum(r.stats.wall_seconds - r.stats.target_seconds - r.stats.draft_seconds for r in runs) / max(steps, 1)
    beam = 1 if method == "speculative" else defaults.get("beam", 4)
    guesses = 0
    if method == "staged":  # the first draft forward also scores the n-gram's guesses (and the lookup's chain)
        guesses = sum(defaults["ngram_fanout"]) + (PROBE["depth"] if probe.get("lookup", defaults.get("lookup")) else 0)
    target_ms = forward_latency_ms(target, max_nodes + 1)
    draft_ms = forward_latency_ms(draft, max(beam, 1 + guesses)) if draft is not None else None
    staged_draft = _staged_draft_cost(runs, draft_ms, beam) if method == "staged" else None
    plan = {"method": method, "device": device_description(target.device), "dtype": str(target.dtype),
            "ladder": ladder.describe(), "measured": time.strftime("%Y-%m-%d %H:%M"), "prompts": list(map(str, prompts)),
            "probe": probe, "rank_acceptance": rank_acceptance, "target_ms": target_ms, "draft_ms": draft_ms,
            "overhead_seconds": max(overhead, 0.0), "beam": beam, "guesses": guesses,
            "rounds": defaults.get("rounds"), "max_nodes": max_nodes, "products": products,
            "staged_draft": staged_draft}
    return _choose(plan, max_nodes)


def replan(plan: dict, max_nodes: int) -> dict:
    """The plan's measurements with trees of at most ``max_nodes`` nodes (no new measurement)."""
    if not 1 <= max_nodes <= len(plan["target_ms"]) - 2:
        raise SddError(f"the plan measured forwards for trees of up to {len(plan['target_ms']) - 2} nodes, "
                       f"not {max_nodes}")
    return _choose({k: v for k, v in plan.items() if k not in ("shape", "predicted", "table")}, max_nodes)


def _choose(plan: dict, max_nodes: int) -> dict:
    """The programme run on the plan's measurements: its ``shape``, ``predicted`` (``predict`` of that shape, so
    the two agree by construction) and ``table`` (the best shape of every size, each row priced as ``predict``
    prices its (width, depth, nodes))."""
    method, target_ms = plan["method"], plan["target_ms"]
    plan["max_nodes"] = max_nodes
    best = _best(plan, max_nodes)
    plan["shape"] = shape_of_row(method, best)
    # a baseline step: one target forward over one token (its own bookkeeping is small)
    baseline = 1000 / target_ms[1]
    # when no tree pays (the best row is a baseline step), the shape is still a tree, the smallest: its price
    # is predicted, below a baseline step, and ``tree_pays`` says that the adaptive schedule should not draft
    mine = predict(plan, plan["shape"])
    plan["predicted"] = {**{k: mine[k] for k in ("nodes", "width", "depth", "tokens_per_forward", "seconds_per_step",
                                                 "tokens_per_second")},
                         "baseline_tokens_per_second": baseline, "speedup": mine["tokens_per_second"] / baseline,
                         "tree_pays": best["nodes"] > 0}
    plan["table"] = [{**{k: row[k] for k in ("n", "nodes", "depth_limit", "width", "depth", "tokens_per_forward",
                                             "seconds_per_step", "tokens_per_second")},
                      "speedup": row["tokens_per_second"] / baseline, "parents": row["parents"]}
                     for row in best["table"]]
    return plan


def _curve(ms: list[float]) -> dict:
    return {n: ms[n] / 1000 for n in range(1, len(ms))}


def _staged_draft_cost(runs, draft_ms, beam) -> Optional[dict]:
    """A staged draft's cost per step, read from the probe's steps (a run's first step, which also reads the
    prompt, left out): ``first_seconds``, the median time of its first forward (the new context with the
    n-gram's and the lookup's guesses, as many as there were), and ``rounds``, the mean number of further
    forwards (of ``beam`` nodes) a step ran."""
    from .timing import median

    steps = [s for r in runs for s in r.trace[1:] if s.get("draft_forwards") and "draft_seconds" in s]
    if not steps or not draft_ms:
        return None
    round_seconds = draft_ms[min(beam, len(draft_ms) - 1)] / 1000
    rounds = [s["draft_forwards"] - 1 for s in steps]
    firsts = [max(s["draft_seconds"] - k * round_seconds, 0.0) for s, k in zip(steps, rounds)]
    return {"first_seconds": median(firsts), "rounds": sum(rounds) / len(rounds), "steps": len(steps)}


def _costs(plan: dict) -> dict:
    """The cost arguments of ``best_tree`` and ``price_shape`` (so of ``predict``) for the plan's method.

    A tree drafter runs a draft forward per level (``autotree`` counts them).  A staged drafter runs one
    forward over the new context and its guesses, then up to ``depth`` rounds of ``beam`` nodes, however
    many nodes the tree has: its draft time is a cost of the step, priced from what the probe measured (the
    first forward's median time, the rounds it ran, no more than the tree's depth allows) and given to
    ``best_tree`` as an overhead that depends on the depth; the tree is priced by the target alone."""
    overhead = plan["overhead_seconds"]
    draft_curve = _curve(plan["draft_ms"]) if plan["draft_ms"] else None
    if plan["method"] == "staged" and draft_curve is not None:
        beam_seconds = draft_curve[min(plan["beam"], max(draft_curve))]
        measured = plan.get("staged_draft")
        if measured is None:  # a plan from before the probe timed its steps: the first forward from the curve
            first = draft_curve[min(1 + plan["guesses"], max(draft_curve))]
            return {"draft_curve": None, "overhead": overhead + first + (plan["rounds"] or 0) * beam_seconds}

        def staged_step(depth: int) -> float:
            if depth == 0:  # no tree: a baseline step, which runs no draft forward at all
                return overhead
            return overhead + measured["first_seconds"] + min(measured["rounds"], depth) * beam_seconds
        return {"draft_curve": None, "overhead": staged_step}
    return {"draft_curve": draft_curve, "overhead": overhead, "beam": plan["beam"]}


def _best(plan: dict, max_nodes: int, max_depth: Optional[int] = None, max_width: Optional[int] = None) -> dict:
    from ..decoding.autotree import best_tree

    if plan["method"] == "speculative":
        max_width = 1
    return best_tree(plan["rank_acceptance"], _curve(plan["target_ms"]), max_nodes=max_nodes, max_depth=max_depth,
                     max_width=max_width, **_costs(plan))


def shape_of_row(method: str, best: dict) -> dict:
    if method == "speculative":
        return {"gamma": max(best["nodes"], 1)}  # a chain of at least one token; the schedule may still skip steps
    if best["nodes"] == 0:
        return {"width": 1, "depth": 1, "budget": 1}
    return {"width": best["width"], "depth": best["depth"], "budget": best["nodes"]}


def _shape_limits(method: str, shape: dict) -> dict:
    """The drafters' limits of a method's shape: a chain of gamma tokens is width 1, depth and budget gamma."""
    if method == "speculative":
        return {"width": 1, "depth": shape["gamma"], "budget": shape["gamma"]}
    return {k: shape[k] for k in ("width", "depth", "budget")}


def predict(plan: dict, shape: dict) -> dict:
    """Predicted tokens per forward, seconds per step and tok/s of a fixed ``shape`` (the method's settings) from
    the plan's measurements: the model's best tree within those limits (the drafters grow within them too),
    priced by ``autotree.price_shape``, as the plan's programme prices every shape it considers; so the plan's
    own shape is predicted as ``plan["predicted"]`` and each table row's (width, depth, nodes) as that row.
    Nothing is measured: the result depends on the plan's numbers alone."""
    from ..decoding.autotree import price_shape

    price = price_shape(plan["rank_acceptance"], _curve(plan["target_ms"]), **_costs(plan),
                        **_shape_limits(plan["method"], shape))
    return {k: price[k] for k in ("nodes", "width", "depth", "tokens_per_forward", "target_seconds", "draft_seconds",
                                  "overhead_seconds", "seconds_per_step", "tokens_per_second")}


def tree_rate(plan: dict):
    """A function of a tree (a parents list, [] for a baseline step) giving its predicted tokens per second from
    the plan's measurements, priced as the plan's programme prices its own trees (``autotree.price_tree``):
    notebook 07's capstone hands it to the reader's own planner."""
    from ..decoding.autotree import price_tree

    p, target, costs = plan["rank_acceptance"], _curve(plan["target_ms"]), _costs(plan)
    return lambda parents: price_tree(list(parents), p, target, **costs)["tokens_per_second"]


def summary(plan: dict) -> str:
    """Two lines for a terminal: the chosen shape and the measurements it came from."""
    p = plan["predicted"]
    acc = ", ".join(f"{x:.2f}" for x in plan["rank_acceptance"])
    head = (f"{plan['method']} on {plan['device']} ({plan['dtype']}): {plan['shape']} -> predicted "
            f"{p['tokens_per_forward']:.2f} tokens per target forward, {p['tokens_per_second']:.1f} tok/s "
            f"({p['speedup']:.2f}x a baseline step)")
    if not p.get("tree_pays", p["nodes"] > 0):
        head += "; no tree pays here: the smallest is set, and the adaptive schedule turns speculation off"
    return (f"{head}\n"
            f"  acceptance by rank [{acc}]; target forward {plan['target_ms'][1]:.1f} ms at 1 token, "
            f"{plan['target_ms'][-1]:.1f} ms at {len(plan['target_ms']) - 1} ({plan.get('products', 'F.linear')}); "
            f"measured {plan['measured']}")


