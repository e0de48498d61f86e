"""Every view built headlessly on a tiny ladder: each control changes the figure, bad settings show a message."""

import re

import pytest
import plotly.graph_objects as go

from sdd_edu import plots, widgets
from sdd_edu.widgets import PLOTLY_MIME
from sdd_edu.errors import SddError
from sdd_edu.ladders import make_ladder
from sdd_edu.loading import load_model
from sdd_edu.measure.acceptance import acceptance_records, expected_tokens_per_forward
from sdd_edu.model import ModelConfig
from sdd_edu.ngram import PromptLookup
from tests.helpers import save_tiny_checkpoint

PROMPTS = ("def add(a, b):\n    return", "for i in range(10):\n    print(")


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    tdir = save_tiny_checkpoint(tmp_path_factory.mktemp("t"), "llama", seed=0, max_len=1024)
    ddir = save_tiny_checkpoint(tmp_path_factory.mktemp("d"), "llama", seed=1, max_len=1024, n_layer=1)
    return make_ladder(load_model(str(tdir), device="cpu", dtype="fp32"),
                       load_model(str(ddir), device="cpu", dtype="fp32"), PromptLookup(), name="tiny")


def data_of(view):
    return [(tuple(t.y) if t.y is not None else None, tuple(t.text) if t.text is not None else None)
            for t in view.figure.data]


def assert_each_control_changes_the_figure(view, changes, shown=lambda view: None):
    """``shown``: what else the view displays (text) that a control may change instead of the data."""
    assert view.ok, view.message.value
    state = lambda: (data_of(view), view.figure.layout.title.text, shown(view))
    for name, value in changes:
        before = state()
        view.controls[name].value = value
        assert view.ok, f"{name}={value!r}: {view.message.value}"
        assert state() != before, f"changing {name} left the view as it was"


def assert_bad_setting_shows_a_message(view, name, value, words):
    good = data_of(view)
    view.controls[name].value = value
    assert not view.ok and words in view.message.value, view.message.value
    assert data_of(view) == good  # the last good figure stays


def assert_reads_well_in_jupyterlab(view):
    """What a JupyterLab review asked of each view: whole labels, the output's width, padded tables, fitting titles."""
    for name, control in view.controls.items():
        assert control.style.description_width == "initial", f"the label of {name} is cut"
    layout = view.figure.layout
    # no fixed width: the frontend fits the figure to the output area (tests/test_browser.py measures it)
    assert layout.width is None and layout.autosize
    shown = view.plot.outputs[-1]["data"][PLOTLY_MIME]  # what the frontend draws is the figure kept
    assert len(view.plot.outputs) == 1 and shown["layout"]["title"]["text"] == layout.title.text
    assert "width" not in shown["layout"] and "responsive" not in shown["config"]
    assert_title_clear_of_toolbar_and_panel_titles(view.figure)
    # a title in words: no nan or None, no dict, list or object repr
    assert not re.search(r"\bnan\b|\bNone\b|[{}\[\]]|\w\(", layout.title.text), layout.title.text
    assert all(len(line) <= plots.TITLE_CHARS for line in layout.title.text.split("<br>")), layout.title.text
    for child in view.children:
        if isinstance(child, widgets.widgets.HTML) and "<table" in child.value:
            cells = re.findall(r"<t[dh]\b[^>]*>", child.value)
            assert cells and all("padding" in c for c in cells), child.value


def is_panel_title(annotation):
    # make_subplots writes a panel's title as an annotation standing on the panel's top edge
    return annotation.xref == "paper" and annotation.yref == "paper" and annotation.yanchor == "bottom"


def assert_title_clear_of_toolbar_and_panel_titles(fig):
    """In px from the figure's top: the toolbar takes ~30 px, then the title, then ~25 px of panel titles."""
    layout = fig.layout
    lines = layout.title.text.count("<br>") + 1
    panel_titles = any(is_panel_title(a) for a in layout.annotations)
    assert layout.title.yref == "container" and layout.title.yanchor == "top"
    assert layout.title.pad.t >= 30
    assert layout.title.pad.t + 22 * lines + (25 if panel_titles else 0) <= layout.margin.t


def assert_legend_clear_of_subplot_titles(fig):
    """Panel titles stand on the panels' top edges; the legend must be out of their band, below the axes."""
    layout = fig.layout
    titles = [a for a in layout.annotations if is_panel_title(a)]
    assert len(titles) == 2
    legend = layout.legend
    height, top, bottom = layout.height, layout.margin.t, layout.margin.b
    # the legend's anchor in paper coordinates (0 = the lowest panel's bottom edge, 1 = the top panel's top)
    y = legend.y if legend.yref in (None, "paper") else (legend.y * height - bottom) / (height - top - bottom)
    assert y < min(a.y for a in titles)
    # anchored below the axes: hanging from a paper y < 0, or standing on the figure's bottom edge (plotly then
    # reserves room for it under the x axes)
    assert y < 0 and (legend.yanchor == "top" or (legend.yref == "container" and legend.yanchor == "bottom"))
    assert_title_clear_of_toolbar_and_panel_titles(fig)


CEILINGS = {"fp32": {"device": "cpu", "dtype": "float32", "peak_flops": 2e11, "bandwidth_bytes": 2e10},
            "bf16": {"device": "cpu", "dtype": "bfloat16", "peak_flops": 8e11, "bandwidth_bytes": 2e10},
            "fp16": {"device": "cpu", "dtype": "float16", "peak_flops": 1e11, "bandwidth_bytes": 2e10}}


def test_intensity_explorer():
    small = ModelConfig(family="llama", vocab_size=500, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128,
                        max_seq_len=512)
    big = ModelConfig(family="gpt2", vocab_size=500, n_layer=4, n_head=4, n_kv_head=4, d_model=128, d_ff=512,
                      max_seq_len=512)
    view = widgets.intensity_explorer({"small": small, "big": big}, CEILINGS)
    tree_x = lambda: [t.x[0] for t in view.figure.data if t.name and t.name.startswith("tree")][0]
    x0 = tree_x()
    view.controls["tokens"].value = 64
    assert tree_x() > x0  # more tokens per forward: higher intensity
    assert_each_control_changes_the_figure(view, [("model", "big"), ("gamma", 8), ("context", 1024),
                                                  ("dtype", "bf16")])
    assert "memory" in view.table.value
    assert_bad_setting_shows_a_message(view, "context", -5, "context")
    view.controls["context"].value = 256
    assert view.ok
    assert isinstance(view.static(), go.Figure)
    assert_reads_well_in_jupyterlab(view)


def test_acceptance_explorer(ladder):
    view = widgets.acceptance_explorer(ladder, PROMPTS, max_new_tokens=12)
    assert view.results and all(r.trace for r in view.results)
    assert_each_control_changes_the_figure(view, [("gamma", 2), ("method", "tree"), ("width", 3), ("depth", 2),
                                                  ("budget", 4), ("temperature", 0.8)])
    assert view.controls["gamma"].disabled and not view.controls["width"].disabled
    assert_reads_well_in_jupyterlab(view)
    assert_legend_clear_of_subplot_titles(view.figure)
    assert_bad_setting_shows_a_message(view, "budget", 0, "tree size")
    view.controls["budget"].value = 5
    assert_bad_setting_shows_a_message(view, "temperature", -1.0, "temperature")


def test_latency_dashboard(ladder):
    view = widgets.latency_dashboard(ladder, prompts=1, max_new_tokens=8)
    names = list(view.figure.data[0].x)
    assert names == ["baseline", "speculative", "tree", "staged"]
    assert "acc" in view.figure.data[0].text[1]  # acceptance beside every speedup
    view.controls["methods"].value = ("speculative",)
    assert list(view.figure.data[0].x) == ["baseline", "speculative"]
    assert_reads_well_in_jupyterlab(view)
    assert_legend_clear_of_subplot_titles(view.figure)
    assert_each_control_changes_the_figure(view, [("mode", "topk50"), ("gamma", 3), ("methods", ("tree",)),
                                                  ("width", 3), ("depth", 2), ("budget", 5)])
    assert_bad_setting_shows_a_message(view, "gamma", 0, "gamma")


def test_latency_dashboard_shows_a_given_benchmark_first(ladder):
    from sdd_edu.measure.bench import run_bench

    bench = run_bench(ladder, ["baseline", "tree"], ["greedy", "topk50"], prompts=1, max_new_tokens=6,
                      progress=False)
    view = widgets.latency_dashboard(ladder, bench=bench)
    assert view.controls["mode"].value == "both"  # the control says what is shown
    bars = view.figure.data[0]
    assert list(bars.x) == ["baseline<br>greedy", "tree<br>greedy", "baseline<br>top-k 50", "tree<br>top-k 50"]
    # one table row per method and mode, the same rows as the bars
    rows = re.findall(r"<tr><td[^>]*>(\w+)</td><td[^>]*>([^<]+)</td><td[^>]*>([^<]+)</td><td[^>]*>([\d.]+)</td>",
                      view.table.value)
    assert [(m, d) for m, d, _, _ in rows] == [("baseline", "greedy"), ("tree", "greedy"), ("baseline", "top-k 50"),
                                               ("tree", "top-k 50")]
    assert [float(t) for *_, t in rows] == [round(y, 1) for y in bars.y]
    assert {p for _, _, p, _ in rows} == {"eager"}
    with pytest.raises(SddError, match="no rows for mode 'sampled'; it ran greedy, topk50"):
        plots.latency_bars_figure(bench, mode="sampled")


def test_token_origin_view(ladder):
    view = widgets.token_origin_view(ladder, PROMPTS, max_new_tokens=16)
    res = view.result
    assert view.text.value.count("<span title=") == len(res.origins)
    assert_each_control_changes_the_figure(view, [("method", "baseline"), ("prompt", PROMPTS[1]),
                                                  ("temperature", 1.0)], shown=lambda v: v.text.value)
    assert "target 16" in view.text.value  # baseline: every token from the target
    assert_reads_well_in_jupyterlab(view)
    assert_bad_setting_shows_a_message(view, "temperature", -0.5, "temperature")
    assert isinstance(view.static(), str)


def test_tree_view(ladder):
    agreeing = make_ladder(ladder.target, ladder.target, PromptLookup())  # every draft accepted: full trees
    view = widgets.tree_view(agreeing, PROMPTS[0], method="tree", max_new_tokens=12, width=2, depth=3, budget=6)
    assert view.step.max == len(view.result.trace) - 1 >= 1
    nodes = lambda: sum(len(t.x) for t in view.figure.data if t.name and t.name.startswith("proposed"))
    assert nodes() == len(view.result.trace[0]["tree"]["tokens"])
    before = data_of(view)
    view.step.value = 1
    assert data_of(view) != before
    assert nodes() == len(view.result.trace[1]["tree"]["tokens"])
    assert view.result.trace[1]["accepted"] >= 1  # the draft is the target: its top path is accepted
    assert_reads_well_in_jupyterlab(view)
    assert view.step.style.description_width == "initial"
    assert_each_control_changes_the_figure(view, [("budget", 3), ("width", 1), ("depth", 2), ("method", "staged")])
    assert_bad_setting_shows_a_message(view, "depth", 0, "depth")


def test_tree_labels_sit_above_the_accepted_path():
    """Edges are traces; labels are annotations, which plotly draws above every trace, each on a white box."""
    step = {"tree": {"parents": [-1, 0, 0, 1], "tokens": [5, 6, 7, 8], "origins": ["draft", "ngram", "draft", "draft"],
                     "draft_probs": [0.9, 0.05, 0.5, 0.7]}, "accepted_nodes": [0, 1]}
    fig = plots.tree_figure(step, decode=lambda ids: f"t{ids[0]}")
    nodes = [t for t in fig.data if t.name and t.name.startswith("proposed")]
    assert all(t.mode == "markers" for t in nodes)  # no text on the trace layer, where edges cross it
    labels = [a for a in fig.layout.annotations if a.xref in (None, "x")]
    assert [a.text.replace("<b>", "").replace("</b>", "") for a in labels] == ["t5 0.90", "t6 0.05", "t7 0.50",
                                                                              "t8 0.70"]
    assert all(a.bgcolor and a.showarrow is False and a.xanchor == "left" for a in labels)
    assert [a.font.color == "#d62728" for a in labels] == [True, True, False, False]  # the accepted path in red


def test_log_axes_label_their_ticks_in_full():
    """Ticks at 1, 10, 100 (with 2 and 5 between on a short axis), each labelled with its whole value."""
    assert plots.log_ticks(0.25, 300)["ticktext"] == ["1", "10", "100"]
    short = plots.log_ticks(1, 512)
    assert short["tickvals"] == [1, 2, 5, 10, 20, 50, 100, 200, 500] and short["ticktext"][-1] == "500"
    assert plots.log_ticks(0.01, 5e4)["ticktext"] == ["0.01", "0.1", "1", "10", "100", "1k", "10k"]
    assert plots.log_ticks(0, 10) == {} and plots.log_ticks(5, 5) == {}
    fig = plots.roofline_figure(CEILINGS["fp32"], [{"name": "one", "intensity": 0.5}])
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.type == "log" and axis.tickmode == "array" and len(axis.tickvals) >= 2
        assert "(" in axis.title.text or "/s" in axis.title.text  # the unit is in the title
    assert plots.latency_figure(CURVES).layout.xaxis.tickmode == "array"


def test_titles_say_not_measured_instead_of_nan():
    assert plots.fmt_measured(float("nan")) == plots.fmt_measured(None) == "not measured"
    assert plots.fmt_measured(1.234, ".1f", "x") == "1.2x"
    assert plots.settings_text({"gamma": 4}) == "draft length 4"
    assert plots.settings_text({"width": 2, "budget": 8}) == "width 2, tree size 8"


def test_static_figures_render_to_html_files(ladder, tmp_path):
    from sdd_edu import generate

    res = generate(ladder, PROMPTS[0], method="staged", max_new_tokens=10, width=2, depth=3, budget=5)
    rec = acceptance_records([res])
    figs = {"tree": plots.tree_figure(res.trace[0], decode=ladder.target.decode),
            "acceptance": plots.acceptance_figure(rec, 3),
            "roofline": plots.roofline_figure(CEILINGS["fp32"], [{"name": "one", "intensity": 0.5}]),
            "origins": plots.origin_fractions_figure(res.origins)}
    for name, fig in figs.items():
        path = plots.save_figure(fig, tmp_path / f"{name}.html")
        text = path.read_text()
        assert path.stat().st_size > 100_000 and "plotly" in text  # self-contained: plotly.js inside
    page = plots.token_origin_html(plots.token_pieces(ladder.target, res.token_ids, res.origins), prompt=PROMPTS[0])
    assert page.count("<span title=") == len(res.origins)


CURVES = {name: [{"tokens": n, "ms": k * (1 + n / 30), "relative_to_one": 1 + n / 30} for n in (1, 2, 4, 8)]
          for k, name in ((10, "target"), (2, "draft"))}
RECORDS = {"histogram": [{"accepted": 0, "fraction": 0.25, "steps": 2}, {"accepted": 3, "fraction": 0.75, "steps": 6}],
           "acceptance_rate": 0.7, "tokens_per_forward": 2.6, "steps": 8}


def bench_of(methods):
    stages = {"target_seconds": 0.1, "draft_seconds": 0.02, "ngram_seconds": 0.01, "overhead_seconds": 0.01}
    return {"ladder": "tiny", "device": "cpu",
            "summary": [{"mode": "greedy", "method": m, "tokens_per_second": 100.0 + i, "speedup": 1.0 + i / 10,
                         "acceptance_rate": None if m == "baseline" else 0.6, "origins": {}}
                        for i, m in enumerate(methods)],
            "rows": [{"mode": "greedy", "method": m, "new_tokens": 10, **stages} for m in methods]}


@pytest.mark.parametrize("make", [lambda: plots.latency_figure(CURVES), lambda: plots.acceptance_figure(RECORDS, 3),
                                  lambda: plots.latency_bars_figure(bench_of(["baseline", "speculative", "tree"]))],
                         ids=["latency", "acceptance", "latency_bars"])
def test_two_panel_figures_keep_the_legend_off_the_panel_titles(make):
    assert_legend_clear_of_subplot_titles(make())


def test_latency_figure_colours_a_model_alike_in_both_panels():
    fig = plots.latency_figure(CURVES)
    colours = {}
    for trace in fig.data:
        colours.setdefault(trace.name, set()).update({trace.line.color, trace.marker.color})
    assert all(len(c) == 1 and None not in c for c in colours.values()), colours
    assert colours["target"] != colours["draft"]
    assert [t.name for t in fig.data if t.showlegend is not False] == ["target", "draft"]  # once in the legend


def test_roofline_axis_spans_the_points_and_close_labels_take_turns():
    ridge = CEILINGS["fp32"]["peak_flops"] / CEILINGS["fp32"]["bandwidth_bytes"]
    points = [{"name": "baseline: 1 token", "method": "baseline", "intensity": 0.5},
              {"name": "speculative: 5 tokens", "method": "speculative", "intensity": 2.3},
              {"name": "tree: 17 tokens", "method": "tree", "intensity": 2.9}]
    fig = plots.roofline_figure(CEILINGS["fp32"], points)
    assert fig.layout.xaxis.range is not None, "autorange runs to 10^ridge (the ridge label's x on a log axis)"
    lo, hi = fig.layout.xaxis.range  # log10 of the intensities
    assert 10 ** lo < 0.5 and ridge < 10 ** hi < 100 * ridge
    assert all(lo <= a.x <= hi for a in fig.layout.annotations if a.xref == "x")  # the ridge label in view
    position = {t.name: t.textposition for t in fig.data if t.mode == "markers+text"}
    assert position["speculative: 5 tokens"] != position["tree: 17 tokens"]
    # many measured points in a row: neighbours alternate; a compute-bound one stays inside the axis
    many = [{"name": f"N={n}", "intensity": 0.5 * n} for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    fig = plots.roofline_figure(CEILINGS["fp32"], many)
    shown = [t.textposition for t in fig.data if t.mode == "markers+text"]
    assert all(a != b for a, b in zip(shown, shown[1:]))
    assert 10 ** fig.layout.xaxis.range[1] > 128


def test_long_titles_wrap_to_fit():
    title = "staged (width 3, depth 4, size 12), step 7: 12 nodes proposed, 3 accepted, then 1 token from the target"
    fig = plots.origin_fractions_figure(["draft", "target"], title=title)
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) == 3 and all(len(line) <= plots.TITLE_CHARS for line in lines)
    assert " ".join(lines) == title
    assert_title_clear_of_toolbar_and_panel_titles(fig)


def test_panel_and_axis_titles_take_their_share_of_the_width():
    """Side by side, two panels share the width of a narrow output area: each panel title and x axis title is
    broken to fit its half, and the top margin makes room for the panel titles' lines."""
    fig = plots.acceptance_figure(RECORDS, 3)
    panels = [a for a in fig.layout.annotations if is_panel_title(a)]
    assert len(panels) == 2
    assert all(len(line) <= plots.TITLE_CHARS // 2 for a in panels for line in a.text.split("<br>"))
    lines = max(a.text.count("<br>") + 1 for a in panels)
    assert lines == 2  # "draft tokens accepted per step" is longer than half a title
    assert fig.layout.margin.t >= plots.MODEBAR_PX + plots.TITLE_LINE_PX + plots.SUBPLOT_TITLES_PX + \
        plots.PANEL_TITLE_LINE_PX
    axes = [fig.layout[name] for name in fig.layout if name.startswith("xaxis") and fig.layout[name].title.text]
    assert axes and all(len(line) <= plots.TITLE_CHARS // 2 for a in axes for line in a.title.text.split("<br>"))
    # a title beside an empty one still gets its panel's width, not the row's
    from plotly.subplots import make_subplots

    lone = make_subplots(rows=1, cols=2, subplot_titles=("one long title that runs well past half the width", ""))
    plots._layout(lone, "a figure")
    title, = [a for a in lone.layout.annotations if is_panel_title(a)]
    assert len(title.text.split("<br>")) > 1 and all(len(line) <= plots.TITLE_CHARS // 2
                                                     for line in title.text.split("<br>"))
    # one panel to a row: its titles keep the whole width
    one = plots.latency_bars_figure(bench_of(["baseline", "speculative", "tree"]))
    assert all("<br>" not in a.text for a in one.layout.annotations if is_panel_title(a))


def test_tree_layout_puts_parents_over_their_children():
    where = plots.tree_layout([-1, 0, 0, -1, 3])
    assert [d for d, _ in where] == [1, 2, 2, 1, 2]
    assert where[0][1] == (where[1][1] + where[2][1]) / 2 and where[3][1] == where[4][1]


def test_acceptance_formula_and_records(ladder):
    assert expected_tokens_per_forward(0.0, 4) == 1.0
    assert expected_tokens_per_forward(1.0, 4) == 5.0
    assert expected_tokens_per_forward(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    with pytest.raises(ValueError):
        expected_tokens_per_forward(1.5, 2)
    from sdd_edu import generate

    res = [generate(ladder, p, method="speculative", max_new_tokens=10, gamma=3) for p in PROMPTS]
    rec = acceptance_records(res)
    assert rec["steps"] == sum(len(r.trace) for r in res)
    assert sum(h["steps"] for h in rec["histogram"]) == rec["steps"]
    assert sum(h["fraction"] for h in rec["histogram"]) == pytest.approx(1.0)


def test_report_is_one_self_contained_page(ladder, tmp_path):
    from sdd_edu import generate
    from sdd_edu.measure.bench import run_bench
    from sdd_edu.report import write_report

    bench = run_bench(ladder, ["baseline", "speculative", "staged"], ["greedy", "topk50"], prompts=2,
                      max_new_tokens=6, progress=False)
    step = generate(ladder, PROMPTS[0], method="staged", max_new_tokens=6).trace[0]
    path = write_report(bench, ladder, tmp_path / "r" / "report.html", [("p0", "PROMPT-ZERO"), ("p1", "x")], step)
    page = path.read_text()
    assert page.count("<script") >= 3 and page.count("plotly.js") >= 1  # figures, plotly.js inlined
    assert "https://cdn" not in page.split("</head>")[0]
    assert "PROMPT-ZERO" in page and page.count('class="sdd-origins"') == 2
    assert page.count("<tr>") == 1 + len(bench["summary"]) and "acceptance" in page
    assert bench["device"] in page


def test_tree_plan_view(ladder):
    view = widgets.tree_plan_view(ladder, prompts=PROMPTS, max_new_tokens=8, max_nodes=4)
    assert view.ok, view.message.value
    plan = view.plan
    names = [t.name for t in view.figure.data]
    assert "predicted" in names and "chosen" in names and "target forward" in names and "draft forward" in names
    predicted = next(t for t in view.figure.data if t.name == "predicted")
    assert list(predicted.x) == list(range(5)) == [r["n"] for r in plan["table"]]
    assert "chosen shape" in view.table.value
    assert_reads_well_in_jupyterlab(view)
    legend_y = view.figure.layout.legend.y  # four panels: the legend sits under the lower ones
    assert view.figure.layout.legend.yref == "container" and legend_y == 0
    assert_each_control_changes_the_figure(view, [("method", "speculative"), ("max_nodes", 2)],
                                           shown=lambda v: v.table.value)
    view.controls["measure"].value = True  # trees run beside the predictions
    measured = next(t for t in view.figure.data if t.name == "measured")
    assert len(measured.x) == len(view.measured) >= 2 and "measured" in view.table.value
    assert_bad_setting_shows_a_message(view, "max_nodes", 0, "largest tree")
    assert isinstance(view.static(), go.Figure)


def test_views_draft_with_the_feature_draft_where_the_ladder_has_one(ladder):
    """A ladder with a feature draft: the views offer speculative and tree drafting with it (the bench's labels
    ``method:features``) beside the small draft, and run them; a ladder without one does not offer them."""
    from tests.test_feature_draft import random_feature_draft

    featured = make_ladder(ladder.target, ladder.draft, PromptLookup(), name="tiny+features",
                           feature_draft=random_feature_draft(ladder.target, 3))
    wanted = {"speculative:features", "tree:features"}
    view = widgets.acceptance_explorer(featured, PROMPTS[:1], max_new_tokens=10)
    assert wanted <= set(view.controls["method"].options)
    view.controls["method"].value = "tree:features"
    assert view.ok and "tree:features" in view.figure.layout.title.text, view.message.value
    assert not view.controls["width"].disabled and view.controls["gamma"].disabled
    origins = widgets.token_origin_view(featured, PROMPTS[:1], max_new_tokens=10)
    origins.controls["method"].value = "speculative:features"
    assert origins.ok and origins.result.stats.draft_forwards > 0, origins.message.value
    drafted = origins.result.token_ids
    origins.controls["method"].value = "baseline"
    assert origins.result.token_ids == drafted  # greedy: the feature draft changes the speed, not the tokens
    trees = widgets.tree_view(featured, PROMPTS[0], method="tree:features", max_new_tokens=8, width=2, depth=2, budget=3)
    assert trees.ok and trees.controls["method"].value == "tree:features" and trees.result.trace
    dashboard = widgets.latency_dashboard(featured, prompts=1, max_new_tokens=6)
    assert wanted <= set(dashboard.controls["methods"].options)
    assert not wanted & set(dashboard.controls["methods"].value)  # measured when chosen, not by default
    dashboard.controls["methods"].value = ("tree:features",)
    assert list(dashboard.figure.data[0].x) == ["baseline", "tree:features"]
    plain = widgets.acceptance_explorer(ladder, PROMPTS[:1], max_new_tokens=6)
    assert not wanted & set(plain.controls["method"].options)
