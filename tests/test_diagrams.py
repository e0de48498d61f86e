"""The teaching diagrams: cheap, no model.  What each figure shows is read back from its traces."""

import plotly.graph_objects as go
import pytest
import torch

from sdd_edu.decoding.tree import tree_attention_mask
from sdd_edu.diagrams import (example_staged_step, feature_draft_diagram, kv_cache_diagram, staged_tree_diagram,
                              tree_mask_diagram)
from sdd_edu.errors import SddError
from sdd_edu import plots
from sdd_edu.plots import ORIGIN_COLORS

PARENTS = [-1, 0, 0, -1, 3, 1, 5]  # two branches off the root, one of depth 4: not symmetric, so a transpose shows


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"expected one trace named {name!r}, got {[t.name for t in fig.data]}"
    return found[0]


def one_line_error(fn, *args, match=None, **kw):
    with pytest.raises(SddError, match=match) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def assert_readable(fig):
    """Short title, legend below the plot (never over the title), a figure that stands alone."""
    assert isinstance(fig, go.Figure)
    assert 0 < len(fig.layout.title.text) <= plots.TITLE_CHARS and "<br>" not in fig.layout.title.text  # one line
    legend = fig.layout.legend  # below the plot: hanging from under the axes, or standing on the figure's bottom
    assert (legend.yanchor == "top" and legend.y < 0) or (legend.yref == "container" and legend.yanchor == "bottom"
                                                         and legend.y == 0)
    assert fig.layout.template.layout.paper_bgcolor == "white"  # plotly_white, as in plots.py
    fig.to_html(include_plotlyjs=False)  # static: no widget frontend needed


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("P, S, layers", [(6, 4, 1), (1, 0, 1), (3, 5, 2)])
def test_kv_cache_shows_exactly_the_written_slots(P, S, layers):
    prompt, new = [f"p{i}" for i in range(P)], [f"n{i}" for i in range(S)]
    fig = kv_cache_diagram(prompt, new, capacity=P + S + 2, layers=layers)
    assert_readable(fig)
    cells = trace(fig, "cache slots")
    assert len(cells.z) == 2 * layers  # keys and values of every layer
    for row, text in zip(cells.z, cells.text):
        assert len(row) == P + S + 2
        written = [j for j, c in enumerate(row) if c != 0]
        assert written == list(range(P + S))  # written by position, nothing beyond
        assert [row[j] for j in written] == [1] * P + [2] * S  # the prefill's, then the decode steps'
        # slot P + t - 1 carries decode step t's token
        assert [text[P + t - 1] for t in range(1, S + 1)] == [f"n{t - 1}<br>step {t}" for t in range(1, S + 1)]
        assert all(text[j].endswith("prefill") for j in range(P)) and list(text[P + S:]) == ["", ""]
    names = [t.name for t in fig.data]
    assert "free slot" in names and any(n.startswith("slots ") and n.endswith("attends to") for n in names)


def test_kv_cache_band_covers_the_slots_the_query_reads():
    def band(fig):
        return next(s for s in fig.layout.shapes if s.name == "attended slots")

    fig = kv_cache_diagram(["a", "b", "c"], ["d", "e", "f"])  # default: the last step, slots 0..5
    assert (band(fig).x0, band(fig).x1) == (-0.5, 5.5)
    assert "step 3" in fig.layout.annotations[0].text and "0..5" in fig.layout.annotations[0].text
    fig = kv_cache_diagram(["a", "b", "c"], ["d", "e", "f"], query_step=1)
    assert (band(fig).x0, band(fig).x1) == (-0.5, 3.5)
    mine = next(s for s in fig.layout.shapes if s.name == "written by this forward")
    assert (mine.x0, mine.x1) == (2.5, 3.5)  # step 1 wrote slot 3 only
    fig = kv_cache_diagram(["a", "b", "c"], ["d"], query_step=0)  # the prefill wrote 0..2 at once
    assert (band(fig).x1, next(s for s in fig.layout.shapes if s.name == "written by this forward").x1) == (2.5, 2.5)


def test_kv_cache_bad_inputs():
    one_line_error(kv_cache_diagram, [], ["x"], match="empty")
    one_line_error(kv_cache_diagram, ["a", "b"], ["c", "d"], capacity=3, match="4 slots")
    one_line_error(kv_cache_diagram, ["a"], ["b"], query_step=2)
    one_line_error(kv_cache_diagram, ["a"], ["b"], layers=0)


# ----------------------------------------------------------------------------- tree mask

def ancestors_or_self(parents, i):
    out = set()
    while i != -1:
        out.add(i)
        i = parents[i]
    return out


@pytest.mark.parametrize("parents", [PARENTS, [-1], [-1, 0, 1, 2], [-1, -1, -1], [-1, 0, -1, 2, 0, 1]])
def test_tree_mask_is_the_engines(parents):
    fig = tree_mask_diagram(parents)
    assert_readable(fig)
    z = trace(fig, "tree attention mask").z
    engine = tree_attention_mask(parents, cached=0, chain=1)[0].int().tolist()
    assert [list(r) for r in z] == engine
    # and, independently of the engine: the root, the ancestors and itself, nothing else
    n = len(parents)
    expected = [[1] + [0] * n] + [[1] + [int(j in ancestors_or_self(parents, i)) for j in range(n)]
                                  for i in range(n)]
    assert [list(r) for r in z] == expected


def test_tree_mask_figure_draws_the_tree_with_its_labels():
    labels = ["the", " cat", " dog", "the", " sat", " ran", "."]  # repeated labels stay separate ticks
    fig = tree_mask_diagram(PARENTS, labels=labels, root_label="<root>")
    assert {t.name for t in fig.data} == {"parent -> child", "root", "nodes", "tree attention mask"}
    assert list(fig.layout.xaxis2.ticktext) == ["<root>"] + labels == list(fig.layout.yaxis2.ticktext)
    assert list(fig.layout.xaxis2.tickvals) == list(range(len(PARENTS) + 1))
    nodes = trace(fig, "nodes")
    assert list(nodes.text) == labels
    depth = list(nodes.x)
    assert depth == [1, 2, 2, 1, 2, 3, 4]  # one level below the parent
    edges = trace(fig, "parent -> child")
    assert len(edges.x) == 3 * len(PARENTS)  # one segment (and a gap) per node
    assert list(tree_mask_diagram([-1, 0]).layout.xaxis2.ticktext) == ["root", "a", "b"]


@pytest.mark.parametrize("parents, match", [
    ([], "empty"),
    ([-1, 5], "out of range"),
    ([-1, -2], "out of range"),
    ([1, 0], "cycle"),
    ([-1, 1], "cycle"),
    ([-1, 2, 1], "cycle"),
    ([1, -1], "parents-first"),
    ([-1, 0.5], "not an integer"),
])
def test_tree_mask_bad_trees(parents, match):
    one_line_error(tree_mask_diagram, parents, match=match)


def test_tree_mask_label_count():
    one_line_error(tree_mask_diagram, [-1, 0], labels=["x"], match="one label per node")


# ----------------------------------------------------------------------------- staged tree

def test_staged_example_has_both_stages():
    step = example_staged_step()
    fig = staged_tree_diagram()  # the built-in example, no model needed
    assert_readable(fig)
    kept, dropped = trace(fig, "guess kept by the draft"), trace(fig, "guess dropped by the draft")
    assert len(kept.x) + len(dropped.x) == len(step["guesses"]["parents"])
    assert sorted(kept.text) == sorted([" a", " +", " b", " sum", "\\n"])  # the guesses the draft's tree holds
    assert sorted(dropped.text) == sorted([" b", " (", ",", " -", " 1"])
    assert dropped.marker.color == "white"  # hollow
    origins = step["tree"]["origins"]
    ngram, draft = trace(fig, "guessed by the n-gram (free for the draft)"), trace(fig, "proposed by the draft alone")
    assert (len(ngram.x), len(draft.x)) == (origins.count("ngram"), origins.count("draft"))
    assert ngram.marker.color == ORIGIN_COLORS["ngram"] and draft.marker.color == ORIGIN_COLORS["draft"]
    target = trace(fig, "the target's own token")
    assert target.marker.color == ORIGIN_COLORS["target"] and list(target.text) == ["\\n"]
    path = trace(fig, "accepted by the target")
    assert path.line.color == ORIGIN_COLORS["target"]
    assert len(path.x) == 3 * (len(step["accepted_nodes"]) + 1)  # the accepted edges and the target's
    # the target's token hangs below the last accepted node, one level deeper
    last = step["accepted_nodes"][-1]
    last_x = [x for x, t in zip(ngram.x, ngram.text) if t.startswith(repr(step["tree"]["tokens"][last])[1:-1] + " ")]
    assert target.x[0] == max(last_x) + 1


def test_staged_from_a_trace_entry():
    """A trace holds token ids and no guesses: ``decode`` names them, the kept guesses stand in."""
    vocab = {1: "x", 2: " =", 3: " 1", 4: " 2", 5: " y"}
    step = {"proposed": 5, "accepted": 1,
            "tree": {"tokens": [1, 2, 5, 3, 4], "parents": [-1, 0, -1, 1, 2],
                     "origins": ["lookup", "ngram", "draft", "draft", "lookup"],  # the last: lookup below a draft node
                     "draft_probs": [0.5, 0.4, 0.3, 0.2, 0.1]},
            "accepted_nodes": [0]}
    fig = staged_tree_diagram(step, decode=lambda ids: "".join(vocab[i] for i in ids), root_text="print")
    kept = trace(fig, "guess kept by the draft")
    assert list(kept.text) == ["x", " ="]  # the guessed path from the root; node 4 was not a guess
    assert not [t for t in fig.data if t.name == "guess dropped by the draft"]
    assert len(trace(fig, "copied by prompt lookup").x) == 2
    assert list(trace(fig, "the target's own token").text) == ["target's token"]
    assert "x  0.50" in trace(fig, "copied by prompt lookup").text


def test_staged_guesses_as_the_drafter_returns_them():
    step = example_staged_step()
    g = step.pop("guesses")
    fig = staged_tree_diagram(step, guesses=(g["tokens"], g["parents"]))
    assert len(trace(fig, "guess dropped by the draft").x) == 5
    fig = staged_tree_diagram(step)  # no guesses: only the kept ones are known
    assert len(trace(fig, "guess kept by the draft").x) == 5
    assert not [t for t in fig.data if t.name == "guess dropped by the draft"]


def bad_step(**changes):
    step = example_staged_step()
    step["tree"] = {**step["tree"], **changes.pop("tree", {})}
    return {**step, **changes}


@pytest.mark.parametrize("step, match", [
    (bad_step(tree={"tokens": [], "parents": [], "origins": []}), "no tree"),
    ({"proposed": 0}, "no tree"),
    (bad_step(tree={"parents": [-1, 0, 1, -1, 0, 2, 2, 9]}), "out of range"),
    (bad_step(tree={"parents": [1, 0, 1, -1, 0, 2, 2, 5]}), "cycle"),
    (bad_step(accepted_nodes=[0, 2]), "not a path"),
    (bad_step(accepted_nodes=[1]), "not a path"),
    (bad_step(tree={"origins": ["ngram"] * 7 + ["oracle"]}), "unknown origin"),
    (bad_step(tree={"tokens": [" a"]}), "one each"),
    (bad_step(guesses={"tokens": [" a", " b"], "parents": [-1, 3]}), "out of range"),
])
def test_staged_bad_steps(step, match):
    one_line_error(staged_tree_diagram, step, match=match)


# ----------------------------------------------------------------------------- the feature draft

def test_feature_draft_diagram_aligns_each_row_with_what_it_reads():
    fig = feature_draft_diagram(["def", " fib", "(n", "):"], ["\n", "   ", " if"])
    assert_readable(fig)
    tokens, features = trace(fig, "committed tokens (the newest: the target's own)"), trace(fig, "the target's features")
    rows = trace(fig, "a draft row: a feature joined with the next token's embedding")
    deeper = trace(fig, "a deeper row: the predicted feature, the drafted token")
    predicted = trace(fig, "predicted features (′), through the target's head")
    drafted = trace(fig, "drafted tokens (the target verifies them next)")
    assert list(tokens.x) == [0, 1, 2, 3] and list(features.x) == [0, 1, 2]  # the newest token has no feature yet
    # row i reads f_i and token i + 1, at token i + 1's position; deeper rows read the level above's prediction
    assert list(rows.x) == [1, 2, 3] and list(rows.text) == ["f0 + t1", "f1 + t2", "f2 + t3"]
    assert list(deeper.x) == [4, 5] and list(deeper.text) == ["f3′ + t4", "f4′ + t5"]
    assert list(predicted.x) == [1, 2, 3, 4, 5]  # one prediction per row; the last gives the last drafted token
    assert list(drafted.x) == [4, 5, 6] and drafted.text[0].endswith("\\n")


def test_feature_draft_diagram_bad_inputs():
    with pytest.raises(SddError, match="at least 2 committed tokens"):
        feature_draft_diagram(["x"], ["y"])
    with pytest.raises(SddError, match="at least one drafted token"):
        feature_draft_diagram(["x", "y"], [])
    fig = feature_draft_diagram(["a", "b"], ["c"])  # one row over the context, no deeper row
    assert not [t for t in fig.data if t.name == "a deeper row: the predicted feature, the drafted token"]
