"""The feature draft (EAGLE): its cache, its training step, and exactness of every method drafting with it."""

import numpy as np
import pytest
import torch

from sdd_edu import SddError, generate
from sdd_edu.decoding import baseline_decode
from sdd_edu.feature_draft import (FeatureDraft, feature_draft_config, feature_loss, load_feature_draft,
                                   save_feature_draft)
from sdd_edu.ladders import make_ladder
from sdd_edu.loading import LoadedModel
from sdd_edu.ngram import PromptLookup
from tests.test_speculative import (KEEPS_DRAFTING, N_SAMPLES, VOCAB, chi_square_p_value,
                                    exact_two_token_distribution, explain_mismatch, random_lm, sample_counts)


def random_feature_draft(target: LoadedModel, seed: int, head_size: int = 0, scale: float = 0.4) -> LoadedModel:
    torch.manual_seed(seed)
    draft = FeatureDraft(feature_draft_config(target.config, head_size))
    with torch.no_grad():
        for p in draft.parameters():
            p.normal_(0, scale)
        if head_size:  # a head over every other token, in a shuffled order
            draft.head_ids.copy_(torch.randperm(target.config.vocab_size)[:head_size].sort().values)
    draft = draft.eval().requires_grad_(False).attach(target.model)
    return LoadedModel(f"random-feature-draft-{seed}", draft, None, "test")


@pytest.fixture(scope="module")
def target():
    return random_lm(1, family="llama")


@pytest.fixture(scope="module")
def trained_drafts(target):
    """Feature drafts (full and reduced head) trained a few seconds on the target's own greedy continuations:
    right often enough that drafts are accepted, and so the accepted paths' features are exercised."""
    from sdd_edu.train_feature_draft import train_steps

    rng = np.random.default_rng(1)
    examples = []
    with torch.no_grad():
        for _ in range(24):
            prompt = rng.integers(0, 61, int(rng.integers(2, 10))).tolist()
            tokens = prompt + baseline_decode(target, prompt, 40, stop_at_eos=False).token_ids
            _, h = target.model(torch.tensor([tokens]), features=True)
            examples.append((np.array(tokens), h[0].numpy().astype(np.float16)))
    drafts = {}
    for head_size in (0, 24):
        draft = random_feature_draft(target, 5, head_size, scale=0.0).model
        torch.manual_seed(0)
        fresh = FeatureDraft(draft.config).attach(target.model)  # default initialisation, the head of `draft`
        if head_size:
            fresh.head_ids.copy_(draft.head_ids)
        target.model.requires_grad_(False)
        train_steps(fresh, examples, steps=80, lr=1e-2, batch_tokens=400, noise=0.0)
        drafts[head_size] = LoadedModel(f"trained-feature-draft-{head_size}", fresh.requires_grad_(False), None,
                                        "test")
    return drafts


def test_a_cached_forward_equals_one_forward_over_everything(target):
    draft = random_feature_draft(target, 3).model
    L = 12
    feats, ids = torch.randn(1, L, 32), torch.randint(0, 61, (1, L))
    whole_logits, whole_h = draft(feats, ids)
    cache = draft.new_cache(L)
    for i in range(L):  # one row at a time
        logits, h = draft(feats[:, i:i + 1], ids[:, i:i + 1], cache)
        torch.testing.assert_close(logits[0, 0], whole_logits[0, i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h[0, 0], whole_h[0, i], rtol=1e-4, atol=1e-4)
    cache = draft.new_cache(L)  # a prefix, then the rest at once
    draft(feats[:, :5], ids[:, :5], cache)
    logits, _ = draft(feats[:, 5:], ids[:, 5:], cache)
    torch.testing.assert_close(logits[0], whole_logits[0, 5:], rtol=1e-4, atol=1e-4)


def test_a_tree_forward_equals_each_path_as_a_chain(target):
    from sdd_edu.decoding.tree import tree_attention_mask

    draft = random_feature_draft(target, 4).model
    P = 6
    feats, ids = torch.randn(1, P, 32), torch.randint(0, 61, (1, P))
    parents = [-1, -1, 0, 0, 2, 1]  # two roots' children, a fork below the first, a grandchild
    node_feats, node_ids = torch.randn(1, len(parents), 32), torch.randint(0, 61, (1, len(parents)))
    cache = draft.new_cache(P + len(parents))
    draft(feats, ids, cache)
    mask, pos = tree_attention_mask(parents, cached=P, chain=0)
    tree_logits, _ = draft(node_feats, node_ids, cache, position_ids=pos, attention_mask=mask)
    for node in range(len(parents)):
        path = [node]
        while parents[path[-1]] != -1:
            path.append(parents[path[-1]])
        path = path[::-1]
        chain_logits, _ = draft(torch.cat([feats, node_feats[:, path]], 1), torch.cat([ids, node_ids[:, path]], 1))
        torch.testing.assert_close(tree_logits[0, node], chain_logits[0, -1], rtol=1e-4, atol=1e-4)


FIXED = {"adaptive": False}  # drafts every step: the adaptive schedule stops drafting for a weak draft
FEATURE_METHODS = [("speculative", KEEPS_DRAFTING), ("speculative", {"gamma": 1, **FIXED}), ("speculative", FIXED),
                   ("tree", FIXED), ("tree", {"width": 2, "depth": 3, "budget": 5, "lookup": True, **KEEPS_DRAFTING}),
                   ("tree", {"width": 3, "depth": 4, "budget": 10, "beam": 2, **FIXED})]


@pytest.mark.parametrize("method, settings", [("speculative", {"gamma": 3, **FIXED}),
                                              ("speculative", {"gamma": 2, **KEEPS_DRAFTING}),  # adaptive: prefill too
                                              ("tree", {"width": 2, "depth": 3, "budget": 5, **FIXED})])
def test_the_first_draft_of_every_step_is_one_forward_over_the_targets_features(target, trained_drafts, method,
                                                                                  settings):
    """What the drafter keeps (the target's features handed over step by step, its cache, the rows it forgets
    after verification) gives, at every step, the distribution below the root that one forward of the draft
    over the target's features of the whole context gives."""
    draft = trained_drafts[0].model
    ladder = make_ladder(target, trained_drafts[0], PromptLookup())
    prompt = [31, 46, 57, 2, 8, 6]
    res = generate(ladder, prompt, method=method, max_new_tokens=40, stop_at_eos=False, **settings)
    tokens = prompt + res.token_ids
    _, feats = target.model(torch.tensor([tokens]), features=True)
    with torch.no_grad():
        logits, _ = draft(feats[:, :-1], torch.tensor([tokens[1:]]))
    probs = torch.softmax(logits[0], -1)
    context, checked = len(prompt), 0
    for step in res.trace:
        if step["proposed"]:
            tree = step["tree"]
            first = tree["parents"].index(-1)
            row = probs[context - 2]  # row i reads (f_i, token i + 1): the root is token context - 1
            assert tree["tokens"][first] == int(row.argmax())
            assert abs(tree["draft_probs"][first] - float(row.max())) < 2e-4  # (rounded to 4 places)
            checked += 1
        context += step["emitted"]
    assert checked >= 5 and sum(step["accepted"] for step in res.trace) > 0


@pytest.mark.parametrize("head_size", [0, 24], ids=["full head", "reduced head"])
@pytest.mark.parametrize("method, settings", FEATURE_METHODS)
def test_greedy_equals_baseline_drafting_with_features(target, trained_drafts, method, settings, head_size):
    ladder = make_ladder(target, trained_drafts[head_size], PromptLookup())
    rng = np.random.default_rng(0)
    drafted = accepted = 0
    for trial in range(6):
        prompt = rng.integers(0, 61, int(rng.integers(1, 12))).tolist()
        expected = baseline_decode(target, prompt, 40, stop_at_eos=False).token_ids
        res = generate(ladder, prompt, method=method, max_new_tokens=40, stop_at_eos=False, **settings)
        assert res.token_ids == expected, explain_mismatch(target, prompt, expected, res.token_ids)
        drafted += res.stats.draft_forwards
        accepted += sum(step["accepted"] for step in res.trace)
    assert drafted > 0 and accepted > 0, (drafted, accepted)



@pytest.mark.parametrize("pad", [False, True], ids=["exact shapes", "padded to buckets"])
def test_the_fast_path_returns_the_eager_forwards_features(target, pad):
    """The fixed-shape forward (sdd_edu/fast.py; on CUDA replayed from graphs) returns the features the eager
    forward does, for a prefill, a chain and a tree, and copies them out of its reused output buffer."""
    from sdd_edu.decoding.tree import tree_attention_mask
    from sdd_edu.fast import StaticKVCache

    model = target.model
    fast, eager = StaticKVCache(model, 40, capture=False, pad=pad), model.new_cache(40)
    prompt = torch.tensor([[5, 17, 33, 2, 9, 41]])
    parents = [-1, -1, 0, 0, 2]
    mask, pos = tree_attention_mask(parents, cached=prompt.shape[1], chain=1)
    tree = torch.tensor([[7, 12, 3, 30, 8, 1]])  # the root, then the nodes
    for ids, kw in ((prompt, {}), (tree, {"position_ids": pos, "attention_mask": mask})):
        want_logits, want_h = model(ids, eager, features=True, **kw)
        logits, h = model(ids, fast, features=True, **kw)
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h, want_h, rtol=1e-4, atol=1e-4)
        assert h.shape == ids.shape + (model.config.d_model,)
    kept = h.clone()
    model(torch.tensor([[4]]), fast, features=True)  # the next forward does not change features handed out
    assert torch.equal(h, kept)


@pytest.mark.parametrize("pad", [False, True], ids=["exact shapes", "padded to buckets"])
def test_the_feature_drafts_fast_path_equals_its_eager_forward(target, pad):
    """The draft's own fixed-shape forward (``fast.FeatureStaticCache``, captured on CUDA) gives its eager
    forward's logits and predicted features: committed rows, then a level of a tree under its mask."""
    from sdd_edu.fast import FeatureStaticCache

    draft = random_feature_draft(target, 4, head_size=24).model
    fast, eager = FeatureStaticCache(draft, 40, capture=False, pad=pad), draft.new_cache(40)
    g = torch.Generator().manual_seed(4)
    feats, ids = torch.randn(1, 7, 32, generator=g), torch.randint(0, 61, (1, 7), generator=g)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, :7] = True
    mask[[0, 1, 2, 2], [7, 8, 7, 9]] = True  # nodes 0 and 1 under the root, node 2 under node 0
    level = dict(position_ids=torch.tensor([7, 7, 8]), attention_mask=mask)
    for rows, kw in (((feats, ids), {"position_ids": torch.arange(1, 8)}),
                     ((torch.randn(1, 3, 32, generator=g), torch.randint(0, 61, (1, 3), generator=g)), level)):
        want_logits, want_h = draft(*rows, eager, **kw)
        logits, h = draft(*rows, fast, **kw)
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h, want_h, rtol=1e-4, atol=1e-4)
    assert fast.length == eager.length == 10


@pytest.mark.parametrize("method, settings", [("speculative", KEEPS_DRAFTING), ("tree", FIXED),
                                              ("tree", {"width": 3, "depth": 4, "budget": 10, "beam": 2, **FIXED})])
def test_greedy_on_the_fast_path_equals_baseline_drafting_with_features(target, trained_drafts, method, settings):
    """fast=True: the target's forwards on the fixed-shape path hand the drafter their features, and the draft
    runs its own fixed-shape forward; the tokens, and the drafts at every step, are the eager run's."""
    ladder = make_ladder(target, trained_drafts[24], PromptLookup())
    rng = np.random.default_rng(3)
    for trial in range(4):
        prompt = rng.integers(0, 61, int(rng.integers(1, 12))).tolist()
        expected = baseline_decode(target, prompt, 32, stop_at_eos=False).token_ids
        eager = generate(ladder, prompt, method=method, max_new_tokens=32, stop_at_eos=False, fast=False, **settings)
        fast = generate(ladder, prompt, method=method, max_new_tokens=32, stop_at_eos=False, fast=True, **settings)
        assert fast.token_ids == eager.token_ids == expected, explain_mismatch(target, prompt, expected, fast.token_ids)
        assert [s["proposed"] for s in fast.trace] == [s["proposed"] for s in eager.trace]
        assert [s.get("tree", {}).get("tokens") for s in fast.trace] == [s.get("tree", {}).get("tokens")
                                                                          for s in eager.trace]


@pytest.fixture(scope="module")
def small_vocab_feature_ladder():
    target = random_lm(11, vocab=VOCAB, scale=0.6)
    return make_ladder(target, random_feature_draft(target, 12, scale=0.6), PromptLookup())


@pytest.mark.parametrize("method, settings", [("speculative", KEEPS_DRAFTING),
                                              ("tree", {"width": 3, "depth": 2, "budget": 6, "adaptive": False}),
                                              ("speculative", {**KEEPS_DRAFTING, "fast": True})])  # the fast path
def test_sampling_with_features_matches_the_baseline_distribution(small_vocab_feature_ladder, method, settings):
    probs = exact_two_token_distribution(small_vocab_feature_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_feature_ladder, method, settings, temperature=1.0)
    assert chi_square_p_value(counts, probs) > 1e-4


def test_the_statistical_test_catches_a_wrong_rule_with_features(small_vocab_feature_ladder, monkeypatch):
    import sdd_edu.decoding.tree as tree_mod

    def always_accept(tree, node, kids, p, generator):
        return (kids[0], p) if kids else (None, p)

    monkeypatch.setattr(tree_mod, "_recursive_rejection", always_accept)
    probs = exact_two_token_distribution(small_vocab_feature_ladder.target, [2, 4, 1], temperature=1.0)
    counts = sample_counts(small_vocab_feature_ladder, "speculative", KEEPS_DRAFTING, temperature=1.0)
    assert chi_square_p_value(counts, probs) < 1e-6


def test_staged_with_a_feature_draft_is_a_clear_error(target):
    ladder = make_ladder(target, random_feature_draft(target, 5), PromptLookup())
    with pytest.raises(SddError, match="feature draft"):
        generate(ladder, [1, 2, 3], method="staged", max_new_tokens=4)


def test_a_few_training_steps_reduce_the_loss():
    """On a tiny target's own features, a few AdamW steps cut the feature error and raise top-1 agreement
    (the token term barely moves: a random target's distributions are nearly flat, their entropy is its floor)."""
    from sdd_edu.train_feature_draft import pad_batch, train_steps

    target = random_lm(21, vocab=61, n_layer=2, d_model=32, scale=0.3)
    target.model.requires_grad_(False)
    rng = np.random.default_rng(0)
    examples = []
    with torch.no_grad():
        for _ in range(16):
            tokens = rng.integers(0, 61, 24)
            _, h = target.model(torch.from_numpy(tokens)[None], features=True)
            examples.append((tokens, h[0].numpy().astype(np.float16)))
    torch.manual_seed(0)
    draft = FeatureDraft(feature_draft_config(target.config, 0)).attach(target.model)
    batch = pad_batch(examples, list(range(len(examples))))
    with torch.no_grad():
        _, before = feature_loss(draft, batch[1], batch[0], batch[2])
    state = train_steps(draft, examples, steps=30, lr=3e-3, batch_tokens=200, noise=0.0)
    with torch.no_grad():
        _, after = feature_loss(draft, batch[1], batch[0], batch[2])
    assert state["step"] == 30 and len(state["curve"]) == 30
    assert after["regression"] < 0.5 * before["regression"], (before, after)
    assert after["top1"] > before["top1"] + 0.2, (before, after)
    # unrolled: the draft also learns from its own predicted features (two passes per step)
    torch.manual_seed(0)
    unrolled = FeatureDraft(feature_draft_config(target.config, 0)).attach(target.model)
    with torch.no_grad():
        _, two = feature_loss(unrolled, batch[1], batch[0], batch[2], unroll=2)
    train_steps(unrolled, examples, steps=30, lr=3e-3, batch_tokens=200, noise=0.0, unroll=2)
    with torch.no_grad():
        _, after_two = feature_loss(unrolled, batch[1], batch[0], batch[2], unroll=2)
    assert len(two["regression_by_pass"]) == 2
    for before_pass, after_pass in zip(two["regression_by_pass"], after_two["regression_by_pass"]):
        assert after_pass < 0.5 * before_pass, (two, after_two)


def test_saved_weights_load_and_give_the_same_logits(target, tmp_path):
    loaded = random_feature_draft(target, 6, head_size=24).model
    save_feature_draft(loaded, tmp_path / "fd")
    again = load_feature_draft(tmp_path / "fd", target.model)
    feats, ids = torch.randn(1, 5, 32), torch.randint(0, 61, (1, 5))
    # fp16 storage: equal to the weights' rounding
    torch.testing.assert_close(again(feats, ids)[0], loaded.half().float()(feats, ids)[0], rtol=1e-3, atol=1e-3)
    assert torch.equal(again.head_ids, loaded.head_ids)


def shipped_feature_draft_available():
    from sdd_edu.loading import FEATURE_DRAFT_ASSET

    return (FEATURE_DRAFT_ASSET / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(not shipped_feature_draft_available(), reason="no feature draft shipped in this checkout")
def test_the_shipped_feature_draft_reproduces_its_recorded_agreement(embedded):
    """The shipped weights load, fit the budget, and agree with the target as recorded when they were made."""
    import json

    from sdd_edu.loading import FEATURE_DRAFT_ASSET, load_feature_draft_model
    from sdd_edu.train_feature_draft import CHECK_TOKENS, feature_agreement

    assert (FEATURE_DRAFT_ASSET / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    draft = load_feature_draft_model(embedded)
    recorded = json.loads((FEATURE_DRAFT_ASSET / "check.json").read_text())
    measured = feature_agreement(embedded, draft.model, prompts=2, new_tokens=CHECK_TOKENS)
    assert measured["positions"] == recorded["positions"]
    for k in ("top1", "top4"):  # the same code on another CPU: float rounding may flip a near-tie or two
        assert abs(measured[k] - recorded[k]) <= 0.03, (k, measured, recorded)
    assert measured["top1"] > 0.2  # a trained draft (a random one agrees about 1 time in 8,192)


def test_gpu_check_measures_the_feature_draft_beside_the_small_one(target, trained_drafts):
    """gpu-check's rows for a ladder with a feature draft: its one-token forward and c beside the small draft's,
    its methods' greedy identity and speed (measured on this CPU here, as on a GPU)."""
    from sdd_edu.measure.gpu_check import draft_costs, format_gpu_check, greedy_identity, method_speeds

    ladder = make_ladder(target, random_lm(2, n_layer=1), PromptLookup(), feature_draft=trained_drafts[0])
    costs = draft_costs(ladder, context=16)
    assert set(costs) == {"target", "draft", "feature draft"}
    assert all(costs[d][c] > 0 for d in ("draft", "feature draft") for c in ("c_eager", "c_fast"))
    # the profiler counts a one-layer draft's operators below a two-layer target's
    assert costs["feature draft"]["profile"]["eager"]["count"] < costs["target"]["profile"]["eager"]["count"]
    prompt = [3, 14, 15, 9, 2]
    same = greedy_identity(ladder, prompt, 12)
    assert {"speculative:features", "tree:features:fixed"} <= set(same) and all(same.values()), same
    speeds = method_speeds(ladder, [prompt], 8)
    assert {"speculative:features", "tree:features"} <= set(speeds)
    text = format_gpu_check({"device": "cpu", "dtype": "float32", "torch": torch.__version__, "quick": True,
                             "shapes": {}, "greedy": {"tiny": same}, "drafts": costs,
                             "speed": {"ladder": "tiny", "prompts": 1, "new_tokens": 8, "methods": speeds}, "ok": True})
    assert "feature draft  eager" in text and "c eager" in text and "tree:features" in text, text
