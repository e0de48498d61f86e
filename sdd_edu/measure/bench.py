"""The decoders' benchmark, in the layout of the paper's Table 2: ``python -m sdd_edu bench``.

Every method runs the same prompts with the same settings after a warm-up; each timed region is
bracketed by device synchronisation; speeds are medians over prompts, and acceptance and the origin
of the emitted tokens sit beside every speedup.  The prompts are HumanEval's (the paper's set) or
the hold-out set of ``sdd_edu.data.HOLDOUT_PROMPTS`` (prose, SQL, JSON, repeated and non-Latin
text), reported per kind.  A method may carry a variant, ``staged:fixed``: the paper's fixed tree
with no prompt lookup, to compare with the adaptive defaults in the same run.
"""

from __future__ import annotations

import json
import re
from typing import Optional

import torch

from ..data import prompt_set
from ..decoding import ORIGINS, trace_summary
from ..errors import SddError
from .generation import generate
from .tree_plan import shape_of_row
from .timing import device_description, median

MODES = {"greedy": {"temperature": 0.0}, "topk50": {"temperature": 1.0, "top_k": 50}}
VARIANTS = {"fixed": {"adaptive": False, "lookup": False}, "features": {"draft": "features"},
            "lookup": {"lookup": True}, "features+lookup": {"draft": "features", "lookup": True}}
SHAPE_HELP = ("variants: fixed (the paper's fixed tree, no prompt lookup), features (speculative, tree: drafted by the "
              "ladder's feature draft), lookup (prompt lookup mixed into the draft's distributions), features+lookup, "
              "auto (the tree planned for this device), "
              "WxDxB (tree/staged: width x depth x budget) or gN (speculative: a chain of N), each fixed at every step; "
              "a draft variant may come before a shape (tree:features+lookup:auto)")


def method_and_settings(label: str) -> tuple[str, dict]:
    """'staged' -> ('staged', {}); 'staged:fixed' -> ('staged', VARIANTS['fixed']); 'tree:2x3x4' -> a fixed
    tree of width 2, depth 3 and 4 nodes; 'speculative:g5' -> a fixed chain of 5; 'tree:auto' -> the tree
    planned for this device (``sdd_edu.measure.tree_plan``), fixed at every step.  A draft variant and a shape
    combine: 'tree:features+lookup:auto', 'speculative:features:g2'."""
    method, _, variant = label.partition(":")
    if variant and method == "baseline":
        raise SddError("baseline has no variants")
    first, _, shape = variant.partition(":")
    if shape:
        if first not in VARIANTS or "fixed" in first or shape in VARIANTS:
            raise SddError(f"unknown method variant {variant!r} in {label!r}: a draft variant (features, lookup, "
                           f"features+lookup) may come before one shape; {SHAPE_HELP}")
        try:
            return method, {**VARIANTS[first], **method_and_settings(f"{method}:{shape}")[1]}
        except SddError:
            raise SddError(f"unknown method variant {shape!r} in {label!r}; {SHAPE_HELP}") from None
    if not variant or variant in VARIANTS:
        return method, dict(VARIANTS.get(variant, {}))
    fixed = {"adaptive": False}
    if variant == "auto":
        return method, {"gamma" if method == "speculative" else "budget": "auto", **fixed}
    chain = re.fullmatch(r"g([1-9][0-9]*)", variant)
    tree = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)x([1-9][0-9]*)", variant)
    if chain and method == "speculative":
        return method, {"gamma": int(chain.group(1)), **fixed}
    if tree and method in ("tree", "staged"):
        width, depth, budget = map(int, tree.groups())
        return method, {"width": width, "depth": depth, "budget": budget, **fixed}
    raise SddError(f"unknown method variant {variant!r} in {label!r}; {SHAPE_HELP}")


def run_bench(ladder, methods=("baseline", "speculative", "tree", "staged"), modes=("greedy", "topk50"),
              prompts: int = 5, start: int = 0, max_new_tokens: int = 128, seed: int = 0,
              settings: dict | None = None, progress: bool = True, peers: bool = False,
              on_run=None, prompt_set_name: str = "humaneval", repeats: int = 1, fast=None) -> dict:
    """Run every method in every mode; return per-prompt rows and per-(mode, kind, method) summaries.

    ``prompts``: HumanEval tasks from ``start``, or prompts per kind for the hold-out set.
    ``repeats``: runs of each prompt and method, the methods in a rotated order each round, so that a
    slow spell of a shared machine does not land on one method; a prompt's speed is its median.
    ``on_run(done, total)`` is called after each generation (widgets show their own progress with it).
    ``fast``: the fast path for every method (``generate``'s flag; None: on for CUDA).
    """
    if fast is None:
        from ..fast import on_by_default

        fast = on_by_default(ladder.target.device)
    settings = settings or {}
    items = prompt_set(prompt_set_name, prompts, start)
    target = ladder.target
    encoded = [(task, kind, target.encode(text)) for task, kind, text in items]
    runs = {label: method_and_settings(label) for label in methods}
    for label, (method, variant) in runs.items():  # warm-up: allocate, fill caches, build the n-gram stage
        generate(ladder, encoded[0][2][:32], method=method, max_new_tokens=8, fast=fast,
                 **{**settings.get(method, {}), **variant})
    rows = []
    # the fixed-shape greedy runs' steps (with their trees), per method: their acceptance by rank gives,
    # beside the plan's prediction (its p_k measured on the probe's prompts), the prediction with the p_k here
    fixed_steps: dict[str, list[dict]] = {}
    total = len(items) * len(methods) * len(modes) * repeats
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="bench", unit="run")
    for mode in modes:
        for (task, kind, ids), rep in [(item, rep) for item in encoded for rep in range(repeats)]:
            order = list(runs.items())
            order = order[rep % len(order):] + order[:rep % len(order)]
            for label, (method, variant) in order:
                res = generate(ladder, ids, method=method, max_new_tokens=max_new_tokens, seed=seed, fast=fast,
                               **MODES[mode], **{**settings.get(method, {}), **variant})
                s, t = res.stats, trace_summary(res.trace)
                if mode == "greedy" and variant.get("adaptive", True) is False:
                    fixed_steps.setdefault(_drafted_by(method, variant), []).extend(res.trace)
                rows.append({"mode": mode, "method": label, "task_id": task, "kind": kind, "repeat": rep,
                             "new_tokens": s.new_tokens,
                             "seconds": s.wall_seconds, "tokens_per_second": s.tokens_per_second,
                             "prefill_seconds": s.prefill_seconds,
                             "target_forwards": s.target_forwards, "draft_forwards": s.draft_forwards,
                             "tokens_per_target_forward": s.tokens_per_target_forward,
                             "acceptance_rate": t["acceptance_rate"],
                             "target_seconds": s.target_seconds, "draft_seconds": s.draft_seconds,
                             "ngram_seconds": s.ngram_seconds, "overhead_seconds": s.overhead_seconds,
                             "drafted_steps": sum(1 for st in res.trace if st.get("proposed")),
                             "steps": len(res.trace),
                             "origins": {o: res.origins.count(o) for o in ORIGINS},
                             "token_ids": res.token_ids, "origin_sequence": res.origins})
                if bar:
                    bar.update(1)
                if on_run:
                    on_run(len(rows), total)
    if bar:
        bar.close()
    all_methods = list(methods)
    if peers:  # the same prompts and settings through transformers itself
        from .peers import PEERS, run_peers

        use = [p for p in PEERS if p != "transformers-assisted" or ladder.draft is not None]
        for mode in modes:
            peer_rows = run_peers(ladder, [(task, ids) for task, _, ids in encoded], mode, MODES[mode],
                                  max_new_tokens, seed, use)
            kinds = {task: kind for task, kind, _ in encoded}
            rows += [{**r, "kind": kinds[r["task_id"]]} for r in peer_rows]
        all_methods += use
    from ..decoding import defaults_for

    from .tree_plan import cached_shape, planning_ladder

    effective = {label: {**defaults_for(m, target.device, target.dtype),
                         **cached_shape(planning_ladder(ladder, m, {**settings.get(m, {}), **v}), m),  # (see generate)
                         **settings.get(m, {}), **v}
                 for label, (m, v) in runs.items() if m != "baseline"}
    summary = summarize(rows, all_methods, modes)
    costs = costs_in_run(ladder, {label: effective.get(label, {}) for label in runs}, fast)
    for s in summary:
        which = costs["by_method"].get(s["method"])
        s["draft_cost"] = costs["drafts"][which]["c"] if which else None
    return {"device": device_description(target.device), "dtype": str(target.dtype).replace("torch.", ""),
            "draft_costs": costs,
            "threads": torch.get_num_threads(), "fast": fast, "ladder": ladder.describe(), "prompts": len(items), "repeats": repeats,
            "prompt_set": prompt_set_name, "max_new_tokens": max_new_tokens, "settings": effective, "rows": rows,
            "summary": summary, "predicted": predictions(ladder, runs, summary, fixed_steps)}


def costs_in_run(ladder, settings: dict, fast: bool, context: int = 256, repeats: int = 9) -> dict:
    """Each draft's cost c in a benchmark run: its one-token forward after ``context`` cached tokens over the
    target's (medians, on the path the methods decoded on), for the drafts the methods used.
    (``gpu_check.draft_costs`` measures both paths, with profiles.)

    ``settings``: each method label's effective settings.  Returns ``drafts`` ({name: ms, target_ms, c}) and
    ``by_method`` ({label: name}; the baseline and n-gram-only methods have none)."""
    from .roofline import latency_curve

    by_method, models = {}, {}
    for label, st in settings.items():
        if label.split(":")[0] not in ("speculative", "tree", "staged"):  # the baseline drafts nothing
            continue
        if st.get("draft") == "features" and getattr(ladder, "feature_draft", None) is not None:
            by_method[label], models["feature draft"] = "feature draft", ladder.feature_draft
        elif ladder.draft is not None:
            by_method[label], models["draft"] = "draft", ladder.draft
    if not models:
        return {"drafts": {}, "by_method": {}, "context": context}

    def one_token_ms(model):
        return latency_curve(model, (1,), context, repeats, fast=fast)[0]["ms"]

    target_ms = one_token_ms(ladder.target)
    drafts = {}
    for name, model in models.items():
        ms = one_token_ms(model)
        drafts[name] = {"ms": ms, "target_ms": target_ms, "c": ms / target_ms}
    return {"drafts": drafts, "by_method": by_method, "context": context}


def _drafted_by(method: str, variant: dict) -> str:
    """The method, the draft it drafts with and whether prompt lookup mixes in: the fixed shapes of one such
    proposer pool their steps' acceptance by rank."""
    parts = ["features"] * (variant.get("draft") == "features") + ["lookup"] * (variant.get("lookup") is True)
    return ":".join([method, "+".join(parts)]) if parts else method  # named as the bench's variants are


def predictions(ladder, runs, summary, fixed_steps: Optional[dict] = None) -> list[dict]:
    """Predicted against measured decoding speed (tok/s without the prefill) for every method run at a fixed
    shape (``METHOD:WxDxB``, ``METHOD:gN``, ``METHOD:auto``), from the device's tree plan (``tree_plan``).

    With ``fixed_steps`` (the trace steps of the fixed-shape greedy runs, per method and draft), each row also has
    ``predicted_here``: the same prediction with the acceptance by rank of the benchmark's own prompts, which
    separates the model's error from the difference between the probe's prompts and these."""
    from ..decoding.autotree import rank_acceptance_from_counts, rank_counts
    from ..decoding import SHAPE_KEYS
    from .tree_plan import plan_tree, planning_ladder, predict

    here = {}
    for m, steps in (fixed_steps or {}).items():
        accepted, at_risk, drafted = rank_counts(steps)
        if drafted:
            here[m] = rank_acceptance_from_counts(accepted, at_risk)
    out = []
    for label, (method, variant) in runs.items():
        if method not in SHAPE_KEYS or variant.get("adaptive", True) or not any(k in variant for k in SHAPE_KEYS[method]):
            continue
        # predicting files no plan: that would change the defaults
        plan = plan_tree(planning_ladder(ladder, method, variant), method, save=False)
        shape = plan["shape"] if "auto" in variant.values() else {k: variant[k] for k in SHAPE_KEYS[method]}
        guess = predict(plan, shape)
        for s in summary:
            if s["method"] == label:
                out.append({"mode": s["mode"], "kind": s["kind"], "method": label, "shape": shape,
                            "drafted_by": _drafted_by(method, variant),
                            "predicted_tokens_per_forward": guess["tokens_per_forward"],
                            "measured_tokens_per_forward": s["tokens_per_target_forward"],
                            "predicted_tokens_per_second": guess["tokens_per_second"],
                            "measured_tokens_per_second": s["decode_tokens_per_second"],
                            "error": guess["tokens_per_second"] / s["decode_tokens_per_second"] - 1
                            if s["decode_tokens_per_second"] else None})
                mine = here.get(_drafted_by(method, variant))
                if s["mode"] == "greedy" and mine is not None:
                    local = predict({**plan, "rank_acceptance": mine}, shape)
                    out[-1].update(rank_acceptance_here=mine, predicted_here=local["tokens_per_second"],
                                   predicted_tokens_per_forward_here=local["tokens_per_forward"],
                                   error_here=local["tokens_per_second"] / s["decode_tokens_per_second"] - 1
                                   if s["decode_tokens_per_second"] else None)
    return out


def summarize(rows, methods, modes) -> list[dict]:
    out = []
    kinds = list(dict.fromkeys(r.get("kind", "humaneval") for r in rows))
    for mode in modes:
        for kind in kinds:
            mine = [r for r in rows if r["mode"] == mode and r.get("kind", "humaneval") == kind]
            base = _median_speed([r for r in mine if r["method"] == "baseline"])
            base_rows = {r["task_id"]: r["token_ids"] for r in mine if r["method"] == "baseline"}
            for method in methods:
                rs = [r for r in mine if r["method"] == method]
                if not rs:
                    continue
                out.append(_summary(rs, mode, kind, method, base, base_rows))
    return out


def _median_speed(rows) -> float:
    """The median over prompts of each prompt's median tokens/s over its repeats."""
    per_prompt: dict[str, list[float]] = {}
    for r in rows:
        per_prompt.setdefault(r["task_id"], []).append(r["tokens_per_second"])
    return median([median(v) for v in per_prompt.values()])


def _summary(rs, mode, kind, method, base, base_rows) -> dict:
    tok = sum(r["new_tokens"] for r in rs)
    origins = {o: sum(r["origins"][o] for r in rs) / tok for o in ORIGINS} if rs[0]["origins"] else None
    acc = [r["acceptance_rate"] for r in rs if r["acceptance_rate"] is not None]
    speed = _median_speed(rs)
    same = None
    if method != "baseline" and mode == "greedy":
        same = sum(r["token_ids"] == base_rows.get(r["task_id"]) for r in rs) / len(rs)
    drafted = [r["drafted_steps"] / r["steps"] for r in rs if r.get("steps")]
    decode = [r["new_tokens"] / (r["seconds"] - r["prefill_seconds"]) for r in rs
              if r.get("prefill_seconds") is not None and r["seconds"] > r["prefill_seconds"]]
    return {"mode": mode, "kind": kind, "method": method, "tokens_per_second": speed,
            "decode_tokens_per_second": median(decode) if decode else None,
            "speedup": speed / base if base else None,
            "tokens_per_target_forward": median([r["tokens_per_target_forward"] for r in rs])
            if rs[0]["tokens_per_target_forward"] is not None else None,
            "acceptance_rate": median(acc) if acc else None, "origins": origins,
            "drafted_steps": median(drafted) if drafted else None,
            "same_output_as_baseline": same,
            "time_split": {k: sum(r[k] for r in rs) / sum(r["seconds"] for r in rs)
                           for k in ("target_seconds", "draft_seconds", "ngram_seconds", "overhead_seconds")}
            if "target_seconds" in rs[0] else None}


def format_table(result: dict) -> str:
    kinds = list(dict.fromkeys(s["kind"] for s in result["summary"]))
    width = max([18] + [len(s["method"]) + 2 for s in result["summary"]])  # the method column fits its labels
    what = "HumanEval prompts" if result.get("prompt_set", "humaneval") == "humaneval" else \
        f"hold-out prompts ({', '.join(kinds)})"
    lines = [f"bench: {result['ladder']}",
             f"device: {result['device']}, {result['dtype']}{', fast path' if result.get('fast') else ''}; "
             f"{result['prompts']} {what}, "
             f"{result['max_new_tokens']} new tokens, medians over prompts"
             + (f" of each prompt's median of {result['repeats']} runs" if result.get("repeats", 1) > 1 else "")
             + " after a warm-up",
             f"{'mode':<8}{'kind':<11}{'method':<{width}}{'tok/s':>7}{'speedup':>8}{'tok/fwd':>8}{'c':>6}{'accept':>7}"
             f"{'drafted':>8}{'lookup':>7}{'n-gram':>7}{'draft':>6}{'target':>7}{'  time: target/draft/n-gram/other':>34}"]
    for s in result["summary"]:
        o, t = s["origins"], s["time_split"]
        acc = f"{s['acceptance_rate']:.2f}" if s["acceptance_rate"] is not None else "-"
        head = f"{s['mode']:<8}{s['kind']:<11}{s['method']:<{width}}{s['tokens_per_second']:>7.1f}{s['speedup']:>7.2f}x"
        if o is None:  # a transformers row: speed only
            lines.append(f"{head}{'-':>8}{'-':>6}{acc:>7}   (transformers' own generate)")
            continue
        drafted = f"{s['drafted_steps']:.0%}" if s.get("drafted_steps") is not None else "-"
        c = f"{s['draft_cost']:.3f}" if s.get("draft_cost") is not None else "-"
        lines.append(f"{head}{s['tokens_per_target_forward']:>8.2f}{c:>6}{acc:>7}{drafted:>8}{o['lookup']:>7.0%}"
                     f"{o['ngram']:>7.0%}{o['draft']:>6.0%}{o['target']:>7.0%}   {t['target_seconds']:>6.0%} "
                     f"{t['draft_seconds']:>5.0%} {t['ngram_seconds']:>6.0%} {t['overhead_seconds']:>6.0%}")
    for method, st in result["settings"].items():
        lines.append(f"  {method}: " + ", ".join(f"{k}={v}" for k, v in st.items()))
    lines.append("drafted: the share of steps that sent a tree to the target (the adaptive schedule skips the rest)")
    costs = result.get("draft_costs", {})
    if costs.get("drafts"):
        lines.append(f"c: a draft forward's cost over the target's, one new token after {costs['context']} cached, "
                     "measured in this run: " + ", ".join(f"{name} {d['ms']:.2f} ms / {d['target_ms']:.2f} ms"
                                                         for name, d in costs["drafts"].items()))
    if result.get("predicted"):
        lines.append("predicted (tree plan of this device) against measured, decoding only (prefill left out):")
        named = max([18] + [len(r["method"]) + 2 for r in result["predicted"]])
        lines.append(f"  {'mode':<8}{'method':<{named}}{'shape':<34}{'tok/fwd pred / meas':>20}{'tok/s pred / meas':>19}"
                     f"{'error':>7}{'with p_k of these prompts':>27}")
        for r in result["predicted"]:
            shape = ", ".join(f"{k}={v}" for k, v in r["shape"].items())
            err = f"{r['error']:+.0%}" if r["error"] is not None else "-"
            here = "-"
            if r.get("error_here") is not None:
                here = f"{r['predicted_here']:.1f} tok/s {r['error_here']:+.0%}"
            lines.append(f"  {r['mode']:<8}{r['method']:<{named}}{shape:<34}"
                         f"{r['predicted_tokens_per_forward']:>10.2f} / {r['measured_tokens_per_forward']:<7.2f}"
                         f"{r['predicted_tokens_per_second']:>9.1f} / {r['measured_tokens_per_second']:<7.1f}{err:>7}"
                         f"{here:>27}")
        p_here = {r.get("drafted_by", r["method"].split(":")[0]): r["rank_acceptance_here"] for r in result["predicted"]
                  if r.get("rank_acceptance_here")}
        for method, p in p_here.items():
            lines.append(f"  {method}: acceptance by rank on these prompts [" + ", ".join(f"{x:.2f}" for x in p)
                         + "] (the plan's probe: see `tree_plan.summary`)")
    greedy_same = [s for s in result["summary"] if s["same_output_as_baseline"] is not None]
    if greedy_same:
        same = {}
        for s in greedy_same:
            same.setdefault(s["method"], []).append(s["same_output_as_baseline"])
        lines.append("greedy outputs identical to baseline: " + ", ".join(
            f"{m} {sum(v) / len(v):.0%}" for m, v in same.items()))
    return "\n".join(lines)


def save(result, path: str) -> None:
    """One result, or a list of them (a run over several prompt sets), as JSON."""
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)


def measure_shapes(ladder, method: str, plan: dict, sizes=(1, 2, 4, 8, 16), prompts: int = 2,
                   max_new_tokens: int = 48, on_run=None) -> list[dict]:
    """The model's best tree of each size in ``sizes``, run fixed at every step on HumanEval prompts
    (``bench``'s ``METHOD:WxDxB`` variants): predicted and measured decoding tok/s side by side, one record
    per size (``nodes``, ``shape``, ``predicted_tokens_per_second``, ``measured_tokens_per_second``, ...)."""
    labels = {}
    for n in sizes:
        if not 1 <= n < len(plan["table"]):
            raise SddError(f"tree size {n} is outside the plan's 1..{len(plan['table']) - 1} nodes")
        row = plan["table"][n]
        if method == "speculative":
            shape = {"gamma": n}
        elif row["nodes"] < n:  # nodes past the best tree's do not pay: then n nodes in a chain
            shape = {"width": 1, "depth": n, "budget": n}
        else:
            shape = shape_of_row(method, row)
        label = (f"{method}:g{shape['gamma']}" if method == "speculative"
                 else f"{method}:{shape['width']}x{shape['depth']}x{shape['budget']}")
        labels.setdefault(label, shape)
    res = run_bench(ladder, ["baseline", *labels], ["greedy"], prompts=prompts, max_new_tokens=max_new_tokens,
                    progress=False, on_run=on_run)
    out = []
    for row in res["predicted"]:
        shape = row["shape"]
        out.append({**row, "nodes": shape.get("budget", shape.get("gamma"))})
    return sorted(out, key=lambda r: r["nodes"])
