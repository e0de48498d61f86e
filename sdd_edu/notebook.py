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

import os
import re
import sys
from types import SimpleNamespace

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

    try:  # figures that render in JupyterLab, VS Code and exported HTML alike
        import plotly.io as pio
        pio.renderers.default = "plotly_mimetype+notebook"
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
    return SimpleNamespace(quick=QUICK, device=device, seed=seed)


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


def pick(full, quick):
    """``quick`` in quick mode, else ``full``: ``max_new_tokens=pick(128, 24)``."""
    return quick if QUICK else full


def check(condition, message: str, hint: str = "") -> None:
    """A self-check: print ``✓ message``, or raise AssertionError saying what to look at."""
    if not condition:
        raise AssertionError(f"✗ {message}" + (f"\nHint: {hint}" if hint else ""))
    print(f"✓ {message}")


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


def structure_problems(nb) -> list[str]:
    """The series' shape: a first markdown cell with learning objectives and run time, a last section 'Exercises'."""
    cells = nb.get("cells", [])
    problems = []
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
#     # END SOLUTION
#
# and followed by a cell of ``check(...)`` calls.  The student edition replaces each block by a stub
# that raises NotImplementedError with the hint, so that the cell, and the checks after it, fail until
# the student writes the code.

BEGIN_SOLUTION = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION(?: \(hint: (?P<hint>.*)\))?\s*$")
END_SOLUTION = re.compile(r"^\s*# END SOLUTION\s*$")


def solution_blocks(source: str) -> list[tuple[int, int, str, str]]:
    """(first line, last line, indent, hint) of each marked solution block; the markers included."""
    blocks, begin = [], None
    for i, line in enumerate(source.split("\n")):
        m = BEGIN_SOLUTION.match(line)
        if m:
            if begin is not None:
                raise ValueError(f"line {i + 1}: BEGIN SOLUTION inside another solution block")
            begin = (i, m.group("indent"), m.group("hint") or "")
        elif END_SOLUTION.match(line):
            if begin is None:
                raise ValueError(f"line {i + 1}: END SOLUTION without BEGIN SOLUTION")
            blocks.append((begin[0], i, begin[1], begin[2]))
            begin = None
    if begin is not None:
        raise ValueError(f"line {begin[0] + 1}: BEGIN SOLUTION without END SOLUTION")
    return blocks


def student_source(source: str) -> str:
    """``source`` with every solution block replaced by a stub that raises NotImplementedError."""
    lines = source.split("\n")
    for first, last, indent, hint in reversed(solution_blocks(source)):
        stub = [f"{indent}# YOUR CODE HERE" + (f" (hint: {hint})" if hint else ""),
                f"{indent}raise NotImplementedError({('Exercise: ' + hint if hint else 'Exercise')!r})"]
        lines[first:last + 1] = stub
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
    stripped)."""
    import copy

    out = copy.deepcopy(nb)
    strip(out)
    # the edition is built by the interpreter whose kernel opens it (make lab), so it carries that Python
    # version and opens unmodified wherever it is built
    normalise(out, python_version=kernel_python_version())
    for cell in out.get("cells", []):
        if cell.get("cell_type") == "code" and "# BEGIN SOLUTION" in cell.get("source", ""):
            cell["source"] = student_source(cell["source"])
        elif cell.get("cell_type") == "markdown":
            cell["source"] = student_markdown(cell.get("source", ""))
    return out


def exercise_problems(nb) -> list[str]:
    """Why an exercise's checks could pass on the unchanged stub (an empty list: none can).

    The stub raises where the solution was: at once for a block at the top of a cell, at the first
    call for a block inside a function.  A later cell must call ``check`` on a global name that is
    bound only from that point on (so on the stub it is never bound), or call the function itself."""
    import ast

    problems, bound_before = [], set()
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for k, cell in enumerate(cells):
        source = cell.get("source", "")
        blocks = solution_blocks(source)
        if blocks:
            tree = ast.parse(source)
            first_line = blocks[0][0] + 1  # ast counts lines from 1
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
            checks = next((c.get("source", "") for c in cells[k + 1:] if "check(" in c.get("source", "")), "")
            used = {n.id for n in ast.walk(ast.parse(checks)) if isinstance(n, ast.Name)} if checks else set()
            if not (used & from_stub):
                problems.append(f"code cell {k}: no later check uses a name bound only once its solution has run "
                                f"({sorted(from_stub) or 'none'}), so the checks could pass on the stub")
        bound_before |= {name for name, _ in _global_bindings(ast.parse(source))}
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
