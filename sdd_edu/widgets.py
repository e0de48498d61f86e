"""Interactive views for the notebooks (ipywidgets 8 controls, plotly figures).

Each function returns a ``View``: controls on top, a figure (and/or text) below, a progress
bar while measuring, and a message line.  The figure is shown through plotly's own mimetype in an
``Output`` widget, so the frontend sizes it to the output area and redraws it when the pane or the
window changes width.  Changing a control's ``.value`` re-measures and
redraws; an invalid setting shows its error in the message line and leaves the last good
figure in place.  Every view draws with ``sdd_edu.plots``, so the same picture is available
as a static figure (``view.static()``) where no widget frontend runs.

* ``intensity_explorer``: the roofline with the operating points of baseline, speculative and tree verification;
* ``acceptance_explorer``: accepted-length histogram and tokens per target forward vs the analytic chain formula;
* ``latency_dashboard``: tokens/s per method with speedups and acceptance, time per stage;
* ``token_origin_view``: generated text coloured by the stage that produced each token;
* ``tree_view``: one verification step's token tree, the accepted path highlighted;
* ``tree_plan_view``: the tree chosen for this device from measured acceptance and forward costs.
"""

from __future__ import annotations

import html
import json
from typing import Optional, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go

from . import plots
from .errors import SddError
from .measure.bench import method_and_settings

# plotly's FigureWidget draws before JupyterLab has laid out the output area, falls back to 700 px and keeps
# that width; the plotly mimetype is drawn by JupyterLab's (and VS Code's) own renderer, which fits the area
PLOTLY_MIME = "application/vnd.plotly.v1+json"
# ipywidgets cuts a description at about 80 px ("temperat..."); 'initial' gives each label the room it needs
LABEL_STYLE = {"description_width": "initial"}
CELL_STYLE = "padding:2px 8px"  # widgets.HTML has no table style of its own: cells would touch


class View(widgets.VBox):
    """Controls, a figure, a progress bar and a message line; ``refresh()`` redraws from the controls."""

    def __init__(self, controls: dict, figure: Optional[go.Figure] = None, extra: Sequence = (),
                 title: str = ""):
        self.controls = controls
        self.figure = go.Figure(figure) if figure is not None else None  # the last figure drawn
        self.plot = widgets.Output()  # a width of 100% would add the area's padding: a scrollbar under the view
        self.message = widgets.HTML()
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(visibility="hidden"))
        self.ok = True
        rows = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        rows.append(widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")))
        rows += [self.progress, self.message]
        for child in extra:  # a table wider than a narrow pane scrolls in its own box instead of widening the view
            if isinstance(child, widgets.HTML):
                child.layout.max_width, child.layout.overflow = "100%", "auto"
        rows += list(extra)
        if self.figure is not None:
            rows.append(self.plot)
        super().__init__(rows)
        for control in controls.values():
            control.style.description_width = LABEL_STYLE["description_width"]  # every label whole
            control.observe(self._on_change, names="value")

    # subclasses implement draw(): read the controls, measure, update the figure
    def draw(self) -> None:
        raise NotImplementedError

    def static(self):
        """The current picture as a plain ``go.Figure`` (or HTML string), for viewers without widgets."""
        return go.Figure(self.figure) if self.figure is not None else None

    def _on_change(self, change) -> None:
        self.refresh()

    def refresh(self) -> "View":
        try:
            self.draw()
            self.message.value = ""
            self.ok = True
        except (SddError, ValueError) as exc:
            self._error(str(exc))
        except Exception as exc:  # a widget callback must never leave a traceback behind
            self._error(f"{type(exc).__name__}: {exc}")
        finally:
            self.progress.layout.visibility = "hidden"
        return self

    def _error(self, text: str) -> None:
        self.ok = False
        self.message.value = f'<span style="color:#d62728">&#9888; {html.escape(text)}</span>'

    def _show(self, fig: go.Figure) -> None:
        fig.update_layout(width=None, autosize=True)  # the width of the output area, whatever it is
        self.figure = fig
        title = fig.layout.title.text or "a plotly figure"
        figure_json = json.loads(fig.to_json())
        # no "responsive": it sizes the plot to its container's height too, and an output's height is its content's,
        # so after a resize the figure collapses; JupyterLab's renderer follows the width by itself
        figure_json["config"] = {"displaylogo": False}
        # one output replaced at once: no flicker, and no display() call (which would print outside a kernel)
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {PLOTLY_MIME: figure_json, "text/plain": title.replace("<br>", " ")}},)

    def _progress(self, done: int, total: int) -> None:
        self.progress.layout.visibility = "visible"
        self.progress.max = max(1, total)
        self.progress.value = done
        self.progress.description = f"{done}/{total}"


def _int(description: str, value: int, lo: int = 1, hi: int = 64, slider: bool = True):
    if slider:
        return widgets.IntSlider(value=value, min=lo, max=hi, description=description, continuous_update=False)
    return widgets.IntText(value=value, description=description, layout=widgets.Layout(width="170px"))


def _float(description: str, value: float, step: float = 0.1):
    return widgets.FloatText(value=value, step=step, description=description, layout=widgets.Layout(width="190px"))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An HTML table with padded cells; ``header`` and ``rows`` are HTML already."""
    line = lambda tag, cells: "<tr>" + "".join(f'<{tag} style="{CELL_STYLE}">{c}</{tag}>' for c in cells) + "</tr>"
    # in a box of its own that scrolls: a table wider than a narrow notebook pane does not widen the view (width 0
    # and min-width 100%: the box fills the view without asking the view for the table's width, so the caption
    # above it wraps to what the reader sees)
    return ('<div style="overflow-x:auto;width:0;min-width:100%"><table>' + line("th", header)
            + "".join(line("td", row) for row in rows) + "</table></div>")


def _rate(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _with_feature_draft(ladder, methods: Sequence[str]) -> list[str]:
    """The methods, and, where the ladder has a feature draft, speculative and tree drafting with it
    (``method:features``, the bench's labels for ``draft="features"``)."""
    if getattr(ladder, "feature_draft", None) is None:
        return list(methods)
    return list(methods) + [f"{m}:features" for m in ("speculative", "tree") if m in methods]


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or value < 1:
        raise SddError(f"{name} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------- arithmetic intensity

class IntensityExplorer(View):
    def __init__(self, models: dict, ceilings: dict, measure_size: int):
        self.models, self.ceilings, self.measure_size = models, dict(ceilings), measure_size
        controls = {
            "model": widgets.Dropdown(options=list(models), description="model"),
            "tokens": widgets.IntSlider(value=16, min=1, max=512, description="tree tokens", continuous_update=False),
            "gamma": widgets.IntSlider(value=4, min=1, max=16, description="draft length", continuous_update=False),
            "context": _int("context", 256, slider=False),
            "dtype": widgets.Dropdown(options=["fp32", "bf16", "fp16"], value=next(iter(self.ceilings), "fp32"),
                                      description="dtype"),
        }
        # as wide as the view, less the widget margins (2 px a side): a wider table scrolls in its own box
        self.table = widgets.HTML(layout=widgets.Layout(width="calc(100% - 4px)"))
        super().__init__(controls, go.Figure(), extra=[self.table],
                         title="Arithmetic intensity: where each method's verification forward sits on the roofline")

    def draw(self) -> None:
        import torch

        from .measure.roofline import device_ceilings, forward_counts, roofline_time

        c = {k: w.value for k, w in self.controls.items()}
        config = self.models[c["model"]]
        if c["context"] < 0:
            raise SddError(f"context must be >= 0 tokens, got {c['context']}")
        if c["dtype"] not in self.ceilings:  # measured on first use of a dtype
            self._progress(0, 1)
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[c["dtype"]]
            self.ceilings[c["dtype"]] = device_ceilings(dtype=dt, size=self.measure_size, copy_mb=64, repeats=3)
        ceil = self.ceilings[c["dtype"]]
        points, rows = [], []
        for name, method, n in (("baseline: 1 token", "baseline", 1),
                                (f"speculative: {c['gamma'] + 1} tokens", "speculative", c["gamma"] + 1),
                                (f"tree: {c['tokens'] + 1} tokens", "tree", c["tokens"] + 1)):
            counts = forward_counts(config, n, c["context"], c["dtype"])
            t = roofline_time(counts, ceil)
            points.append({"name": name, "method": method, "intensity": counts["intensity"]})
            rows.append((name, counts, t))
        self._show(plots.roofline_figure(ceil, points, title=f"{c['model']}, {c['dtype']}, context {c['context']}"))
        base = rows[0][2]
        ridge = ceil["peak_flops"] / ceil["bandwidth_bytes"]
        self.table.value = _table(
            ["forward", "FLOP/B", "FLOPs", "bytes", "roofline time", "vs 1 token", "bound by"],
            [(html.escape(n), f"{k['intensity']:.2f}", plots.format_si(k["flops"], "FLOP"),
              plots.format_si(k["bytes"], "B"), f"{1000 * t:.2f} ms", f"{t / base:.2f}x",
              "memory" if k["intensity"] < ridge else "compute") for n, k, t in rows])


def intensity_explorer(models: Optional[dict] = None, ceilings: Optional[dict] = None,
                       measure_size: int = 1024) -> IntensityExplorer:
    """The roofline of this device with baseline, speculative and tree verification forwards on it.

    ``models``: name -> ``ModelConfig`` (default: the embedded target and draft, and the paper's models).
    ``ceilings``: dtype name -> ``device_ceilings`` record; dtypes not given are measured when chosen.
    """
    from .measure.roofline import device_ceilings, reference_configs

    if models is None:
        from .ladders import load_ladder

        ladder = load_ladder("embedded")
        models = {"embedded target (SmolLM2-135M)": ladder.target.config}
        if ladder.draft is not None:
            models["embedded draft"] = ladder.draft.config
        models.update(reference_configs())
    if not models:
        raise SddError("intensity_explorer needs at least one model config")
    if ceilings is None:
        ceilings = {"fp32": device_ceilings(size=measure_size, copy_mb=64, repeats=3)}
    return IntensityExplorer(models, ceilings, measure_size).refresh()


# ----------------------------------------------------------------------------- acceptance

class AcceptanceExplorer(View):
    def __init__(self, ladder, prompts, max_new_tokens: int, method: str, seed: int):
        self.ladder, self.prompts, self.max_new_tokens, self.seed = ladder, list(prompts), max_new_tokens, seed
        methods = _with_feature_draft(ladder, ["speculative", "tree"] + (["staged"] if ladder.draft is not None else []))
        controls = {
            "method": widgets.Dropdown(options=methods, value=method, description="method"),
            "gamma": _int("draft length", 4, 1, 12),
            "width": _int("width", 2, 1, 8),
            "depth": _int("depth", 4, 1, 12),
            "budget": _int("tree size", 8, slider=False),
            "temperature": _float("temperature", 0.0),
        }
        self.summary = widgets.HTML()
        self.results = []
        super().__init__(controls, go.Figure(), extra=[self.summary],
                         title="Acceptance: how many draft tokens the target keeps per verification")

    def settings(self) -> dict:
        c = {k: w.value for k, w in self.controls.items()}
        method, draft = method_and_settings(c["method"])
        if method == "speculative":
            return {"gamma": _positive("draft length", c["gamma"]), **draft}
        return {"width": _positive("width", c["width"]), "depth": _positive("depth", c["depth"]),
                "budget": _positive("tree size", c["budget"]), **draft}

    def draw(self) -> None:
        from .measure.generation import generate
        from .measure.acceptance import acceptance_records

        label, temperature = self.controls["method"].value, self.controls["temperature"].value
        method = method_and_settings(label)[0]
        settings = self.settings()
        for name in ("gamma", "width", "depth", "budget"):  # only the method's own settings are live
            self.controls[name].disabled = (name == "gamma") != (method == "speculative")
        results = []
        for i, prompt in enumerate(self.prompts):
            self._progress(i, len(self.prompts))
            # a fixed schedule: the histogram is read against the chain formula for this one shape
            results.append(generate(self.ladder, prompt, method=method, max_new_tokens=self.max_new_tokens,
                                    temperature=temperature, seed=self.seed, adaptive=False, **settings))
        self.results = results
        rec = acceptance_records(results)
        gamma = settings.get("gamma", settings.get("depth"))
        shape = {k: v for k, v in settings.items() if k != "draft"}
        self._show(plots.acceptance_figure(
            rec, gamma, title=f"{label}, {plots.settings_text(shape)}, temperature {temperature:g}"))
        m = plots.fmt_measured
        self.summary.value = (f"{rec['steps']} verification steps; acceptance rate {m(rec['acceptance_rate'])}; "
                              f"{m(rec['tokens_per_forward'])} tokens per target forward; "
                              f"mean tree {m(rec['mean_tree_size'], '.1f')} nodes, "
                              f"depth {m(rec['mean_depth'], '.1f')}")


def acceptance_explorer(ladder="embedded", prompts=("HumanEval/0", "HumanEval/2"), max_new_tokens: int = 48,
                        method: str = "speculative", seed: int = 0) -> AcceptanceExplorer:
    """Draft length, tree width/depth/size and temperature as controls; measured acceptance on ``prompts``."""
    from .ladders import load_ladder

    if isinstance(ladder, str):
        ladder = load_ladder(ladder)
    return AcceptanceExplorer(ladder, prompts, max_new_tokens, method, seed).refresh()


# ----------------------------------------------------------------------------- latency

class LatencyDashboard(View):
    MODES = {"greedy": ("greedy",), "topk50": ("topk50",), "both": ("greedy", "topk50")}

    def __init__(self, ladder, prompts: int, max_new_tokens: int, bench: Optional[dict]):
        from .decoding import METHODS

        self.ladder, self.prompts, self.max_new_tokens = ladder, prompts, max_new_tokens
        methods = _with_feature_draft(ladder, [m for m in METHODS if m != "staged" or ladder.draft is not None])
        ran = tuple(dict.fromkeys(s["mode"] for s in bench["summary"])) if bench else ("greedy",)
        controls = {
            "methods": widgets.SelectMultiple(options=methods, value=tuple(m for m in methods if ":" not in m),
                                              description="methods", rows=min(len(methods), 6)),
            # a given benchmark's modes are shown as the control says: both when it ran both
            "mode": widgets.ToggleButtons(options=list(self.MODES), description="decoding",
                                          value=next((k for k, v in self.MODES.items() if v == ran), "greedy")),
            "gamma": _int("gamma", 2, slider=False),
            "width": _int("width", 2, slider=False),
            "depth": _int("depth", 3, slider=False),
            "budget": _int("tree size", 3, slider=False),
        }
        self.bench = bench
        # as wide as the view, less the widget margins (2 px a side): a wider table scrolls in its own box
        self.table = widgets.HTML(layout=widgets.Layout(width="calc(100% - 4px)"))
        super().__init__(controls, go.Figure(), extra=[self.table],
                         title="Latency: tokens per second, speedup and acceptance, time per stage")

    def draw(self) -> None:
        from .measure.bench import run_bench

        c = {k: w.value for k, w in self.controls.items()}
        methods = ["baseline"] + [m for m in c["methods"] if m != "baseline"]
        modes = self.MODES[c["mode"]]
        # the shapes set by the controls, every step (the adaptive schedule would resize them)
        tree = {"width": _positive("width", c["width"]), "depth": _positive("depth", c["depth"]),
                "budget": _positive("tree size", c["budget"]), "adaptive": False}
        settings = {"speculative": {"gamma": _positive("gamma", c["gamma"]), "adaptive": False}, "tree": tree,
                    "staged": tree}
        if self.bench is None:
            self.bench = run_bench(self.ladder, methods, list(modes), prompts=self.prompts,
                                   max_new_tokens=self.max_new_tokens, settings=settings, progress=False,
                                   on_run=self._progress)
        bench, self.bench = self.bench, None  # a given benchmark is shown once; control changes re-measure
        self.last = bench
        ran = [m for m in modes if any(s["mode"] == m for s in bench["summary"])] or bench["summary"][0]["mode"]
        rows = plots.bench_rows(bench, ran)  # the figure and the table show these same rows
        self._show(plots.latency_bars_figure(bench, mode=ran))
        path = "fast path" if bench.get("fast") else "eager"
        table = _table(["method", "decoding", "path", "tok/s", "speedup", "acceptance"],
                       [(s["method"], plots.MODE_LABELS.get(s["mode"], s["mode"]),
                         path if s["origins"] is not None else "transformers", f"{s['tokens_per_second']:.1f}",
                         "-" if s["speedup"] is None else f"{s['speedup']:.2f}x", _rate(s["acceptance_rate"]))
                        for s in rows])
        self.table.value = (f"<small>{html.escape(bench['ladder'])}; {html.escape(bench['device'])}; "
                            f"{bench['prompts']} prompts x "
                            f"{bench['max_new_tokens']} tokens; speedups against the baseline of the same "
                            f"decoding</small>{table}")


def latency_dashboard(ladder="embedded", prompts: int = 2, max_new_tokens: int = 48,
                      bench: Optional[dict] = None) -> LatencyDashboard:
    """Methods and settings as controls; each change reruns the benchmark on ``prompts`` HumanEval prompts.

    ``bench``: a result of ``measure.bench.run_bench`` to show first instead of measuring.
    """
    from .ladders import load_ladder

    if isinstance(ladder, str):
        ladder = load_ladder(ladder)
    return LatencyDashboard(ladder, prompts, max_new_tokens, bench).refresh()


# ----------------------------------------------------------------------------- token origins

class TokenOriginView(View):
    def __init__(self, ladder, prompts, max_new_tokens: int, seed: int):
        self.ladder, self.max_new_tokens, self.seed = ladder, max_new_tokens, seed
        methods = ["baseline", "speculative", "tree"] + (["staged"] if ladder.draft is not None else [])
        default = methods[-1]
        methods = _with_feature_draft(ladder, methods)
        controls = {
            "prompt": widgets.Dropdown(options=list(prompts), description="prompt"),
            "method": widgets.Dropdown(options=methods, value=default, description="method"),
            "temperature": _float("temperature", 0.0),
        }
        self.text = widgets.HTML()
        self.result = None
        super().__init__(controls, go.Figure(), extra=[self.text],
                         title="Token origins: which stage produced each generated token")

    def draw(self) -> None:
        from .data import resolve_prompt
        from .measure.generation import generate

        c = {k: w.value for k, w in self.controls.items()}
        method, draft = method_and_settings(c["method"])
        res = generate(self.ladder, c["prompt"], method=method, max_new_tokens=self.max_new_tokens,
                       temperature=c["temperature"], seed=self.seed, **draft)
        self.result = res
        pieces = plots.token_pieces(self.ladder.target, res.token_ids, res.origins)
        prompt = resolve_prompt(c["prompt"])
        self.html = plots.token_origin_html(pieces, prompt=prompt[-400:],
                                            title=f"{c['method']}: {res.stats.tokens_per_second:.1f} tok/s")
        self.text.value = self.html
        self._show(plots.origin_fractions_figure(
            res.origins, title=f"{c['method']}: which stage produced the {len(res.origins)} tokens"))

    def static(self):
        return self.html


def token_origin_view(ladder="embedded", prompts=("HumanEval/0", "HumanEval/2", "HumanEval/4"),
                      max_new_tokens: int = 64, seed: int = 0) -> TokenOriginView:
    """Generated text coloured by stage (the paper's Figure 3) for a chosen prompt and method."""
    from .ladders import load_ladder

    if isinstance(ladder, str):
        ladder = load_ladder(ladder)
    return TokenOriginView(ladder, prompts, max_new_tokens, seed).refresh()


# ----------------------------------------------------------------------------- token tree

class TreeView(View):
    def __init__(self, ladder, prompt, method: str, max_new_tokens: int, width: int, depth: int, budget: int):
        self.ladder, self.prompt, self.max_new_tokens = ladder, prompt, max_new_tokens
        methods = _with_feature_draft(ladder, ["tree"] + (["staged"] if ladder.draft is not None else []))
        controls = {
            "method": widgets.Dropdown(options=methods, value=method if method in methods else "tree",
                                       description="method"),
            "width": _int("width", width, slider=False),
            "depth": _int("depth", depth, slider=False),
            "budget": _int("tree size", budget, slider=False),
        }
        self.step = widgets.IntSlider(value=0, min=0, max=0, description="step", continuous_update=False,
                                      style=LABEL_STYLE)
        self.context = widgets.HTML()
        self.result = None
        super().__init__(controls, go.Figure(), extra=[self.step, self.context],
                         title="One verification step: the draft's tree, the target's accepted path")
        self.step.observe(lambda change: self._guarded(self.draw_step), names="value")

    def draw(self) -> None:
        from .measure.generation import generate

        c = {k: w.value for k, w in self.controls.items()}
        settings = {k: _positive(k if k != "budget" else "tree size", c[k]) for k in ("width", "depth", "budget")}
        method, draft = method_and_settings(c["method"])
        self.result = generate(self.ladder, self.prompt, method=method, max_new_tokens=self.max_new_tokens,
                               adaptive=False, **settings, **draft)  # every step draws the tree of these settings
        self.method, self.settings = c["method"], settings
        self.step.max = max(0, len(self.result.trace) - 1)
        self.step.value = min(self.step.value, self.step.max)
        self.draw_step()

    def _guarded(self, fn) -> None:
        try:
            fn()
        except Exception as exc:
            self._error(f"{type(exc).__name__}: {exc}")

    def draw_step(self) -> None:
        res, i = self.result, self.step.value
        decode = self.ladder.target.decode
        before = sum(s["emitted"] for s in res.trace[:i])
        context = res.prompt_ids + res.token_ids[:before]
        step = res.trace[i]
        self._show(plots.tree_figure(step, decode=decode, root_text=repr(decode([context[-1]]))[1:-1],
                                     title=f"{self.method} (width {self.settings['width']}, depth "
                                           f"{self.settings['depth']}, size {self.settings['budget']}), step {i}"
                                           f"<br>{len(step['tree']['tokens'])} nodes proposed, {step['accepted']} "
                                           f"accepted, then 1 token from the target"))
        emitted = res.token_ids[before:before + step["emitted"]]
        self.context.value = (f'<pre style="white-space:pre-wrap;font-size:12px">'
                              f'{html.escape(decode(context)[-300:])}<b style="color:#d62728">'
                              f'{html.escape(decode(emitted))}</b></pre>')


def tree_view(ladder="embedded", prompt: str = "HumanEval/0", method: str = "staged", max_new_tokens: int = 32,
              width: int = 3, depth: int = 4, budget: int = 12) -> TreeView:
    """Generate greedily with a tree method and browse its verification steps one by one."""
    from .ladders import load_ladder

    if isinstance(ladder, str):
        ladder = load_ladder(ladder)
    return TreeView(ladder, prompt, method, max_new_tokens, width, depth, budget).refresh()


# ----------------------------------------------------------------------------- the tree planned for this device

class TreePlanView(View):
    def __init__(self, ladder, prompts, max_new_tokens, max_nodes: int, save: bool):
        self.ladder_name = ladder if isinstance(ladder, str) else None
        self.loaded = {} if self.ladder_name else {None: ladder}
        self.prompts, self.max_new_tokens, self.save = prompts, max_new_tokens, save
        first = ladder if not isinstance(ladder, str) else self._ladder("fp32")
        methods = ["tree", "staged", "speculative"] if first.draft is not None else ["tree", "speculative"]
        controls = {"method": widgets.ToggleButtons(options=methods, description="method")}
        if self.ladder_name:  # another dtype means another copy of the models: only for a ladder given by name
            controls["dtype"] = widgets.ToggleButtons(options=["fp32", "bf16"], description="dtype")
        controls["max_nodes"] = _int("largest tree", max_nodes, slider=False)
        controls["measure"] = widgets.Checkbox(value=False, description="run trees of 1, 2, 4, ... nodes too (slow)")
        self.plan, self.measured = None, None
        # as wide as the view, less the widget margins (2 px a side): a wider table scrolls in its own box
        self.table = widgets.HTML(layout=widgets.Layout(width="calc(100% - 4px)"))
        super().__init__(controls, go.Figure(), extra=[self.table],
                         title="The tree for this device: predicted from measured acceptance and forward costs")

    def _ladder(self, dtype):
        if dtype not in self.loaded:
            from .ladders import load_ladder

            self.loaded[dtype] = load_ladder(self.ladder_name, dtype=dtype)
        return self.loaded[dtype]

    def draw(self) -> None:
        from .measure.bench import measure_shapes
        from .measure.tree_plan import plan_tree

        c = {k: w.value for k, w in self.controls.items()}
        ladder = self._ladder(c.get("dtype"))
        max_nodes = _positive("largest tree", c["max_nodes"])
        self.plan = plan_tree(ladder, c["method"], prompts=self.prompts, max_new_tokens=self.max_new_tokens,
                              max_nodes=max_nodes, save=self.save)
        self.measured = None
        if c["measure"]:
            sizes = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n <= max_nodes} | {self.plan["predicted"]["nodes"]}
                           - {0})
            self.measured = measure_shapes(ladder, c["method"], self.plan, sizes, prompts=1,
                                           max_new_tokens=self.max_new_tokens, on_run=self._progress)
        self._show(plots.tree_plan_figure(self.plan, self.measured))
        p = self.plan["predicted"]
        rows = [[html.escape(", ".join(f"{k} {v}" for k, v in self.plan["shape"].items())),
                 f"{p['tokens_per_forward']:.2f}", f"{p['tokens_per_second']:.1f}", f"{p['speedup']:.2f}x"]]
        text = _table(["chosen shape", "tokens / target forward", "tok/s (predicted)", "vs a baseline step"], rows)
        if self.measured:
            text += _table(["shape", "tok/s predicted", "tok/s measured", "error"],
                           [[html.escape(", ".join(f"{k} {v}" for k, v in r["shape"].items())),
                             f"{r['predicted_tokens_per_second']:.1f}", f"{r['measured_tokens_per_second']:.1f}",
                             f"{r['error']:+.0%}" if r["error"] is not None else "-"] for r in self.measured])
        self.table.value = f"<small>{html.escape(self.plan['device'])}, measured {self.plan['measured']}</small>{text}"


def tree_plan_view(ladder="embedded", prompts=("HumanEval/0", "HumanEval/1", "HumanEval/2"), max_new_tokens: int = 32,
                   max_nodes: int = 16, save: bool = False) -> TreePlanView:
    """The tree ``budget="auto"`` picks on this device, with the acceptance by rank and forward costs it came
    from; controls: method, dtype (for a ladder given by name), the largest tree, and whether to run trees of
    several sizes to put measured speeds beside the predicted ones.  ``save``: file the plan as this device's
    default shape (``sdd_edu.measure.tree_plan``); a notebook leaves the defaults alone."""
    return TreePlanView(ladder, prompts, max_new_tokens, max_nodes, save).refresh()
