"""The figures the notebooks and pages quote come from one file, sdd_edu/assets/measured.json: every tagged quote
prints its figure as recorded, no sentence about the H100 quotes a recorded figure untagged, and the figures that
follow from others agree with them.  Quick: reads the texts as JSON and markdown, runs nothing."""

import io
import json

import pytest

from sdd_edu import measured
from sdd_edu.errors import SddError
from sdd_edu.measured import figures, quote, quotes, value


def test_value_and_quote_read_the_file():
    assert value("h100.c_draft") == 0.32 and quote("h100.c_draft") == "0.32"
    assert quote("h100.speedup.staged") == "1.28x" and quotes("h100.speedup.staged") == ["1.28x", "1.28"]
    assert quote("h100.tok_s.baseline_fast") == "499" and quote("h100.tokens_per_forward.tree") == "2.00"
    assert quote("h100_first.kernels.target_eager_1") == "1,126" and quote("h100.host_share.staged") == "55%"
    assert quote("h100.forward_ms.target_eager_1", "{:.1f}") == "8.6"
    assert measured.source("h100")["device"] == "NVIDIA H100 80GB HBM3"
    for key, entry in figures().items():  # every entry prints with its formats, and says what it is
        assert quotes(key) and entry["what"], key
        assert entry["group"] in json.loads(measured.DATA.read_text(encoding="utf-8")), key


def test_an_unknown_key_is_one_clear_line():
    with pytest.raises(SddError, match=r"no measured figure 'h100\.speedup\.stagd'.*keys beside it: h100\.speedup\."):
        value("h100.speedup.stagd")
    with pytest.raises(SddError, match="no measured figure 'nowhere'"):
        quote("nowhere")
    with pytest.raises(SddError, match="no measured group 'a100'"):
        measured.source("a100")
    assert "\n" not in str(pytest.raises(SddError, value, "x.y").value)


def test_every_tag_names_a_figure_and_prints_it_as_recorded():
    found = [tag for where, text in measured.texts() for tag in measured.tags(where, text)]
    assert len(found) > 200
    assert [f"{t.where}: {t.key}: {t.problem}" for t in found if t.problem] == []
    tagged = {t.key for t in found}
    for key in ("h100.c_draft", "h100.forward_ms.target_fast_1", "h100.speedup.staged", "h100.r.target_fast_4",
                "h100.kernels.target_eager_1", "h100.tokens_per_forward.staged", "cpu.speedup.greedy_staged"):
        assert key in tagged, key


def test_no_sentence_about_the_h100_quotes_a_recorded_figure_untagged():
    """The guard (measured.untagged): where a sentence mentions 'H100', a number printed exactly as a recorded
    figure (a decimal point, an x or a %, or 3 digits or more) needs its tag.  Code spans are skipped."""
    assert [p for where, text in measured.texts() for p in measured.untagged(where, text)] == []


def test_the_check_catches_a_wrong_quote_an_unknown_key_and_an_untagged_figure(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "On the H100, c = 0.32<!-- measured: h100.c_draft --> and staged ran 1.28 times the baseline.\n\n"
        "Elsewhere 1.28x needs no tag.\n\nNor does `0.47` on the H100: a code span is not prose.\n\n"
        "| tok/s | 499<!-- measured: h100.tok_s.baseline_fast --> | 348<!-- measured: h100.tok_s.tree --> |\n\n"
        "It took 9.99<!-- measured: h100.no_such_key -->.\n", encoding="utf-8")
    out = io.StringIO()
    assert measured.check(tmp_path, out=out) == 3
    report = out.getvalue()
    assert "docs/page.md: 4 tags" in report and "h100.c_draft" in report
    assert "printed '348', measured.json has '414'" in report
    assert "unknown key 'h100.no_such_key'" in report
    assert "1.28 (h100.speedup.staged?) untagged" in report
    assert "1.28x" not in report and "0.47" not in report  # no H100 in its sentence; a code span


def test_the_command_line_check_passes_on_the_repository(capsys):
    assert measured.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "docs/gpu.md:" in out and "tutorials/06_reproducing_the_paper.ipynb:" in out and "✗" not in out
    assert measured.main(["quote", "h100.speedup.staged"]) == 0 and capsys.readouterr().out == "1.28x\n"
    assert measured.main(["value", "nowhere"]) == 1 and "no measured figure" in capsys.readouterr().err
    assert measured.main([]) == 2


def test_the_figures_that_follow_from_others_agree_with_them():
    """Where a recorded figure is computed from others (c, r, a speedup, a step's time, the break-even acceptance),
    a new measurement must update it too: this fails until it does."""
    def rounds_to(key, x):
        assert quote(key) == entry_format(key).format(x), (key, x)

    def entry_format(key):
        return figures()[key]["format"]

    target, draft = value("h100.forward_ms.target_fast_1"), value("h100.forward_ms.draft_fast_1")
    rounds_to("h100.c_draft", draft / target)
    rounds_to("h100.r.target_fast_4", value("h100.forward_ms.target_fast_4") / target)
    rounds_to("h100.r.target_fast_64", value("h100.forward_ms.target_fast_64") / target)
    for method in ("baseline_eager", "speculative", "tree", "staged"):
        rounds_to(f"h100.speedup.{method}", value(f"h100.tok_s.{method}") / value("h100.tok_s.baseline_fast"))
    for mode, method in (("greedy", "tree"), ("greedy", "staged"), ("topk50", "tree"), ("topk50", "staged")):
        rounds_to(f"cpu.speedup.{mode}_{method}",
                  value(f"cpu.tok_s.{mode}_{method}") / value(f"cpu.tok_s.{mode}_baseline"))
    rounds_to("h100.step_ms.staged", 1000 * value("h100.tokens_per_forward.staged") / value("h100.tok_s.staged"))
    # notebook 06, exercise 3: a chain of 3 breaks even where 1 + a + a^2 + a^3 reaches 3c + 1 (r = 1)
    cost = 3 * draft / target + 1
    rounds_to("h100.break_even.chain3", next(a / 1000 for a in range(1001) if sum((a / 1000) ** i for i in range(4)) >= cost))
