"""Grading a folder of submitted student notebooks: ``python -m sdd_edu grade SUBMISSIONS``.

Each submission is a student-edition notebook (``make student``) with the student's answers typed in.  It
runs top to bottom in a fresh kernel, in quick mode, with its check cells put back as the course wrote them
(matched by cell id, else by their ``solved(...)`` lines: an edited or weakened check does not count), and
then one more cell runs the hidden tests below in the same kernel, on inputs the notebook never shows.

Points per exercise: 1 for its check cell passing on the student's own answer (a stub that still gives
sdd-edu's answer scores 0), and 1 for passing its hidden tests, for the exercises that have them (the
functions a student writes: the main exercises of each notebook).  The scores go to a CSV file, one row per
student, notebook and exercise, and the graded notebooks, with their outputs, to a folder beside it.

The layout is the one nbgrader and most course tools use, one folder per student::

    submissions/alice/04_token_trees.ipynb
    submissions/bob/04_token_trees.ipynb

(flat files work too: ``submissions/alice_04_token_trees.ipynb``; the student is then the file's name less
the notebook's).  The hidden tests are hidden from the notebook, not from a reader of this file, which like
``sdd_edu.course`` ships with the package.  Grading runs the students' code: run it where that is safe (a
container, a throwaway machine).
"""

from __future__ import annotations

import csv
import json
import math
import re
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import SddError

REPORT_MARK = "SDD_EDU_HIDDEN_TESTS "  # starts the hidden-test cell's one line of results
SOLVED_LINE = re.compile(r'^solved\((".*?")\)$')
TEST_SECONDS = 60  # a hidden test that runs longer fails (an endless loop in a walk, say)


# ----------------------------------------------------------------------------- the hidden tests (run in the kernel)

@dataclass
class Hidden:
    """One exercise's hidden tests: ``test(function, namespace)`` raises AssertionError with what is wrong."""
    notebook: str  # "04"
    name: str  # the exercise's name: the function the student writes
    test: Callable


def _close(a, b, atol=1e-5) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=atol))


def _chi2_pvalue(counts, probs) -> float:
    """Pearson's chi-square test of counts against probs, cells expecting fewer than 5 pooled into one."""
    import torch

    counts = torch.as_tensor(counts, dtype=torch.float64)
    expected = torch.as_tensor(probs, dtype=torch.float64) / float(torch.as_tensor(probs).sum()) * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    if (obs[exp == 0] > 0).any():
        return 0.0
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = torch.tensor((len(obs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, stat / 2))


def _distribution(probs: list[float]):
    import torch

    p = torch.tensor(probs, dtype=torch.float64)
    return p / p.sum()


def _record_batches(on_tokens, ns) -> None:
    before = ns.get("batches")
    try:
        ns["batches"] = []
        given = [[4, 8], [15], [16, 23, 42]]
        for batch in given:
            on_tokens(batch)
        got = [[int(t) for t in b] for b in ns["batches"]]
        assert got == given, f"three batches {given} were recorded as {got}"
        given[0].append(99)  # the stream may reuse its list: the record must not change with it
        assert [int(t) for t in ns["batches"][0]] == [4, 8], "a batch is recorded by reference, not copied"
    finally:
        ns["batches"] = before


def _greedy_with_cache(greedy_with_cache, ns) -> None:
    import torch

    from .decoding import baseline_decode
    from .loading import LoadedModel
    from .model import ModelConfig, Transformer
    from .notebook import forward_sizes

    torch.manual_seed(17)
    config = ModelConfig(family="llama", vocab_size=41, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48,
                         max_seq_len=128)
    model = Transformer(config).eval()
    with torch.no_grad():  # weights large enough that the greedy text does not repeat one token
        for w in model.parameters():
            w.mul_(3)
    for prompt, n in (([3, 9, 27, 1], 7), ([5], 3), (list(range(2, 20)), 1)):
        want = baseline_decode(LoadedModel("tiny", model, None, "test"), prompt, n, stop_at_eos=False).token_ids
        got = []
        with torch.inference_mode():
            sizes = forward_sizes(model, lambda: got.extend(int(t) for t in greedy_with_cache(model, prompt, n)))
        assert got == want, f"another model, prompt {prompt}, {n} tokens: {got}, not {want}"
        assert sizes[:1] == [len(prompt)] and set(sizes[1:]) <= {1} and len(sizes) - 1 in (n - 1, n), \
            f"prompt of {len(prompt)}, {n} tokens: forwards over {sizes} tokens, not the prompt then one at a time"


def _gqa(gqa, ns) -> None:
    import torch

    from .model import attention

    g = torch.Generator().manual_seed(11)
    for nh, nkv, n, s, hs in ((8, 2, 3, 5, 16), (4, 4, 1, 6, 8), (6, 1, 2, 4, 8)):  # GQA, MHA, MQA
        q, k, v = (torch.randn(h, t, hs, generator=g) for h, t in ((nh, n), (nkv, s), (nkv, s)))
        assert _close(gqa(q, k, v), attention(q[None], k[None], v[None], None)[0]), \
            f"{nh} query heads over {nkv} kv heads ({n} queries, {s} slots): not sdd_edu.model.attention's"
    # without copying k and v out to one per query head: the grouped query heads meet them as they are
    from .notebook import largest_copy

    q, k, v = (torch.randn(h, t, 16, generator=g) for h, t in ((8, 2), (2, 12), (2, 12)))
    assert largest_copy(lambda: gqa(q, k, v)) < 8 * 12 * 16, "k and v are copied, one per query head"


def _attention_with_cache(attention_with_cache, ns) -> None:
    import torch

    from .course import attention_with_cache as reference
    from .model import ModelConfig, Transformer

    torch.manual_seed(13)
    config = ModelConfig(family="llama", vocab_size=37, n_layer=1, n_head=4, n_kv_head=2, d_model=32, d_ff=48,
                         max_seq_len=256, rope_theta=500.0)
    attn = Transformer(config).blocks[0].attn
    with torch.inference_mode():
        for past in (1, 9):
            x = torch.randn(1, 1, config.d_model)
            past_k, past_v = torch.randn(2, 2, past, config.head_dim).unbind(0)
            mine = attention_with_cache(attn, x, past_k, past_v, past, config.rope_theta)
            assert _close(mine, reference(attn, x, past_k, past_v, past, config.rope_theta), atol=1e-4), \
                f"another layer (4 heads over 2, theta 500), {past} cached slots: not the model's attention"


def _entropy(entropy, ns) -> None:
    import torch

    assert abs(entropy(torch.full((7,), 1 / 7)) - math.log(7)) < 1e-6, "uniform over 7 tokens: not log 7"
    assert abs(entropy(torch.tensor([0.0, 1.0, 0.0]))) < 1e-9, "a certain token: not 0"
    p = _distribution([0.5, 0.25, 0.125, 0.125]).float()
    assert abs(entropy(p) - 1.75 * math.log(2)) < 1e-5, "(1/2, 1/4, 1/8, 1/8): not 1.75 bits"


def _speculative_samples(speculative_samples, ns) -> None:
    import torch

    p = _distribution([0.05, 0.30, 0.05, 0.20, 0.25, 0.15]).float()
    q = _distribution([0.30, 0.05, 0.25, 0.20, 0.05, 0.15]).float()
    n = 40_000
    tokens, accepted = speculative_samples(p, q, n, torch.Generator().manual_seed(17))
    tokens, accepted = torch.as_tensor(tokens).long(), torch.as_tensor(accepted).bool()
    assert tokens.shape == (n,) and accepted.shape == (n,), f"{n} steps gave shapes {tuple(tokens.shape)}"
    assert _chi2_pvalue(torch.bincount(tokens, minlength=6), p) > 1e-4, "another p and q: the tokens do not follow p"
    beta = float(torch.minimum(p, q).sum())
    assert abs(float(accepted.float().mean()) - beta) < 5 * (0.25 / n) ** 0.5, \
        "another p and q: the draft is not kept with probability sum min(p, q)"
    assert _chi2_pvalue(torch.bincount(tokens[accepted], minlength=6), torch.minimum(p, q)) > 1e-4, \
        "another p and q: the kept tokens do not follow min(p, q)"
    # a pair where the residual max(p - q, 0) is far from p itself on the tokens p favours
    p = _distribution([0.05, 0.40, 0.05, 0.10, 0.25, 0.15]).float()
    q = _distribution([0.30, 0.05, 0.25, 0.20, 0.15, 0.05]).float()
    tokens, accepted = speculative_samples(p, q, n, torch.Generator().manual_seed(18))
    tokens, accepted = torch.as_tensor(tokens).long(), torch.as_tensor(accepted).bool()
    assert _chi2_pvalue(torch.bincount(tokens[~accepted], minlength=6), torch.clamp(p - q, min=0)) > 1e-4, \
        "a third p and q: the tokens drawn after a rejection do not follow the residual max(p - q, 0)"
    assert _chi2_pvalue(torch.bincount(tokens, minlength=6), p) > 1e-4, "a third p and q: the tokens do not follow p"


def _random_parents(count: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(-1, i) for i in range(count)]  # a parent comes before its child; -1 is the root


def _trees() -> list[list[int]]:
    return [[-1, 0, 1, 2, 3], [-1, -1, -1, -1], _random_parents(9, 1), _random_parents(12, 2), []]


def _tree_mask(tree_mask, ns) -> None:
    import torch

    from .decoding.tree import tree_attention_mask

    for parents in _trees():
        for cached in (0, 5):
            mine = torch.as_tensor(tree_mask(parents, cached)).bool()
            right = tree_attention_mask(parents, cached=cached, chain=1)[0]
            assert mine.shape == right.shape and torch.equal(mine, right), \
                f"parents {parents}, {cached} cached slots: not the tree's mask"


def _depth(depth, ns) -> None:
    from .decoding.tree import TokenTree

    before = ns.get("parents")
    try:
        for parents in _trees()[:4]:
            ns["parents"] = parents  # depth reads the notebook's tree, the global parents
            right = TokenTree(parents=list(parents))
            got = [depth(i) for i in range(-1, len(parents))]
            assert got == [0] + [right.depth(i) for i in range(len(parents))], f"parents {parents}: depths {got}"
    finally:
        ns["parents"] = before


def _greedy_walk(greedy_walk, ns) -> None:
    import random

    import torch

    from .course import greedy_walk as reference
    from .decoding.tree import ROOT, TokenTree

    rng, g = random.Random(19), torch.Generator().manual_seed(19)
    for case in range(12):
        logits = torch.randn(1 + 10, 6, generator=g)
        tree = TokenTree()
        for i in range(10):  # grow where the target agrees often: the walk goes deep in some cases
            parent = rng.choice([ROOT] + list(range(len(tree.tokens))))
            best = int(logits[0 if parent == ROOT else 1 + parent].argmax())
            token = best if rng.random() < 0.6 else rng.randrange(6)
            if token in [tree.tokens[c] for c in tree.children(parent)]:
                token = (token + 1 + rng.randrange(5)) % 6
                if token in [tree.tokens[c] for c in tree.children(parent)]:
                    continue
            tree.add(token, parent)
        logits = logits[:1 + len(tree.tokens)]
        accepted, next_token = greedy_walk(tree, logits)
        right = reference(tree, logits)
        assert (list(accepted), int(next_token)) == (right[0], right[1]), \
            f"a random tree (parents {tree.parents}, tokens {tree.tokens}): accepted {list(accepted)}, " \
            f"next {int(next_token)}; the target's argmax walk gives {right[0]}, then {right[1]}"


def _multi_candidate(multi_candidate, ns) -> None:
    import torch

    p = _distribution([0.05, 0.35, 0.10, 0.30, 0.20])
    q = _distribution([0.40, 0.05, 0.25, 0.10, 0.20])
    n = 40_000
    for k, replacement in ((2, False), (4, False), (3, True)):
        out, _ = multi_candidate(p, q, k, n, torch.Generator().manual_seed(23 + k), replacement=replacement)
        assert _chi2_pvalue(torch.bincount(torch.as_tensor(out).long(), minlength=5), p) > 1e-4, \
            f"another p and q, {k} candidates {'with' if replacement else 'without'} replacement: the tokens " \
            "do not follow p"


def _sampled_walk(sampled_walk, ns) -> None:
    import torch

    from .decoding.tree import ROOT, TokenTree, verify
    from .sampling import Sampling

    g = torch.Generator().manual_seed(29)
    for case in range(120):  # other trees, vocabularies and samplings than the notebook's
        vocab = 5 + case % 7
        tree, frontier = TokenTree(), [ROOT]
        while frontier and len(tree) < 1 + case % 10:
            node = frontier.pop(0)
            q = torch.softmax(torch.randn(vocab, generator=g) * 2.5, 0)
            tree.child_dists[node] = q
            for token in torch.multinomial(q, 1 + case % 3, replacement=False, generator=g).tolist():
                frontier.append(tree.add(token, node))
        # a flat target in half the cases: it keeps more candidates, so those walks go deeper
        logits = torch.randn(1 + len(tree), vocab, generator=g) * (0.5 if case % 2 else 2.0)
        sampling = (Sampling(temperature=1.0), Sampling(temperature=0.8, top_p=0.9),
                    Sampling(temperature=1.2, top_k=4))[case % 3]
        accepted, next_token = sampled_walk(tree, logits, sampling, torch.Generator().manual_seed(100 + case))
        right = verify(tree, logits, sampling, torch.Generator().manual_seed(100 + case))
        assert (list(accepted), int(next_token)) == (right.accepted, right.next_token), \
            f"a random tree (parents {tree.parents}, tokens {tree.tokens}), {sampling}: accepted {list(accepted)}, " \
            f"then {int(next_token)}; from the same random numbers recursive rejection sampling accepts " \
            f"{right.accepted}, then {right.next_token}"


def _my_decode(my_decode, ns) -> None:
    from .decoding import baseline_decode, generate
    from .ladders import near_random_ladder

    ladder = ns.get("ladder")
    assert ladder is not None, "the notebook's ladder is gone"
    ids = [int(t) for t in ns["prompt_ids"]]
    # a prompt the notebook did not decode; then a small random ladder, whose text does not forgive a wrong
    # position or mask as the embedded model's confident text may
    cases = [(ladder, "another prompt", ids[::-1], 20, ((3, 3, 6), (1, 4, 4), (2, 3, 3))),
             (near_random_ladder(3), "a small random ladder", [5, 9, 1, 33, 7, 2], 30, ((3, 3, 8), (2, 4, 6)))]
    for lad, which, prompt, n_new, shapes in cases:
        for width, depth, budget in shapes:
            tokens, forwards = my_decode(lad, prompt, n_new, width, depth, budget)
            right = baseline_decode(lad.target, prompt, n_new, stop_at_eos=False).token_ids
            assert list(tokens) == right, f"{which}, width {width} depth {depth}: not the baseline's tokens"
            ref = generate(lad, prompt, method="tree", max_new_tokens=n_new, width=width, depth=depth,
                           budget=budget, adaptive=False, stop_at_eos=False)
            assert forwards == ref.stats.target_forwards, \
                f"{which}, width {width} depth {depth}: {forwards} target forwards, generate takes " \
                f"{ref.stats.target_forwards}"


def _staged_tree(staged_tree, ns) -> None:
    import torch

    from .course import staged_tree as reference

    def paths(tokens, parents):
        out = []
        for token, parent in zip(tokens, parents):
            out.append((out[parent] if parent >= 0 else ()) + (int(token),))
        return sorted(out)

    g = torch.Generator().manual_seed(31)
    for case in range(8):  # a made-up draft and n-gram: the n-gram guesses the draft's likeliest tokens often
        vocab = 12 + case
        dists = torch.softmax(torch.randn(40, vocab, generator=g) * 2.5, -1)
        root_dist, guessed_dists = dists[0], dists[1:]
        g_tokens, g_parents, place = [], [], -1
        for fan in (4, 3, 2, 1, 1)[:2 + case % 4]:
            first = len(g_tokens)
            likely = torch.argsort(root_dist if place == -1 else guessed_dists[place], descending=True).tolist()
            picks = likely[case % 2:case % 2 + fan]  # the draft's top choices, the first one skipped in odd cases
            g_tokens += picks
            g_parents += [place] * len(picks)
            place = first
        for width, depth, budget in ((2, 4, 6), (3, 3, 9), (4, 5, 7)):
            mine = staged_tree(root_dist, guessed_dists, g_tokens, g_parents, width, depth, budget)
            right = reference(root_dist, guessed_dists, g_tokens, g_parents, width, depth, budget)
            assert paths(*mine) == paths(*right), \
                f"a made-up draft and guesses (tokens {g_tokens}, parents {g_parents}), width {width}, depth " \
                f"{depth}, budget {budget}: {len(mine[0])} nodes, not the staged drafter's {len(right[0])} " \
                "(or not the same ones)"


def _made_up_draft(width: int, seed: int):
    """child_probs(path) of a made-up draft: ``width`` children below every node, likeliest first, drawn once per
    path (float32 values, exact for the package's n-gram table)."""
    import torch

    g, draws = torch.Generator().manual_seed(seed), {}

    def child_probs(path):
        path = tuple(path)
        if path not in draws:
            draws[path] = torch.randn(2 * width, generator=g).mul(1.5).softmax(-1).topk(width).values.tolist()
        return list(draws[path])

    return child_probs


def _draft_step(draft_step, ns) -> None:
    from .decoding import baseline_decode
    from .ladders import near_random_ladder
    from .notebook import forward_sizes

    small = near_random_ladder(41)  # the draft near the target: it agrees at 60 to 80% of the positions
    target, draft = small.target, small.draft
    for gamma, prompt in ((2, [5, 9, 1, 33]), (4, [7, 7, 2, 40, 11, 3, 18])):
        truth = baseline_decode(target, prompt, 40, stop_at_eos=False).token_ids
        net = draft.model
        cache = net.new_cache(200)
        seen, context, held = [], list(prompt), []
        while len(context) - len(prompt) < 30:
            drafted = []
            fed = forward_sizes(net, lambda: drafted.extend(draft_step(net, cache, seen, context, gamma)))
            reads = sum(fed)
            shared = next((i for i, (a, b) in enumerate(zip(held, context[:-1])) if a != b),
                          min(len(held), len(context) - 1))
            right = baseline_decode(draft, context, gamma, stop_at_eos=False).token_ids
            where = f"gamma {gamma}, after {len(context) - len(prompt)} new tokens"
            assert drafted == right, f"{where}: drafted {drafted}, the draft's greedy continuation is {right}"
            held = context + drafted[:-1]
            assert list(seen) == held and cache.length == len(held), \
                f"{where}: the cache holds {cache.length} tokens, seen {len(seen)}; it should hold {len(held)}: " \
                "the context and the drafts but the last"
            assert reads == len(context) - shared + gamma - 1, \
                f"{where}: the draft read {reads} tokens; {len(context) - shared} were unread and " \
                f"{gamma - 1} drafts are fed back"
            done = len(context) - len(prompt)
            accepted = 0
            while accepted < gamma and drafted[accepted] == truth[done + accepted]:
                accepted += 1
            context += drafted[:accepted] + [truth[done + accepted]]


def _grow_tree(grow_tree, ns) -> None:
    from .course import grown_tree

    for width, seed in ((2, 31), (4, 37), (3, 41)):
        child_probs = _made_up_draft(width, seed)
        for budget, max_depth in ((1, 3), (3, 1), (9, 3), (14, 2), (20, 20)):
            got = grow_tree(child_probs, budget, max_depth)
            got = ([int(x) for x in got[0]], [int(x) for x in got[1]])
            right = grown_tree(child_probs, budget, max_depth)
            assert got == right, \
                f"another made-up draft ({width} children a node), budget {budget}, depth {max_depth}: parents " \
                f"{got[0]}, ranks {got[1]}; the package grows parents {right[0]}, ranks {right[1]}"


def _keep(keep, ns) -> None:
    import torch

    from .model import KVCache, ModelConfig

    config = ModelConfig(family="llama", vocab_size=10, n_layer=3, n_head=4, n_kv_head=2, d_model=24, d_ff=32,
                         max_seq_len=64)
    cases = [(0, [0, 3, 4], 10), (7, [0, 2, 3, 6], 15), (5, [0], 8), (4, [], 9), (2, [0, 1, 2], 6),
             (9, [0, 4, 1], 14), (3, [0, 1, 5, 6, 10], 16)]  # (start, slots, the slots written)
    for start, slots, written in cases:
        ref, mine = KVCache(config, 24, batch_size=2), KVCache(config, 24, batch_size=2)
        ref.kv.copy_(torch.randn(ref.kv.shape, generator=torch.Generator().manual_seed(start + written)))
        mine.kv.copy_(ref.kv)
        ref.length = mine.length = written
        length = keep(mine.k, mine.v, start, list(slots))  # on the cache's own views, as the notebook calls it
        ref.keep(start, list(slots))
        n = ref.length
        assert length == n, f"another cache, start {start}, slots {slots}: length {length}, KVCache.keep gives {n}"
        assert torch.equal(mine.kv[:, :, :, :n], ref.kv[:, :, :, :n]), \
            f"another cache (2 sequences, 3 layers), start {start}, slots {slots}: the first {n} slots differ " \
            "from KVCache.keep's"


def _free_chain(free_chain, ns) -> None:
    import torch

    from .course import free_chain as reference

    g = torch.Generator().manual_seed(29)
    vocab = 7
    for case in range(6):
        root = torch.randn(vocab, generator=g).softmax(-1)
        tokens, parents = [], []
        for i in range(8):  # guesses below the root and below earlier guesses, right or wrong
            parent = -1 if i < 2 else int(torch.randint(-1, i, (1,), generator=g))
            tokens.append(int(torch.randint(0, vocab, (1,), generator=g)))
            parents.append(parent)
        dists = torch.randn(len(tokens), vocab, generator=g).softmax(-1)
        # make the chain follow the guesses for a while: each guess of the first path is its parent's argmax
        node, dist = -1, root
        for i in range(len(tokens)):
            if parents[i] == node and case % 3:
                tokens[i] = int(dist.argmax())
                node, dist = i, dists[i]
        for depth in (2, 6):
            got = free_chain(root, dists, tokens, parents, depth)
            right = reference(root, dists, tokens, parents, depth)
            assert (list(got[0]), got[1]) == (list(right[0]), right[1]), \
                f"guesses {tokens} below {parents}, depth {depth}: chain {list(got[0])} with {got[1]} free; " \
                f"the draft's chain is {list(right[0])} with {right[1]} free"


def _my_planner(my_planner, ns) -> None:
    from .decoding.autotree import best_tree, price_tree

    for p_rank, slope, draft, most, deepest in (
            ([0.45, 0.2, 0.1], 0.01, 2e-4, 16, 6), ([0.8, 0.1], 0.04, 5e-5, 12, 6),
            ([0.3, 0.1, 0.05, 0.05], 0.0, 1e-4, 20, 6),
            ([0.7, 0.14, 0.08], 0.003, 1.2e-4, 20, 7),  # the best tree 4 levels deep: chances multiply down a path
            ([0.9, 0.05], 0.002, 3e-5, 16, 5),  # a very cheap draft: max_depth cuts the tree short
            ([0.25, 0.1], 0.15, 4e-4, 12, 4)):  # a poor, slow draft: no tree pays, the answer is []
        target = {n: 1e-3 * (1 + slope * (n - 1)) for n in (1, 64)}
        draft_curve = {n: draft * (1 + slope * (n - 1)) for n in (1, 64)}

        def rate(parents):
            return price_tree(list(parents), p_rank, target, draft_curve)["tokens_per_second"]

        best = best_tree(p_rank, target, draft_curve, max_nodes=most, max_depth=deepest)
        mine = list(my_planner(p_rank, rate, most, deepest))
        assert len(mine) <= most and all(-1 <= par < i for i, par in enumerate(mine)), \
            f"acceptance by rank {p_rank}: {mine} is no tree of at most {most} nodes"
        levels: list[int] = []
        for par in mine:
            levels.append(1 if par == -1 else levels[par] + 1)
        assert max(levels, default=0) <= deepest, \
            f"acceptance by rank {p_rank}, max_depth {deepest}: a tree {max(levels)} levels deep"
        assert rate(mine) >= 0.999 * best["tokens_per_second"], \
            f"acceptance by rank {p_rank}, forward cost +{slope:.1%} a token: {len(mine)} nodes at " \
            f"{rate(mine):.0f} tok/s, the package's planner {best['nodes']} at {best['tokens_per_second']:.0f}"



def _run_recorded(run_recorded, ns) -> None:
    import torch

    from .fast import record

    static_in = torch.zeros(2, 3)
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(51))
    graph, static_out = record(lambda: torch.tanh(static_in @ weight) + 1, "cpu")  # another recorded function
    inputs = [torch.randn(2, 3, generator=torch.Generator().manual_seed(52 + i)) for i in range(3)]
    outs = [run_recorded(graph, static_in, static_out, x) for x in inputs]
    for i, (x, out) in enumerate(zip(inputs, outs)):
        assert torch.allclose(out, torch.tanh(x @ weight) + 1, atol=1e-6), \
            f"another recorded function, input {i + 1} of 3: not its output on that input " \
            "(filled in place and replayed, the output copied out?)"
    assert torch.equal(static_in, inputs[-1]), "the graph's input buffer does not hold the last input"


def _tiny_feature_draft(seed: int, head_size: int, forward_forbidden: bool = True):
    """A small target and a feature draft attached to it, whose own forward raises when ``forward_forbidden``
    (the exercise writes that forward; calling it would be the package's answer)."""
    import torch

    from .feature_draft import FeatureDraft, feature_draft_config
    from .model import ModelConfig, Transformer

    torch.manual_seed(seed)
    config = ModelConfig(family="llama", vocab_size=53, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48,
                         max_seq_len=256, rope_theta=1000.0)
    target = Transformer(config).eval()

    class OwnForwardForbidden(FeatureDraft):
        def forward(self, *args, **kwargs):
            raise AssertionError("calls the draft itself (its forward, the package's answer)")

    kind = OwnForwardForbidden if forward_forbidden else FeatureDraft
    draft = kind(feature_draft_config(config, head_size)).attach(target)
    with torch.no_grad():
        for w in draft.parameters():
            w.add_(torch.randn_like(w) * 0.05)  # away from the initialisation: every part of the layer counts
    return target, draft


def _feature_forward(feature_forward, ns) -> None:
    import torch

    from .feature_draft import FeatureDraft

    for seed, head_size, B, N, start in ((21, 20, 1, 5, 0), (22, 0, 2, 3, 9)):
        target, draft = _tiny_feature_draft(seed, head_size)
        g = torch.Generator().manual_seed(seed)
        features = torch.randn(B, N, 32, generator=g)
        ids = torch.randint(0, 53, (B, N), generator=g)
        positions = torch.arange(start, start + N)
        with torch.no_grad():
            logits, h = feature_forward(draft, features, ids, positions)
            want_logits, want_h = FeatureDraft.forward(draft, features, ids, position_ids=positions)
        where = f"another draft (width 32, head of {head_size or 'all 53'} tokens), {B} x {N} rows from position {start}"
        assert _close(h, want_h, atol=1e-4), f"{where}: the predicted features are not the draft's"
        assert _close(logits, want_logits, atol=1e-4), f"{where}: the logits are not the draft's"


def _training_loss(training_loss, ns) -> None:
    import torch

    from .feature_draft import feature_loss

    for seed, weight in ((31, 0.1), (32, 0.5), (33, 1.0)):
        target, draft = _tiny_feature_draft(seed, 24, forward_forbidden=False)
        g = torch.Generator().manual_seed(seed)
        lengths = [7, 4, 6]
        tokens = torch.randint(0, 53, (3, 7), generator=g)
        valid = torch.arange(7)[None] < torch.tensor(lengths)[:, None]  # right-padded
        with torch.no_grad():
            _, features = target(tokens, features=True)
        features = features * valid[..., None]
        mine = training_loss(draft, features, tokens, valid, token_weight=weight)
        want = feature_loss(draft, features, tokens, valid, weight)[0]
        assert torch.is_tensor(mine) and mine.numel() == 1, "the loss is not a one-number tensor"
        got = float(mine.detach())
        assert abs(got - float(want.detach())) < 1e-5, \
            f"another draft and batch (lengths {lengths}, token weight {weight}): {got:.5f}, not {float(want.detach()):.5f}"
        weights = [draft.fc.weight, draft.block.attn.qkv.weight]  # the projection's and one of the layer's
        assert mine.requires_grad, "the loss does not reach the draft's weights: no gradient to train with"
        yours = torch.autograd.grad(mine, weights, allow_unused=True)
        for part, g, w in zip(("projection", "layer"), yours, torch.autograd.grad(want, weights)):
            assert g is not None and float((g - w).norm()) <= 1e-3 * float(w.norm()), \
                f"another draft and batch (token weight {weight}): the loss's gradient on the draft's {part} is " \
                "not the package's (both terms must reach the draft's weights: only the target's distribution " \
                "is computed without gradient)"


def _acceptance_by_depth(acceptance_by_depth, ns) -> None:
    import random

    from .course import acceptance_by_depth as reference

    rng = random.Random(41)
    for gamma in (3, 5):
        steps = [(p, rng.randint(0, p)) for p in (rng.choice([gamma] * 4 + [1, 2]) for _ in range(60))]
        steps += [(gamma, gamma), (1, 0)]
        mine = [float(x) for x in acceptance_by_depth(steps, gamma)]
        want = reference(steps, gamma)
        assert len(mine) == gamma and all(abs(a - b) < 1e-9 for a, b in zip(mine, want)), \
            f"other steps (gamma {gamma}, some drafts cut short): {[round(x, 3) for x in mine]}, " \
            f"not {[round(x, 3) for x in want]}"
    steps = [(3, 1), (5, 0), (2, 2), (4, 3)]  # no step reaches depths 5 and 6
    mine = [float(x) for x in acceptance_by_depth(steps, 6)]
    want = reference(steps, 6)
    assert len(mine) == 6 and all(abs(a - b) < 1e-9 for a, b in zip(mine, want)), \
        f"other steps (gamma 6, depths 5 and 6 never reached): {[round(x, 3) for x in mine]}, " \
        f"not {[round(x, 3) for x in want]} (0.0 where no step reached a depth)"


HIDDEN = [
    Hidden("00", "on_tokens", _record_batches),
    Hidden("01", "greedy_with_cache", _greedy_with_cache),
    Hidden("01", "gqa", _gqa),
    Hidden("01", "attention_with_cache", _attention_with_cache),
    Hidden("01", "entropy", _entropy),
    Hidden("02", "run_recorded", _run_recorded),
    Hidden("03", "speculative_samples", _speculative_samples),
    Hidden("03", "draft_step", _draft_step),
    Hidden("04", "grow_tree", _grow_tree),
    Hidden("04", "tree_mask", _tree_mask),
    Hidden("04", "depth", _depth),
    Hidden("04", "greedy_walk", _greedy_walk),
    Hidden("04", "keep", _keep),
    Hidden("04", "multi_candidate", _multi_candidate),
    Hidden("04", "my_decode", _my_decode),
    Hidden("04", "sampled_walk", _sampled_walk),
    Hidden("05", "free_chain", _free_chain),
    Hidden("05", "staged_tree", _staged_tree),
    Hidden("07", "my_planner", _my_planner),
    Hidden("08", "feature_forward", _feature_forward),
    Hidden("08", "training_loss", _training_loss),
    Hidden("08", "acceptance_by_depth", _acceptance_by_depth),
]


@contextmanager
def _time_limit(seconds: int):
    """TimeoutError after ``seconds`` (where the platform has SIGALRM: on Windows no limit)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def hidden_results(notebook: str, namespace: dict, seconds: int = TEST_SECONDS) -> dict:
    """Each hidden-tested exercise of ``notebook`` ("04"): {"passed": bool, "note": why not}, run on the
    functions the student defined in ``namespace`` (a kernel's globals).  A function that still holds its stub
    fails without running."""
    from .notebook import PACKAGE_ANSWERS, calls_unsolved, names_used

    results = {}
    for hidden in (h for h in HIDDEN if h.notebook == notebook):
        function = namespace.get(hidden.name)
        code = getattr(function, "__code__", None)
        if not callable(function) or code is None:
            results[hidden.name] = {"passed": False, "note": f"no function {hidden.name} in the notebook"}
            continue
        if calls_unsolved(code, hidden.name):
            results[hidden.name] = {"passed": False, "note": "not solved: the stub gives sdd-edu's answer"}
            continue
        answers = sorted(({"course"} | set(PACKAGE_ANSWERS.get(hidden.name, ()))) & names_used(code))
        if answers:
            results[hidden.name] = {"passed": False, "note": f"calls the package's own answer: {', '.join(answers)}"}
            continue
        try:
            with _time_limit(seconds):
                hidden.test(function, namespace)
            results[hidden.name] = {"passed": True, "note": ""}
        except AssertionError as e:
            results[hidden.name] = {"passed": False, "note": str(e).split("\n")[0]}
        except Exception as e:  # the student's code raised: that is a failed test, said in one line
            first = str(e).splitlines()[0] if str(e) else ""
            results[hidden.name] = {"passed": False, "note": f"{type(e).__name__}: {first}".rstrip(": ")}
    return results


def hidden_report(notebook: str, namespace: dict) -> str:
    """The hidden-test cell's output: one line the grader reads back."""
    return REPORT_MARK + json.dumps(hidden_results(notebook, namespace))


# ----------------------------------------------------------------------------- the grader (runs the kernels)

# an exercise worth more than its check and hidden tests alone: the capstone, a planner of the student's own
WEIGHTS = {("07", "my_planner"): 3}


@dataclass
class Score:
    student: str
    notebook: str
    exercise: str
    check: bool
    hidden: bool | None  # None: the exercise has no hidden tests
    note: str = ""
    weight: int = 1  # each point counts this many times (``WEIGHTS``)

    @property
    def points(self) -> int:
        return self.weight * (int(self.check) + int(bool(self.hidden)))

    @property
    def max_points(self) -> int:
        return self.weight * (1 + (self.hidden is not None))


@dataclass
class Submission:
    student: str
    path: Path
    tutorial: Path
    scores: list[Score] = field(default_factory=list)


def default_tutorials() -> Path:
    return Path(__file__).resolve().parents[1] / "tutorials"


def find_submissions(folder: Path, tutorials: Path, skip: Path | None = None) -> tuple[list[Submission], list[str]]:
    """The submitted notebooks under ``folder``, each matched to its tutorial by its file name; and a line for
    each notebook that matches none.  ``skip``: a folder left out (the graded notebooks of an earlier run)."""
    known = sorted(tutorials.glob("[0-9][0-9]_*.ipynb"))
    if not known:
        raise SddError(f"no tutorials (NN_name.ipynb) in {tutorials}: pass the series' folder with --tutorials")
    found, unmatched = [], []
    for path in sorted(folder.rglob("*.ipynb")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):  # .ipynb_checkpoints and the like
            continue
        if skip is not None and path.resolve().is_relative_to(skip.resolve()):
            continue
        tutorial = next((t for t in known if t.stem in path.stem), None)
        if tutorial is None:
            number = re.search(r"(?<!\d)(\d\d)_", path.name)
            tutorial = next((t for t in known if number and t.name.startswith(number.group(1) + "_")), None)
        if tutorial is None:
            unmatched.append(f"{relative}: no tutorial's name or number in the file's name")
            continue
        if len(relative.parts) > 1:
            student = relative.parts[0]
        else:
            student = path.stem.replace(tutorial.stem, "").strip("_- ") or path.stem
        found.append(Submission(student, path, tutorial))
    return found, unmatched


def check_cells(nb) -> dict[str, tuple[str, list[str]]]:
    """The student edition's exercise check cells: cell id -> (source, the exercises it checks)."""
    out = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        names = []
        for line in cell.source.split("\n"):
            m = SOLVED_LINE.match(line)
            if not m:
                break
            names.append(json.loads(m.group(1)))
        if names:
            out[cell.get("id", "")] = (cell.source, names)
    return out


def graded_copy(submission_nb, tutorial_nb, number: str):
    """The submission with every exercise's check cell as the course wrote it, re-importing ``check`` (so that a
    name rebound in the notebook does not stand in for it), and the hidden-test cell at the end.  Returns the
    notebook and {exercise: the index of its check cell, or None where the cell is gone}."""
    import copy

    import nbformat

    from .notebook import student_edition

    nb = copy.deepcopy(submission_nb)
    canonical = check_cells(student_edition(tutorial_nb))
    where: dict[str, int | None] = {}
    for cell_id, (source, names) in canonical.items():
        index = next((i for i, c in enumerate(nb.cells) if c.get("id") == cell_id and c.cell_type == "code"), None)
        if index is None:  # a copy of the notebook made elsewhere has new ids: the solved(...) lines find the cell
            head = "".join(f"solved({json.dumps(n, ensure_ascii=False)})\n" for n in names)
            index = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith(head)),
                         None)
        if index is not None:
            nb.cells[index].source = "from sdd_edu.notebook import check, solved\n" + source
        for name in names:
            where[name] = index
    nb.cells.append(nbformat.v4.new_code_cell(
        "from sdd_edu.grade import hidden_report\n"
        f"print(hidden_report({number!r}, globals()))"))
    return nb, where


def _errors(cell) -> str:
    """The cell's error, in a line, or ''."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            value = re.sub(r"\x1b\[[0-9;]*m", "", output.get("evalue", "")).split("\n")[0]
            return f"{output.get('ename', 'Error')}: {value}".strip()
    return ""


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def grade_submission(submission: Submission, out_folder: Path, timeout: int, quick: bool = True) -> list[Score]:
    """Run one submission in a fresh kernel and score its exercises (see the module's docstring)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    from .notebook import environment

    tutorial_nb = nbformat.read(submission.tutorial, as_version=4)
    number = submission.tutorial.name[:2]
    try:
        submitted = nbformat.read(submission.path, as_version=4)
    except Exception as e:  # not a notebook at all
        names = _exercise_list(tutorial_nb, number)
        return [Score(submission.student, submission.tutorial.stem, n, False, False if h else None,
                      f"unreadable notebook: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                      WEIGHTS.get((number, n), 1))
                for n, h in names]
    nb, where = graded_copy(submitted, tutorial_nb, number)
    problem = ""
    with tempfile.TemporaryDirectory(prefix="sdd-edu-grade-") as work, \
            environment(SDD_EDU_QUICK="1" if quick else "0", SDD_EDU_GRADING="1"):  # the kernel starts in both
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": work}})
            client.execute()
        except (CellTimeoutError, DeadKernelError, RuntimeError) as e:
            problem = f"the run stopped: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    target = out_folder / submission.student / submission.path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)

    hidden_line = next((line for line in _stdout(nb.cells[-1]).split("\n") if line.startswith(REPORT_MARK)), None)
    hidden = json.loads(hidden_line[len(REPORT_MARK):]) if hidden_line else {}
    hidden_error = _errors(nb.cells[-1]) or problem or "the hidden tests did not run"
    scores = []
    for name, has_hidden in _exercise_list(tutorial_nb, number):
        index = where.get(name)
        if index is None:
            check, note = False, "its check cell is missing"
        else:
            cell = nb.cells[index]
            ran = cell.get("execution_count") is not None or cell.get("outputs")
            error = _errors(cell)
            check = bool(ran) and not error
            note = error or ("" if ran else problem or "its check cell did not run")
        passed = None
        if has_hidden:
            result = hidden.get(name, {"passed": False, "note": hidden_error})
            passed = bool(result["passed"])
            if not passed and result["note"]:
                note = "; ".join(n for n in (note, f"hidden: {result['note']}") if n)
        scores.append(Score(submission.student, submission.tutorial.stem, name, check, passed, note,
                            WEIGHTS.get((number, name), 1)))
    return scores


def _exercise_list(tutorial_nb, number) -> list[tuple[str, bool]]:
    """The tutorial's exercises that the student edition checks (those with a fallback), in order, and whether
    each has hidden tests."""
    from .notebook import exercise_names, solution_blocks

    hidden = {h.name for h in HIDDEN if h.notebook == number}
    out = []
    for i, names in exercise_names(tutorial_nb).items():
        for name, block in zip(names, solution_blocks(tutorial_nb.cells[i].source)):
            if block.fallback:
                out.append((name, name in hidden))
    return out


def write_csv(scores: list[Score], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "notebook", "exercise", "check", "hidden", "points", "max_points", "note"])
        for s in scores:
            writer.writerow([s.student, s.notebook, s.exercise, int(s.check), "" if s.hidden is None else int(s.hidden),
                             s.points, s.max_points, s.note])


def summary(scores: list[Score]) -> str:
    """A table per student and notebook, then each student's total."""
    lines, totals = [], {}
    mark = {True: "✓", False: "✗", None: "-"}
    for s in scores:
        lines.append(f"{s.student:<14} {s.notebook:<32} {s.exercise:<22} check {mark[s.check]}  hidden "
                     f"{mark[s.hidden]}  {s.points}/{s.max_points}" + (f"  {s.note}" if s.note else ""))
        got, most = totals.get(s.student, (0, 0))
        totals[s.student] = (got + s.points, most + s.max_points)
    lines.append("")
    lines += [f"{student}: {got}/{most} points" for student, (got, most) in totals.items()]
    return "\n".join(lines)


def grade_folder(folder, out: Path | None = None, tutorials: Path | None = None, timeout: int = 600,
                 quick: bool = True, echo: Callable[[str], None] = print) -> list[Score]:
    """Grade every submission under ``folder``; write ``out`` (CSV, default folder/grades.csv) and the graded
    notebooks beside it (folder ``graded`` next to the CSV)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SddError(f"{folder} is not a folder of submitted notebooks")
    tutorials = Path(tutorials) if tutorials else default_tutorials()
    out = Path(out) if out else folder / "grades.csv"
    submissions, unmatched = find_submissions(folder, tutorials, skip=out.parent / "graded")
    for line in unmatched:
        echo(f"skipped {line}")
    if not submissions:
        raise SddError(f"no submitted notebooks (NN_name.ipynb, as the tutorials are named) under {folder}")
    scores = []
    for submission in submissions:
        echo(f"grading {submission.student}: {submission.path.relative_to(folder)} ...")
        scores += grade_submission(submission, out.parent / "graded", timeout, quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(scores, out)
    echo(summary(scores))
    echo(f"scores in {out}; the graded notebooks, with their outputs, in {out.parent / 'graded'}")
    return scores


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run: python -m sdd_edu grade SUBMISSIONS")
