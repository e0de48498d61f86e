"""Static figures: every interactive view in ``sdd_edu.widgets`` draws with these.

Each function takes plain records (what ``sdd_edu.measure`` returns) and gives back a plotly
``go.Figure`` (or, for text, an HTML string), so the same picture works without a widget
frontend: in a notebook viewed on GitHub or nbviewer, in a CI log (``save_figure`` writes
HTML, or PNG/SVG where kaleido can find Chrome), or in the HTML report of ``make demo``.
"""

from __future__ import annotations

import html
import math
import textwrap
from typing import Optional
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from .errors import SddError

# the paper's Figure 3 colours stage by stage: n-gram green, draft blue, target red; prompt lookup purple,
# the prompt itself grey
ORIGIN_COLORS = {"prompt": "#9e9e9e", "lookup": "#9467bd", "ngram": "#2ca02c", "draft": "#1f77b4",
                 "target": "#d62728"}
METHOD_COLORS = {"baseline": "#7f7f7f", "speculative": "#1f77b4", "tree": "#ff7f0e", "staged": "#2ca02c",
                 "transformers-generate": "#c5b0d5", "transformers-assisted": "#9467bd",
                 "transformers-lookup": "#8c564b"}
STAGE_COLORS = {"target_seconds": "#d62728", "draft_seconds": "#1f77b4", "ngram_seconds": "#2ca02c",
                "overhead_seconds": "#bcbd22"}


# room at the top of every figure, in px: the plotly toolbar (modebar) floats over the top right, so the
# title starts below it; make_subplots puts its panel titles in the top margin, just above the panels
MODEBAR_PX = 32
TITLE_FONT_PX = 15
TITLE_LINE_PX = 22  # one line of the title font
PANEL_TITLE_FONT_PX = 13
PANEL_TITLE_LINE_PX = 17
SUBPLOT_TITLES_PX = 28  # one line of panel titles and the room under them
LEGEND_PX = 30  # one row of the horizontal legend under the plot
# plotly never wraps a title: longer ones are broken at spaces.  40 characters of 15 px text are about 320 px,
# so a title fits the narrowest output area the browser test looks at: an 800 px JupyterLab window with its file
# browser open leaves about 350 px.  A panel title gets its share of the width: 40 over the panels in its row.
TITLE_CHARS = 40


def _wrap(title: str, width: int = TITLE_CHARS) -> str:
    """``title`` with a ``<br>`` wherever a line would run past ``width`` characters."""
    lines = []
    for line in title.split("<br>"):
        lines += textwrap.wrap(line, width, break_long_words=False) or [""]
    return "<br>".join(lines)


def _panel_titles(fig: go.Figure) -> list:
    # make_subplots writes each panel title as a paper-referenced annotation anchored on a panel's top edge
    return [a for a in fig.layout.annotations
            if a.xref == "paper" and a.yref == "paper" and a.yanchor == "bottom" and a.showarrow is False]


def _panel_domains(fig: go.Figure) -> list[tuple]:
    """(x domain, y domain, x axis name) of every panel of a make_subplots figure, [] for another figure."""
    panels = []
    for row in getattr(fig, "_grid_ref", None) or []:
        for cell in row:
            if cell:
                x_name, y_name = cell[0].layout_keys
                panels.append((tuple(fig.layout[x_name].domain), tuple(fig.layout[y_name].domain), x_name))
    return panels


def _share(width: float) -> int:
    """Characters of a title over a panel ``width`` (a fraction of the plot's width) wide."""
    return max(12, round(TITLE_CHARS * width))


def _wrap_panel_titles(fig: go.Figure) -> int:
    """Break each panel title to the width of its panel (a share of ``TITLE_CHARS``) and set its font; the
    number of lines of the top row's titles, which stand in the figure's top margin."""
    titles = _panel_titles(fig)
    panels = _panel_domains(fig)
    for a in titles:
        # the panel under the title: make_subplots centres it over the panel's x domain, on its top edge
        width = min(((abs((x[0] + x[1]) / 2 - a.x) + abs(y[1] - a.y), x[1] - x[0]) for x, y, _ in panels),
                    default=(0, 1.0))[1]
        a.text = _wrap(a.text.replace("<br>", " "), _share(width))
        a.font = dict(size=PANEL_TITLE_FONT_PX)
    top = max((a.y for a in titles), default=None)
    return max((a.text.count("<br>") + 1 for a in titles if a.y == top), default=0)


def _wrap_axis_titles(fig: go.Figure) -> None:
    """Each x axis title broken to its panel's width, where panels share the width (14 px axis text: a few
    characters fewer than a panel title)."""
    for x_domain, _, name in _panel_domains(fig):
        axis = fig.layout[name]
        width = x_domain[1] - x_domain[0]
        if axis.title.text and width < 0.9:
            wrapped = _wrap(axis.title.text.replace("<br>", " "), max(10, _share(width) - 4))
            if wrapped != axis.title.text:
                axis.title.text = wrapped
                axis.automargin = True  # room under the axis for the title's lines


def _legend_shown(fig: go.Figure) -> bool:
    return sum(1 for t in fig.data if t.showlegend is not False) >= 2 or any(t.showlegend for t in fig.data)


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    """The house style: title under the toolbar, panel titles under the title, the legend under the axes.

    ``height``: of the plot with one title line; the figure grows by the room its title lines and legend take.
    """
    title = _wrap(title or "")
    lines = title.count("<br>") + 1 if title else 0
    panel_lines = _wrap_panel_titles(fig)
    _wrap_axis_titles(fig)
    panels = SUBPLOT_TITLES_PX + (panel_lines - 1) * PANEL_TITLE_LINE_PX if panel_lines else 12
    top = MODEBAR_PX + lines * TITLE_LINE_PX + panels
    legend = LEGEND_PX if _legend_shown(fig) else 0
    fig.update_layout(
        # from the figure's left edge, not the plot's: a narrow output area leaves no width to give away
        title=dict(text=title, x=0, xref="container", xanchor="left", y=1, yref="container", yanchor="top",
                   pad=dict(t=MODEBAR_PX, l=8), font=dict(size=TITLE_FONT_PX)),
        height=height + top - 60 + legend, template="plotly_white", margin=dict(l=60, r=20, t=top, b=50),
        # anchored to the figure's bottom edge: plotly reserves room for it below the x axes (however many
        # rows it wraps to), so it never meets a panel title, an axis title or the figure title
        legend=dict(orientation="h", xref="paper", x=0, xanchor="left", yref="container", y=0, yanchor="bottom"))
    return fig


def fmt_measured(x, spec: str = ".2f", suffix: str = "") -> str:
    """``x`` formatted for a title or a table, or "not measured" where there is no number (None or nan)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "not measured"
    return f"{x:{spec}}{suffix}"


def settings_text(settings: dict) -> str:
    """{"gamma": 4} -> "draft length 4"; {"width": 2, "depth": 4, "budget": 8} -> "width 2, depth 4, tree size 8"."""
    names = {"gamma": "draft length", "budget": "tree size"}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in settings.items())


def _number(x: float) -> str:
    """A tick label a person reads: 0.5, 2, 50, 2k, 1M (no exponents, no bare 2 and 5 between decades)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def log_ticks(lo: float, hi: float) -> dict:
    """Tick values and labels for a log axis from ``lo`` to ``hi``: every decade, with 2 and 5 between them when
    the axis spans fewer than three decades (else there would be one or two ticks), each labelled in full."""
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        return {}
    steps = (1, 2, 5) if math.log10(hi / lo) < 3 else (1,)
    values = [m * 10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in steps]
    values = [v for v in values if lo <= v <= hi * 1.0001]
    return dict(tickmode="array", tickvals=values, ticktext=[_number(v) for v in values])


# ----------------------------------------------------------------------------- roofline

def roofline_figure(ceilings: dict, points: list[dict], title: str = "") -> go.Figure:
    """The roofline (attainable FLOP/s vs arithmetic intensity) with operating points.

    ``ceilings``: from ``measure.roofline.device_ceilings``.  ``points``: records with ``name``
    and ``intensity`` (FLOP/byte), optionally ``flops_per_second`` (measured; else the roofline's bound).
    """
    peak, bw = ceilings["peak_flops"], ceilings["bandwidth_bytes"]
    ridge = peak / bw
    # the axis spans the points and the ridge with a little room, not decades of empty compute-bound roof
    span = [ridge] + [p["intensity"] for p in points]
    lo, hi = min(span) / 4, max(span) * 4
    xs = [lo * (hi / lo) ** (i / 99) for i in range(100)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[min(peak, bw * x) / 1e9 for x in xs], mode="lines", name="roofline",
                             line=dict(color="black", width=2),
                             hovertemplate="intensity %{x:.2f} FLOP/B<br>%{y:.1f} GFLOP/s<extra></extra>"))
    fig.add_vline(x=ridge, line=dict(dash="dot", color="grey"))
    # an annotation's x on a log axis is log10 of the value (add_vline's own annotation puts it at 10^ridge)
    fig.add_annotation(x=math.log10(ridge), xref="x", y=0, yref="paper", xanchor="left", yanchor="bottom",
                       text=f"ridge {ridge:.0f} FLOP/B", showarrow=False, font=dict(color="grey"))
    for p, position in zip(points, _label_positions([p["intensity"] for p in points])):
        y = p.get("flops_per_second") or min(peak, bw * p["intensity"])
        fig.add_trace(go.Scatter(
            x=[p["intensity"]], y=[y / 1e9], mode="markers+text", name=p["name"], text=[p["name"]],
            textposition=position, cliponaxis=False,
            marker=dict(size=12, color=METHOD_COLORS.get(p.get("method", ""), None)),
            hovertemplate=f"{p['name']}<br>intensity %{{x:.2f}} FLOP/B<br>%{{y:.1f}} GFLOP/s<extra></extra>"))
    fig.update_xaxes(type="log", range=[math.log10(lo), math.log10(hi)],
                     title="arithmetic intensity (FLOP per byte moved)", **log_ticks(lo, hi))
    ys = [min(peak, bw * x) / 1e9 for x in (lo, hi)] + [(p.get("flops_per_second") or 0) / 1e9 for p in points]
    ys = [y for y in ys if y > 0]
    fig.update_yaxes(type="log", title="attainable GFLOP/s", **log_ticks(min(ys) / 1.3, max(ys) * 1.3))
    fig.update_yaxes(range=[math.log10(min(ys) / 1.3), math.log10(max(ys) * 1.3)])
    return _layout(fig, title or f"Roofline of {ceilings['device']} ({ceilings['dtype']}): "
                                 f"{peak / 1e9:.0f} GFLOP/s peak, {bw / 1e9:.0f} GB/s")


def _label_positions(intensities: list[float]) -> list[str]:
    """A text position per point: neighbours along the axis take turns above-left and below-right of their marker.

    Points close in intensity sit close on the roofline too, so labels on the same side would overlap; on
    opposite sides of the (rising or flat) roof they never do.
    """
    order = sorted(range(len(intensities)), key=lambda i: intensities[i])
    positions = [""] * len(intensities)
    for rank, i in enumerate(order):
        positions[i] = "top left" if rank % 2 == 0 else "bottom right"
    return positions


def _series_color(i: int) -> str:
    palette = pio.templates["plotly_white"].layout.colorway
    return palette[i % len(palette)]


def latency_figure(curves: dict[str, list[dict]], title: str = "Forward latency vs tokens per forward") -> go.Figure:
    """Measured forward time vs tokens per forward (``measure.roofline.latency_curve``), one line per model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("time per forward (ms)", "relative to one token"))
    for i, (name, rows) in enumerate(curves.items()):
        # one colour per model in both panels: left to itself, plotly would colour each trace anew
        color = _series_color(i)
        style = dict(mode="lines+markers", name=name, legendgroup=name, line=dict(color=color),
                     marker=dict(color=color))
        xs = [r["tokens"] for r in rows]
        fig.add_trace(go.Scatter(x=xs, y=[r["ms"] for r in rows], **style), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[r["relative_to_one"] for r in rows], showlegend=False, **style),
                      row=1, col=2)
    fig.add_hline(y=1.0, line=dict(dash="dot", color="grey"), row=1, col=2)
    tokens = [r["tokens"] for rows in curves.values() for r in rows]
    fig.update_xaxes(type="log", title="new tokens in the forward",
                     **(log_ticks(min(tokens), max(tokens)) if tokens else {}))
    return _layout(fig, title)


# ----------------------------------------------------------------------------- acceptance

def acceptance_figure(records: dict, gamma: int, title: str = "") -> go.Figure:
    """Accepted-length histogram (left) and tokens per target forward, measured vs analytic (right).

    ``records``: from ``measure.acceptance.acceptance_records``; ``gamma``: the draft's depth (chain length).
    The analytic curve is the chain formula at the measured acceptance rate.
    """
    from .measure.acceptance import expected_tokens_per_forward

    fig = make_subplots(rows=1, cols=2, subplot_titles=("draft tokens accepted per step",
                                                        "tokens per target forward"))
    hist = records["histogram"]
    fig.add_trace(go.Bar(x=[h["accepted"] for h in hist], y=[h["fraction"] for h in hist], name="measured steps",
                         marker_color="#1f77b4", text=[h["steps"] for h in hist], textposition="outside",
                         hovertemplate="%{x} accepted: %{y:.0%} of steps<extra></extra>"), row=1, col=1)
    alpha = records["acceptance_rate"]
    if alpha is not None:
        gs = list(range(0, max(8, gamma) + 1))
        fig.add_trace(go.Scatter(x=gs, y=[expected_tokens_per_forward(alpha, g) for g in gs], mode="lines",
                                 name=f"analytic chain, alpha = {alpha:.2f}", line=dict(color="grey", dash="dash")),
                      row=1, col=2)
    if records["tokens_per_forward"] is not None:
        fig.add_trace(go.Scatter(x=[gamma], y=[records["tokens_per_forward"]], mode="markers", name="measured",
                                 marker=dict(size=14, color="#d62728")), row=1, col=2)
    fig.update_xaxes(title="accepted draft tokens", row=1, col=1)
    fig.update_yaxes(title="fraction of steps", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title="draft length (tree depth)", row=1, col=2)
    fig.update_yaxes(title="tokens per target forward", rangemode="tozero", row=1, col=2)
    acc = f"acceptance {alpha:.2f}, " if alpha is not None else ""
    return _layout(fig, title or f"Acceptance: {acc}{records['steps']} steps")


# ----------------------------------------------------------------------------- latency

MODE_LABELS = {"greedy": "greedy", "topk50": "top-k 50"}


def bench_rows(bench: dict, modes) -> list[dict]:
    """The summary rows a latency figure and its table show: one per method and mode, the first prompt kind's.

    ``modes``: a mode name (``"greedy"``) or several; modes the benchmark did not run are an error.
    """
    modes = [modes] if isinstance(modes, str) else list(modes)
    missing = [m for m in modes if not any(s["mode"] == m for s in bench["summary"])]
    if missing or not modes:
        raise SddError(f"the benchmark has no rows for mode {', '.join(map(repr, missing or ['(none)']))}; "
                       f"it ran {', '.join(dict.fromkeys(s['mode'] for s in bench['summary']))}")
    kind = bench["summary"][0].get("kind")
    return [s for m in modes for s in bench["summary"] if s["mode"] == m and s.get("kind") == kind]


def method_color(method: str) -> str:
    """A method's colour; a variant of it ("tree:features", "tree:2x3x6") takes its method's colour (the bars
    hatch it)."""
    return METHOD_COLORS.get(method, METHOD_COLORS.get(method.split(":")[0], "#7f7f7f"))


def row_label(row: dict, several_modes: bool) -> str:
    """A bar's name: the method, and its mode when the figure shows more than one."""
    return row["method"] + (f"<br>{MODE_LABELS.get(row['mode'], row['mode'])}" if several_modes else "")


def latency_bars_figure(bench: dict, mode="greedy", title: str = "") -> go.Figure:
    """Tokens/s per method with speedup and acceptance on each bar (top), time per token by stage (bottom).

    ``bench``: from ``measure.bench.run_bench``; ``mode``: one mode or several (bars per method and mode,
    the rows of ``bench_rows``).
    """
    rows = bench_rows(bench, mode)
    several = len({s["mode"] for s in rows}) > 1
    names = [row_label(s, several) for s in rows]
    labels = [(f"{s['speedup']:.2f}x" if s["speedup"] is not None else "not measured")
              + (f"<br>acc {s['acceptance_rate']:.2f}" if s["acceptance_rate"] is not None else "") for s in rows]
    # one set of bar names, under the lower panel: the two panels show the same bars in the same order, and names
    # tilted to fit a narrow window would run into the lower panel's title
    fig = make_subplots(rows=2, cols=1, row_heights=[0.6, 0.4], vertical_spacing=0.1, shared_xaxes=True,
                        subplot_titles=("tokens per second, speedup, acceptance",
                                        "ms per generated token, by stage"))
    fig.add_trace(go.Bar(x=names, y=[s["tokens_per_second"] for s in rows], text=labels, textposition="outside",
                         marker=dict(color=[method_color(s["method"]) for s in rows],
                                     pattern_shape=["/" if ":" in s["method"] else "" for s in rows]), name="tok/s",
                         showlegend=False, hovertemplate="%{x}: %{y:.1f} tok/s<extra></extra>"), row=1, col=1)
    ours = [(name, s) for name, s in zip(names, rows) if s["origins"] is not None]
    for stage, color in STAGE_COLORS.items():
        ms = []
        for _, s in ours:
            rs = [r for r in bench["rows"] if r["mode"] == s["mode"] and r["method"] == s["method"]
                  and r.get("kind", "humaneval") == s.get("kind", "humaneval")]
            ms.append(1000 * sum(r[stage] for r in rs) / max(1, sum(r["new_tokens"] for r in rs)))
        fig.add_trace(go.Bar(x=[name for name, _ in ours], y=ms, name=stage.replace("_seconds", ""),
                             marker_color=color, hovertemplate="%{x}: %{y:.1f} ms/token<extra></extra>"),
                      row=2, col=1)
    fig.update_layout(barmode="stack")
    top = max(s["tokens_per_second"] for s in rows)
    fig.update_yaxes(title="tok/s (median of prompts)", range=[0, top * 1.3], row=1, col=1)
    fig.update_yaxes(title="ms / token", row=2, col=1)
    shown = ", ".join(MODE_LABELS.get(m, m) for m in dict.fromkeys(s["mode"] for s in rows))
    # the ladder by its name (its description runs to a paragraph: the views print it beside the table)
    ladder = bench["ladder"].split(":")[0]
    return _layout(fig, title or f"{ladder} ladder on {bench['device']} ({shown})", height=620)


# ----------------------------------------------------------------------------- token origins

def token_pieces(model, token_ids: list[int], origins: list[str]) -> list[tuple[str, str]]:
    """(text, origin) per token, decoded incrementally so multi-byte characters come out whole."""
    pieces, previous = [], ""
    for i, origin in enumerate(origins):
        text = model.decode(token_ids[:i + 1])
        pieces.append((text[len(previous):], origin))
        previous = text
    return pieces


def token_origin_html(pieces: list[tuple[str, str]], prompt: str = "", title: str = "") -> str:
    """Generated text coloured by the stage that produced each token (the paper's Figure 3)."""
    counts = {o: sum(1 for _, x in pieces if x == o) for o in ORIGIN_COLORS}
    total = max(1, len(pieces))
    legend = " ".join(
        f'<span style="background:{c};color:white;padding:1px 6px;border-radius:3px">{o} '
        f'{counts[o]} ({counts[o] / total:.0%})</span>' for o, c in ORIGIN_COLORS.items() if o != "prompt")
    spans = "".join(
        f'<span title="{o}" style="color:{ORIGIN_COLORS.get(o, "black")};'
        f'{"font-weight:bold;" if o != "prompt" else ""}">{html.escape(t)}</span>' for t, o in pieces)
    head = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return (f'<div class="sdd-origins">{head}<div style="margin:4px 0">{legend}</div>'
            f'<pre style="white-space:pre-wrap;font-size:12px;line-height:1.4;margin:0">'
            f'<span style="color:{ORIGIN_COLORS["prompt"]}">{html.escape(prompt)}</span>{spans}</pre></div>')


def origin_fractions_figure(origins: list[str], title: str = "Which stage produced the tokens") -> go.Figure:
    total = max(1, len(origins))
    stages = [o for o in ORIGIN_COLORS if o != "prompt"]
    fig = go.Figure(go.Bar(x=stages, y=[origins.count(o) / total for o in stages],
                           marker_color=[ORIGIN_COLORS[o] for o in stages],
                           text=[origins.count(o) for o in stages], textposition="outside"))
    fig.update_yaxes(title="fraction of generated tokens", tickformat=".0%", range=[0, 1.1])
    return _layout(fig, title, height=300)


# ----------------------------------------------------------------------------- token tree

def tree_layout(parents: list[int]) -> list[tuple[int, float]]:
    """(depth, row) per node: leaves get consecutive rows in depth-first order, parents sit over their children."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    pos: dict[int, tuple[int, float]] = {}
    next_row = [0]

    def place(node: int, depth: int) -> float:
        kids = children.get(node, [])
        if not kids:
            row = float(next_row[0])
            next_row[0] += 1
        else:
            rows = [place(k, depth + 1) for k in kids]
            row = sum(rows) / len(rows)
        pos[node] = (depth, row)
        return row

    for top in children.get(-1, []):
        place(top, 1)
    return [pos[i] for i in range(len(parents))]


def tree_figure(step: dict, decode=None, root_text: str = "", title: str = "") -> go.Figure:
    """One verification step's token tree: draft probability on every node, the accepted path highlighted.

    ``step``: a trace entry of ``generate`` (``step["tree"]`` and ``step["accepted_nodes"]``).
    ``decode``: token id -> text (e.g. ``model.decode``); ids are shown without it.
    """
    tree = step["tree"]
    parents, tokens = tree["parents"], tree["tokens"]
    accepted = set(step.get("accepted_nodes", []))
    where = tree_layout(parents)
    label = [repr(decode([t]))[1:-1] if decode else str(t) for t in tokens]
    fig = go.Figure()
    for on_path in (False, True):  # edges, the accepted ones on top
        xs, ys = [], []
        for i, p in enumerate(parents):
            if (i in accepted and (p == -1 or p in accepted)) != on_path:
                continue
            x0, y0 = (0, _root_row(where, parents)) if p == -1 else where[p]
            xs += [x0, where[i][0], None]
            ys += [y0, where[i][1], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color="#d62728" if on_path else "#c7c7c7", width=4 if on_path else 1.5)))
    fig.add_trace(go.Scatter(x=[0], y=[_root_row(where, parents)], mode="markers+text", text=[root_text or "root"],
                             textposition="middle left", marker=dict(size=16, color="black"), name="root",
                             hovertemplate="the last committed token<extra></extra>"))
    for origin in ("lookup", "ngram", "draft"):
        idx = [i for i in range(len(tokens)) if tree["origins"][i] == origin]
        if not idx:
            continue
        fig.add_trace(go.Scatter(
            x=[where[i][0] for i in idx], y=[where[i][1] for i in idx], mode="markers",
            text=[f"{label[i]}  {tree['draft_probs'][i]:.2f}" for i in idx],
            marker=dict(size=[16 if i in accepted else 10 for i in idx], color=ORIGIN_COLORS[origin],
                        line=dict(color=["#d62728" if i in accepted else "white" for i in idx], width=3)),
            name=f"proposed by {origin}",
            hovertemplate="%{text}<extra>" + origin + "</extra>"))
    # labels as annotations: plotly draws them above every trace, on a white box, so the edges (the accepted
    # path's thick red ones included) pass under the text instead of through it
    for i in range(len(tokens)):
        on_path = i in accepted
        fig.add_annotation(x=where[i][0], y=where[i][1], xanchor="left", xshift=10, showarrow=False,
                           text=f"{'<b>' if on_path else ''}{html.escape(label[i])}{'</b>' if on_path else ''} "
                                f"{tree['draft_probs'][i]:.2f}",
                           font=dict(size=12, color="#d62728" if on_path else "#333333"),
                           bgcolor="rgba(255,255,255,0.85)", borderpad=1)
    depth = max((d for d, _ in where), default=1)
    fig.update_xaxes(title="depth below the root", range=[-0.6, depth + 0.3], dtick=1)
    fig.update_yaxes(visible=False, autorange="reversed")
    n_acc = len(accepted)
    _layout(fig, title or f"{len(tokens)} proposed nodes, {n_acc} accepted (red path) + 1 from the target",
            height=max(300, 28 * (max((r for _, r in where), default=0) + 2)))
    # the deepest level's labels run right of the plot: room for them in px (about 7 px a character of the 12 px
    # font), which a narrow window keeps, where room in depth units shrinks with the width
    deepest = max((len(label[i]) + 5 for i in range(len(tokens)) if where[i][0] == depth), default=0)
    fig.update_layout(margin=dict(r=max(fig.layout.margin.r, 16 + 7 * deepest)))
    return fig


def _root_row(where, parents) -> float:
    tops = [where[i][1] for i, p in enumerate(parents) if p == -1]
    return sum(tops) / len(tops) if tops else 0.0


# ----------------------------------------------------------------------------- files

def save_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a standalone file: .html always works; .png/.svg/.pdf need kaleido and a Chrome."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".html":
        fig.write_html(path, include_plotlyjs=True, full_html=True)
        return path
    try:
        fig.write_image(path)
    except Exception as exc:  # kaleido raises several kinds when no browser is around
        raise SddError(f"could not write {path.name} as an image ({type(exc).__name__}); write .html instead, "
                       "or install Chrome for kaleido with `plotly_get_chrome`") from None
    return path


def format_si(x: float, unit: str = "") -> str:
    """1.2e10 -> '12.0 G' + unit: axis-free numbers for messages."""
    if x == 0 or not math.isfinite(x):
        return f"{x} {unit}"
    k = min(4, max(0, int(math.log10(abs(x)) // 3)))
    return f"{x / 10 ** (3 * k):.1f} {['', 'k', 'M', 'G', 'T'][k]}{unit}"


# ----------------------------------------------------------------------------- the tree planned for a device

def tree_plan_figure(plan: dict, measured: Optional[list[dict]] = None, title: str = "") -> go.Figure:
    """The tree chosen for a device (``sdd_edu.measure.tree_plan``) and what it came from.

    Four panels: predicted tok/s of the best tree of each size (``measured``: records with ``nodes``,
    ``measured_tokens_per_second`` and optionally ``predicted_tokens_per_second``, drawn beside it), the
    chosen tree, the acceptance by rank, and the target's (and draft's) forward time against tokens.
    """
    table = plan["table"]
    best = plan["predicted"]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.24,
                        subplot_titles=("predicted tok/s, best tree of each size",
                                        f"the chosen tree ({best['nodes']} node{'s' * (best['nodes'] != 1)})",
                                        "acceptance of the draft's k-th choice", "forward time (ms)"))
    # x: the node budget n (the best tree within it may use fewer nodes, when more would not pay)
    fig.add_trace(go.Scatter(x=[r["n"] for r in table], y=[r["tokens_per_second"] for r in table],
                             mode="lines+markers", name="predicted", line=dict(color=METHOD_COLORS["tree"]),
                             text=[r["nodes"] for r in table],
                             hovertemplate="budget %{x}: %{text} nodes, %{y:.1f} tok/s<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[best["nodes"]], y=[best["tokens_per_second"]], mode="markers", name="chosen",
                             marker=dict(size=14, symbol="star", color="#d62728")), row=1, col=1)
    if measured:
        fig.add_trace(go.Scatter(x=[r["nodes"] for r in measured], y=[r["measured_tokens_per_second"] for r in measured],
                                 mode="markers", name="measured", marker=dict(size=10, symbol="x", color="black"),
                                 text=[", ".join(f"{k} {v}" for k, v in r["shape"].items()) for r in measured],
                                 hovertemplate="%{text}: %{y:.1f} tok/s measured<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title="nodes (budget)", row=1, col=1)
    fig.update_yaxes(title="tok/s (decoding)", rangemode="tozero", row=1, col=1)
    # the chosen tree, drawn as the drafters would fill it (rank order top to bottom)
    chosen = next((r for r in table if r["nodes"] == best["nodes"]), table[0])
    parents = chosen.get("parents", [])
    where = tree_layout(parents)
    root_row = _root_row(where, parents)
    xs, ys = [], []
    for i, p in enumerate(parents):
        x0, y0 = (0, root_row) if p == -1 else where[p]
        xs += [x0, where[i][0], None]
        ys += [-y0, -where[i][1], None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#aaaaaa"), showlegend=False,
                             hoverinfo="skip"), row=1, col=2)
    fig.add_trace(go.Scatter(x=[0] + [d for d, _ in where], y=[-root_row] + [-r for _, r in where], mode="markers",
                             marker=dict(size=10, color=["black"] + [ORIGIN_COLORS["draft"]] * len(where)),
                             showlegend=False, hoverinfo="skip"), row=1, col=2)
    fig.update_xaxes(title="depth", dtick=1, row=1, col=2)
    fig.update_yaxes(visible=False, row=1, col=2)
    p = plan["rank_acceptance"]
    fig.add_trace(go.Bar(x=list(range(1, len(p) + 1)), y=p, name="acceptance", marker_color=ORIGIN_COLORS["draft"],
                         showlegend=False, text=[f"{x:.2f}" for x in p], textposition="outside"), row=2, col=1)
    fig.update_xaxes(title="rank k among the draft's choices", dtick=1, row=2, col=1)
    fig.update_yaxes(range=[0, 1.1], row=2, col=1)
    for name, ms, color in (("target", plan["target_ms"], ORIGIN_COLORS["target"]),
                            ("draft", plan.get("draft_ms"), ORIGIN_COLORS["draft"])):
        if ms:
            fig.add_trace(go.Scatter(x=list(range(1, len(ms))), y=ms[1:], mode="lines+markers", name=f"{name} forward",
                                     line=dict(color=color)), row=2, col=2)
    fig.update_xaxes(title="tokens in the forward", row=2, col=2)
    fig.update_yaxes(rangemode="tozero", row=2, col=2)
    shape = ", ".join(f"{k} {v}" for k, v in plan["shape"].items())
    return _layout(fig, title or f"{plan['method']} on {plan['device']} ({plan['dtype'].replace('torch.', '')}): "
                                 f"{shape}, predicted {fmt_measured(best['speedup'], '.2f', 'x')} a baseline step", height=640)
