"""What every tutorial notebook shares: one setup call, quick mode, and self-checks.

A notebook's first code cell is::

    import sdd_edu
    from sdd_edu.notebook import setup, pick, QUICK
    env = setup()

Quick mode (environment variable ``SDD_EDU_QUICK=1``) shrinks every workload so that the whole
series runs in a few minutes as part of the test suite; readers get the full sizes by default.

The notebooks are kept without outputs in the repository::

    python -m sdd_edu.notebook strip tutorials/*.ipynb   # remove outputs, execution counts, widget state
    python -m sdd_edu.notebook check tutorials/*.ipynb   # report what is left, and missing sections
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
    return SimpleNamespace(quick=QUICK, device=device, seed=seed)


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


def main(argv=None) -> int:
    import nbformat

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("strip", "check"):
        print("usage: python -m sdd_edu.notebook {strip,check} NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    bad = 0
    for path in args[1:]:
        nb = nbformat.read(path, as_version=4)
        if args[0] == "strip":
            if strip(nb):
                nbformat.write(nb, path)
                print(f"stripped {path}")
        else:
            for problem in dirty_parts(nb) + structure_problems(nb):
                print(f"{path}: {problem}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
