"""``python -m sdd_edu gpu-check``: is the fast path right, and how fast is it, on this device?

In one run (a few minutes on one GPU; seconds on a CPU with ``quick``):

1. **Logits**: eager vs fast forwards (one token, a chain, a tree mask) at a few cache lengths, on
   random weights in the embedded target's, the embedded draft's and GPT-2-L's shapes: no model file
   needed.  Checked in float32 (tight) and in the run's dtype (reported).
2. **Greedy tokens**: baseline eager, and all four methods on the fast path, on a random-weight ladder
   in float32 (exactness is a float32 property; in 16 bits a forward over several tokens rounds
   differently from one over one), and on the embedded ladder when it is installed.
3. **Latency curve**, eager vs fast, per shape: one forward over 1, 2, 4, ... 64 new tokens.
4. **Kernels per forward** (CUDA; on a CPU the operators) counted by the profiler.
5. **Tokens per second** per method, eager baseline vs fast, on the embedded ladder when installed.
6. With ``compiled`` (``--compile``): 3 to 5 again with the fast forward compiled by ``torch.compile``
   (``sdd_edu.fast.COMPILE``), its first calls (the compilation) timed, and its logits against the eager
   ones in the run's dtype.

Everything goes into one JSON file and a printed table.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Optional

import torch

from ..fast import new_cache
from ..loading import LoadedModel, resolve_device, resolve_dtype
from ..model import ModelConfig, Transformer
from .timing import device_description, median, time_call

CURVE_TOKENS = (1, 2, 4, 8, 16, 32, 64)
QUICK_TOKENS = (1, 4)


def check_shapes(quick: bool) -> dict[str, ModelConfig]:
    """The shapes checked: the embedded target and draft, and the paper's target (GPT-2-L); tiny ones when quick."""
    from .roofline import reference_configs

    if quick:
        return {"tiny llama": ModelConfig(family="llama", vocab_size=512, n_layer=2, n_head=4, n_kv_head=2,
                                          d_model=64, d_ff=160, max_seq_len=512, rope_theta=10000.0),
                "tiny draft": ModelConfig(family="llama", vocab_size=512, n_layer=1, n_head=4, n_kv_head=2,
                                          d_model=32, d_ff=64, max_seq_len=512, head_size=128),
                "tiny gpt2": ModelConfig(family="gpt2", vocab_size=512, n_layer=2, n_head=4, n_kv_head=4,
                                         d_model=64, d_ff=256, max_seq_len=512)}
    from ..loading import DRAFT_ASSET

    draft = ModelConfig(**json.loads((DRAFT_ASSET / "sdd_config.json").read_text()))
    return {"smollm2-135m shape": ModelConfig(family="llama", vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3,
                                              d_model=576, d_ff=1536, max_seq_len=8192, rope_theta=100000.0),
            "draft shape": draft,
            "gpt2-large shape": reference_configs()["gpt2-large (the paper's target, 774M)"]}


def random_model(config: ModelConfig, device, dtype, seed: int = 0, name: str = "random") -> LoadedModel:
    """Random weights in ``config``'s shape (std 0.02, as GPT-2 initialises), no tokenizer."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02 if config.d_model > 128 else 0.2)
    return LoadedModel(name, model.to(dtype=dtype).eval().requires_grad_(False), None, "random weights")


def _forward_cases(config: ModelConfig, cached: int):
    """(name, tokens, position_ids, mask) for a one-token step, a 4-token chain and a 6-node tree."""
    from ..decoding.tree import tree_attention_mask

    mask, pos = tree_attention_mask([-1, -1, 0, 0, 1, 2], cached=cached, chain=1)
    g = torch.Generator().manual_seed(cached)
    ids = lambda n: torch.randint(0, config.vocab_size, (1, n), generator=g)
    return [("1 token", ids(1), None, None), ("chain of 4", ids(4), None, None), ("tree of 6", ids(7), pos, mask)]


@torch.inference_mode()
def logits_gap(model: LoadedModel, cached_lengths=(0, 5, 37)) -> float:
    """Largest |eager - fast| logit over the forward cases, relative to the largest |logit|."""
    m = model.model
    worst = 0.0
    for cached in cached_lengths:
        for name, ids, pos, mask in _forward_cases(m.config, cached):
            outs = []
            for fast in (False, True):
                cache = new_cache(m, cached + 16, fast=fast)
                if cached:
                    prompt = torch.arange(cached, device=m.device)[None] % m.config.vocab_size
                    m(prompt, cache)
                outs.append(m(ids.to(m.device), cache, position_ids=None if pos is None else pos.to(m.device),
                              attention_mask=None if mask is None else mask.to(m.device)).float())
            finite = torch.isfinite(outs[0])
            if not torch.equal(finite, torch.isfinite(outs[1])):
                return float("inf")
            scale = outs[0][finite].abs().max().item()
            worst = max(worst, (outs[0][finite] - outs[1][finite]).abs().max().item() / max(scale, 1e-6))
    return worst


@contextlib.contextmanager
def compiled_forwards(on: bool = True):
    """Within it, fast forwards are compiled with torch.compile first (``fast.COMPILE``), or not."""
    from .. import fast

    saved, fast.COMPILE = fast.COMPILE, on
    try:
        yield
    finally:
        fast.COMPILE = saved


@contextlib.contextmanager
def native_stderr_silenced():
    """Some builds of the profiler's native library log every start and stop on stderr: keep output readable."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


@torch.inference_mode()
def forward_profile(model: LoadedModel, fast: bool, tokens: int = 1, context: int = 64) -> dict:
    """Kernels (on CUDA) or operators (on a CPU) in one forward, and its wall time, by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    m = model.model
    run = getattr(m, "timed_forward", m)  # a feature draft reads features too: profiled over zeros
    cache = new_cache(m, context + tokens, fast=fast)
    run(torch.zeros(1, context, dtype=torch.long, device=m.device), cache)
    x = torch.zeros(1, tokens, dtype=torch.long, device=m.device)

    def step():
        run(x, cache)
        cache.truncate(context)

    for _ in range(2):  # warm up (and capture, on the fast path)
        step()
    cuda = m.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with native_stderr_silenced(), profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_ms = sum(e.device_time_total for e in kernels) / 1000 if kernels else 0.0
        count = len(kernels)
    else:
        count = sum(1 for e in events if e.name.startswith("aten::"))
        kernel_ms = float("nan")
    wall = median(time_call(step, m.device, repeats=5, warmup=1)) * 1000
    return {"count": count, "what": "CUDA kernels" if cuda else "aten operators", "kernel_ms": kernel_ms,
            "wall_ms": wall}


def latency(model: LoadedModel, fast: bool, tokens=CURVE_TOKENS, context: int = 256, repeats: int = 5,
            first: Optional[dict] = None) -> dict:
    """Median ms of one forward over n new tokens after ``context`` cached ones (``roofline.latency_curve``),
    as {n: ms}; ``first`` gets the first call's ms per n (on the fast path it captures the bucket's graph)."""
    from ..fast import release
    from .roofline import latency_curve

    if fast:
        release(model.model)  # so that the first calls capture
    rows = latency_curve(model, tokens, context, repeats, fast=fast, first=first)
    return {r["tokens"]: r["ms"] for r in rows}


def draft_costs(ladder, context: int = 256) -> dict:
    """One-token forwards of the target and of each draft after ``context`` cached tokens: median ms eager and on
    the fast path, the operators (kernels on CUDA) of each, and each draft's cost ratio c to the target, eager to
    eager and fast to fast."""
    rows = {}
    for label, model in (("target", ladder.target), ("draft", ladder.draft),
                         ("feature draft", getattr(ladder, "feature_draft", None))):
        if model is None:
            continue
        row = {"eager_ms": latency(model, False, (1,), context=context)[1],
               "fast_ms": latency(model, True, (1,), context=context)[1],
               "profile": {"eager": forward_profile(model, False, context=min(context, 64)),
                           "fast": forward_profile(model, True, context=min(context, 64))}}
        rows[label] = row
    for label, row in rows.items():
        if label != "target":
            row["c_eager"] = row["eager_ms"] / rows["target"]["eager_ms"]
            row["c_fast"] = row["fast_ms"] / rows["target"]["fast_ms"]
    return rows


def greedy_identity(ladder, prompt_ids: list[int], new_tokens: int) -> dict:
    """Token ids of baseline (eager and fast) and of every method on the fast path; which equal baseline's."""
    from ..decoding import METHODS
    from .generation import generate

    ref = generate(ladder, prompt_ids, method="baseline", max_new_tokens=new_tokens, fast=False).token_ids
    same = {"baseline (fast)": generate(ladder, prompt_ids, method="baseline", max_new_tokens=new_tokens,
                                        fast=True).token_ids == ref}
    for method in METHODS[1:]:
        if method == "staged" and ladder.draft is None:
            continue
        for adaptive in (False, True):  # fixed trees exercise the tree forwards even where drafts miss
            out = generate(ladder, prompt_ids, method=method, max_new_tokens=new_tokens, fast=True,
                           adaptive=adaptive, node_cost=0.0).token_ids
            same[f"{method}{'' if adaptive else ':fixed'}"] = out == ref
    if getattr(ladder, "feature_draft", None) is not None:  # drafting from the target's features (the host's loop)
        for method in ("speculative", "tree"):
            for adaptive in (False, True):
                out = generate(ladder, prompt_ids, method=method, max_new_tokens=new_tokens, fast=True,
                               adaptive=adaptive, node_cost=0.0, draft="features").token_ids
                same[f"{method}:features{'' if adaptive else ':fixed'}"] = out == ref
    return same


def method_speeds(ladder, prompts: list[list[int]], new_tokens: int, compiled: bool = False) -> dict:
    """Median tok/s per method over the prompts: baseline eager and fast, the others fast, acceptance beside.
    ``compiled``: also the baseline and staged decoding with the forwards compiled (``fast.COMPILE``)."""
    from ..decoding import METHODS
    from .generation import generate

    runs = [("baseline (eager)", "baseline", False, False)] + [(m, m, True, False) for m in METHODS]
    if compiled:
        runs += [("baseline (compiled)", "baseline", True, True), ("staged (compiled)", "staged", True, True)]
    if getattr(ladder, "feature_draft", None) is not None:  # the feature draft's methods: the host's loop
        runs += [(f"{m}:features", m, True, False) for m in ("speculative", "tree")]
    rows: dict[str, dict] = {}
    warmed = set()
    for label, method, fast, compile_on in runs:
        if method == "staged" and ladder.draft is None:
            continue
        if compile_on not in warmed:  # captures (and compiles), measured costs
            warmed.add(compile_on)
            with compiled_forwards(compile_on):
                generate(ladder, prompts[0], method="staged" if ladder.draft is not None else "tree",
                         max_new_tokens=8, fast=True)
        speeds, per_forward, split, steps = [], [], {"target": 0.0, "draft": 0.0, "other": 0.0}, 0
        reads, waited, wall, replays, failure = 0, 0.0, 0.0, 0, None
        for ids in prompts:
            with compiled_forwards(compile_on):
                r = generate(ladder, ids, method=method, max_new_tokens=new_tokens, fast=fast,
                             **({"draft": "features"} if label.endswith(":features") else {}))
            s = r.stats
            speeds.append(s.tokens_per_second)
            per_forward.append(s.tokens_per_target_forward)
            split["target"] += s.target_seconds
            split["draft"] += s.draft_seconds
            split["other"] += s.wall_seconds - s.target_seconds - s.draft_seconds  # n-gram, Python, syncs
            steps += len(r.trace)
            wall += s.wall_seconds - s.prefill_seconds
            reads += s.device_reads
            waited += s.read_wait_seconds
            replays += s.graph_replays
            failure = failure or s.graph_failure
        total = sum(split.values()) or 1.0
        steps = max(steps, 1)
        on_device = fast and not label.endswith(":features")  # a feature draft decodes on the host's loop
        rows[label] = {"tokens_per_second": median(speeds), "tokens_per_target_forward": median(per_forward),
                       "time_split": {k: v / total for k, v in split.items()},
                       # the per-step work outside the forwards: what a step costs beyond them once they are fast
                       "other_ms_per_step": 1000 * split["other"] / steps,
                       # waits for the device (``device.capture.host_read``; the eager paths read elsewhere too)
                       "reads_per_step": reads / steps if on_device else None,
                       # the host's own time: a step's time but its waits in those reads
                       "host_ms_per_step": 1000 * (wall - waited) / steps if on_device else None,
                       # steps replayed from the phases' CUDA graphs (``decoding/device/graphs.py``), and why
                       # the phases could not be recorded on this device, if so
                       "graph_replays_per_step": replays / steps, "graph_failure": failure}
    base = rows["baseline"]["tokens_per_second"]
    for r in rows.values():
        r["speedup_vs_fast_baseline"] = r["tokens_per_second"] / base
    return rows


def gpu_check(device=None, dtype=None, quick: bool = False, embedded: Optional[bool] = None,
              new_tokens: Optional[int] = None, prompts: int = 3, progress=print, checkpoint=None,
              compiled: bool = False) -> dict:
    """Run the checks above; the result as a dict (see ``format_gpu_check``).

    A check that raises is recorded under ``errors`` (its exception's type and message) and the run goes
    on with the next, so one failure on a new device still leaves every other figure; ``checkpoint`` is
    called with the result so far after each check (the CLI saves the JSON file there).  ``compiled``:
    also the fast path compiled with torch.compile (latency, its first calls, kernels, logits, tok/s)."""
    from ..ladders import make_ladder
    from ..ngram import PromptLookup

    t_start = time.perf_counter()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    new_tokens = new_tokens or (12 if quick else 128)
    shapes = check_shapes(quick)
    tokens = QUICK_TOKENS if quick else CURVE_TOKENS
    context = 16 if quick else 256  # cached tokens before the timed forwards
    profile_context = 16 if quick else 64
    res = {"device": device_description(device), "dtype": str(dtype).replace("torch.", ""), "quick": quick,
           "torch": torch.__version__, "shapes": {}, "greedy": {}, "speed": {}, "errors": {}}

    def check(name: str, fn) -> None:
        progress(f"gpu-check: {name}")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- recorded, reported, and the run fails at the end
            res["errors"][name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            progress(f"gpu-check: {name} FAILED: {res['errors'][name]}")
        res["seconds"] = time.perf_counter() - t_start
        if checkpoint is not None:
            checkpoint(res)

    def shape_row(name: str, i: int, config: ModelConfig) -> None:
        row = res["shapes"].setdefault(name, {})
        fp32 = random_model(config, device, torch.float32, seed=i)
        row["logits_gap_fp32"] = logits_gap(fp32)
        model = fp32 if dtype == torch.float32 else random_model(config, device, dtype, seed=i)
        if dtype != torch.float32:
            row["logits_gap"] = logits_gap(model)
        del fp32
        first: dict = {}
        row["latency_ms"] = {"eager": latency(model, False, tokens, context=context)}
        row["latency_ms"]["fast"] = latency(model, True, tokens, context=context, first=first)
        row["first_fast_call_ms"] = first  # the capture of each bucket's graph, on CUDA
        row["profile"] = {"eager": forward_profile(model, False, context=profile_context),
                          "fast": forward_profile(model, True, context=profile_context)}
        if compiled:
            with compiled_forwards():
                first = {}
                row["latency_ms"]["compiled"] = latency(model, True, tokens, context=context, first=first)
                row["first_compiled_call_ms"] = first  # compilation (first two sizes) and capture
                row["profile"]["compiled"] = forward_profile(model, True, context=profile_context)
                row["logits_gap_compiled"] = logits_gap(model)  # in the run's dtype: fused kernels round apart

    for i, (name, config) in enumerate(shapes.items()):
        check(name, lambda: shape_row(name, i, config))
    # greedy identity on a random ladder (target and draft shapes), in float32
    names = list(shapes)
    target = random_model(shapes[names[0]], device, torch.float32, seed=10, name="random target")
    draft = random_model(shapes[names[1]], device, torch.float32, seed=11, name="random draft")
    random_ladder = make_ladder(target, draft, PromptLookup())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shapes[names[0]].vocab_size, (24,), generator=g).tolist()
    ids = ids + ids[:12]  # a repeat, so that prompt lookup proposes something

    def random_greedy():
        res["greedy"]["random ladder (fp32)"] = greedy_identity(random_ladder, ids, new_tokens)

    def random_speed():
        res["speed"] = {"ladder": "random (acceptance near 0: the machinery's speed only)", "prompts": 1,
                        "new_tokens": new_tokens, "methods": method_speeds(random_ladder, [ids], new_tokens, compiled)}

    check("greedy tokens, random ladder", random_greedy)
    if embedded is None:
        embedded = not quick and _embedded_installed()
    if embedded:
        from ..data import humaneval_prompt
        from ..ladders import load_ladder

        def embedded_greedy():
            exact = load_ladder("embedded", device=device, dtype="fp32")
            prompt = exact.target.encode(humaneval_prompt(0))
            res["greedy"]["embedded ladder (fp32)"] = greedy_identity(exact, prompt, new_tokens)

        def embedded_speed():
            ladder = load_ladder("embedded", device=device, dtype=dtype)
            encoded = [ladder.target.encode(humaneval_prompt(i)) for i in range(prompts)]
            res["speed"] = {"ladder": "embedded", "prompts": prompts, "new_tokens": new_tokens,
                            "methods": method_speeds(ladder, encoded, new_tokens, compiled)}

        def embedded_drafts():
            ladder = load_ladder("embedded", device=device, dtype=dtype)
            res["drafts"] = draft_costs(ladder, context=context)

        check("greedy tokens, embedded ladder", embedded_greedy)
        check("the drafts' forward costs, embedded ladder", embedded_drafts)
        check("tok/s, embedded ladder", embedded_speed)
    else:
        check("tok/s, random ladder", random_speed)
    res["seconds"] = time.perf_counter() - t_start
    res["ok"] = not res["errors"] and all(all(v.values()) for v in res["greedy"].values()) and all(
        r.get("logits_gap_fp32", float("inf")) < 1e-3 for r in res["shapes"].values())
    return res


def _embedded_installed() -> bool:
    from ..errors import SddError
    from ..loading import embedded_gguf_path

    try:
        embedded_gguf_path()
        return True
    except SddError:
        return False


def _profile_part(label: str, p: dict) -> str:
    kernel = f", kernel time {p['kernel_ms']:.2f} ms" if p["kernel_ms"] == p["kernel_ms"] else ""  # nan on a CPU
    return f"{label} {p['count']}{kernel}, {p['wall_ms']:.2f} ms"


def format_gpu_check(res: dict) -> str:
    """The printed table; a partial result (a check that failed, or a run stopped early) prints what it has."""
    verdict = {True: "all checks passed", False: "CHECKS FAILED", None: "unfinished"}[res.get("ok")]
    lines = [f"gpu-check on {res['device']}, {res['dtype']}, torch {res['torch']}"
             f"{' (quick)' if res['quick'] else ''}: {verdict} in {res.get('seconds', 0):.0f} s", ""]
    for name, row in res["shapes"].items():
        gap = f"logits |eager - fast| / max|logit|: fp32 {row.get('logits_gap_fp32', float('nan')):.1e}"
        if "logits_gap" in row:
            gap += f", {res['dtype']} {row['logits_gap']:.1e}"
        if "logits_gap_compiled" in row:
            gap += f"; compiled, {res['dtype']} {row['logits_gap_compiled']:.1e}"
        lines.append(f"{name}: {gap}")
        curves = row.get("latency_ms", {})
        if curves:
            sizes = next(iter(curves.values()))
            lines.append("  new tokens      " + "".join(f"{n:>8}" for n in sizes))
            notes = {"fast, 1st call": "   (captures the bucket's graph on CUDA)",
                     "compiled, 1st": "   (compiles, at the first two sizes, and captures)"}
            for label, curve in (("eager ms", curves.get("eager")), ("fast ms", curves.get("fast")),
                                 ("fast, 1st call", row.get("first_fast_call_ms")),
                                 ("compiled ms", curves.get("compiled")),
                                 ("compiled, 1st", row.get("first_compiled_call_ms"))):
                if curve:
                    lines.append(f"  {label:<16}" + "".join(f"{curve[n]:8.2f}" for n in curve) + notes.get(label, ""))
        prof = row.get("profile")
        if prof:
            lines.append(f"  one-token forward, profiled ({prof['eager']['what']}): "
                         + "; ".join(_profile_part(k, prof[k]) for k in ("eager", "fast", "compiled") if k in prof))
    drafts = res.get("drafts")
    if drafts:
        lines += ["", "one-token forward after the context, embedded ladder (c: a draft's share of the target's):"]
        for label, row in drafts.items():
            prof = row["profile"]
            share = "" if label == "target" else f"   c eager {row['c_eager']:.3f}, fast {row['c_fast']:.3f}"
            lines.append(f"  {label:<14} eager {row['eager_ms']:.2f} ms, fast {row['fast_ms']:.2f} ms; "
                         f"{prof['eager']['what']} {prof['eager']['count']} eager, {prof['fast']['count']} fast{share}")
    lines.append("")
    for name, same in res["greedy"].items():
        lines.append(f"greedy tokens identical to eager baseline, {name}: "
                     + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    sp = res["speed"]
    if sp:
        lines += ["", f"tok/s, {sp['ladder']}, {sp['prompts']} prompt(s), {sp['new_tokens']} new tokens, medians:"]
        for label, r in sp["methods"].items():
            t = r["time_split"]
            reads = "" if r.get("reads_per_step") is None else \
                f"; {r['reads_per_step']:.2f} reads, host {r['host_ms_per_step']:.2f} ms a step"
            if r.get("graph_replays_per_step"):
                reads += f", {r['graph_replays_per_step']:.0%} of steps replayed"
            lines.append(f"  {label:<20} {r['tokens_per_second']:8.1f} tok/s  {r['speedup_vs_fast_baseline']:5.2f}x"
                         f"  {r['tokens_per_target_forward']:5.2f} tok/fwd   time: target {t['target']:4.0%}, "
                         f"draft {t['draft']:4.0%}, other {t['other']:4.0%} ({r['other_ms_per_step']:.2f} ms/step"
                         f"{reads})")
    failures = {label: r["graph_failure"] for label, r in (sp.get("methods", {}) if sp else {}).items()
                if r.get("graph_failure")}
    for label, why in failures.items():
        lines.append(f"NOTE {label}: the step's phases ran without CUDA graphs ({why})")
    for name, err in res.get("errors", {}).items():
        lines.append(f"FAILED {name}: {err}")
    return "\n".join(lines)
