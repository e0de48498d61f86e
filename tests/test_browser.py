"""The tutorials in JupyterLab, driven by headless Chromium: each notebook opens unmodified, runs through
with Run All (in quick mode), shows its interactive views at widths that fit the notebook at 1280 and
800 px, its views redraw when a control moves, and the browser's console shows no error.

Where the browser is available this is where the suite runs the notebooks: the root conftest.py then skips
nbval's run of the same notebooks, so that each runs once per suite.  Without chromium, chromedriver and
selenium these tests skip (``SDD_EDU_BROWSER=1``, which CI sets, makes them fail instead).

The server serves a temporary copy of tutorials/, so nothing the browser saves reaches the repository.
Screenshots of every view at both widths go to build/screenshots/ (``04_tree_view_800.png``), and of each
after its control moved (``04_tree_view_1280_moved.png``).  Each notebook that ran through is copied, as saved,
to build/executed/, where tests/test_site.py builds the course site from it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from sdd_edu.notebook import kernel_python_version, normalise
from tests import browser

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"
SCREENSHOTS = REPO / "build" / "screenshots"
EXECUTED = REPO / "build" / "executed"  # each notebook as Run All left it: the course site reuses it (sdd_edu/site.py)
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
WIDTHS = (1280, 800)
MIN_FIGURE_HEIGHT = 150  # px: every figure of the views is drawn taller
# Run All per notebook: quick mode takes 10-50 s on a 2-core CPU, several times that when the CPU is shared
RUN_TIMEOUT = 480

# Each notebook's interactive views, in page order: the function that builds it, a control to move and the
# value to move it to.  The moves are cheap in quick mode.
VIEWS = {
    "02_why_decoding_is_slow.ipynb": [("intensity_explorer", "model", "embedded draft")],  # computed, not measured
    "03_speculative_decoding.ipynb": [("acceptance_explorer", "method", "tree")],  # 2 prompts of 12 tokens
    "04_token_trees.ipynb": [("tree_view", "step", 1)],  # draws a step of the generation already made
    "05_staged_speculative_decoding.ipynb": [("token_origin_view", "prompt", "HumanEval/2")],  # 16 tokens
    "06_reproducing_the_paper.ipynb": [("latency_dashboard", "methods", "baseline")],  # measures 1 method
    "07_beyond_the_paper.ipynb": [("tree_plan_view", "largest tree", 4)],  # replanned from the same measurements
}

# Console errors that say nothing about the notebooks, each with the reason it is harmless
HARMLESS = {}

pytestmark = [pytest.mark.slow, pytest.mark.notebooks, pytest.mark.timeout(900)]


# ----------------------------------------------------------------------------- the server, the browser, a run

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of tutorials/."""
    gone = browser.missing()
    if gone:
        reason = f"no browser to run the notebooks in ({', '.join(gone)} missing): {browser.install_hint(gone)}"
        if browser.required():
            pytest.fail(f"SDD_EDU_BROWSER=1 but {reason}")
        pytest.skip(f"{reason}; nbval runs the notebooks instead")
    root = tmp_path_factory.mktemp("lab") / "tutorials"
    shutil.copytree(TUTORIALS, root)
    for name in NOTEBOOKS:
        # the committed notebooks carry the Python version of the machine that last normalised them; the kernel
        # here may run another, and JupyterLab would mark them modified for that alone (the student edition,
        # built where it is opened, carries this interpreter's version in the same way)
        nb = nbformat.read(root / name, as_version=4)
        if normalise(nb, python_version=kernel_python_version()):
            nbformat.write(nb, root / name)
    server = browser.Lab(root, tmp_path_factory.mktemp("lab-home")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def driver(lab):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chrome = browser.chrome()
    yield chrome
    chrome.quit()


class Run:
    """One notebook in the browser: what it looked like on opening, how Run All ended, the file it saved, and
    the console's messages meanwhile."""

    def __init__(self, name: str, before: dict):
        self.name, self.before = name, before
        self.opened, self.in_page, self.result, self.saved, self.seconds = {}, {}, {}, None, 0.0
        self.logs: list[tuple[str, dict]] = []

    def console(self, driver, phase: str) -> list[tuple[str, dict]]:
        """The console's messages so far, each with the phase (opening, Run All, ...) it came in."""
        self.logs += [(phase, entry) for entry in driver.get_log("browser")]  # the messages since the last call
        return self.logs

    def ran_through(self) -> bool:
        return bool(self.result.get("ok")) and not run_problems(self.saved)


@pytest.fixture(scope="module", params=NOTEBOOKS)
def notebook(request, lab, driver):
    """Open the notebook, Run All, save: the tests below read what happened."""
    name = request.param
    run = Run(name, json.loads((lab.root / name).read_text(encoding="utf-8")))
    run.console(driver, "the previous notebook closing")
    browser.set_size(driver, WIDTHS[0])
    start = time.monotonic()
    run.opened = browser.open_notebook(driver, lab, name)
    run.in_page = browser.notebook_in_page(driver)
    run.console(driver, "opening")
    # the previous notebook's kernel was asked to shut down as this one opened: one kernel at a time
    browser.wait_for(lambda: len(lab.kernels()) == 1, 60, "one kernel running (the previous one shut down)")
    opened = time.monotonic()
    try:
        run.result = browser.run_all(driver, RUN_TIMEOUT)
    except TimeoutError as exc:
        run.result = {"error": str(exc)}
    run.seconds = time.monotonic() - opened
    browser.save(driver)
    run.saved = nbformat.read(lab.root / name, as_version=4)
    if run.ran_through():  # tests/test_site.py and `make site` build the site from it instead of running it again
        EXECUTED.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lab.root / name, EXECUTED / name)
    run.console(driver, "Run All")
    print(f"{name}: opened in {opened - start:.1f} s, Run All {run.seconds:.1f} s")  # shown with -s
    yield run
    browser.close_notebook(driver)


# ----------------------------------------------------------------------------- reading a saved notebook

def first_line(cell) -> str:
    return next((line for line in cell.source.splitlines() if line.strip()), "")[:100]


def run_problems(nb) -> list[str]:
    """Each error output with its cell, and the code cells that did not run (Run All stops at an error)."""
    problems, not_run = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():  # an empty cell is never sent to the kernel
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                trace = browser.strip_ansi("\n".join(out.get("traceback", []))).splitlines()
                problems.append(f"cell {i} ({first_line(cell)!r}): {out.ename}: {out.evalue}\n    "
                                + "\n    ".join(trace[-8:]))
        if cell.execution_count is None:
            not_run.append(i)
    if not_run:
        problems.append(f"{len(not_run)} code cells did not run, the first cell {not_run[0]} "
                        f"({first_line(nb.cells[not_run[0]])!r})")
    return problems


def differences(file: dict, page: dict) -> dict:
    """(file, page) for each top-level key, metadata key and the list of cell ids, where the two differ."""
    file = dict(file, cell_ids=[cell.get("id") for cell in file.get("cells", [])])
    file_meta, page_meta = file.get("metadata", {}), page.get("metadata", {})
    pairs = [(key, file.get(key), page.get(key)) for key in sorted((set(file) | set(page)) - {"cells", "metadata"})]
    pairs += [(f"metadata.{key}", file_meta.get(key), page_meta.get(key))
              for key in sorted(set(file_meta) | set(page_meta))]
    return {key: (in_file, in_page) for key, in_file, in_page in pairs if in_file != in_page}


def shown_views(notebook, driver) -> list:
    """The notebook's interactive views, checked against VIEWS."""
    if not notebook.ran_through():
        pytest.skip("the notebook did not run through: see test_every_cell_runs")
    found = browser.views(driver)
    expected = [function for function, _, _ in VIEWS.get(notebook.name, [])]
    assert len(found) == len(expected), f"{len(found)} interactive views on the page, expected {expected or 'none'}"
    return found


# ----------------------------------------------------------------------------- the tests

def test_opens_unmodified(notebook):
    """JupyterLab writes the kernel's kernelspec and language_info into the notebook when the kernel starts; a
    notebook that carries them already opens unmodified (``python -m sdd_edu.notebook strip`` sets them)."""
    state = notebook.opened
    if state["dirty"] or state["tab_dirty"]:
        changed = differences(notebook.before, notebook.in_page)
        pytest.fail(f"{notebook.name} is marked modified once its kernel is idle; (file, JupyterLab) where they "
                    f"differ: {json.dumps(changed, indent=1)}")


def test_every_cell_runs(notebook):
    """What nbval checked: every code cell runs, and none raises (quick mode)."""
    problems = run_problems(notebook.saved)
    if "error" in notebook.result:
        problems.insert(0, f"Run All: {notebook.result['error']}")
    assert not problems, f"{notebook.name} (Run All took {notebook.seconds:.0f} s):\n" + "\n".join(problems)


def test_views_fit_the_notebook(notebook, driver):
    """At 1280 and 800 px each view's figure ends inside the output area of its cell (1 px for rounding), its
    titles end inside the figure, and it is still drawn after the window changed size (its width, then only its
    height); a screenshot of each view at each width goes to build/screenshots/."""
    views = shown_views(notebook, driver)
    functions = [function for function, _, _ in VIEWS.get(notebook.name, [])]
    problems = []
    try:
        for width in WIDTHS:
            browser.set_size(driver, width)
            for function, view in zip(functions, views):
                fit = browser.settled_fit(driver, view)
                browser.screenshot(driver, view, SCREENSHOTS / f"{notebook.name[:2]}_{function}_{width}.png")
                if fit["figure"] > fit["area"] + 1:
                    problems.append(f"{function} at {width} px: the figure ends {fit['figure'] - fit['area']:.0f} px "
                                    f"right of the output area (figure {fit['figure_width']:.0f} px wide, output "
                                    f"area {fit['area_width']:.0f} px)")
                if fit["overflow"] > 1:
                    problems.append(f"{function} at {width} px: the view is {fit['overflow']:.0f} px wider than "
                                    "its box (a horizontal scrollbar under it)")
                if fit["titles_outside"] > 1:
                    problems.append(f"{function} at {width} px: a title runs {fit['titles_outside']:.0f} px past the "
                                    f"figure's edge (figure {fit['figure_width']:.0f} px wide), where it is cut")
                if fit["figure_height"] < MIN_FIGURE_HEIGHT:  # a collapsed figure fits any width
                    problems.append(f"{function} at {width} px: the figure is {fit['figure_height']:.0f} px tall")
            notebook.console(driver, f"at {width} px")
        browser.set_size(driver, WIDTHS[0])
        for view in views:
            browser.settled_fit(driver, view)
        browser.set_size(driver, WIDTHS[0], browser.HEIGHT - 300)  # a reader makes the window lower
        for function, view in zip(functions, views):
            fit = browser.settled_fit(driver, view)
            if fit["figure_height"] < MIN_FIGURE_HEIGHT:
                problems.append(f"{function}: the figure is {fit['figure_height']:.0f} px tall once the window is "
                                f"{browser.HEIGHT - 300} px high instead of {browser.HEIGHT}")
        notebook.console(driver, "at a lower window")
    finally:
        browser.set_size(driver, WIDTHS[0])
    assert not problems, "\n".join(problems)


def test_views_answer_their_controls(notebook, driver):
    """Moving one control of each view changes what its figure shows, without an error in the view."""
    views = shown_views(notebook, driver)
    problems = []
    for (function, label, value), view in zip(VIEWS.get(notebook.name, []), views):
        before = browser.figure_state(driver, view)
        did = browser.move(driver, view, label, value)
        try:
            browser.wait_for(lambda: browser.figure_state(driver, view) not in (None, before), 120,
                             f"{function}'s figure redrawn")
        except TimeoutError as exc:
            problems.append(f"{function}, {did}: {exc}")
        browser.wait_for(lambda: browser.notebook_state(driver)["kernel"] == "idle", 120, "the kernel idle")
        browser.screenshot(driver, view, SCREENSHOTS / f"{notebook.name[:2]}_{function}_{WIDTHS[0]}_moved.png")
        height = browser.settled_fit(driver, view)["figure_height"]
        if height < MIN_FIGURE_HEIGHT:
            problems.append(f"{function}, {did}: the figure redrawn is {height:.0f} px tall")
        text = browser.view_message(driver, view)
        if "\u26a0" in text:  # the view's message line: an error in the redraw
            problems.append(f"{function}, {did}: the view reports " + next(
                line for line in text.splitlines() if "\u26a0" in line))
    notebook.console(driver, "moving controls")
    assert not problems, "\n".join(problems)


def test_console_has_no_errors(notebook, driver):
    """No error in the browser's console while the notebook opened, ran and was used."""
    errors = [f"[{phase}] {entry['message'][:600]}" for phase, entry in notebook.console(driver, "after")
              if entry["level"] == "SEVERE" and not any(pattern in entry["message"] for pattern in HARMLESS)]
    assert not errors, f"{len(errors)} console errors:\n" + "\n".join(errors)
