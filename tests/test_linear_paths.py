"""The matrix product per row count (``model.Linear.ROW_BLOCK_ROWS``, ``roofline.choose_linear_paths``):
both paths compute the same product, the table decides which one runs, and the chooser gives each row count
to the path its measurement found faster, keeps the choice on disk and installs it again."""

import json

import pytest
import torch

from sdd_edu.measure import roofline
from sdd_edu.model import Linear, linear
from tests.test_speculative import random_lm


@pytest.fixture
def table(monkeypatch, tmp_path):
    """A private copy of the path table and of the cache directory for one test."""
    monkeypatch.setattr(Linear, "ROW_BLOCK_ROWS", dict(Linear.ROW_BLOCK_ROWS))
    monkeypatch.setenv("SDD_EDU_CACHE", str(tmp_path))
    return Linear.ROW_BLOCK_ROWS


def _bmm_calls(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::bmm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_products_agree_and_the_table_picks_one(table, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 40, generator=g).to(dtype)
    b = torch.randn(48, generator=g).to(dtype)
    for rows in (1, 2, 3, 5, 16, 17):
        x = torch.randn(1, rows, 40, generator=g).to(dtype)
        with torch.inference_mode():
            table[("cpu", dtype)] = frozenset(range(1, 65))
            blocks = linear(x, w, b)
            assert _bmm_calls(lambda: linear(x, w, b)) == 1
            table[("cpu", dtype)] = frozenset({rows + 1})  # another row count: not this one
            plain = linear(x, w, b)
            assert _bmm_calls(lambda: linear(x, w, b)) == 0
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(blocks, plain, rtol=tol, atol=tol)
        torch.testing.assert_close(plain, torch.nn.functional.linear(x, w, b))


def test_the_chooser_gives_each_row_count_the_faster_path(table, monkeypatch):
    m = random_lm(5).model
    seen = {}

    def fake_timing(model, sizes, context, repeats, variants):
        seen["sizes"] = list(sizes)
        variants[0]()  # the row-block variant really switches the table
        seen["switched"] = table[("cpu", torch.float32)]
        # row blocks win at 1, 2, 3 and at 12 rows, F.linear elsewhere
        blocks = [10.0 if n in (1, 2, 3, 12) else 30.0 for n in sizes]
        return [blocks, [20.0] * len(sizes)]

    monkeypatch.setattr(roofline, "_interleaved_latency_ms", fake_timing)
    record = roofline.choose_linear_paths(m, max_rows=13)
    assert seen["sizes"] == [1, 2, 3, 4, 6, 8, 12, 13]
    assert seen["switched"] == frozenset(range(1, 14))
    # 5 lies between 4 and 6 (both slower); 10 is nearer 12 than 8 (a tie goes to the larger size)
    assert record["row_blocks"] == [1, 2, 3, 10, 11, 12]
    assert table[("cpu", torch.float32)] == frozenset(record["row_blocks"])
    assert record["label"] == "row blocks 1-3,10-12"
    assert [p[0] for p in record["points"]] == seen["sizes"]

    # kept on disk: another process (a fresh table) installs it without measuring
    table[("cpu", torch.float32)] = frozenset()
    monkeypatch.setattr(roofline, "_interleaved_latency_ms", None)
    again = roofline.saved_linear_paths(m.device, torch.float32, max_rows=13)
    assert again["row_blocks"] == record["row_blocks"]
    assert table[("cpu", torch.float32)] == frozenset(record["row_blocks"])
    assert roofline.saved_linear_paths(m.device, torch.float32, max_rows=32) is None  # measured only up to 13
    assert roofline.saved_linear_paths(m.device, torch.bfloat16) is None  # another dtype: not measured


def test_the_chooser_measures_both_paths_on_a_real_forward(table):
    m = random_lm(5).model
    record = roofline.choose_linear_paths(m, max_rows=3, context=8, repeats=1, save=False)
    assert [p[0] for p in record["points"]] == [1, 2, 3]
    assert all(ms > 0 for p in record["points"] for ms in p[1:])
    assert set(record["row_blocks"]) <= {1, 2, 3}
    assert table[("cpu", torch.float32)] == frozenset(record["row_blocks"])
    assert not list((roofline.linear_paths_file(m.device, torch.float32)[1]).parent.glob("*.json"))  # save=False


def test_a_latency_curve_belongs_to_its_product_paths(table, monkeypatch):
    m = random_lm(5).model
    calls = []
    monkeypatch.setattr(roofline, "_interleaved_latency_ms",
                        lambda model, sizes, context, repeats, fast=False: calls.append(sizes) or [[1.0 + n for n in sizes]])
    roofline.forward_latency_ms(m, 4)
    roofline.forward_latency_ms(m, 4)
    assert len(calls) == 1  # the same paths: the curve is reused
    table[("cpu", torch.float32)] = frozenset({1})
    roofline.forward_latency_ms(m, 4)
    assert len(calls) == 2  # other paths: measured again


def test_a_gpu_has_one_product(table):
    class OnGpu:  # only its device is read
        device = torch.device("mps")
        dtype = torch.bfloat16
    record = roofline.choose_linear_paths(OnGpu())
    assert record["row_blocks"] == [] and "F.linear" in record["label"]
    assert ("mps", torch.bfloat16) not in table
    assert json.dumps(record)
