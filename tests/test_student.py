"""The student edition: generated from the instructor notebooks, every exercise a stub whose checks fail.

That each check passes on the solution is shown by running the instructor notebooks (nbval)."""

from pathlib import Path

import nbformat
import pytest

from sdd_edu.notebook import exercise_problems, main, solution_blocks, structure_problems, student_edition, \
    student_markdown, student_source

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def test_a_solution_block_becomes_a_stub_that_raises_with_its_hint():
    solved = ("x = 2\n"
              "def f(y):\n"
              "    # BEGIN SOLUTION (hint: twice y)\n"
              "    return 2 * y\n"
              "    # END SOLUTION\n"
              "z = f(x)")
    stub = student_source(solved)
    assert "return 2 * y" not in stub and "# YOUR CODE HERE (hint: twice y)" in stub
    namespace = {}
    with pytest.raises(NotImplementedError, match="Exercise: twice y"):
        exec(stub, namespace)
    assert namespace["x"] == 2 and "z" not in namespace
    exec(solved, namespace)
    assert namespace["z"] == 4


@pytest.mark.parametrize("bad", ["# BEGIN SOLUTION\nx = 1", "x = 1\n# END SOLUTION",
                                 "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION"])
def test_unbalanced_markers_are_refused(bad):
    with pytest.raises(ValueError, match="SOLUTION"):
        solution_blocks(bad)


def test_the_exercise_check_catches_a_check_that_cannot_fail():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("answer = 41"),
                nbformat.v4.new_code_cell("# BEGIN SOLUTION (hint: one more)\nanswer = 42\n# END SOLUTION"),
                nbformat.v4.new_code_cell("check(answer == 42, 'right')")]
    assert exercise_problems(nb)  # `answer` exists before the exercise: the check could pass on the stub
    nb.cells[0].source = "question = 41"
    assert exercise_problems(nb) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_of_the_series_fails_on_its_stub(path):
    nb = nbformat.read(path, as_version=4)
    blocks = [b for c in nb.cells if c.cell_type == "code" for b in solution_blocks(c.source)]
    assert blocks, f"{path.name} has no marked solution"
    assert all(hint for *_, hint in blocks), "every solution block carries a hint for the stub"
    assert exercise_problems(nb) == []
    student = student_edition(nb)
    nbformat.validate(student)
    assert structure_problems(student) == []
    stubs = [c.source for c in student.cells if c.cell_type == "code" and "raise NotImplementedError" in c.source]
    assert len(stubs) == len([c for c in nb.cells if c.cell_type == "code" and solution_blocks(c.source)])
    for solved, stub in zip(nb.cells, student.cells):
        if solved.cell_type != "code" or not solution_blocks(solved.source):
            continue
        lines = solved.source.split("\n")
        inside = {i for first, last, *_ in solution_blocks(solved.source) for i in range(first + 1, last)}
        hidden = {lines[i].strip() for i in inside} - {lines[i].strip() for i in range(len(lines)) if i not in inside}
        left = hidden & {line.strip() for line in stub.source.split("\n")}
        assert not left, f"solution lines left in the student edition: {left}"
    assert "BEGIN SOLUTION" not in "".join(c.source for c in student.cells)


def test_make_student_writes_the_edition(tmp_path):
    assert main(["student", str(tmp_path), *map(str, NOTEBOOKS)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == [p.name for p in NOTEBOOKS]
    assert sum(len([c for c in nbformat.read(tmp_path / n, as_version=4).cells
                    if "raise NotImplementedError" in c.source]) for n in written) >= 15


def test_text_meant_for_one_edition_is_resolved_in_the_student_edition():
    text = ("Predict it. <!-- instructor -->The cell holds one answer; cover it.<!-- /instructor -->"
            "<!-- student: Write yours below. --> Then run the check.")
    assert student_markdown(text) == "Predict it. Write yours below. Then run the check."
    for path in NOTEBOOKS:
        markdown = "".join(c.source for c in student_edition(nbformat.read(path, as_version=4)).cells
                           if c.cell_type == "markdown")
        assert "<!-- instructor" not in markdown and "<!-- student" not in markdown, path.name
        for instructor_only in ("holds one answer", "cover it", "The answer below"):
            assert instructor_only not in markdown, (path.name, instructor_only)
