"""A self-contained HTML report of a benchmark: latency bars, speedups, acceptance, token origins, one tree.

``make demo`` writes one (``python -m sdd_edu demo --report PATH``); open it in any browser,
no server and no network needed (plotly.js is inlined once).
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path

from . import plots


def _table(bench: dict) -> str:
    head = ("<tr><th>mode</th><th>method</th><th>tok/s</th><th>speedup</th><th>tokens / target forward</th>"
            "<th>acceptance</th><th>lookup</th><th>n-gram</th><th>draft</th><th>target</th>"
            "<th>same as baseline</th></tr>")
    rows = []
    for s in bench["summary"]:
        o = s["origins"] or {}
        fmt = lambda x, f: "-" if x is None else format(x, f)
        rows.append(f"<tr><td>{s['mode']}</td><td>{s['method']}</td><td>{s['tokens_per_second']:.1f}</td>"
                    f"<td><b>{s['speedup']:.2f}x</b></td><td>{fmt(s['tokens_per_target_forward'], '.2f')}</td>"
                    f"<td>{fmt(s['acceptance_rate'], '.2f')}</td><td>{fmt(o.get('lookup'), '.0%')}</td>"
                    f"<td>{fmt(o.get('ngram'), '.0%')}</td>"
                    f"<td>{fmt(o.get('draft'), '.0%')}</td><td>{fmt(o.get('target'), '.0%')}</td>"
                    f"<td>{fmt(s['same_output_as_baseline'], '.0%')}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(bench: dict, ladder, path: str | Path, prompts: list[tuple[str, str]] | None = None,
                 tree_step: dict | None = None) -> Path:
    """Write the report for ``bench`` (``measure.bench.run_bench``) to ``path``; return the path.

    ``prompts``: (task id, prompt text) pairs in the benchmark's order, shown before each completion.
    ``tree_step``: one trace entry of a tree or staged generation, drawn as a token tree.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = list(dict.fromkeys(s["mode"] for s in bench["summary"]))
    figures = [plots.latency_bars_figure(bench, mode=m) for m in modes]
    if tree_step is not None:
        figures.append(plots.tree_figure(tree_step, decode=ladder.target.decode))
    divs = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
            for i, fig in enumerate(figures)]
    # token origins: the fastest method of the first mode, every prompt
    first = [s for s in bench["summary"] if s["mode"] == modes[0] and s["origins"] is not None]
    best = max(first, key=lambda s: s["tokens_per_second"])["method"] if first else None
    origin_blocks = []
    for i, row in enumerate(r for r in bench["rows"] if r["mode"] == modes[0] and r["method"] == best):
        pieces = plots.token_pieces(ladder.target, row["token_ids"], row["origin_sequence"])
        prompt = prompts[i][1] if prompts and i < len(prompts) else ""
        origin_blocks.append(plots.token_origin_html(
            pieces, prompt=prompt, title=f"{row['task_id']}: {best}, {row['tokens_per_second']:.1f} tok/s, "
                                         f"{row['tokens_per_target_forward']:.2f} tokens per target forward"))
    settings = "".join(f"<li>{m}: {html.escape(', '.join(f'{k}={v}' for k, v in st.items()))}</li>"
                       for m, st in bench["settings"].items())
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sdd-edu report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 24px auto; padding: 0 16px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
.sdd-origins {{ border: 1px solid #eee; border-radius: 6px; padding: 8px; margin: 10px 0; }}
</style></head><body>
<h1>Speculative decoding on your device</h1>
<p><b>{html.escape(bench['ladder'])}</b><br>{html.escape(bench['device'])}, {bench['dtype']};
{bench['prompts']} HumanEval prompts, {bench['max_new_tokens']} new tokens each; medians over prompts after a
warm-up, device synchronised around every timed region; {when}.</p>
<h2>Speed, speedup and acceptance</h2>
{_table(bench)}
<ul>{settings}</ul>
{''.join(divs[:len(modes)])}
<h2>Which stage produced each token</h2>
<p>Colour = origin: <span style="color:{plots.ORIGIN_COLORS['ngram']}">n-gram</span>,
<span style="color:{plots.ORIGIN_COLORS['draft']}">draft model</span>,
<span style="color:{plots.ORIGIN_COLORS['target']}">target</span> (its own token after each verification);
the prompt in grey.</p>
{''.join(origin_blocks)}
{'<h2>One verification step</h2>' + divs[-1] if tree_step is not None else ''}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
