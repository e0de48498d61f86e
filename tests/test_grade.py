"""``python -m sdd_edu grade``: a folder of submitted student notebooks in, points per exercise out.

The end-to-end test grades a small notebook made of notebook 03's own cells (its setup cell, the acceptance
rule as a sampler, expected tokens per forward, each with its check), so that each submission's kernel runs
in seconds: one student solved the sampler, one typed a plausible wrong rule and weakened its check, one
handed in the stubs, one a file that is no notebook.
"""

import csv
import json

import nbformat
import pytest

from sdd_edu.cli import main
from sdd_edu.grade import HIDDEN, SOLVED_LINE, find_submissions, graded_copy
from sdd_edu.notebook import cell_tree, student_edition
from tests.test_exercises import EXERCISES, SETUP_03, SETUP_03_FORMULAS, TUTORIALS, exercise_cells

SAMPLER, SUM = EXERCISES["03 the acceptance rule as a sampler"], EXERCISES["03 expected tokens per forward"]


def small_tutorial():
    """Notebook 03's setup cell, then two of its exercises with what they read and their check cells."""
    real = nbformat.read(TUTORIALS / "03_speculative_decoding.ipynb", as_version=4)
    first = next(c for c in real.cells if c.cell_type == "code")
    sampler, sampler_checks, _ = exercise_cells(SAMPLER)
    total, total_checks, _ = exercise_cells(SUM)
    nb = nbformat.v4.new_notebook()
    sources = [first.source, SETUP_03 + "import torch", sampler, sampler_checks,
               SETUP_03_FORMULAS.replace("from sdd_edu.notebook import check\n", ""), total, total_checks]
    nb.cells = [nbformat.v4.new_markdown_cell("# Speculative sampling, in brief")] + \
               [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def solve(student_nb, exercise: str, source: str):
    """The student's notebook with ``exercise``'s cell holding ``source`` below its exercise(...) line."""
    cell = next(c for c in student_nb.cells if c.cell_type == "code" and c.source.startswith(f'exercise("{exercise}")'))
    cell.source = cell.source.split("\n", 1)[0] + "\n" + source
    return student_nb


def test_the_grader_restores_weakened_and_renumbered_check_cells():
    tutorial = small_tutorial()
    student = student_edition(tutorial)
    checks = [c for c in student.cells if c.cell_type == "code" and SOLVED_LINE.match(c.source.split("\n")[0])]
    assert len(checks) == 2
    checks[0].source = 'solved("speculative_samples")\npass  # the checks deleted'
    checks[1]["id"] = "made-elsewhere"  # a copy with new cell ids: found by its solved(...) line
    graded, where = graded_copy(student, tutorial, "03")
    assert graded.cells[where["speculative_samples"]].source.endswith(
        next(c.source for c in student_edition(tutorial).cells if c.get("id") == checks[0].get("id")))
    assert "check(" in graded.cells[where["by_hand"]].source
    assert graded.cells[-1].source.endswith("print(hidden_report('03', globals()))")
    del student.cells[student.cells.index(checks[1])]
    assert graded_copy(student, tutorial, "03")[1]["by_hand"] is None


def test_submissions_are_found_per_student_folder_or_by_file_name(tmp_path):
    tutorials = tmp_path / "tutorials"
    tutorials.mkdir()
    nbformat.write(small_tutorial(), tutorials / "03_speculative_decoding.ipynb")
    for path in ("alice/03_speculative_decoding.ipynb", "bob_03_speculative_decoding.ipynb", "carol-03_mine.ipynb",
                 "alice/.ipynb_checkpoints/03_speculative_decoding-checkpoint.ipynb", "notes.ipynb",
                 "graded/alice/03_speculative_decoding.ipynb"):
        (tmp_path / "in" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / path).write_text("{}")
    found, unmatched = find_submissions(tmp_path / "in", tutorials, skip=tmp_path / "in" / "graded")
    assert [(s.student, s.tutorial.name) for s in found] == [
        ("alice", "03_speculative_decoding.ipynb"), ("bob", "03_speculative_decoding.ipynb"),
        ("carol-03_mine", "03_speculative_decoding.ipynb")]
    assert unmatched == ["notes.ipynb: no tutorial's name or number in the file's name"]


def test_a_missing_folder_is_one_line(capsys, tmp_path):
    assert main(["grade", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'} is not a folder of submitted notebooks"


@pytest.mark.timeout(600)
def test_a_folder_of_submissions_is_graded_per_exercise(tmp_path, capsys):
    tutorials, submissions = tmp_path / "tutorials", tmp_path / "submitted"
    tutorials.mkdir()
    tutorial = small_tutorial()
    nbformat.write(tutorial, tutorials / "03_speculative_decoding.ipynb")
    sampler_solution = "\n".join(exercise_cells(SAMPLER)[0].split("\n"))
    students = {
        "alice": solve(student_edition(tutorial), "speculative_samples", sampler_solution),
        "bob": solve(student_edition(tutorial), "speculative_samples", sampler_solution.replace(
            "accepted = u * q[x] < p[x]", "accepted = u < p[x]")),  # p(x), not p(x)/q(x)
        "carol": student_edition(small_tutorial()),  # made elsewhere: other cell ids
    }
    bob = students["bob"]
    solve(bob, "by_hand", exercise_cells(SUM)[0])
    weakened = next(c for c in bob.cells if c.source.startswith('solved("speculative_samples")'))
    weakened.source = 'solved("speculative_samples")\ncheck(True, "looks fine")'  # restored by the grader
    for name, nb in students.items():
        (submissions / name).mkdir(parents=True)
        nbformat.write(nb, submissions / name / "03_speculative_decoding.ipynb")
    (submissions / "dave").mkdir()
    (submissions / "dave" / "03_speculative_decoding.ipynb").write_text("not a notebook")

    out = tmp_path / "grades" / "grades.csv"
    assert main(["grade", str(submissions), "--tutorials", str(tutorials), "--out", str(out), "--timeout", "300"]) == 0
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(out.open())}
    points = {key: (int(r["points"]), int(r["max_points"])) for key, r in rows.items()}
    assert points == {
        ("alice", "speculative_samples"): (2, 2), ("alice", "by_hand"): (0, 1),
        ("bob", "speculative_samples"): (0, 2), ("bob", "by_hand"): (1, 1),
        ("carol", "speculative_samples"): (0, 2), ("carol", "by_hand"): (0, 1),
        ("dave", "speculative_samples"): (0, 2), ("dave", "by_hand"): (0, 1),
    }
    assert "not solved yet" in rows[("alice", "by_hand")]["note"]
    assert "hidden: another p and q" in rows[("bob", "speculative_samples")]["note"]
    assert "hidden: not solved" in rows[("carol", "speculative_samples")]["note"]
    assert rows[("dave", "by_hand")]["note"].startswith("unreadable notebook")
    printed = capsys.readouterr().out
    assert "alice: 2/3 points" in printed and "bob: 1/3 points" in printed and "carol: 0/3 points" in printed
    graded = nbformat.read(tmp_path / "grades" / "graded" / "bob" / "03_speculative_decoding.ipynb", as_version=4)
    last = "".join(o.get("text", "") for o in graded.cells[-1].outputs)
    assert json.loads(last.split("SDD_EDU_HIDDEN_TESTS ", 1)[1])["speculative_samples"]["passed"] is False


def _top_level_names(source: str) -> set:
    """The names a cell binds in the kernel's globals: assignments, loop targets, definitions, imports, also
    inside top-level loops, conditions and with blocks (a comprehension's names stay inside it)."""
    import ast

    names: set = set()

    def bind(target):
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                bind(element)
        elif isinstance(target, ast.Starred):
            bind(target.value)

    def walk(body):
        for node in body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    bind(target)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                bind(node.target)
            elif isinstance(node, (ast.For, ast.While, ast.If)):
                if isinstance(node, ast.For):
                    bind(node.target)
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.With):
                for item in node.items:
                    if item.optional_vars is not None:
                        bind(item.optional_vars)
                walk(node.body)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    walk(part)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)

    walk(cell_tree(source).body)
    return names


@pytest.mark.parametrize("number", sorted({h.notebook for h in HIDDEN}))
def test_no_later_cell_rebinds_a_hidden_tested_function(number):
    """The hidden tests run on the kernel's globals at the end of the notebook: a later `keep = ...` or
    `for width, depth, budget in ...` would hand them a tensor or a number in place of the student's function."""
    path, = TUTORIALS.glob(f"{number}_*.ipynb")
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    for hidden in (h for h in HIDDEN if h.notebook == number):
        binding = [i for i, source in enumerate(cells) if hidden.name in _top_level_names(source)]
        assert len(binding) == 1, f"{path.name}: {hidden.name} is bound in code cells {binding}, not once"


def test_the_capstone_counts_three_times_an_exercise():
    from sdd_edu.grade import HIDDEN, WEIGHTS, Score

    assert set(WEIGHTS) <= {(h.notebook, h.name) for h in HIDDEN}  # every weighted exercise has hidden tests
    solved = Score("alice", "07_beyond_the_paper", "my_planner", True, True, weight=WEIGHTS[("07", "my_planner")])
    half = Score("bob", "07_beyond_the_paper", "my_planner", True, False, weight=3)
    assert (solved.points, solved.max_points) == (6, 6) and (half.points, half.max_points) == (3, 6)
    assert Score("carol", "07_beyond_the_paper", "chain_or_tree", True, None).max_points == 1
