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
