"""Sphinx configuration of the course site, built by ``make site`` (``python -m sdd_edu.site build``; see
sdd_edu/site.py), which assembles the source tree under build/site/src and passes this folder with ``-c``."""

project = "sdd-edu"
author = "sdd-edu"
copyright = "sdd-edu contributors, MIT license"

from pathlib import Path

import plotly

extensions = ["myst_nb"]
root_doc = "index"
# README.md is the home page's text (index.md includes it), not a page of its own
exclude_patterns = ["README.md", "**/.ipynb_checkpoints"]

# the notebooks arrive executed (build/executed/, by nbclient or by tests/test_browser.py): never run here
nb_execution_mode = "off"
# no widget manager fetched from a CDN: interactive views are replaced by a note (sdd_edu.site.for_the_page)
nb_ipywidgets_js = {}
# links to a heading (decoders.md#speculation-that-adapts-and-drafts-from-the-context) as GitHub makes them
myst_heading_anchors = 3
# $...$ in the notebooks' text is TeX
myst_enable_extensions = ["colon_fence", "dollarmath"]

html_theme = "sphinx_book_theme"
html_title = "sdd-edu: staged speculative decoding, step by step"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": True,
}
html_last_updated_fmt = None


# plotly.js, once for the whole site, from the plotly package that drew the figures (sdd_edu.site.for_the_page
# takes out the copy each notebook carries); loaded in the head of each page that has a figure
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _plotly_on_pages_with_figures(app, pagename, templatename, context, doctree):
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file("plotly.min.js")


def _copy_plotly_js(app, exception):
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "plotly.min.js"
        if not target.is_file() or target.stat().st_size != PLOTLY_JS.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(PLOTLY_JS.read_bytes())


def setup(app):
    app.connect("html-page-context", _plotly_on_pages_with_figures)
    app.connect("build-finished", _copy_plotly_js)
