"""Teaching diagrams: the KV cache, the tree attention mask, the feature draft, and the staged tree of the paper.

``sdd_edu.plots`` draws measurements; this module draws the *ideas* behind them, from a few
hand-written inputs, so that a notebook can show them without running a model:

* ``kv_cache_diagram``: a cache's slots, filled by the prefill and then one slot per decode step;
* ``tree_mask_diagram``: a token tree (a parents list) beside the attention mask that verifies it
  in one forward, the mask built by the engine's own ``tree_attention_mask``;
* ``feature_draft_diagram``: what a feature draft (EAGLE) reads, row by row: the target's features over the
  context, then its own predicted features past it;
* ``staged_tree_diagram``: one step of staged speculation (Spector & Re 2023, Figure 3): the
  n-gram guesses what the draft will say and the draft checks the guesses (stage 2), then the
  target checks the draft's tree (stage 1).  ``example_staged_step()`` is a built-in step.

Every function returns a plotly ``go.Figure`` that needs no widget frontend, and raises
``SddError`` with a one-line message on inputs that are not a tree.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .decoding.tree import ROOT, tree_attention_mask
from .errors import SddError
from .plots import ORIGIN_COLORS, _layout, tree_layout

FREE_COLOR = "#f2f2f2"  # an empty cell: a slot nothing has written yet, or a pair that may not attend
MASK_COLOR = ORIGIN_COLORS["draft"]
BAND_COLOR = "#ff7f0e"  # the slots one query reads


def _finish(fig: go.Figure, title: str, height: int, legend_rows: int = 1, top: int = 60) -> go.Figure:
    """``plots._layout``, the house style, with the legend below the plot so that it never covers the title.

    ``_layout`` puts the legend under the axes itself; where it put it above the plot (an older house
    style), move it down here, with ``legend_rows`` rows of room and a ``top`` margin for panel titles.
    """
    _layout(fig, title, height)
    legend = fig.layout.legend
    if legend.yref == "container" or (legend.y is not None and legend.y < 0):
        return fig
    bottom = 70 + 26 * legend_rows
    fig.update_layout(margin=dict(l=60, r=20, t=top, b=bottom),
                      legend=dict(orientation="h", xanchor="left", x=0, yanchor="top", y=-58 / (height - top - bottom)))
    return fig


def _text(token) -> str:
    """A token as it reads in a label: escapes visible ('\\n'), quotes dropped, as in ``plots.tree_figure``."""
    return repr(str(token))[1:-1]


def _legend_entry(name: str, color: str, symbol: str = "square", line_color: str | None = None) -> go.Scatter:
    """A trace with no points, only a legend entry (heatmaps and shapes have none of their own)."""
    return go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                      marker=dict(size=14, symbol=symbol, color=color,
                                  line=dict(color=line_color or color, width=2)))


# ----------------------------------------------------------------------------- the KV cache

def kv_cache_diagram(prompt_tokens: list[str], new_tokens: list[str], capacity: int | None = None,
                     layers: int = 1, query_step: int | None = None, title: str = "") -> go.Figure:
    """The KV cache as a grid of slots: the prefill fills 0..P-1, then each decode step one more slot.

    ``prompt_tokens``: the prompt, written by one prefill forward.  ``new_tokens``: the token each
    decode step feeds to the model (step t writes slot P + t - 1).  ``capacity``: slots allocated
    (default: 3 more than needed, to show free ones).  ``layers``: rows are keys and values of each
    layer, all written at the same slot.  ``query_step``: the step whose query is highlighted with the
    slots it attends to (0 = the prefill's last token; default the last step).
    """
    prompt, new = [str(t) for t in prompt_tokens], [str(t) for t in new_tokens]
    P, S = len(prompt), len(new)
    if P == 0:
        raise SddError("the prompt is empty: the prefill needs at least one token")
    capacity = P + S + 3 if capacity is None else capacity
    if not isinstance(capacity, int) or capacity < P + S:
        raise SddError(f"KV cache full: {P} prompt + {S} new tokens need {P + S} slots, capacity is {capacity}")
    if not isinstance(layers, int) or layers < 1:
        raise SddError(f"layers must be a positive integer, got {layers!r}")
    t = S if query_step is None else query_step
    if not isinstance(t, int) or not 0 <= t <= S:
        raise SddError(f"query_step must be 0 (the prefill) to {S} (the last decode step), got {query_step!r}")

    # one column per slot: 0 = free, 1 = written by the prefill, 2 = written by a decode step
    code = [1] * P + [2] * S + [0] * (capacity - P - S)
    token = prompt + new + [""] * (capacity - P - S)
    when = ["prefill"] * P + [f"step {s}" for s in range(1, S + 1)] + [""] * (capacity - P - S)
    rows = ["keys", "values"] if layers == 1 else [f"layer {l} {kv}" for l in range(layers) for kv in ("K", "V")]
    hover = [f"slot {j} = position {j}: '{_text(token[j])}', written by "
             + ("the prefill (one forward over the whole prompt)" if code[j] == 1 else
                f"decode step {j - P + 1} (K and V of this token only)") if code[j] else f"slot {j}: free"
             for j in range(capacity)]

    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=[code] * len(rows), x=list(range(capacity)), y=list(range(len(rows))), name="cache slots",
        text=[[f"{_text(token[j])}<br>{when[j]}" if code[j] else "" for j in range(capacity)]] * len(rows),
        texttemplate="%{text}", textfont=dict(size=10, color="white"), hovertext=[hover] * len(rows),
        hovertemplate="%{hovertext}<extra></extra>", xgap=2, ygap=2, showscale=False, zmin=0, zmax=2,
        colorscale=[[0, FREE_COLOR], [1 / 3, FREE_COLOR], [1 / 3, ORIGIN_COLORS["prompt"]],
                    [2 / 3, ORIGIN_COLORS["prompt"]], [2 / 3, ORIGIN_COLORS["target"]], [1, ORIGIN_COLORS["target"]]]))

    # the query of step t attends to every slot written so far, its own new one included
    last = P - 1 + t
    top, bottom = -0.5, len(rows) - 0.5
    fig.add_shape(type="rect", x0=-0.5, x1=last + 0.5, y0=top - 0.12, y1=bottom + 0.12, name="attended slots",
                  line=dict(color=BAND_COLOR, width=3, dash="dash"))
    written = (-0.5, P - 0.5) if t == 0 else (last - 0.5, last + 0.5)  # what this forward wrote
    fig.add_shape(type="rect", x0=written[0], x1=written[1], y0=top, y1=bottom, name="written by this forward",
                  line=dict(color="black", width=3))
    who = "the prefill's last token" if t == 0 else f"step {t}'s query"
    fig.add_annotation(x=-0.5, y=top - 0.15, yanchor="bottom", xanchor="left", showarrow=False,
                       text=f"{who} attends to slots 0..{last}", font=dict(color=BAND_COLOR, size=12))

    for name, color in (("prompt: written by the prefill", ORIGIN_COLORS["prompt"]),
                        ("written by a decode step, one slot each", ORIGIN_COLORS["target"]),
                        ("free slot", FREE_COLOR)):
        fig.add_trace(_legend_entry(name, color, line_color="#bbbbbb" if color == FREE_COLOR else None))
    fig.add_trace(_legend_entry(f"slots {who} attends to", "white", line_color=BAND_COLOR))

    fig.update_xaxes(title="slot (= position)", tickvals=list(range(capacity)), range=[-0.6, capacity - 0.4],
                     showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=list(range(len(rows))), ticktext=rows, range=[bottom + 0.2, top - 0.6],
                     showgrid=False, zeroline=False)
    return _finish(fig, title or f"KV cache: prefill {P}, then {S} decode step{'s' * (S != 1)}",
                   height=230 + 46 * len(rows), legend_rows=2)


# ----------------------------------------------------------------------------- trees

def _check_parents(parents, what: str = "tree") -> list[int]:
    """The parents list as ints, or SddError: the package's convention is -1 (ROOT) or an earlier node."""
    if parents is None or len(parents) == 0:
        raise SddError(f"the {what} is empty: give at least one node (parents[i] = -1 hangs node i off the root)")
    n = len(parents)
    out = []
    for i, p in enumerate(parents):
        if isinstance(p, bool) or not hasattr(p, "__index__"):
            raise SddError(f"{what}: parents[{i}] = {p!r} is not an integer")
        p = int(p)
        if not ROOT <= p < n:
            raise SddError(f"{what}: node {i}'s parent {p} is out of range (-1 for the root, or 0..{n - 1})")
        out.append(p)
    for i in range(n):  # walk up from every node: a walk longer than n nodes never reaches the root
        seen, node = [], i
        while node != ROOT:
            if node in seen:
                loop = seen[seen.index(node):] + [node]
                raise SddError(f"{what}: the parents form a cycle {' -> '.join(map(str, loop))}, not a tree")
            seen.append(node)
            node = out[node]
    for i, p in enumerate(out):
        if p > i:
            raise SddError(f"{what}: node {i} comes before its parent {p}; "
                           "store nodes parents-first, as TokenTree does")
    return out


def _root_xy(where, parents) -> tuple[float, float]:
    tops = [where[i][1] for i, p in enumerate(parents) if p == ROOT]
    return 0.0, sum(tops) / len(tops)


def _edges(where, parents, nodes) -> tuple[list, list]:
    """Line segments parent -> child for ``nodes``, separated by None (one trace draws them all)."""
    xs, ys = [], []
    for i in nodes:
        x0, y0 = _root_xy(where, parents) if parents[i] == ROOT else where[parents[i]]
        xs += [x0, where[i][0], None]
        ys += [y0, where[i][1], None]
    return xs, ys


def _tree_axes(fig, where, row=None, col=None) -> None:
    depth, rows = max(d for d, _ in where), max(r for _, r in where)
    kw = dict(row=row, col=col) if row else {}
    fig.update_xaxes(title="depth below the root", range=[-0.7, depth + 0.9], dtick=1, zeroline=False, **kw)
    # top row first, with room above it for the labels (they sit over their nodes)
    fig.update_yaxes(visible=False, range=[rows + 0.5, -0.9], **kw)


def tree_mask_diagram(parents: list[int], labels: list[str] | None = None, root_label: str = "root",
                      title: str = "") -> go.Figure:
    """A token tree (left) and the attention mask of the one forward that verifies it (right).

    ``parents``: the package's convention (``decoding.tree``): ``parents[i]`` is -1 when node i hangs
    off the root (the last committed token), else an earlier node.  ``labels``: one per node (default
    a, b, c, ... as in notebook 04).  The mask's rows and columns are the forward's tokens, the root
    then the nodes; row i may attend to column j iff j is the root, an ancestor of i, or i itself.
    It is ``tree_attention_mask(parents, cached=0, chain=1)``, the engine's own mask, without the
    cache's columns (every row sees all of them).
    """
    parents = _check_parents(parents)
    n = len(parents)
    if labels is None:
        labels = [chr(ord("a") + i) for i in range(n)] if n <= 26 else [str(i) for i in range(n)]
    if len(labels) != n:
        raise SddError(f"{len(labels)} labels for {n} nodes: give one label per node")
    labels = [_text(x) for x in labels]
    mask = tree_attention_mask(parents, cached=0, chain=1)[0].int().tolist()  # (1 + n, 1 + n)
    names = [root_label] + labels

    where = tree_layout(parents)
    depth = [d for d, _ in where]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.08,
                        subplot_titles=("token tree", "tree attention mask: may row attend to column?"))
    xs, ys = _edges(where, parents, range(n))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="parent -> child", hoverinfo="skip",
                             line=dict(color="#9e9e9e", width=2), showlegend=False), row=1, col=1)
    rx, ry = _root_xy(where, parents)
    fig.add_trace(go.Scatter(x=[rx], y=[ry], mode="markers+text", name="root", text=[root_label],
                             textposition="bottom center", marker=dict(size=18, color="black"), showlegend=False,
                             hovertemplate="the root: the last committed token<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[d for d, _ in where], y=[r for _, r in where], mode="markers+text", name="nodes", text=labels,
        textposition="top center", marker=dict(size=18, color=MASK_COLOR, line=dict(color="white", width=2)),
        showlegend=False, customdata=[[i, parents[i], depth[i]] for i in range(n)],
        hovertemplate="node %{customdata[0]} '%{text}', parent %{customdata[1]}<br>"
                      "depth %{customdata[2]}: position = root's + %{customdata[2]}<extra></extra>"), row=1, col=1)
    _tree_axes(fig, where, row=1, col=1)

    ticks = list(range(n + 1))
    hover = [[f"'{names[i]}' {'sees' if mask[i][j] else 'may not see'} '{names[j]}'" for j in ticks] for i in ticks]
    fig.add_trace(go.Heatmap(z=mask, x=ticks, y=ticks, name="tree attention mask", zmin=0, zmax=1, xgap=2, ygap=2,
                             colorscale=[[0, FREE_COLOR], [0.5, FREE_COLOR], [0.5, MASK_COLOR], [1, MASK_COLOR]],
                             showscale=False, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"),
                  row=1, col=2)
    # numeric axes with tick text: labels may repeat (two nodes with the same token), categories would merge
    fig.update_xaxes(tickvals=ticks, ticktext=names, showgrid=False, zeroline=False,
                     title="attends to (key)", row=1, col=2)
    fig.update_yaxes(tickvals=ticks, ticktext=names, autorange="reversed", showgrid=False, zeroline=False,
                     title="new token (query)", scaleanchor="x2", row=1, col=2)
    return _finish(fig, title or f"A tree of {n} nodes and its attention mask",
                   height=max(400, 190 + 30 * (n + 1)), legend_rows=0, top=90)


# ----------------------------------------------------------------------------- staged speculation

def example_staged_step() -> dict:
    """A hand-made staged step below ``return``, in the format of a ``generate(...).trace`` entry.

    The n-gram guessed 10 tokens with fan-out (4, 3, 2, 1); the draft kept 5 of them and added 3 of
    its own; the target accepted ``a + b\\n`` and then said ``\\n`` itself.  Tokens are text here
    (a real trace holds token ids: pass ``decode``).  The extra keys ``guesses`` (what
    ``ModelDrafter.guess`` returns) and ``next_token`` are not in a trace; pass them when you have them.
    """
    return {
        "root": " return",
        "tree": {"tokens": [" a", " +", " b", " sum", " *", "\n", " #", "def"],
                 "parents": [-1, 0, 1, -1, 0, 2, 2, 5],
                 "origins": ["ngram", "ngram", "ngram", "ngram", "draft", "ngram", "draft", "draft"],
                 "draft_probs": [0.82, 0.74, 0.91, 0.07, 0.12, 0.66, 0.18, 0.31]},
        "accepted_nodes": [0, 1, 2, 5],
        "next_token": "\n",
        "guesses": {"tokens": [" a", " b", " sum", " (", " +", ",", " -", " b", " 1", "\n"],
                    "parents": [-1, -1, -1, -1, 0, 0, 0, 4, 4, 7]},
    }


def _guess_tree(guesses, tokens, parents, origins) -> tuple[list, list[int], list[str], list[bool]]:
    """The n-gram's guessed subtree: (tokens, parents, source, kept by the draft) per guessed node.

    Without ``guesses`` (a trace does not keep them) the tree's own guessed nodes stand in, all kept:
    the n-gram and lookup nodes on paths of such nodes from the root.  (A lookup node below a draft
    node was not guessed: the lookup's share of the draft's mixture gave it.)
    A guess is kept when the draft's tree holds the same token below the same (kept) parent.
    """
    if guesses is None:
        new_index = {ROOT: ROOT}  # tree node -> its index among the guesses
        for i, (o, p) in enumerate(zip(origins, parents)):  # parents-first: a parent is decided before its children
            if o in ("ngram", "lookup") and p in new_index:
                new_index[i] = len(new_index) - 1
        chosen = [i for i in new_index if i != ROOT]
        return ([tokens[i] for i in chosen], [new_index[parents[i]] for i in chosen],
                [origins[i] for i in chosen], [True] * len(chosen))
    if isinstance(guesses, dict):
        g_tokens, g_parents = guesses.get("tokens"), guesses.get("parents")
        sources = guesses.get("sources")
    else:
        g_tokens, g_parents = guesses
        sources = None
    g_parents = _check_parents(g_parents, "guesses")
    if g_tokens is None or len(g_tokens) != len(g_parents):
        raise SddError("guesses: give one token per parent")
    sources = list(sources) if sources is not None else ["ngram"] * len(g_parents)
    if len(sources) != len(g_parents):
        raise SddError("guesses: give one source ('ngram' or 'lookup') per guessed token")
    node_of = {}  # guessed node -> tree node holding it
    for g, (tok, p) in enumerate(zip(g_tokens, g_parents)):
        above = ROOT if p == ROOT else node_of.get(p)
        if above is None:
            continue  # its parent was not kept, so neither is it
        match = [i for i, (t, q) in enumerate(zip(tokens, parents)) if t == tok and q == above]
        if match:
            node_of[g] = match[0]
    return list(g_tokens), g_parents, sources, [g in node_of for g in range(len(g_parents))]


def staged_tree_diagram(step: dict | None = None, guesses=None, decode=None, root_text: str | None = None,
                        next_token=None, title: str = "") -> go.Figure:
    """One step of staged speculation, coloured by the stage that proposed each token (the paper's Figure 3).

    Left, stage 2 (it runs first): the n-gram guesses a subtree of what the draft will say and the
    draft scores all the guesses in one forward; the guesses it would choose itself are kept (filled
    green), the others dropped (hollow).  Right, stage 1: the draft's tree, the kept guesses green and
    the draft's own tokens blue; the target verifies the whole tree in one forward and accepts a path
    (red edges), then adds its own token (red).

    ``step``: an entry of ``generate(...).trace`` (``step["tree"]`` with tokens,
    parents, origins and optionally draft_probs; ``step["accepted_nodes"]``); default
    ``example_staged_step()``.  ``guesses``: the n-gram's guessed subtree, ``(tokens, parents)`` as
    ``ModelDrafter.guess`` returns, or a dict with optional ``sources``; without it only the kept
    guesses are known.  ``decode``: token ids -> text (e.g. ``model.decode``).  ``next_token``: the
    target's own token after the accepted path, if known.
    """
    step = example_staged_step() if step is None else step
    tree = step.get("tree") if isinstance(step, dict) else None
    if not tree or not tree.get("parents"):
        raise SddError("the step has no tree (a baseline step proposes nothing): pick a step with proposed > 0")
    parents = _check_parents(tree["parents"])
    n = len(parents)
    tokens, origins = list(tree.get("tokens", [])), list(tree.get("origins", []))
    if len(tokens) != n or len(origins) != n:
        raise SddError(f"the tree has {n} parents, {len(tokens)} tokens and {len(origins)} origins: give one each")
    unknown = sorted({o for o in origins if o not in ("ngram", "draft", "lookup")})
    if unknown:
        raise SddError(f"unknown origin(s) {unknown}: a tree node comes from 'ngram', 'draft' or 'lookup'")
    accepted = [int(a) for a in step.get("accepted_nodes", [])]
    for k, a in enumerate(accepted):  # a path from the root down, one node per level
        if not 0 <= a < n or parents[a] != (ROOT if k == 0 else accepted[k - 1]):
            raise SddError(f"accepted_nodes {accepted} is not a path down from the root of the tree")
    guesses = step.get("guesses") if guesses is None else guesses
    next_token = step.get("next_token") if next_token is None else next_token
    root_text = step.get("root", "root") if root_text is None else root_text

    def show(t) -> str:
        return _text(decode([t]) if decode is not None and not isinstance(t, str) else t)

    probs = tree.get("draft_probs")
    labels = [show(t) + (f"  {probs[i]:.2f}" if probs else "") for i, t in enumerate(tokens)]
    g_tokens, g_parents, g_sources, kept = _guess_tree(guesses, tokens, parents, origins)

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.06,
                        subplot_titles=("stage 2: the n-gram guesses, the draft checks" if guesses is not None
                                else "stage 2: the guesses the draft kept",
                                        "stage 1: the draft's tree, the target checks"))

    # --- left: the guessed subtree, kept guesses filled, dropped ones hollow
    if g_parents:
        where = tree_layout(g_parents)
        xs, ys = _edges(where, g_parents, range(len(g_parents)))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False, name="guess edges",
                                 line=dict(color="#c7c7c7", width=1.5)), row=1, col=1)
        rx, ry = _root_xy(where, g_parents)
        fig.add_trace(go.Scatter(x=[rx], y=[ry], mode="markers+text", text=[_text(root_text)], showlegend=False,
                                 textposition="bottom center", marker=dict(size=16, color="black"), name="root",
                                 hovertemplate="the last committed token<extra></extra>"), row=1, col=1)
        for keep in (True, False):
            idx = [g for g in range(len(g_parents)) if kept[g] == keep]
            if not idx:
                continue
            color = [ORIGIN_COLORS.get(g_sources[g], ORIGIN_COLORS["ngram"]) for g in idx]
            fig.add_trace(go.Scatter(
                x=[where[g][0] for g in idx], y=[where[g][1] for g in idx], mode="markers+text",
                text=[show(g_tokens[g]) for g in idx], textposition="top center",
                textfont=dict(color="black" if keep else "#9e9e9e"),
                name="guess kept by the draft" if keep else "guess dropped by the draft",
                marker=dict(size=14, color=color if keep else "white", line=dict(color=color, width=2.5)),
                hovertemplate="%{text}<extra>" + ("kept" if keep else "dropped") + "</extra>"), row=1, col=1)
        _tree_axes(fig, where, row=1, col=1)

    # --- right: the draft's tree, plus the target's own token below the accepted path
    full_parents = parents + [accepted[-1] if accepted else ROOT]
    target_node = n
    where = tree_layout(full_parents)
    on_path = set(accepted)
    grey = [i for i in range(n) if i not in on_path]
    xs, ys = _edges(where, full_parents, grey)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False, name="tree edges",
                             line=dict(color="#c7c7c7", width=1.5)), row=1, col=2)
    xs, ys = _edges(where, full_parents, accepted + [target_node])
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name="accepted by the target",
                             line=dict(color=ORIGIN_COLORS["target"], width=4)), row=1, col=2)
    rx, ry = _root_xy(where, full_parents)
    fig.add_trace(go.Scatter(x=[rx], y=[ry], mode="markers+text", text=[_text(root_text)], showlegend=False,
                             textposition="bottom center", marker=dict(size=16, color="black"), name="root",
                             hovertemplate="the last committed token<extra></extra>"), row=1, col=2)
    names = {"ngram": "guessed by the n-gram (free for the draft)", "draft": "proposed by the draft alone",
             "lookup": "copied by prompt lookup"}
    for origin in ("ngram", "draft", "lookup"):
        idx = [i for i in range(n) if origins[i] == origin]
        if not idx:
            continue
        fig.add_trace(go.Scatter(
            x=[where[i][0] for i in idx], y=[where[i][1] for i in idx], mode="markers+text",
            text=[labels[i] for i in idx], textposition="top center", name=names[origin],
            marker=dict(size=[17 if i in on_path else 12 for i in idx], color=ORIGIN_COLORS[origin], opacity=1,
                        line=dict(color=[ORIGIN_COLORS["target"] if i in on_path else "white" for i in idx],
                                  width=3)),
            hovertemplate="%{text}<extra>" + origin + "</extra>"), row=1, col=2)
    fig.add_trace(go.Scatter(
        x=[where[target_node][0]], y=[where[target_node][1]], mode="markers+text", name="the target's own token",
        text=[show(next_token) if next_token is not None else "target's token"], textposition="top center",
        marker=dict(size=17, symbol="diamond", color=ORIGIN_COLORS["target"]),
        hovertemplate="the target's own next token (every verification adds one)<extra></extra>"), row=1, col=2)
    _tree_axes(fig, where, row=1, col=2)

    rows = max(max(r for _, r in tree_layout(g_parents)) if g_parents else 0, max(r for _, r in where))
    n_kept = sum(kept)
    return _finish(fig, title or f"Staged: {n_kept}/{len(kept)} guesses kept, "
                                 f"{len(accepted)}/{n} accepted",
                   height=max(420, 220 + 34 * (rows + 1)), legend_rows=2, top=90)


# ----------------------------------------------------------------------------- the feature draft (EAGLE)

def feature_draft_diagram(tokens: list[str], drafted: list[str], title: str = "") -> go.Figure:
    """What a feature draft reads, row by row (``sdd_edu.feature_draft``).

    ``tokens``: the committed tokens, the last one the target's own newest token (its feature is not
    computed yet).  ``drafted``: the tokens the draft then proposes, one per level of a chain.

    Top: the target's tokens t_i and, under each but the newest, its feature f_i (what the target's head
    reads to choose t_{i+1}).  Bottom: the draft's rows.  Row i joins f_i with the embedding of t_{i+1}, at
    t_{i+1}'s position, and predicts f_{i+1}; over the context these rows fill the draft's own KV cache.  Past
    the newest token there is no target feature: each level reads the feature the level before predicted
    (orange), beside the token it drafted.
    """
    tokens, drafted = [_text(t) for t in tokens], [_text(t) for t in drafted]
    n, g = len(tokens), len(drafted)
    if n < 2:
        raise SddError(f"the diagram needs at least 2 committed tokens (a feature and the token after it), got {n}")
    if g < 1:
        raise SddError("give at least one drafted token: the draft's first level")
    TOKEN, FEATURE, ROW, OUT = 3.0, 2.2, 1.0, 0.2
    fig = go.Figure()

    def boxes(xs, ys, texts, color, name, hover, font="white", symbol="square"):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=texts, name=name,
                                 textfont=dict(color=font, size=11), hovertext=hover,
                                 hovertemplate="%{hovertext}<extra></extra>",
                                 marker=dict(symbol=symbol, size=46, color=color, line=dict(color="white", width=1))))

    def arrow(x0, y0, x1, y1, color, dash=False):
        fig.add_annotation(x=x1, y=y1 + (0.28 if y1 < y0 else -0.28), ax=x0, ay=y0 - (0.28 if y1 < y0 else -0.28),
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=3, arrowsize=1,
                           arrowwidth=2 if not dash else 2.5, arrowcolor=color, text="")

    target_color, predicted_color = ORIGIN_COLORS["target"], "#ff7f0e"
    xs = list(range(n))
    boxes(xs, [TOKEN] * n, [f"t{i}<br>{tokens[i]}" for i in xs],
          [ORIGIN_COLORS["prompt"]] * (n - 1) + [target_color], "committed tokens (the newest: the target's own)",
          [f"token {i}: '{tokens[i]}'" for i in xs])
    boxes(xs[:-1], [FEATURE] * (n - 1), [f"f{i}" for i in xs[:-1]], target_color, "the target's features",
          [f"f{i}: the target's normalised last hidden state at position {i}, which its head reads to choose "
           f"token {i + 1}" for i in xs[:-1]])
    # the draft's rows over the context: (f_i, t_{i+1}) at position i + 1
    row_x = list(range(1, n))
    boxes(row_x, [ROW] * len(row_x), [f"f{i - 1} + t{i}" for i in row_x], ORIGIN_COLORS["draft"],
          "a draft row: a feature joined with the next token's embedding",
          [f"row at position {i}: fc([f{i - 1}, e(t{i})]) -> one decoder layer" for i in row_x])
    for i in row_x:
        arrow(i - 1, FEATURE, i, ROW, target_color)
    for i in row_x + list(range(n, n + g - 1)):  # the token a row reads, straight above it
        fig.add_shape(type="line", x0=i + 0.18, y0=TOKEN - 0.3, x1=i + 0.18, y1=ROW + 0.3,
                      line=dict(color="#bbbbbb", width=1.5, dash="dot"))
    # past the newest token: each level reads the feature predicted by the level before
    deep_x = list(range(n, n + g - 1))
    names = [f"t{n + k}" for k in range(g)]
    if deep_x:
        boxes(deep_x, [ROW] * len(deep_x), [f"f{x - 1}\u2032 + {names[k]}" for k, x in enumerate(deep_x)],
              "#aec7e8", "a deeper row: the predicted feature, the drafted token",
              [f"level {k + 2}: fc([predicted f{x - 1}, e(drafted {names[k]})])" for k, x in enumerate(deep_x)],
              font="black")
    out_x = list(range(1, n + g - 1))  # each row's output, the last one giving the last drafted token
    boxes(out_x, [OUT] * len(out_x), [f"f{x}\u2032" for x in out_x], predicted_color,
          "predicted features (\u2032), through the target's head",
          [f"the predicted f{x}: the head gives the distribution of token {x + 1}" for x in out_x])
    for x in out_x:
        arrow(x, ROW, x, OUT, ORIGIN_COLORS["draft"])
    for k, x in enumerate(deep_x):
        arrow(x - 1, OUT, x, ROW, predicted_color, dash=True)
    # the drafted tokens, to the right of the committed ones
    boxes(list(range(n, n + g)), [TOKEN] * g, [f"{names[k]}<br>{drafted[k]}" for k in range(g)],
          ORIGIN_COLORS["draft"], "drafted tokens (the target verifies them next)",
          [f"drafted from the predicted f{n - 1 + k}: '{drafted[k]}'" for k in range(g)], font="black",
          symbol="square-open")
    fig.update_xaxes(title="position", tickvals=list(range(n + g)), range=[-0.6, n + g - 0.4], showgrid=False,
                     zeroline=False)
    fig.update_yaxes(tickvals=[OUT, ROW, FEATURE, TOKEN],
                     ticktext=["draft: predicted feature", "draft: what a row reads", "target: feature", "token"],
                     range=[-0.4, 3.6], showgrid=False, zeroline=False)
    return _finish(fig, title or "What each feature draft row reads",
                   height=470, legend_rows=3)
