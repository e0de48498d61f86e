"""Baseline decoding: greedy, sampling, stopping, streaming, statistics; and the HumanEval prompts."""

import pytest
import torch

from sdd_edu import SddError, generate
from sdd_edu.decoding import baseline_decode
from sdd_edu.sampling import Sampling, probabilities


def test_greedy_is_deterministic_and_matches_argmax_loop(tiny_model):
    ids = tiny_model.encode("def add(a, b):\n")
    res = baseline_decode(tiny_model, ids, 20, stop_at_eos=False)
    # reference: recompute the whole sequence at every step, no cache
    seq = list(ids)
    for _ in range(20):
        seq.append(int(tiny_model.model(torch.tensor([seq]))[0, -1].argmax()))
    assert res.token_ids == seq[len(ids):]
    assert res.origins == ["target"] * 20
    assert res.stats.new_tokens == 20 and res.stats.target_forwards == 19


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    kw = dict(max_new_tokens=15, temperature=1.0, top_k=20, seed=3, stop_at_eos=False)
    a = generate(tiny_model, "x = ", **kw)
    b = generate(tiny_model, "x = ", **kw)
    c = generate(tiny_model, "x = ", **{**kw, "seed": 4})
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_top_k_one_is_greedy(tiny_model):
    greedy = generate(tiny_model, "for i in", max_new_tokens=12, stop_at_eos=False)
    topk1 = generate(tiny_model, "for i in", max_new_tokens=12, temperature=0.7, top_k=1, seed=0, stop_at_eos=False)
    assert greedy.token_ids == topk1.token_ids


def test_probabilities_apply_temperature_top_k_and_top_p():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    p = probabilities(logits, Sampling(temperature=1.0))
    torch.testing.assert_close(p, torch.softmax(logits, -1))
    p = probabilities(logits, Sampling(temperature=2.0, top_k=2))
    expected = torch.softmax(torch.tensor([2.0, 1.5]), -1)
    torch.testing.assert_close(p[:2], expected)
    assert p[2:].sum() == 0
    full = torch.softmax(logits, -1)  # 0.636, 0.234, 0.086, ...
    p = probabilities(logits, Sampling(temperature=1.0, top_p=0.8))  # needs the first two tokens
    assert (p > 0).tolist() == [True, True, False, False, False]
    torch.testing.assert_close(p[:2], full[:2] / full[:2].sum())
    assert probabilities(logits, Sampling()).tolist() == [1, 0, 0, 0, 0]  # greedy is a one-hot


def test_stops_at_eos_and_streams_every_token(tiny_model):
    eos = tiny_model.eos_token_id
    calls = []

    def prefer_eos_from_the_fourth_call(module, inputs, output):
        calls.append(1)
        if len(calls) >= 4:
            output[..., eos] += 1e4
        return output

    handle = tiny_model.model.register_forward_hook(prefer_eos_from_the_fourth_call)
    try:
        streamed = []
        res = baseline_decode(tiny_model, tiny_model.encode("hello"), 30, stream=streamed.extend)
    finally:
        handle.remove()
    assert streamed == res.token_ids
    assert len(res.token_ids) == 4 and res.token_ids[-1] == eos and res.stats.finish_reason == "eos"
    no_stop = baseline_decode(tiny_model, tiny_model.encode("hello"), 30, stop_at_eos=False)
    assert len(no_stop.token_ids) == 30 and no_stop.stats.finish_reason == "length"


def test_stats_record(tiny_model):
    res = generate(tiny_model, "abc", max_new_tokens=8, stop_at_eos=False)
    s = res.stats
    assert s.new_tokens == 8 and s.prompt_tokens == 3 and s.device == "cpu" and s.dtype == "float32"
    assert s.wall_seconds > 0 and s.tokens_per_second > 0 and s.ms_per_target_forward > 0
    d = res.to_dict()
    assert {"text", "token_ids", "origins", "stats"} <= set(d)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt=[]), "prompt is empty"),
    (dict(max_new_tokens=0), "positive integer"),
    (dict(max_new_tokens=-3), "positive integer"),
    (dict(max_new_tokens=10_000), "exceeds the model's context"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=0.5, top_k=0), "top-k"),
    (dict(temperature=0.5, top_p=0.0), "top-p"),
    (dict(temperature=0.5, top_p=1.5), "top-p"),
    (dict(method="beam-search"), "unknown method"),
])
def test_bad_input_gives_a_clear_error(tiny_model, kwargs, message):
    kwargs = {"prompt": "ok", **kwargs}
    with pytest.raises(SddError, match=message):
        generate(tiny_model, **kwargs)


def test_prompt_longer_than_the_context(tiny_model):
    long_prompt = "x" * 300  # the tiny models have a 256-token context
    with pytest.raises(SddError, match="longer than the model's context"):
        generate(tiny_model, long_prompt, max_new_tokens=4)


def test_humaneval_prompts():
    from sdd_edu.data import humaneval_ids, humaneval_prompt, humaneval_prompts, resolve_prompt

    ids = humaneval_ids()
    assert len(ids) == 164 and ids[0] == "HumanEval/0" and ids[-1] == "HumanEval/163"
    assert humaneval_prompt(0) == humaneval_prompt("HumanEval/0")
    assert "def has_close_elements" in humaneval_prompt(0)
    assert resolve_prompt("HumanEval/2") == humaneval_prompt(2)
    assert resolve_prompt("print(1)") == "print(1)"
    assert [t for t, _ in humaneval_prompts(3, start=5)] == ["HumanEval/5", "HumanEval/6", "HumanEval/7"]
    with pytest.raises(SddError, match="HumanEval/163"):
        humaneval_prompt("HumanEval/164")
