"""The decoders' benchmark, in the layout of the paper's Table 2: ``python -m sdd_edu bench``.

Every method runs the same HumanEval prompts with the same settings after a warm-up; each
timed region is bracketed by device synchronisation; speeds are medians over prompts, and
acceptance and the origin of the emitted tokens sit beside every speedup.
"""

from __future__ import annotations

import json

import torch

from ..data import humaneval_prompts
from ..decoding import ORIGINS, generate, trace_summary
from .timing import device_description, median

MODES = {"greedy": {"temperature": 0.0}, "topk50": {"temperature": 1.0, "top_k": 50}}


def run_bench(ladder, methods=("baseline", "speculative", "tree", "staged"), modes=("greedy", "topk50"),
              prompts: int = 5, start: int = 0, max_new_tokens: int = 128, seed: int = 0,
              settings: dict | None = None, progress: bool = True, peers: bool = False,
              on_run=None) -> dict:
    """Run every method in every mode; return per-prompt rows and per-(mode, method) summaries.

    ``on_run(done, total)`` is called after each generation (widgets show their own progress with it).
    """
    settings = settings or {}
    items = humaneval_prompts(prompts, start=start)
    target = ladder.target
    encoded = [(task, target.encode(text)) for task, text in items]
    for method in methods:  # warm-up: allocate, fill caches, build the n-gram stage
        generate(ladder, encoded[0][1][:32], method=method, max_new_tokens=8, **settings.get(method, {}))
    rows = []
    total = len(items) * len(methods) * len(modes)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="bench", unit="run")
    for mode in modes:
        for task, ids in encoded:
            for method in methods:
                res = generate(ladder, ids, method=method, max_new_tokens=max_new_tokens, seed=seed,
                               **MODES[mode], **settings.get(method, {}))
                s, t = res.stats, trace_summary(res.trace)
                rows.append({"mode": mode, "method": method, "task_id": task, "new_tokens": s.new_tokens,
                             "seconds": s.wall_seconds, "tokens_per_second": s.tokens_per_second,
                             "target_forwards": s.target_forwards, "draft_forwards": s.draft_forwards,
                             "tokens_per_target_forward": s.tokens_per_target_forward,
                             "acceptance_rate": t["acceptance_rate"],
                             "target_seconds": s.target_seconds, "draft_seconds": s.draft_seconds,
                             "ngram_seconds": s.ngram_seconds, "overhead_seconds": s.overhead_seconds,
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
            rows += run_peers(ladder, encoded, mode, MODES[mode], max_new_tokens, seed, use)
        all_methods += use
    from ..decoding import defaults_for

    effective = {m: {**defaults_for(m, target.device, target.dtype), **settings.get(m, {})} for m in methods if m != "baseline"}
    return {"device": device_description(target.device), "dtype": str(target.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "ladder": repr(ladder), "prompts": len(items),
            "max_new_tokens": max_new_tokens, "settings": effective, "rows": rows,
            "summary": summarize(rows, all_methods, modes)}


def summarize(rows, methods, modes) -> list[dict]:
    out = []
    for mode in modes:
        base = median([r["tokens_per_second"] for r in rows if r["mode"] == mode and r["method"] == "baseline"])
        for method in methods:
            rs = [r for r in rows if r["mode"] == mode and r["method"] == method]
            if not rs:
                continue
            tok = sum(r["new_tokens"] for r in rs)
            origins = {o: sum(r["origins"][o] for r in rs) / tok for o in ORIGINS} if rs[0]["origins"] else None
            acc = [r["acceptance_rate"] for r in rs if r["acceptance_rate"] is not None]
            speed = median([r["tokens_per_second"] for r in rs])
            same = None
            if method != "baseline" and mode == "greedy":
                base_rows = {r["task_id"]: r["token_ids"] for r in rows if r["mode"] == mode and r["method"] == "baseline"}
                same = sum(r["token_ids"] == base_rows.get(r["task_id"]) for r in rs) / len(rs)
            out.append({"mode": mode, "method": method, "tokens_per_second": speed,
                        "speedup": speed / base if base else None,
                        "tokens_per_target_forward": median([r["tokens_per_target_forward"] for r in rs])
                        if rs[0]["tokens_per_target_forward"] is not None else None,
                        "acceptance_rate": median(acc) if acc else None, "origins": origins,
                        "same_output_as_baseline": same,
                        "time_split": {k: sum(r[k] for r in rs) / sum(r["seconds"] for r in rs)
                                       for k in ("target_seconds", "draft_seconds", "ngram_seconds",
                                                 "overhead_seconds")}})
    return out


def format_table(result: dict) -> str:
    lines = [f"bench: {result['ladder']}",
             f"device: {result['device']}, {result['dtype']}; {result['prompts']} HumanEval prompts, "
             f"{result['max_new_tokens']} new tokens, medians over prompts after a warm-up",
             f"{'mode':<8}{'method':<22}{'tok/s':>8}{'speedup':>9}{'tok/fwd':>9}{'accept':>8}"
             f"{'prompt':>7}{'n-gram':>7}{'draft':>7}{'target':>7}{'  time: target/draft/n-gram/other':>35}"]
    for s in result["summary"]:
        o, t = s["origins"], s["time_split"]
        acc = f"{s['acceptance_rate']:.2f}" if s["acceptance_rate"] is not None else "-"
        if o is None:  # a transformers row: speed only
            lines.append(f"{s['mode']:<8}{s['method']:<22}{s['tokens_per_second']:>8.1f}{s['speedup']:>8.2f}x"
                         f"{'-':>9}{acc:>8}   (transformers' own generate)")
            continue
        lines.append(f"{s['mode']:<8}{s['method']:<22}{s['tokens_per_second']:>8.1f}{s['speedup']:>8.2f}x"
                     f"{s['tokens_per_target_forward']:>9.2f}{acc:>8}{o['prompt']:>7.0%}{o['ngram']:>7.0%}"
                     f"{o['draft']:>7.0%}{o['target']:>7.0%}   {t['target_seconds']:>6.0%} {t['draft_seconds']:>5.0%} "
                     f"{t['ngram_seconds']:>6.0%} {t['overhead_seconds']:>6.0%}")
    for method, st in result["settings"].items():
        lines.append(f"  {method}: " + ", ".join(f"{k}={v}" for k, v in st.items()))
    greedy_same = [s for s in result["summary"] if s["same_output_as_baseline"] is not None]
    if greedy_same:
        lines.append("greedy outputs identical to baseline: " + ", ".join(
            f"{s['method']} {s['same_output_as_baseline']:.0%}" for s in greedy_same))
    return "\n".join(lines)


def save(result: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
