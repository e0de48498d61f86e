"""The course site (sdd_edu/site.py, ``make site``): Sphinx builds it without a warning, with a page per
notebook showing its outputs and figures, and the pages made from the README and docs/.

The notebooks are not executed again where they need not be: tests/test_browser.py, earlier in the suite,
copies every notebook it ran through in JupyterLab to build/executed/, and this test builds from those
(``SDD_EDU_SITE_EXECUTED=DIR`` names another folder).  A notebook with no executed copy newer than its source
is executed here, in quick mode (minutes: this module is then marked ``slow``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path

import pytest

if not all(importlib.util.find_spec(name) for name in ("sphinx", "myst_nb", "sphinx_book_theme", "nbclient")):
    pytest.skip("the site extra is not installed: pip install -e '.[site]'", allow_module_level=True)

from sdd_edu import site  # noqa: E402

PATHS = site.Paths()
# SDD_EDU_SITE_EXECUTED=DIR: a site with the outputs of the notebooks executed in DIR alone (those newer than their
# source; the others' pages without outputs), for working on the site without executing every notebook
CHOSEN = os.environ.get("SDD_EDU_SITE_EXECUTED")
EXECUTED = Path(CHOSEN) if CHOSEN else PATHS.executed
NOTEBOOKS = [path.name for path in PATHS.notebooks()
             if not CHOSEN or site.newer(EXECUTED / path.name, path)]
# decided while collecting: executed copies that are already there make this module quick (test_browser.py, which
# runs before it in the suite, refreshes them; `-m "not slow"` skips it where the notebooks would have to run here)
READY = all(site.newer(EXECUTED / name, PATHS.tutorials / name) for name in NOTEBOOKS)

pytestmark = [pytest.mark.timeout(2400)] + ([] if READY else [pytest.mark.slow, pytest.mark.notebooks])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    start = time.monotonic()
    if not NOTEBOOKS:
        pytest.skip(f"no executed notebook in {EXECUTED} newer than its source")
    result = site.build(PATHS, quick=None, executed=EXECUTED, out=tmp_path_factory.mktemp("site"), fresh=True,
                        only=NOTEBOOKS, in_process=True, log=lambda line: None)
    print(f"site: {len(result.executed)} notebooks executed ({sum(result.executed.values()):.0f} s), "
          f"sphinx-build {result.sphinx_seconds:.1f} s, in all {time.monotonic() - start:.1f} s")  # shown with -s
    return result


def page(built, path: str) -> str:
    file = built.html / path
    assert file.is_file(), f"no {path} in the site"
    return file.read_text(encoding="utf-8")


def test_builds_without_warnings(built):
    """sphinx-build runs with -W: a warning (a broken link, a toctree entry without its page, an output it cannot
    render) fails the build, and ``site.build`` raises with Sphinx's messages."""
    assert (built.html / "index.html").is_file()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_page_shows_outputs(built, name):
    """A page per notebook with the outputs of its executed copy: an output area for each code cell with outputs,
    a drawn plotly figure for each figure (with plotly.js from the site itself: nothing fetched), no error, and
    each interactive view shown as a note (a static page cannot run ipywidgets), not as a model id or a repr."""
    html = page(built, f"tutorials/{Path(name).stem}.html")
    nb = site.as_student(site.for_the_page(site.read(built.notebooks[name])))  # the site's default edition
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    with_outputs = sum(bool(cell.get("outputs")) for cell in nb.cells if cell.cell_type == "code")
    figures = sum("plotly-graph-div" in out.get("data", {}).get("text/html", "") for out in outputs)
    views = sum('class="sdd-widget-note"' in out.get("data", {}).get("text/html", "") for out in outputs)
    areas = len(re.findall(r'<div class="cell_output\b', html))
    assert with_outputs and areas == with_outputs, \
        f"{areas} output areas on the page, {with_outputs} code cells with outputs in {name}"
    assert len(re.findall(r'<div id="[^"]+" class="plotly-graph-div"', html)) == figures
    assert html.count('class="sdd-widget-note"') == views
    assert site.WIDGET_MIME not in html and 'class="output traceback' not in html and "cdnjs.cloudflare.com" not in html
    if figures:
        assert '<script src="../_static/plotly.min.js' in html and "* plotly.js v" not in html
        assert (built.html / "_static" / "plotly.min.js").is_file()


def test_readme_pages(built):
    """The home page is the README; every page of docs/ and the course guide (tutorials/README.md) is in the
    site, and the home page links to each of them and to every notebook."""
    home = page(built, "index.html")
    assert "Learn how to make small-batch LLM decoding fast" in home
    pages = [f"docs/{p.stem}.html" for p in sorted(PATHS.docs.glob("*.md")) if p.name != "index.md"]
    pages += ["tutorials/README.html"] + [f"tutorials/{path.stem}.html" for path in PATHS.notebooks()]
    for path in pages:
        text = page(built, path)
        assert "<h1" in text, f"{path} has no title"
        assert f'href="{path}' in home, f"the home page does not link to {path}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_site_shows_the_student_edition(built, name):
    """Students read the site: a stub where an exercise's solution is, and none of its outputs (they would show
    the answer); `--edition instructor` puts the solutions back."""
    from sdd_edu.notebook import solution_blocks

    html = page(built, f"tutorials/{Path(name).stem}.html")
    assert "BEGIN SOLUTION" not in html and "END SOLUTION" not in html
    solved = site.read(built.notebooks[name])
    exercises = [c for c in solved.cells if c.cell_type == "code" and solution_blocks(c.source)]
    if exercises:
        assert "unsolved" in html
        student = site.as_student(solved)
        for cell, theirs in zip(solved.cells, student.cells):
            if cell in exercises:
                assert theirs.source != cell.source and not theirs.outputs
