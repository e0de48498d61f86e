"""The student edition: generated from the instructor notebooks, every exercise a stub whose checks fail.

An unsolved exercise falls back to sdd-edu's own answer, so that the rest of its notebook runs; its check
cell starts with ``solved(NAME)``, which fails until the exercise is solved.  That each check passes on the
solution is shown by running the instructor notebooks (nbval); tests/test_exercises.py runs the student
edition's cells of each exercise."""

import re
from pathlib import Path

import nbformat
import pytest

from sdd_edu import notebook
from sdd_edu.notebook import block_names, exercise, exercise_names, exercise_problems, main, solution_blocks, \
    solved, structure_problems, student_edition, student_markdown, student_source, unsolved

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


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


@pytest.mark.parametrize("fallback", ["x + 1", "x += 1", "return", "a.b = 1", "x = 1; y = 2", "return (1"])
def test_a_fallback_is_return_or_names_bound(fallback):
    with pytest.raises(ValueError, match="line 3: a fallback is"):
        solution_blocks(f"# BEGIN SOLUTION\nx = 1\n# END SOLUTION (fallback: {fallback})")


SOLVED_IN_A_FUNCTION = ("x = 2\n"
                        "def f(y):\n"
                        "    # BEGIN SOLUTION (hint: twice y)\n"
                        "    return 2 * y\n"
                        "    # END SOLUTION (fallback: return course_twice(y))\n"
                        "z = f(x) + f(x)")


@pytest.fixture()
def namespace():
    """A kernel's globals with the student edition's helpers and a stand-in for sdd_edu.course."""
    notebook.UNSOLVED.clear()
    notebook.STUB_VALUES.clear()
    yield {"exercise": exercise, "solved": solved, "unsolved": unsolved, "course_twice": lambda y: y + y}
    notebook.UNSOLVED.clear()


def test_a_stub_with_a_fallback_returns_its_value_and_says_so_once(namespace, capsys):
    assert solution_blocks(SOLVED_IN_A_FUNCTION)[0].fallback == "return course_twice(y)"
    stub = student_source(SOLVED_IN_A_FUNCTION)
    assert stub.split("\n")[2:4] == ["    # YOUR CODE HERE (hint: twice y)",
                                     '    return unsolved("f", lambda: course_twice(y))']
    exec(stub, namespace)
    assert namespace["z"] == 8  # the cell ran on, with the fallback's values
    out = capsys.readouterr().out
    assert out == ("⚠ exercise 'f' is not solved yet: the cells below use sdd-edu's own answer; "
                   "its check says so until you write yours\n")  # one line, though f ran twice
    with pytest.raises(AssertionError, match="^✗ exercise 'f' is not solved yet"):
        solved("f")
    exercise("f")  # the cell run again: the mark is cleared, and a stub that runs says so again
    exec(stub, namespace)
    assert capsys.readouterr().out.count("⚠ exercise 'f'") == 1
    exec('exercise("f")\n' + SOLVED_IN_A_FUNCTION, namespace)  # the cell with a solution
    solved("f")
    assert namespace["z"] == 8 and capsys.readouterr().out == ""


def test_a_function_still_holding_its_stub_is_unsolved_before_it_runs(namespace):
    source = SOLVED_IN_A_FUNCTION.replace("z = f(x) + f(x)", "")  # f is only called by the checks
    exec(student_source(source), namespace)
    with pytest.raises(AssertionError, match="✗ exercise 'f' is not solved yet"):
        exec('solved("f")', namespace)
    exec(source, namespace)  # the student's own f, in its cell
    exec('solved("f")', namespace)


def test_a_fallback_binds_names_in_a_loop_body(namespace, capsys):
    solved_source = ("total, count = 0, 0\n"
                     "for x in [3, 4]:\n"
                     "    # BEGIN SOLUTION (hint: add x, count it)\n"
                     "    total += x\n"
                     "    count += 1\n"
                     "    # END SOLUTION (fallback: total, count = total + x, count + 1)\n"
                     "mean = total / count")
    assert block_names(solved_source) == ["total"]
    stub = student_source(solved_source)
    assert '    total, count = unsolved("total", lambda: (total + x, count + 1))' in stub.split("\n")
    exec('exercise("total")\n' + stub, namespace)
    assert (namespace["total"], namespace["count"], namespace["mean"]) == (7, 2, 3.5)
    assert capsys.readouterr().out.count("⚠ exercise 'total' is not solved yet") == 1
    with pytest.raises(AssertionError, match="✗ exercise 'total' is not solved yet"):
        exec('solved("total")', namespace)
    exec('exercise("total")\n' + solved_source, namespace)  # the student's cell, solved and run again
    exec('solved("total")', namespace)


def exercise_notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Title")] + [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_the_student_edition_marks_the_exercise_and_its_check_cell(namespace):
    nb = exercise_notebook("import sdd_edu\nfrom sdd_edu.notebook import setup, check\nenv = 1",
                           SOLVED_IN_A_FUNCTION,
                           "print(z)",  # not a check cell
                           "check(z == 8, 'z is twice twice x')",
                           "# BEGIN SOLUTION (hint: 5)\nw = 5\n# END SOLUTION (fallback: w = 5)",
                           "check(w == 5, 'w')")
    assert exercise_names(nb) == {2: ["f"], 5: ["w"]}
    student = [c.source for c in student_edition(nb).cells]
    assert student[1] == ("import sdd_edu\nfrom sdd_edu.notebook import setup, check, exercise, solved, unsolved\n"
                          "from sdd_edu import course\nenv = 1")
    assert student[2].startswith('exercise("f")\nx = 2\n') and 'return unsolved("f", ' in student[2]
    assert student[3] == "print(z)"
    assert student[4] == 'solved("f")\ncheck(z == 8, \'z is twice twice x\')'
    assert student[5].startswith('exercise("w")\n') and student[6].startswith('solved("w")\n')
    from sdd_edu.notebook import check

    namespace["check"] = check
    exec(student[2], namespace)
    with pytest.raises(AssertionError, match="✗ exercise 'f' is not solved yet"):
        exec(student[4], namespace)
    exec(student[4].split("\n", 1)[1], namespace)  # the fallback is right: the check itself passes


def test_names_are_unique_within_a_notebook():
    block = "# BEGIN SOLUTION (hint: h)\nbest = 1\n# END SOLUTION (fallback: best = 1)"
    nb = exercise_notebook("from sdd_edu.notebook import check", block, block, "check(best == 1, 'best')")
    assert exercise_names(nb) == {2: ["best"], 3: ["best (2)"]}
    assert [c.source.split("\n")[0] for c in student_edition(nb).cells[2:]] == \
        ['exercise("best")', 'exercise("best (2)")', 'solved("best")']
    assert student_edition(nb).cells[4].source.startswith('solved("best")\nsolved("best (2)")\ncheck(')


def test_the_exercise_check_catches_a_fallback_that_cannot_stand():
    nb = exercise_notebook("# BEGIN SOLUTION (hint: h)\na = 1\nb = 2\n# END SOLUTION (fallback: a = 1)",
                           "check(a + b == 3, 'a and b')")
    assert exercise_problems(nb) == ["code cell 0: the fallback leaves b unbound, which later code reads"]
    nb.cells[1].source = nb.cells[1].source.replace("(fallback: a = 1)", "(fallback: a, b = 1, 2)")
    assert exercise_problems(nb) == []
    nb.cells[1].source = nb.cells[1].source.replace("(fallback: a, b = 1, 2)", "(fallback: return 1, 2)")
    assert exercise_problems(nb) == ["code cell 0: a 'return' fallback outside a function"]
    nb.cells[1].source = nb.cells[1].source.replace("(fallback: return 1, 2)", "(fallback: a, b = 1, 2)")
    nb.cells[2].source = "print(a + b)"
    assert exercise_problems(nb) == ["code cell 0: no later cell calls check(, so nothing would say the exercise "
                                     "is unsolved"]
    loop = ("def mean(xs):\n"
            "    total, count = 0, 0\n"
            "    for x in xs:\n"
            "        # BEGIN SOLUTION (hint: h)\n"
            "        total += x\n"
            "        count += 1\n"
            "        # END SOLUTION (fallback: total = total + x)\n"
            "    return total / count")
    nb = exercise_notebook(loop, "check(mean([1, 2]) == 1.5, 'mean')")
    assert exercise_problems(nb) == ["code cell 0: the fallback leaves count unbound, which later code reads"]


def test_the_exercise_check_catches_a_check_cell_that_later_cells_need():
    """solved(NAME) stops an unsolved exercise's check cell at its first line: what the rest of it binds is
    never bound, so a later cell must not read it (unless bound again first)."""
    nb = exercise_notebook("# BEGIN SOLUTION (hint: h)\nw = 5\n# END SOLUTION (fallback: w = 5)",
                           "import math\nref = math.floor(5.2)\ncheck(w == ref, 'w')",
                           "ref = 4\nprint(ref, [math for math in range(2)])\ndef f(math):\n    return math")
    assert exercise_problems(nb) == []  # ref bound again before it is read; the other maths are local
    nb.cells[3].source = "print(math.pi)"
    assert exercise_problems(nb) == ["code cell 1: checks an exercise and binds math, which a later cell reads: "
                                     "while the exercise is unsolved, solved(...) stops the cell first"]


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
    assert all(b.hint for b in blocks), "every solution block carries a hint for the stub"
    assert exercise_problems(nb) == []
    student = student_edition(nb)
    nbformat.validate(student)
    assert structure_problems(student) == []
    stubs = [c.source for c in student.cells if c.cell_type == "code"
             and ("raise NotImplementedError" in c.source or "unsolved(" in c.source)]
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_of_the_series_falls_back_and_its_check_cell_asks_whether_it_is_solved(path):
    nb = nbformat.read(path, as_version=4)
    blocks = [b for c in nb.cells if c.cell_type == "code" for b in solution_blocks(c.source)]
    assert all(b.fallback for b in blocks), "every solution block names sdd-edu's answer for an unsolved stub"
    student = student_edition(nb).cells
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert re.search(r"^from sdd_edu\.notebook import .*\bexercise, solved, unsolved$", student[code[0]].source, re.M)
    assert "\nfrom sdd_edu import course\n" in student[code[0]].source
    asked = {}
    for i, names in exercise_names(nb).items():
        assert student[i].source.startswith("".join(f'exercise("{n}")\n' for n in names))
        assert all(f'unsolved("{n}", lambda: ' in student[i].source for n in names)
        assert "raise NotImplementedError" not in student[i].source
        checks = next(j for j in code if j > i and "check(" in nb.cells[j].source)
        asked.setdefault(checks, []).extend(names)
    assert len(set(sum(asked.values(), []))) == len(blocks)  # a name per exercise, unique in its notebook
    for j, names in asked.items():  # the check cell starts with a solved line for each exercise before it
        assert student[j].source == "".join(f'solved("{n}")\n' for n in names) + nb.cells[j].source


def test_make_student_writes_the_edition(tmp_path):
    assert main(["student", str(tmp_path), *map(str, NOTEBOOKS)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == [p.name for p in NOTEBOOKS]
    assert sum(len([c for c in nbformat.read(tmp_path / n, as_version=4).cells
                    if "unsolved(" in c.source]) for n in written) >= 24


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


def test_a_hint_in_two_tiers_shows_the_nudge_on_the_stub_and_the_rest_collapsed_under_the_text():
    block = ("# BEGIN SOLUTION (hint: what doubles a number?) (more: multiply by 2 (not add 2))\n"
             "w = 2 * 5\n# END SOLUTION (fallback: w = 10)")
    nb = exercise_notebook("from sdd_edu.notebook import check", block, "check(w == 10, 'w')")
    assert solution_blocks(block)[0][3:] == ("what doubles a number?", "w = 10", "multiply by 2 (not add 2)")
    student = student_edition(nb).cells
    assert "# YOUR CODE HERE (hint: what doubles a number?)\n" in student[2].source
    assert "multiply by 2" not in student[2].source
    assert student[0].source.endswith("\n\n<details><summary>More help: <code>w</code></summary>\n\n"
                                      "multiply by 2 (not add 2)\n\n</details>")
    assert "<details>" not in nb.cells[0].source  # the instructor edition shows the solution, no help


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_second_tier_of_the_series_is_collapsed_in_the_student_edition(path):
    nb = nbformat.read(path, as_version=4)
    student = student_edition(nb)
    text = "\n".join(c.source for c in student.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    for i, names in exercise_names(nb).items():
        for name, block in zip(names, solution_blocks(nb.cells[i].source)):
            if block.more:
                assert f"<summary>More help: <code>{name}</code></summary>\n\n{block.more}\n\n" in text
                assert block.more not in code


def test_the_student_edition_carries_the_readme_its_notebooks_point_to(tmp_path):
    """make lab roots JupyterLab at student/: the glossary and the list of exercises must be there too."""
    from sdd_edu.notebook import main

    out = tmp_path / "student"
    assert main(["student", str(out), str(TUTORIALS / "00_setup_and_tour.ipynb")]) == 0
    assert (out / "README.md").read_text(encoding="utf-8") == (TUTORIALS / "README.md").read_text(encoding="utf-8")
    first_exercises = next(c for c in nbformat.read(out / "00_setup_and_tour.ipynb", as_version=4).cells
                           if c.cell_type == "markdown" and c.source.startswith("## Exercises"))
    assert "How the exercises work" in first_exercises.source and "<!--" not in first_exercises.source


def run_cell(source: str, namespace: dict, filename: str) -> None:
    """Run ``source`` as a kernel runs a cell: its text kept in linecache under the code's file name."""
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


def test_a_cell_that_computes_with_the_package_answer_is_not_solved(namespace):
    """Outside a function, the cell's own text tells the student's computation from a call of the answer."""
    import torch

    from sdd_edu.notebook import check

    namespace.update(check=check, course=type("course", (), {"twice": staticmethod(lambda y: y + y)}))
    run_cell('exercise("w")\nw = course.twice(2)', namespace, "<cell-w-1>")
    with pytest.raises(AssertionError, match="^✗ exercise 'w' calls sdd_edu.course"):
        exec('solved("w")', namespace)
    run_cell('exercise("cache_bytes")\nimport torch\ncache_bytes = 2 * torch.zeros(3).nbytes', namespace, "<c-2>")
    exec('solved("cache_bytes")', namespace)  # its own arithmetic
    namespace["model"] = type("m", (), {"new_cache": lambda self, n: torch.zeros(n)})()
    run_cell('exercise("cache_bytes")\ncache_bytes = 2 * model.new_cache(3).nbytes', namespace, "<c-3>")
    with pytest.raises(AssertionError, match=r"calls the package's own answer \(new_cache\)"):
        exec('solved("cache_bytes")', namespace)
    # the course imported under another name is still the course, in a cell and in a function
    for source in ("from sdd_edu.course import entropy as mine\nw = 4", "import sdd_edu.course as C\nw = 4",
                   "from sdd_edu import course as helpers\nw = 4"):
        run_cell('exercise("w")\n' + source, namespace, f"<cell-w-{hash(source)}>")
        with pytest.raises(AssertionError, match="calls sdd_edu.course"):
            exec('solved("w")', namespace)
    exec("def g(q):\n    from sdd_edu.course import entropy as mine\n    return mine(q)", namespace)
    with pytest.raises(AssertionError, match="calls sdd_edu.course"):
        exec('solved("g")', namespace)
    # another exercise's stub in the same cell does not count against this one
    run_cell('exercise("w")\nw = 4\nv = unsolved("v", lambda: course.twice(1))', namespace, "<cell-w-2>")
    exec('solved("w")', namespace)


def test_in_a_readers_kernel_an_unsolved_check_cell_says_so_and_runs_on(namespace, capsys, monkeypatch):
    from sdd_edu.notebook import check

    monkeypatch.setattr(notebook, "RUN_ON_WHEN_UNSOLVED", True)
    namespace["check"] = check
    exec(student_source("# BEGIN SOLUTION (hint: 5)\nw = 5\n# END SOLUTION (fallback: w = 5)"), namespace)
    capsys.readouterr()
    exec('solved("w")\ncheck(w == 5, "w is five")', namespace)  # no error: Run All goes on
    assert capsys.readouterr().out == ("✗ exercise 'w' is not solved yet: the cells above used sdd-edu's own answer "
                                       "(its checks below run silently on sdd-edu's answer)\n")
    check(False, "a prediction sdd-edu made for another task")  # on sdd-edu's answer: a line, not an error
    assert capsys.readouterr().out == "  (on sdd-edu's answer, not yours: ✗ a prediction sdd-edu made for another task)\n"
    notebook._speak_again()  # the kernel's next cell
    check(True, "heard again")
    assert capsys.readouterr().out == "✓ heard again\n"
    monkeypatch.setenv("SDD_EDU_GRADING", "1")  # the grader: an unsolved exercise fails its check cell
    with pytest.raises(AssertionError, match="not solved yet"):
        exec('solved("w")', namespace)
    notebook._speak_again()


def test_run_all_reaches_the_end_of_a_student_edition_with_every_exercise_unsolved(tmp_path):
    """In a real kernel, without allowing errors: the unsolved exercises' check cells do not stop the run."""
    from nbclient import NotebookClient

    nb = exercise_notebook("import sdd_edu\nfrom sdd_edu.notebook import setup, check\nenv = setup()",
                           SOLVED_IN_A_FUNCTION,
                           "check(z == 8, 'z is twice twice x')",
                           "# BEGIN SOLUTION (hint: 5)\nw = 5\n# END SOLUTION (fallback: w = 5)",
                           "check(w == 5, 'w is five')",
                           "print('the last cell ran', z + w)\ncheck(True, 'a later check speaks again')")
    student = student_edition(nb)
    student.cells[2].source = student.cells[2].source.replace("course_twice", "(lambda y: y + y)")
    NotebookClient(student, timeout=120, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in student.cells]
    assert "✗ exercise 'f' is not solved yet" in out[3] and "✓" not in out[3]
    assert "✗ exercise 'w' is not solved yet" in out[5] and "✓" not in out[5]
    assert out[6] == "the last cell ran 13\n✓ a later check speaks again\n"


def test_a_name_the_stub_bound_and_the_solution_left_out_is_not_solved(namespace):
    """A student who ran the stub, then wrote only part of the exercise: the other name still holds the stub's
    object (sdd-edu's answer), and the check cell says so."""
    import math

    stub = student_source("# BEGIN SOLUTION (hint: h)\ndef speedup(a):\n    return a + 1\nbest = speedup(1)\n"
                          "# END SOLUTION (fallback: best, speedup = 2, math.exp)")
    namespace["math"] = math
    exec('exercise("best")\n' + stub, namespace)  # the stub ran: speedup is math.exp, sdd-edu's
    exec('exercise("best")\nbest = 2', namespace)  # only the search written
    with pytest.raises(AssertionError, match="✗ exercise 'best': speedup still holds sdd-edu's answer"):
        exec('solved("best")', namespace)
    exec('exercise("best")\ndef speedup(a):\n    return a + 1\nbest = speedup(1)', namespace)  # all of it
    exec('solved("best")', namespace)
