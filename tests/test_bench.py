"""The benchmark command's machinery, on tiny models (no timing assertions)."""

import json

import pytest

from sdd_edu.ladders import LADDERS, get_ladder, make_ladder
from sdd_edu.loading import load_model
from sdd_edu.measure.bench import format_table, run_bench, save
from sdd_edu.ngram import KatzTrigram
from tests.helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_text_ladder(tmp_path_factory):
    def tiny(seed, **kw):
        path = save_tiny_checkpoint(tmp_path_factory.mktemp(f"m{seed}"), "llama", seed=seed, max_len=1024, **kw)
        return load_model(str(path), device="cpu")

    target, draft = tiny(5), tiny(6, n_layer=1)
    streams = [target.encode("def f(x):\n    return x + 1\n" * 5)]
    return make_ladder(target, draft, KatzTrigram.fit(streams, target.config.vocab_size), name="tiny")


def test_bench_table_and_json(tiny_text_ladder, tmp_path):
    res = run_bench(tiny_text_ladder, prompts=2, max_new_tokens=12, progress=False)
    methods = [(s["mode"], s["method"]) for s in res["summary"]]
    assert methods == [(m, x) for m in ("greedy", "topk50") for x in ("baseline", "speculative", "tree", "staged")]
    for s in res["summary"]:
        assert s["tokens_per_second"] > 0 and abs(sum(s["origins"].values()) - 1) < 1e-9
        if s["mode"] == "greedy" and s["method"] != "baseline":
            assert s["same_output_as_baseline"] == 1.0
    table = format_table(res)
    assert "speedup" in table and "accept" in table and "CPU" in table
    save(res, tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text())["prompts"] == 2


def test_bench_with_transformers_peers(tiny_text_ladder, monkeypatch):
    import logging

    from sdd_edu.measure import peers

    filtered, run = [], peers._run

    def spy(*args):  # transformers' warning about its own assistant call is dropped while the peers run
        filtered.append(any(isinstance(f, peers._DropOwnDeprecation)
                            for f in logging.getLogger("transformers.generation.utils").filters))
        return run(*args)

    monkeypatch.setattr(peers, "_run", spy)
    res = run_bench(tiny_text_ladder, methods=("baseline", "staged"), modes=("greedy",), prompts=1,
                    max_new_tokens=8, progress=False, peers=True)
    names = [s["method"] for s in res["summary"]]
    assert names == ["baseline", "staged", "transformers", "transformers-assisted", "transformers-lookup"]
    rows = {r["method"]: r["token_ids"] for r in res["rows"]}
    # same model, same greedy decoding: transformers' tokens are ours (up to an early EOS)
    assert rows["transformers"][:len(rows["baseline"])] == rows["baseline"][:len(rows["transformers"])]
    assert rows["transformers-assisted"] == rows["transformers"]
    assert "transformers' own generate" in format_table(res)
    assert filtered == [True] and not logging.getLogger("transformers.generation.utils").filters


def test_only_transformers_warning_about_its_own_call_is_dropped():
    import logging

    from sdd_edu.measure.peers import _quiet_assistant_call

    logger = logging.getLogger("transformers.generation.utils")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        with _quiet_assistant_call():
            logger.warning("Passing `generation_config` together with generation-related arguments=({'x'})")
            logger.warning("another warning")
        logger.warning("Passing `generation_config` together with generation-related arguments, outside")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning",
                    "Passing `generation_config` together with generation-related arguments, outside"]


def test_ladder_registry_lists_names():
    assert "embedded" in LADDERS and LADDERS["gpt2"].target == "gpt2-large"
    with pytest.raises(ValueError, match="Valid ladders"):
        get_ladder("nope")


def test_bench_cli_rejects_unknown_methods(capsys):
    from sdd_edu.cli import main

    assert main(["bench", "--methods", "baseline,beam"]) == 2
    assert "unknown method 'beam'" in capsys.readouterr().err


def test_bench_holdout_set_reports_each_kind_and_the_fixed_variant(tiny_text_ladder):
    from sdd_edu.data import HOLDOUT_PROMPTS

    res = run_bench(tiny_text_ladder, methods=("baseline", "staged", "staged:fixed"), modes=("greedy",), prompts=1,
                    max_new_tokens=6, progress=False, prompt_set_name="holdout", repeats=2)
    assert res["prompts"] == len(HOLDOUT_PROMPTS) and len(res["rows"]) == len(HOLDOUT_PROMPTS) * 3 * 2
    first_rounds = [r["method"] for r in res["rows"][:6]]  # each round starts with the next method
    assert first_rounds == ["baseline", "staged", "staged:fixed", "staged", "staged:fixed", "baseline"]
    assert [(s["kind"], s["method"]) for s in res["summary"]] == [
        (k, m) for k in HOLDOUT_PROMPTS for m in ("baseline", "staged", "staged:fixed")]
    assert res["settings"]["staged:fixed"]["adaptive"] is False and res["settings"]["staged"]["adaptive"] is True
    assert all(s["same_output_as_baseline"] == 1.0 for s in res["summary"] if s["method"] != "baseline")
    table = format_table(res)
    assert "hold-out prompts (prose, sql, json, repeated, non-latin)" in table and "drafted" in table
    assert "median of 2 runs" in table


def test_bench_cli_rejects_unknown_variants(capsys):
    from sdd_edu.cli import main

    assert main(["bench", "--methods", "staged:huge"]) == 2
    assert "unknown method variant 'huge'" in capsys.readouterr().err


def test_bench_compares_a_feature_draft_with_the_draft_in_one_run(tiny_text_ladder):
    """``draft="features"`` as a method variant: the ladder's feature draft beside its draft, same run."""
    import torch

    from sdd_edu.feature_draft import FeatureDraft, feature_draft_config
    from sdd_edu.loading import LoadedModel

    target = tiny_text_ladder.target
    torch.manual_seed(0)
    features = FeatureDraft(feature_draft_config(target.config, 0)).eval().requires_grad_(False).attach(target.model)
    ladder = make_ladder(target, tiny_text_ladder.draft, tiny_text_ladder.ngram, name="tiny-features",
                         feature_draft=LoadedModel("tiny-feature-draft", features, target.tokenizer, "test"))
    res = run_bench(ladder, methods=("baseline", "staged", "speculative:features", "tree:features"),
                    modes=("greedy",), prompts=1, max_new_tokens=10, progress=False)
    summary = {s["method"]: s for s in res["summary"]}
    assert list(summary) == ["baseline", "staged", "speculative:features", "tree:features"]
    for label in ("speculative:features", "tree:features"):
        assert summary[label]["same_output_as_baseline"] == 1.0
        assert res["settings"][label]["draft"] == "features"
    assert "feature draft tiny-feature-draft" in res["ladder"]
    # each draft's cost c, measured in the run, beside the methods that drafted with it
    costs = res["draft_costs"]
    assert costs["by_method"] == {"staged": "draft", "speculative:features": "feature draft",
                                  "tree:features": "feature draft"}
    for name, d in costs["drafts"].items():
        assert d["ms"] > 0 and d["c"] == pytest.approx(d["ms"] / d["target_ms"])
    assert summary["baseline"]["draft_cost"] is None
    assert summary["tree:features"]["draft_cost"] == costs["drafts"]["feature draft"]["c"]
    assert summary["staged"]["draft_cost"] == costs["drafts"]["draft"]["c"]
    table = format_table(res)
    assert "c: a draft forward's cost over the target's" in table
    row = next(line for line in table.splitlines() if line.split()[2:3] == ["tree:features"])
    assert f"{costs['drafts']['feature draft']['c']:.3f}" in row
    with pytest.raises(Exception, match="feature draft"):
        run_bench(tiny_text_ladder, methods=("tree:features",), modes=("greedy",), prompts=1, max_new_tokens=4,
                  progress=False)
