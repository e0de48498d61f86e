"""The tutorials are committed clean (no outputs, counts or widget state), open in JupyterLab unmodified,
and share one shape."""

from pathlib import Path

import nbformat
import pytest

from sdd_edu.notebook import INSTALL_CHECK, KERNELSPEC, dirty_parts, language_info, normalise, strip, structure_problems, \
    unnormalised_parts

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def well_formed():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Title\n\n**Learning objectives**\n\n- one\n\n**Run time**: 1 min"),
                nbformat.v4.new_code_cell(INSTALL_CHECK + "x = 1"),
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_carries_the_metadata_jupyterlab_writes(path):
    """Else JupyterLab marks it modified as soon as its kernel starts (tests/test_browser.py opens them)."""
    nb = nbformat.read(path, as_version=4)
    assert not unnormalised_parts(nb), \
        f"{path.name}: {unnormalised_parts(nb)}; run: python -m sdd_edu.notebook strip {path}"


def test_the_normalised_metadata_is_what_ipykernel_reports():
    ipkernel = pytest.importorskip("ipykernel.ipkernel")
    from ipykernel.kernelspec import KERNEL_NAME, get_kernel_dict

    assert language_info() == ipkernel.IPythonKernel.language_info
    spec = get_kernel_dict()
    assert KERNELSPEC == {"display_name": spec["display_name"], "language": spec["language"], "name": KERNEL_NAME}


def test_normalise_sets_the_metadata_and_keeps_the_python_version():
    nb = well_formed()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python", "version": "3.9.1"}}
    assert len(unnormalised_parts(nb)) == 2
    assert normalise(nb) is True and unnormalised_parts(nb) == []
    assert nb.metadata.kernelspec == KERNELSPEC and nb.metadata.language_info == language_info("3.9.1")
    assert normalise(nb) is False  # already normalised
    assert normalise(nb, python_version="3.12.0") is True and nb.metadata.language_info["version"] == "3.12.0"
    bare = well_formed()  # no version to keep: this interpreter's
    assert normalise(bare) is True and bare.metadata.language_info == language_info()


def test_the_student_edition_carries_this_interpreters_version():
    from sdd_edu.notebook import kernel_python_version, student_edition

    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.metadata.language_info["version"] = "3.0.0"
    student = student_edition(nb)
    assert unnormalised_parts(student) == [] and student.metadata.language_info["version"] == kernel_python_version()


def test_the_checker_sees_a_missing_section():
    nb = well_formed()
    nb.cells[0].source = "# 99 · Title"
    nb.cells.append(nbformat.v4.new_markdown_cell("## Summary"))
    problems = structure_problems(nb)
    assert len(problems) == 3 and "Learning objectives" in problems[0] and "Exercises" in problems[2]
    nb.cells[1].source = "import sdd_edu\nx = 1"
    assert structure_problems(nb)[0].startswith("the first code cell does not start with the install check")


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
    assert unnormalised_parts(nbformat.read(path, as_version=4)) == []


def test_strip_keeps_the_layout_of_a_committed_notebook(tmp_path):
    """Only what changed changes: the committed files keep their key order and their sources as lists."""
    from sdd_edu.notebook import main

    path = tmp_path / NOTEBOOKS[0].name
    text = NOTEBOOKS[0].read_text(encoding="utf-8")
    path.write_text(text.replace('"display_name": "Python 3 (ipykernel)"', '"display_name": "Python 3"'),
                    encoding="utf-8")
    assert main(["strip", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == text


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


def test_setup_warns_when_the_machine_is_busy_or_threads_are_off():
    from sdd_edu.notebook import machine_warnings

    assert machine_warnings(0.3, 2, 2) == [] and machine_warnings(None, 8, 8) == []
    busy = machine_warnings(1.8, 2, 2)
    assert len(busy) == 1 and "busy (load 1.8" in busy[0] and "rerun" in busy[0]
    assert machine_warnings(3.0, 16, 16) == []  # a few busy cores of many
    over = machine_warnings(0.1, 2, 8)
    assert len(over) == 1 and "setup(threads=2)" in over[0]
    assert "one per core" in machine_warnings(0.1, 4, 1)[0]
    assert machine_warnings(0.1, 4, 1, requested=True) == []  # the reader asked for one thread
