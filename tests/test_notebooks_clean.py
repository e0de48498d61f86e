"""The tutorials are committed clean (no outputs, counts or widget state) and share one shape."""

from pathlib import Path

import nbformat
import pytest

from sdd_edu.notebook import dirty_parts, strip, structure_problems

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def well_formed():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Title\n\n**Learning objectives**\n\n- one\n\n**Run time**: 1 min"),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_markdown_cell("## Exercises\n\n### Exercise 1"),
                nbformat.v4.new_code_cell("check(x == 1, 'x')")]
    return nb


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean_and_well_formed(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert not dirty_parts(nb), f"{path.name}: {dirty_parts(nb)}; run: python -m sdd_edu.notebook strip {path}"
    assert not structure_problems(nb), f"{path.name}: {structure_problems(nb)}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_the_checker_sees_outputs_counts_and_widget_state():
    nb = well_formed()
    assert dirty_parts(nb) == [] and structure_problems(nb) == []
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[3].execution_count = 7
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    assert dirty_parts(nb) == ["widget state in metadata.widgets", "cell 1: outputs", "cell 3: execution count"]
    assert strip(nb) is True and dirty_parts(nb) == []
    assert strip(nb) is False  # nothing left to remove


def test_the_checker_sees_a_missing_section():
    nb = well_formed()
    nb.cells[0].source = "# 99 · Title"
    nb.cells.append(nbformat.v4.new_markdown_cell("## Summary"))
    problems = structure_problems(nb)
    assert len(problems) == 3 and "Learning objectives" in problems[0] and "Exercises" in problems[2]


def test_strip_command_rewrites_a_dirty_file(tmp_path):
    from sdd_edu.notebook import main

    nb = well_formed()
    nb.cells[1].execution_count = 3
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    assert main(["check", str(path)]) == 1
    assert main(["strip", str(path)]) == 0
    assert main(["check", str(path)]) == 0
    assert dirty_parts(nbformat.read(path, as_version=4)) == []


def test_pick_check_and_setup(monkeypatch, capsys):
    import sdd_edu.notebook as nbk

    monkeypatch.setattr(nbk, "QUICK", True)
    assert nbk.pick(128, 24) == 24
    monkeypatch.setattr(nbk, "QUICK", False)
    assert nbk.pick(128, 24) == 128
    nbk.check(1 + 1 == 2, "arithmetic")
    assert capsys.readouterr().out == "✓ arithmetic\n"
    with pytest.raises(AssertionError, match="(?s)✗ wrong.*Hint: look again"):
        nbk.check(False, "wrong", "look again")
    env = nbk.setup(seed=3)
    assert env.quick is False and env.seed == 3 and env.device.type in ("cpu", "cuda")
    assert "quick mode off" in capsys.readouterr().out
