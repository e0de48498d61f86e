"""The tree attention mask and the greedy walk, checked against their definitions on random trees (the
mask is built in plain Python and the greedy walk may take every row's argmax at once: both must agree with
the node-by-node reading)."""

import random

import pytest
import torch

from sdd_edu.decoding.drafters import _draft_dist
from sdd_edu.decoding.tree import ROOT, TokenTree, tree_attention_mask, verify
from sdd_edu.sampling import Sampling


def random_parents(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(-1, i) for i in range(n)]  # each node's parent comes before it (or is the root)


def ancestors(parents: list[int], i: int) -> set[int]:
    out = set()
    while i != ROOT:
        out.add(i)
        i = parents[i]
    return out


@pytest.mark.parametrize("cached, chain", [(0, 1), (5, 1), (7, 3)])
def test_the_mask_lets_each_node_see_its_ancestors(cached, chain):
    rng = random.Random(cached + chain)
    for n in (0, 1, 4, 16, 40):
        parents = random_parents(rng, n)
        mask, pos = tree_attention_mask(parents, cached=cached, chain=chain)
        assert mask.shape == (chain + n, cached + chain + n) and pos.shape == (chain + n,)
        for r in range(chain):  # the chain: the cache and a causal prefix of itself
            assert mask[r].tolist() == [True] * (cached + r + 1) + [False] * (chain + n - r - 1)
            assert pos[r] == cached + r
        for i in range(n):
            seen = ancestors(parents, i)
            expected = [True] * (cached + chain) + [j in seen for j in range(n)]
            assert mask[chain + i].tolist() == expected
            assert pos[chain + i] == cached + chain - 1 + len(seen)
    with pytest.raises(ValueError):
        tree_attention_mask([-1, 1], cached=0)


def test_the_greedy_walk_is_the_same_row_by_row_and_at_once():
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    accepted_somewhere = 0
    for trial in range(60):
        n = rng.randrange(1, 20)
        parents = random_parents(rng, n)
        logits = torch.randn(1 + n, 11, generator=g)
        best = logits.argmax(-1).tolist()
        tree = TokenTree()
        for i, p in enumerate(parents):  # often the target's choice, so that walks go deep
            tree.add(best[0 if p == ROOT else p + 1] if rng.random() < 0.6 else rng.randrange(11), p)
        walks = [verify(tree, logits, Sampling(), None, rows_at_once=flag) for flag in (False, True)]
        assert walks[0] == walks[1]
        # the definition: from the root, take the first child holding the target's choice
        node, path, tested = ROOT, [], 0
        while True:
            kids = [c for c in range(n) if parents[c] == node]
            tested += bool(kids)
            match = next((c for c in kids if tree.tokens[c] == best[0 if node == ROOT else node + 1]), None)
            if match is None:
                break
            path.append(match)
            node = match
        assert (walks[0].accepted, walks[0].next_token, walks[0].tested) == \
            (path, best[0 if node == ROOT else node + 1], tested)
        accepted_somewhere += bool(path)
    assert accepted_somewhere > 20


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.8, top_k=5, top_p=0.9)])
def test_draft_distributions_at_once_equal_row_by_row(sampling):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    logits[:, 40:] = float("-inf")  # a reduced head's columns past the head
    together = _draft_dist(logits, sampling)
    for row in range(6):
        torch.testing.assert_close(together[row], _draft_dist(logits[row], sampling))
