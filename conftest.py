"""Loaded by pytest before anything else: tests and notebook kernels never touch the network,
and the tutorials run in quick mode (``sdd_edu.notebook.QUICK``).

Kernels started by nbval inherit this process's environment, so setting it here reaches them.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SDD_EDU_QUICK", "1")


def pytest_collection_modifyitems(items):
    """Notebook cells load the embedded model: mark them ``notebooks`` and ``slow`` (``-m "not slow"`` skips them)."""
    import pytest

    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebooks)
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    """Where tests/test_browser.py runs a notebook (in JupyterLab, with Chromium), nbval does not run it again:
    every notebook runs once per suite, in the browser where there is one, else under nbval.

    Called once collection is done, after ``-k``/``-m`` have deselected what they deselect: a notebook is
    skipped here only if its browser run is still in the session."""
    import pytest

    from tests import browser

    in_browser = {item.callspec.params["notebook"] for item in session.items
                  if item.path.name == "test_browser.py" and item.originalname == "test_every_cell_runs"}
    if not in_browser or not browser.enabled():
        return
    skip = pytest.mark.skip(reason="run in the browser by tests/test_browser.py")
    for item in session.items:
        if item.path.suffix == ".ipynb" and item.path.name in in_browser:
            item.add_marker(skip)
