"""The course site: every tutorial with its outputs and figures, and the pages made from the README and docs/,
built with Sphinx, myst-nb and sphinx-book-theme (the ``site`` extra).

    python -m sdd_edu.site build                    # what `make site` runs: build/site/html/index.html
    python -m sdd_edu.site build --executed DIR     # reuse the executed notebooks in DIR newer than their source
    python -m sdd_edu.site build --quick 0          # full mode (`make site SITE_QUICK=0`)
    python -m sdd_edu.site build --edition instructor   # the solutions on the pages (`make site SITE_EDITION=...`)
    python -m sdd_edu.site execute [NAME ...]       # only execute, into build/executed/

Two steps.  The notebooks are executed with nbclient (quick mode unless asked otherwise: ``SDD_EDU_QUICK=1``
in the kernel) into ``build/executed/``; a notebook already executed there, or in ``--executed DIR``, that is
newer than its source and ran in the mode asked for is not executed again (tests/test_browser.py leaves the
notebooks it ran in JupyterLab there).  Then sphinx-build renders a source tree assembled under
``build/site/src`` (README.md as the home page, docs/*.md, tutorials/README.md, the executed notebooks) with
myst-nb's own execution off, and with ``-W``: a warning fails the build.

On the static page an interactive view (an ipywidgets widget) cannot run: its output is replaced by a note
(each view has a static figure, ``view.static()``, which some notebooks show too).  The figures, drawn by plotly
with the renderer ``plotly_mimetype+notebook`` (``notebook.setup``), show from their text/html output, with
plotly.js served by the site itself (docs/conf.py): nothing is fetched from elsewhere when a figure draws.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .notebook import environment

REPO = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# the note that stands for an interactive view on the static page
WIDGET_NOTE = ('<p class="sdd-widget-note"><em>An interactive view (<code>{name}</code>, ipywidgets) is drawn here '
               'when the notebook runs in JupyterLab (<code>make lab</code>); a static page cannot run it.  Its '
               'figure without the controls: <code>view.static()</code>.</em></p>')
# a view's text/plain is its repr, a container's: ``LatencyDashboard(children=(HTML(value=...``; another widget
# (tqdm's progress bars) shows its text there, as it was when first displayed
VIEW_REPR = re.compile(r"^(\w+)\(children=")
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS_MARK = "window.Plotly = Plotly"  # the end of plotly.js, which the "notebook" renderer embeds once
CDN_SCRIPT = re.compile(r'<script src="https?://[^"]*"></script>')  # MathJax, in each of plotly's figures
# notebook.setup prints this line first: which mode the notebook ran in
MODE_LINE = re.compile(r"quick mode (on|off)")


class Paths:
    """Where the site's inputs are and where its outputs go, all under one repository root."""

    def __init__(self, root: Path = REPO, build: Path | None = None):
        self.root = Path(root)
        self.tutorials = self.root / "tutorials"
        self.docs = self.root / "docs"
        self.build = Path(build) if build else self.root / "build"
        self.executed = self.build / "executed"
        self.site = self.build / "site"

    def notebooks(self) -> list[Path]:
        return sorted(self.tutorials.glob("[0-9][0-9]_*.ipynb"))


# ----------------------------------------------------------------------------- executing

def ran_in_quick_mode(nb) -> bool | None:
    """True or False as the notebook's setup line says (``quick mode on``), None where no output says."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            found = MODE_LINE.search(out.get("text", "")) if out.get("output_type") == "stream" else None
            if found:
                return found.group(1) == "on"
    return None


def read(path: Path):
    """A notebook, read without nbformat's schema validation (a second or so for an executed notebook of
    5 MB): these notebooks were written by nbformat, by nbclient or JupyterLab."""
    import nbformat

    nb = nbformat.reader.reads(Path(path).read_text(encoding="utf-8"))  # what nbformat.read does, less validating
    return nb if nb.nbformat == 4 else nbformat.read(path, as_version=4)


def newer(executed: Path, source: Path) -> bool:
    """Whether ``executed`` exists and was written after ``source`` last changed."""
    return executed.is_file() and executed.stat().st_mtime > source.stat().st_mtime


def reusable(executed: Path, source: Path, quick: bool | None = None) -> bool:
    """Whether ``executed`` can stand for ``source`` on the site: newer than it, every code cell run without an
    error, and run in the mode asked for (``quick`` None: either mode)."""
    if not newer(executed, source):
        return False
    nb = read(executed)
    code = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
    if any(cell.get("execution_count") is None or any(out.get("output_type") == "error" for out in cell.outputs)
           for cell in code):
        return False
    mode = ran_in_quick_mode(nb)
    return quick is None or mode is None or mode == quick


def execute(source: Path, target: Path, quick: bool = True, timeout: int = 1200) -> float:
    """Run ``source`` top to bottom with nbclient in a scratch folder (whatever a notebook writes stays out of
    the repository) and write it, outputs included, to ``target``; return the seconds it took.  A cell that
    raises stops the run with nbclient's CellExecutionError."""
    import nbclient
    import nbformat

    nb = nbformat.read(source, as_version=4)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sdd-edu-site-") as scratch, \
            environment(SDD_EDU_QUICK="1" if quick else "0", PYDEVD_DISABLE_FILE_VALIDATION="1"):
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": scratch}})
        client.execute()
    seconds = time.monotonic() - start
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return seconds


def executed_notebooks(paths: Paths, quick: bool | None = True, executed: Path | None = None,
                       only: list[str] | None = None, log=print,
                       seconds: dict[str, float] | None = None) -> dict[str, Path]:
    """Each notebook's executed copy, by name: the one in ``executed`` (default build/executed/) where it is
    reusable, else a fresh run (quick mode unless ``quick`` is False) into build/executed/, its time then added
    to ``seconds``."""
    found = {}
    for source in paths.notebooks():
        if only and source.name not in only and source.stem not in only:
            continue
        for folder in dict.fromkeys(filter(None, (executed, paths.executed))):
            if reusable(Path(folder) / source.name, source, quick):
                found[source.name] = Path(folder) / source.name
                log(f"{source.name}: executed copy in {folder} is current")
                break
        else:
            target = paths.executed / source.name
            log(f"{source.name}: executing ({'full' if quick is False else 'quick'} mode) ...")
            took = execute(source, target, quick=quick is not False)
            log(f"{source.name}: executed in {took:.0f} s -> {target}")
            if seconds is not None:
                seconds[source.name] = took
            found[source.name] = target
    return found


# ----------------------------------------------------------------------------- the source tree

def for_the_page(nb):
    """A copy of an executed notebook as the static page shows it.

    * Each interactive view's output becomes a note: a widget's own output is only its model's id, which
      nothing on a static page can draw; and the saved widget state goes.  Other widgets (tqdm's progress
      bars, which the text beside their id shows at 0%) go.
    * A plotly figure keeps its text/html (a div and the script that draws it with ``Plotly.newPlot``); its
      ``application/vnd.plotly.v1+json`` copy, which Sphinx cannot render, goes.  The output in which the
      ``notebook`` renderer embedded all of plotly.js (4.8 MB, once per notebook) goes too: docs/conf.py adds
      the plotly package's own plotly.min.js, once for the whole site, to every page with a figure.  And the
      script tag by which each figure would load MathJax from a CDN goes: no figure has TeX in it.
    """
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                view = VIEW_REPR.match(data.get("text/plain", ""))
                if not view:
                    continue
                out["data"] = {"text/html": WIDGET_NOTE.format(name=view.group(1))}
                out.get("metadata", {}).pop(WIDGET_MIME, None)
            elif PLOTLY_JS_MARK in data.get("text/html", ""):
                continue
            elif PLOTLY_MIME in data and "text/html" in data:
                data.pop(PLOTLY_MIME)
                data["text/html"] = CDN_SCRIPT.sub("", data["text/html"])
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
    return nb


def _copy_if_changed(source: Path, target: Path) -> None:
    """Copy keeping the time stamp, and only what changed, so that Sphinx rereads only what changed."""
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _write_if_changed(text: str, target: Path) -> None:
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def as_student(nb):
    """An executed notebook as the student edition shows it: each cell's source the student's (stubs, no
    solutions, the edition's own text), and no output in a cell whose source changed (an exercise's outputs
    would show its answer)."""
    from .notebook import student_edition

    nb = copy.deepcopy(nb)
    student = student_edition(nb)
    if len(student.cells) != len(nb.cells):
        raise RuntimeError("the student edition changed the number of cells")
    for cell, theirs in zip(nb.cells, student.cells):
        if cell.source != theirs.source:
            cell.source = theirs.source
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
    return nb


def assemble(paths: Paths, notebooks: dict[str, Path], src: Path, edition: str = "student") -> Path:
    """The Sphinx source tree, laid out as the repository is (so that the README's links to docs/ and
    tutorials/ work both on GitHub and on the site): index.md (docs/index.md, which includes README.md),
    README.md, docs/*.md, tutorials/README.md, tutorials/*.ipynb (executed, for the page; in the student
    edition unless ``edition`` is "instructor")."""
    import nbformat

    wanted = {"index.md", "README.md", "tutorials/README.md"}
    _copy_if_changed(paths.docs / "index.md", src / "index.md")
    _copy_if_changed(paths.root / "README.md", src / "README.md")
    _copy_if_changed(paths.tutorials / "README.md", src / "tutorials" / "README.md")
    for page in sorted(paths.docs.glob("*.md")):
        if page.name != "index.md":
            _copy_if_changed(page, src / "docs" / page.name)
            wanted.add(f"docs/{page.name}")
    for name, executed in sorted(notebooks.items()):
        page = for_the_page(read(executed))
        if edition == "student":
            page = as_student(page)
        _write_if_changed(nbformat.v4.writes(page) + "\n", src / "tutorials" / name)  # not validated again
        wanted.add(f"tutorials/{name}")
    for stale in [p for p in src.rglob("*") if p.is_file() and p.relative_to(src).as_posix() not in wanted]:
        stale.unlink()  # a page whose source is gone
    return src


# ----------------------------------------------------------------------------- building

def sphinx_build(paths: Paths, src: Path, out: Path, fresh: bool = False,
                 in_process: bool = False) -> tuple[int, str, float]:
    """sphinx-build over ``src`` into ``out``/html with docs/conf.py, warnings as errors: (its exit code, its
    messages, seconds).  ``fresh``: reread every page (an incremental build repeats no warning of a page it did
    not reread).  ``in_process``: in this Python rather than a new one, which saves importing Sphinx, myst-nb
    and nbformat's validator again (seconds; the tests do it)."""
    args = ["-b", "html", "-W", "--keep-going", "-q", "-c", str(paths.docs), "-d", str(out / "doctrees"),
            str(src), str(out / "html")] + (["-E"] if fresh else [])
    start = time.monotonic()
    if in_process:
        from sphinx.cmd.build import build_main

        messages = io.StringIO()
        with contextlib.redirect_stdout(messages), contextlib.redirect_stderr(messages), warnings.catch_warnings():
            # the theme's and myst's own uses of APIs that Sphinx deprecates (a new Python shows none of them)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            code = build_main(args)
        text = messages.getvalue()
    else:
        done = subprocess.run([sys.executable, "-m", "sphinx", *args], capture_output=True, text=True,
                              cwd=paths.root)
        code, text = done.returncode, done.stderr + done.stdout
    return code, text, time.monotonic() - start


@dataclasses.dataclass
class Built:
    """What ``build`` did: the html folder, each notebook's executed copy, the notebooks it executed (with their
    seconds), and the seconds sphinx-build took."""

    html: Path
    notebooks: dict[str, Path]
    executed: dict[str, float]
    sphinx_seconds: float


def build(paths: Paths | None = None, quick: bool | None = True, executed: Path | None = None,
          out: Path | None = None, fresh: bool = False, only: list[str] | None = None, in_process: bool = False,
          log=print, edition: str = "student") -> Built:
    """Execute what is not executed yet, assemble the sources, run sphinx-build into ``out``/html (default
    build/site/html).  ``only``: these notebooks alone (file names or stems) executed, the others on the site
    as they are in tutorials/, without outputs.  ``fresh``, ``in_process``: as for ``sphinx_build``.  ``edition``:
    "student" (stubs in place of the solutions, the exercises' outputs left out) or "instructor" (solved).
    Raises RuntimeError with Sphinx's messages where the build fails or warns."""
    paths = paths or Paths()
    out = Path(out) if out else paths.site
    ran: dict[str, float] = {}
    notebooks = executed_notebooks(paths, quick=quick, executed=executed, only=only, log=log, seconds=ran)
    # the notebooks left out by ``only`` still get a page (without outputs): every link to them holds
    pages = {source.name: source for source in paths.notebooks()} | notebooks
    if edition not in ("student", "instructor"):
        raise RuntimeError(f"no edition {edition!r}: student or instructor")
    src = assemble(paths, pages, out / "src", edition=edition)
    code, messages, seconds = sphinx_build(paths, src, out, fresh=fresh, in_process=in_process)
    if code != 0:
        raise RuntimeError(f"sphinx-build failed ({code}) after {seconds:.1f} s:\n{messages}")
    log(f"sphinx-build: {seconds:.1f} s -> {out / 'html' / 'index.html'}")
    return Built(out / "html", notebooks, ran, seconds)


def _quick(value: str) -> bool:
    if value not in ("0", "1"):
        raise argparse.ArgumentTypeError("0 (full mode) or 1 (quick mode)")
    return value == "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd_edu.site", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default_quick = os.environ.get("SITE_QUICK", "1")
    for name, what in (("build", "execute what is not executed yet, then build build/site/html"),
                       ("execute", "execute the notebooks into build/executed/ (only those not current there)")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("--quick", type=_quick, default=_quick(default_quick) if default_quick in ("0", "1") else True,
                         help="1: quick mode (SDD_EDU_QUICK=1, the default; $SITE_QUICK), 0: the full notebooks")
        cmd.add_argument("--executed", type=Path, help="a folder of executed notebooks to reuse where they are "
                         "newer than their source (default: build/executed)")
        cmd.add_argument("--build-dir", type=Path, help="instead of build/")
    sub.choices["build"].add_argument("--fresh", action="store_true", help="reread every page (sphinx-build -E)")
    sub.choices["build"].add_argument("--edition", choices=("student", "instructor"), default="student",
                                      help="the notebooks' edition on the site: student (stubs, the default) or "
                                           "instructor (the solutions)")
    sub.choices["execute"].add_argument("names", nargs="*", help="notebooks (00_setup_and_tour or its file name)")
    args = parser.parse_args(argv)
    paths = Paths(build=args.build_dir)
    try:
        if args.command == "execute":
            executed_notebooks(paths, quick=args.quick, executed=args.executed, only=args.names)
        else:
            build(paths, quick=args.quick, executed=args.executed, fresh=args.fresh, edition=args.edition)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
