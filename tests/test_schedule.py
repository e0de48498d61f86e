"""Speculation that adapts (the schedule) and drafts from the context (prompt lookup, the extended head).

Exactness with the adaptive schedule is tested with every other decoder in test_speculative.py (its
defaults are adaptive); here: the schedule's own logic, and what the context makes draftable.
"""

import pytest
import torch

from sdd_edu import generate
from sdd_edu.decoding import baseline_decode
from sdd_edu.decoding.schedule import MAX_IDLE_WAIT, DraftSchedule, expected_tokens
from sdd_edu.ladders import make_ladder
from sdd_edu.ngram import KatzTrigram, PromptLookup
from tests.test_speculative import (VOCAB, chi_square_p_value, exact_two_token_distribution, random_lm,
                                    random_streams, sample_counts)


def test_expected_tokens_is_the_chain_formula():
    for a in (0.0, 0.3, 0.8):
        for s in range(6):
            assert expected_tokens(a, s) == pytest.approx((1 - a ** (s + 1)) / (1 - a))


def test_the_schedule_grows_when_drafts_land_and_stops_when_they_miss():
    flat = DraftSchedule(3, 6, lambda s: 1.0 + 0.05 * s)  # a GPU-like cost: more nodes are nearly free
    assert flat.size() == 3  # the configured size until the schedule has seen a few steps
    for _ in range(5):
        flat.record(flat.size(), 3, 3)
    assert flat.size() == 6  # everything landed: grow, up to twice the configured size

    steep = DraftSchedule(3, 6, lambda s: 1.0 + 0.5 * s)  # a CPU-like cost
    steep.record(steep.size(), 0, 1)
    steep.record(steep.size(), 0, 1)
    assert steep.size() == 0  # two drafts missed: no more steps at the configured size to time it
    for _ in range(4):
        steep.record(3, 0, 1)
    assert steep.size() == 0 and steep.acceptance < 0.2  # nothing lands: baseline steps


def test_baseline_steps_call_shadow_drafts_ever_less_often():
    s = DraftSchedule(2, 4, lambda n: 1.0 + 0.5 * n)
    for _ in range(4):
        s.record(2, 0, 1)
    waits = []
    for _ in range(8):  # the shadow draft keeps missing: the wait doubles up to its cap
        idle = 0
        while not s.shadow_due():
            assert s.size() == 0
            s.record(0, 0, 0)
            idle += 1
        waits.append(idle)
        s.record(0, 0, 0)
        s.record_shadow(False)
    assert waits == [1, 2, 4, 8, 16, 32, 32, 32] and MAX_IDLE_WAIT == 32
    landed = 0
    while s.size() == 0 and landed < 20:  # drafts land again: the shadow says so, and speculation comes back
        while not s.shadow_due():
            s.record(0, 0, 0)
        s.record(0, 0, 0)
        s.record_shadow(True)
        landed += 1
    assert s.size() == 2 and landed <= 12 and s.wait == 1


def test_step_times_replace_the_prior_cost():
    s = DraftSchedule(2, 4, lambda n: 1.0 + 0.1 * n, learn_times=True)
    for t in (9.0, 1.0, 1.0):  # the first step (it also fills the draft's cache) is not timed
        s.record(2, 1, 2, seconds=t)
    s.record(0, 0, 0, seconds=0.5)
    s.record(0, 0, 0, seconds=0.5)
    assert s.cost(2) == 1.0 and s.cost(0) == 0.5
    assert s.cost(4) == pytest.approx(1.4 * 1.0 / 1.2)  # the prior, scaled as the nearest measured size


def test_an_always_wrong_draft_turns_speculation_off():
    target = random_lm(21)
    ladder = make_ladder(target, random_lm(22, n_layer=1), KatzTrigram.fit(random_streams(61, 4), 61))
    for method in ("speculative", "tree", "staged"):
        # no prompt lookup: the random target soon repeats itself, and the lookup would rightly copy it
        res = generate(ladder, [1, 2, 3], method=method, max_new_tokens=80, stop_at_eos=False, node_cost=0.5,
                       lookup=False)
        assert res.token_ids == baseline_decode(target, [1, 2, 3], 80, stop_at_eos=False).token_ids
        drafted = [step for step in res.trace if step["proposed"]]
        shadows = [step for step in res.trace if step["shadow"]]
        assert len(drafted) <= 12 and shadows, f"{method}: {len(drafted)} drafted steps of {len(res.trace)}"


def constant_target(vocab=61):
    """A target whose logits are all zero: greedy emits token 0 forever (argmax takes the first)."""
    target = random_lm(23, vocab=vocab)
    with torch.no_grad():
        target.model.norm.weight.zero_()
    return target


def test_a_token_outside_the_drafts_head_is_drafted_from_the_context_and_accepted():
    target = constant_target()
    draft = random_lm(24, n_layer=1, head_size=20)
    draft.model.head_ids.copy_(torch.arange(30, 50))  # token 0 is outside the draft's head
    ladder = make_ladder(target, draft, KatzTrigram.fit(random_streams(61, 5), 61))
    prompt = [7, 0, 0, 0, 0]
    expected = baseline_decode(target, prompt, 40, stop_at_eos=False).token_ids
    assert set(expected) == {0}
    res = generate(ladder, prompt, method="staged", max_new_tokens=40, stop_at_eos=False)
    assert res.token_ids == expected
    assert res.origins.count("lookup") > 20  # proposed by the lookup, accepted by the target
    assert res.stats.tokens_per_target_forward > 3
    off = generate(ladder, prompt, method="staged", max_new_tokens=40, stop_at_eos=False, lookup=False)
    assert "lookup" not in off.origins and off.stats.tokens_per_target_forward < 1.1  # the draft alone cannot


@pytest.mark.parametrize("head_size", [0, 4])
def test_sampling_with_prompt_lookup_matches_baseline(head_size):
    """The mixture of draft and lookup is a distribution like any other: still the target's samples."""
    target = random_lm(11, vocab=VOCAB, scale=0.6)
    draft = random_lm(13, vocab=VOCAB, scale=0.6, n_layer=1, head_size=head_size)
    ladder = make_ladder(target, draft, KatzTrigram.fit(random_streams(VOCAB, 3, n=50, length=40), VOCAB))
    prompt = (2, 5, 2, 5, 2)  # lookup proposes 5, outside a 4-token head
    probs = exact_two_token_distribution(target, list(prompt), temperature=1.0)
    counts = sample_counts(ladder, "staged", {"width": 3, "budget": 6, "ngram_fanout": (3, 2), "node_cost": 0.0},
                           temperature=1.0, prompt=prompt)
    assert chi_square_p_value(counts, probs) > 1e-4


def test_the_head_extension_scores_context_tokens_with_their_embedding_rows():
    draft = random_lm(25, n_layer=1, head_size=10)
    m = draft.model
    x = torch.tensor([[3, 40, 41]])
    extra = torch.tensor([40, 41, 55])
    ext = m(x, reduced=True, extra_head_ids=extra)[0]
    full = m.norm(m.blocks[0](m.tok_emb(x), (m.rope_cos[:3][None, :, None], m.rope_sin[:3][None, :, None]), None, 0,
                              m._attention_mask(None, 0, 3, x.device)))[0] @ m.tok_emb.weight.T
    assert ext.shape == (3, 13)
    torch.testing.assert_close(ext[:, 10:], full[:, extra], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ext[:, :10], full[:, m.head_ids], rtol=1e-4, atol=1e-4)


def test_a_fixed_schedule_drafts_the_configured_tree_every_step():
    ladder = make_ladder(random_lm(1), random_lm(2, n_layer=1), KatzTrigram.fit(random_streams(61, 0), 61))
    res = generate(ladder, [1, 2, 3], method="tree", max_new_tokens=20, stop_at_eos=False, adaptive=False,
                   budget=5)
    assert [step["size"] for step in res.trace] == [5] * len(res.trace)
    assert not any(step["shadow"] for step in res.trace)


def test_a_draft_that_cannot_predict_the_prompt_starts_with_speculation_off():
    s = DraftSchedule(3, 6, lambda n: 1.0 + 0.2 * n)
    s.record_prompt(0.05)  # the draft's first choice was the prompt's next token at 5% of the positions
    assert not s.burning_in() and s.size() == 0
    s = DraftSchedule(3, 6, lambda n: 1.0 + 0.2 * n)
    s.record_prompt(0.4)
    assert s.burning_in() and s.size() == 3 and s.acceptance == 0.5  # only kept: the burn-in measures


def test_the_prompt_decides_the_first_step_in_generation():
    from sdd_edu.decoding import baseline_decode

    target = random_lm(21)
    random_draft = make_ladder(target, random_lm(22, n_layer=1), PromptLookup())
    itself = make_ladder(target, target, PromptLookup())
    text = baseline_decode(target, [3, 1, 4], 24, stop_at_eos=False).token_ids  # what the target itself writes
    off = generate(random_draft, text, method="speculative", max_new_tokens=12, stop_at_eos=False)
    on = generate(itself, text, method="speculative", max_new_tokens=12, stop_at_eos=False)
    assert off.trace[0]["size"] == 0 and on.trace[0]["size"] > 0
    expected = baseline_decode(target, text, 12, stop_at_eos=False).token_ids
    assert off.token_ids == on.token_ids == expected
