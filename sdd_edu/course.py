"""sdd-edu's own answers to the series' exercises.

In the student edition of the notebooks (``make student``) an exercise the reader has not solved yet
falls back to the answer here (``sdd_edu.notebook.unsolved``), so that every later cell still runs;
the exercise's own check keeps failing until the reader writes theirs.  The fallbacks are written on
the solutions' END markers in ``tutorials/`` (``# END SOLUTION (fallback: ...)``).

Where the package already computes the answer, the name here is the package's own function (imported
below); otherwise a small function, written another way than the notebook's solution where there is a
natural other way.  In the order of the series:

====  ========================================  =================================================================
  00  same_tokens, fewer_forwards               ``tour_predictions``
  00  on_tokens                                 ``record_batch``
  01  cache_bytes, cache_bytes_mha              ``kv_cache_bytes``: what ``KVCache`` allocates, on no memory
  01  greedy_with_cache                         ``greedy_with_cache``: the package's prefill and decode_one_token
  01  gqa                                       ``gqa``: the query heads of a group stacked as one matrix
  01  attention_with_cache                      ``attention_with_cache``: the model's RoPE tables and attention
  01  entropy                                   ``entropy``
  02  flops_bf16, bytes_bf16                    ``bf16_flops_and_bytes``: ``forward_counts`` in bf16, cache included
  02  largest                                   ``largest_within``: a bisection
  02  run_recorded (optional)                   ``run_recorded``: the input filled in place, a replay, the output copied
  03  speculative_samples                       ``speculative_samples``: min(1, p/q) as a keep probability
  03  by_hand                                   ``expected_tokens_by_depth``
  03  best_gamma, speedup                       ``best_draft_length``, ``chain_speedup``
  03  draft_step                                ``draft_step``: a common prefix, ``truncate``, one forward per token
  04  grow_tree                                 ``grown_tree``: the package's ``Drafter._grow`` on a made-up draft
  04  tree_mask                                 ``tree_attention_mask`` (its mask)
  04  depth                                     ``TokenTree.depth``
  04  greedy_walk                               ``greedy_walk``: the package's ``verify``, greedy
  04  keep                                      ``keep``: ``KVCache.keep``'s ``index_select``, on k and v
  04  multi_candidate                           ``multi_candidate_step``
  04  sees, ex_positions                        ``sees_and_positions``: ``TokenTree.path`` and ``depth``
  04  my_prediction                             ``expected_accepted`` (ranks in sibling order)
  04  my_decode                                 ``greedy_tree_step``: one step of the package's loop
  04  sampled_walk                              ``sampled_walk``: the package's ``verify``, sampled
  05  left, lower                               ``backed_off_masses``: the trigram's own probabilities
  05  free_chain                                ``free_chain``: a lookup by (parent, token)
  05  staged_tree                               ``staged_tree``: ``Drafter._grow`` with the guessed nodes' distributions
  05  tree_forwards, ...                        ``draft_forwards_saved``: the runs' own counters
  06  step_seconds, estimate                    ``tokens_per_second_estimate``
  06  break_even                                ``break_even``: a bisection
  06  gpu_break_even, ...                       ``chain_accounting``: ``break_even``, then the step in target forwards
  06  weight_read_ms, ...                       ``weights_share_of_token``
  07  tokens_per_step, ...                      ``chain_or_tree``: ``autotree.tokens_per_forward``, ``draft_forward_sizes``
  07  acceptance, disagree, total_variation     ``acceptance_and_total_variation``
  07  my_planner (the capstone)                 ``planned_tree``: ``autotree.optimal_tree`` per size and depth, priced
  08  feature_forward                           ``feature_forward``: fc's weight split in two, then the layer and the head
  08  training_loss                             ``training_loss``: the package's ``feature_loss``
  08  acceptance_by_depth                       ``acceptance_by_depth``: the steps that reached each depth, kept or not
  08  predicted, winner                         ``predicted_chain_speedups``
====  ========================================  =================================================================
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from .decoding.autotree import draft_forward_sizes, tokens_per_forward
from .decoding.drafters import Drafter
from .decoding.autotree import expected_accepted, optimal_tree  # noqa: F401  (04: expected accepted nodes)
from .decoding.tree import ROOT, TokenTree, tree_attention_mask, verify  # noqa: F401  (04: mask, depth)
from .measure.acceptance import expected_tokens_per_forward  # noqa: F401  (03: expected tokens per forward)
from .measure.roofline import forward_counts
from .model import KVCache, apply_rope, attention, head_rope, rope_tables
from .sampling import Sampling


# ----------------------------------------------------------------------------- 00 · the tour

def tour_predictions() -> tuple[bool, bool]:
    """The tour's predictions for a speculative method under greedy decoding: the baseline's tokens, and (on
    HumanEval's code, where the draft guesses well) fewer target forwards."""
    return True, True


def record_batch(batches: list, ids) -> None:
    """A stream callback's work: keep a copy of each batch of token ids, in order."""
    batches.append([int(t) for t in ids])


# ----------------------------------------------------------------------------- 01 · the engine and the KV cache

def kv_cache_bytes(config, slots: int, dtype=torch.float32, heads: int | None = None) -> int:
    """The bytes of keys and values a ``KVCache`` of ``slots`` slots allocates, read off one made on the
    meta device (shapes and dtypes, no memory); with ``heads``, for that many key/value heads."""
    import dataclasses

    if heads is not None:
        config = dataclasses.replace(config, n_kv_head=heads)
    cache = KVCache(config, slots, device="meta", dtype=dtype)
    return cache.k.nbytes + cache.v.nbytes


def greedy_with_cache(model, prompt_ids, n_new: int) -> list[int]:
    """Greedy decoding with a KV cache, by the package's own two steps: ``prefill`` the prompt, then
    ``decode_one_token`` for every new token but the last."""
    from .decoding import decode_one_token, prefill

    cache = model.new_cache(len(prompt_ids) + n_new)
    logits = prefill(model, cache, list(prompt_ids))
    new = []
    while len(new) < n_new:
        new.append(int(logits.argmax()))
        if len(new) < n_new:
            logits = decode_one_token(model, cache, new[-1])
    return new


def gqa(q, k, v):
    """Grouped-query attention without a mask, q (nh, N, hs) over k, v (nkv, S, hs), without copying k and v:
    the query heads of a group (query head h uses kv head h // group) stacked as one matrix of queries."""
    (nh, n, hs), nkv = q.shape, k.shape[0]
    grouped = q.reshape(nkv, nh // nkv * n, hs)  # (nkv, group * N, hs): a view
    weights = (grouped @ k.transpose(-1, -2) / math.sqrt(hs)).softmax(-1)  # (nkv, group * N, S)
    return (weights @ v).reshape(nh, n, hs)


def attention_with_cache(attn, x, past_k, past_v, position: int, theta: float):
    """One layer's attention for one new token after cached keys and values, with the model's own pieces:
    its RoPE tables (``rope_tables``, ``head_rope``, ``apply_rope``) and ``attention``.

    x: (1, 1, d) the token's normalised input; past_k, past_v: (nkv, P, hs).  Returns (1, 1, d)."""
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_dim
    cos, sin = (t[position].to(x.device, x.dtype).view(1, 1, 1, hs) for t in rope_tables(hs, position + 1, theta))
    rope = head_rope(cos, sin, nh + nkv, nkv)  # q and k turn by the position's angles, v by none
    qkv = apply_rope(attn.qkv(x).view(1, 1, nh + 2 * nkv, 2, hs // 2), *rope).view(nh + 2 * nkv, hs)
    q, k, v = qkv.split([nh, nkv, nkv])
    keys = torch.cat([past_k, k[:, None]], dim=1)[None]  # (1, nkv, P + 1, hs): the new slot after the past
    values = torch.cat([past_v, v[:, None]], dim=1)[None]
    y = attention(q[None, :, None], keys, values, None)  # (1, nh, 1, hs)
    return attn.out(y.transpose(1, 2).reshape(1, 1, nh * hs))


def entropy(p) -> float:
    """H(p) in nats; torch's ``entr`` is -p log p, and 0 at p = 0."""
    return float(torch.special.entr(p).sum())


# ----------------------------------------------------------------------------- 02 · why decoding is slow

def bf16_flops_and_bytes(config, context: int) -> tuple[int, int]:
    """FLOPs of one token's forward after ``context`` cached ones (matrices and attention) and the bytes of the
    weights and the KV cache it reads, in bf16: the package's ``forward_counts``."""
    counts = forward_counts(config, tokens=1, context=context, dtype="bf16")
    return counts["flops"], counts["bytes_weights"] + counts["bytes_kv_read"]


def largest_within(cost: Callable[[int], float], limit: float, most: int = 4096) -> int:
    """The largest n in 1..most with cost(n) <= limit * cost(1), for a cost that grows with n: a bisection."""
    bound = limit * cost(1)
    if cost(most) <= bound:
        return most
    within, beyond = 1, most  # cost(within) <= bound < cost(beyond)
    while beyond - within > 1:
        middle = (within + beyond) // 2
        if cost(middle) <= bound:
            within = middle
        else:
            beyond = middle
    return within


# ----------------------------------------------------------------------------- 02 · a recorded forward (optional)

def run_recorded(graph, static_ids, static_logits, ids):
    """A recorded forward on ``ids``: written into the graph's input buffer in place, replayed, and its output
    copied out before the next replay overwrites it."""
    static_ids[...] = ids
    graph.replay()
    return static_logits.detach().clone()


# ----------------------------------------------------------------------------- 03 · speculative decoding

def speculative_samples(p, q, n: int, generator):
    """n independent speculative-sampling steps from the draft q to the target p: the emitted tokens, and
    which were the draft's (kept with probability min(1, p(x) / q(x)), else a draw from max(0, p - q))."""
    drafted = torch.multinomial(q, n, replacement=True, generator=generator)
    keep_probability = torch.where(q > 0, p / q, torch.ones_like(p)).clamp(max=1)
    accepted = torch.rand(n, generator=generator) < keep_probability[drafted]
    residual = p - torch.minimum(p, q)  # max(0, p - q)
    if float(residual.sum()) <= 0:  # p == q: nothing is ever rejected
        residual = p
    redrawn = torch.multinomial(residual / residual.sum(), n, replacement=True, generator=generator)
    return torch.where(accepted, drafted, redrawn), accepted


def expected_tokens_by_depth(alphas) -> float:
    """Expected tokens per target forward of a chain whose token at depth d is accepted with ``alphas[d - 1]``
    given the depths above: 1 (the target's own token) + the sum over d of alphas[0] * ... * alphas[d - 1]."""
    tokens, reach = 1.0, 1.0
    for a in alphas:
        reach *= a
        tokens += reach
    return tokens


def chain_speedup(alpha: float, gamma: int, c: float) -> float:
    """Speculative decoding's expected speedup with a chain of ``gamma``: E(alpha, gamma) tokens a step, for
    ``gamma`` draft forwards of ``c`` and one target forward."""
    from .measure.acceptance import expected_tokens_per_forward

    return expected_tokens_per_forward(alpha, gamma) / (gamma * c + 1)


def best_draft_length(speedup_of: Callable[[int], float], lengths: Iterable[int]) -> int:
    """The draft length with the largest speedup_of(length); the shortest among equals."""
    best, best_speedup = None, -math.inf
    for gamma in lengths:
        s = speedup_of(gamma)
        if s > best_speedup:
            best, best_speedup = gamma, s
    return best


def draft_step(model, cache: KVCache, seen: list[int], context: list[int], gamma: int) -> list[int]:
    """``gamma`` tokens drafted greedily after ``context`` through the draft's own cache, which holds ``seen``:
    rolled back to the prefix it shares with the context (never its last token), the rest of the context read
    in one forward, then one forward per drafted token but the last; ``seen`` follows the cache."""
    shared = 0
    while shared < min(len(seen), len(context) - 1) and seen[shared] == context[shared]:
        shared += 1
    cache.truncate(shared)
    del seen[shared:]
    feed, drafted = context[shared:], []
    with torch.inference_mode():
        while len(drafted) < gamma:
            if drafted:
                feed = drafted[-1:]
            logits = model(torch.tensor([feed], device=model.device), cache)[0, -1]
            seen += feed
            drafted.append(int(logits.argmax()))
    return drafted


# ----------------------------------------------------------------------------- 04 · token trees

def grown_tree(child_probs: Callable[[tuple], list], budget: int, max_depth: int) -> tuple[list[int], list[int]]:
    """The tree the package's drafters grow (``Drafter._grow``, best-first), as (parents, ranks), from a made-up
    draft: ``child_probs(path)`` gives the probabilities of the children (ranks 1, 2, ...) below the node that
    ``path``, its ranks from the root, reaches.  An n-gram drafter runs on a table whose token r - 1 is rank r."""
    from .decoding.drafters import NgramDrafter

    width = len(child_probs(()))

    class MadeUpDraft:  # the n-gram interface: the next distribution after a context (the root, then the path)
        @staticmethod
        def next_distribution(context):
            return list(child_probs(tuple(t + 1 for t in context[1:])))

    if width == 1:  # a chain drafter's depth follows its budget: the depth limit caps the budget instead
        budget = min(budget, max_depth)
    drafter = NgramDrafter(MadeUpDraft(), width, width=width, depth=max_depth, budget=budget)
    tree = drafter.get_candidates([0], Sampling(), None)
    return tree.parents, [t + 1 for t in tree.tokens]


def greedy_walk(tree: TokenTree, logits) -> tuple[list[int], int]:
    """The accepted nodes and the target's next token: the package's ``verify``, greedy."""
    verdict = verify(tree, logits, Sampling(), None)
    return verdict.accepted, verdict.next_token


def sampled_walk(tree: TokenTree, logits, sampling: Sampling, generator) -> tuple[list[int], int]:
    """The accepted nodes and the token drawn after them, under sampling: the package's ``verify`` with
    recursive rejection sampling at every node."""
    verdict = verify(tree, logits, sampling, generator)
    return verdict.accepted, verdict.next_token


def keep(k, v, start: int, slots) -> int:
    """``KVCache.keep`` on a cache's keys and values (layers, batch, kv heads, slots, head dim): slot start + s of
    each s in ``slots`` moved, in order, to start, start + 1, ...; the cache's new length."""
    index = torch.tensor([start + int(s) for s in slots], dtype=torch.long, device=k.device)
    for t in (k, v):
        t[:, :, :, start:start + len(index)] = t.index_select(3, index)  # index_select copies: overlaps are safe
    return start + len(index)


def multi_candidate_step(p_now, q_now, out, x, generator, replacement: bool = False, renormalise_q: bool = True):
    """One candidate x (n,) tried in each of n trials of recursive rejection sampling: the emitted tokens so
    far (-1 in a trial still open), then p and q for the next candidate.

    x is kept with probability min(1, p(x) / q(x)) in a trial still open; after it, p becomes the
    normalised residual max(0, p - q), and without replacement q loses x (if ``renormalise_q``)."""
    rows = torch.arange(len(x))
    keep_probability = (p_now[rows, x] / q_now[rows, x]).clamp(max=1)
    keep = (out < 0) & (torch.rand(len(x), generator=generator, dtype=torch.float64) < keep_probability)
    out = torch.where(keep, x, out)
    residual = (p_now - q_now).clamp_min(0)
    p_now = residual / residual.sum(-1, keepdim=True).clamp_min(1e-300)
    if not replacement and renormalise_q:
        q_now = q_now.clone()
        q_now[rows, x] = 0
        q_now = q_now / q_now.sum(-1, keepdim=True).clamp_min(1e-300)
    return out, p_now, q_now


def sees_and_positions(parents: list[int]) -> tuple[dict[int, list[int]], list[int]]:
    """Which nodes each node sees (its ancestors and itself, root side first), and the positions of the root
    (0) and of each node (its depth): the package's ``TokenTree.path`` and ``TokenTree.depth``."""
    tree = TokenTree(parents=list(parents))
    return ({i: tree.path(i) for i in range(len(parents))},
            [0] + [tree.depth(i) for i in range(len(parents))])


def greedy_tree_step(model, cache, drafter, context: list[int]) -> list[int]:
    """One step of greedy tree decoding as ``generate`` runs it (draft a tree, verify it in one target forward,
    keep the accepted path in the cache, tell the drafter): the context with the step's tokens added."""
    tree = drafter.get_candidates(context, Sampling(), None)
    start = cache.length
    mask, positions = tree_attention_mask(tree.parents, cached=start, chain=1, device=model.device)
    x = torch.tensor([[context[-1]] + tree.tokens], device=model.device)
    logits = model(x, cache, position_ids=positions, attention_mask=mask)[0]
    verdict = verify(tree, logits, Sampling(), None)
    cache.keep(start, [0] + [1 + i for i in verdict.accepted])
    context = context + [tree.tokens[i] for i in verdict.accepted] + [verdict.next_token]
    drafter.update(context, tree, verdict.accepted)
    return context


# ----------------------------------------------------------------------------- 05 · staged speculative decoding

def backed_off_masses(trigram, a: int, b: int, seen: Iterable[int]) -> tuple[float, float]:
    """Katz back-off after the history (a, b): the trigram's mass left for the tokens never seen after it,
    and the bigram's mass of those same tokens, from the model's own probabilities of the ``seen`` ones."""
    seen = list(seen)
    left = 1 - math.fsum(trigram.prob([a, b], w) for w in seen)
    lower = 1 - math.fsum(trigram.prob([b], w) for w in seen)
    return left, lower


def free_chain(root_dist, guessed_dists, g_tokens: list[int], g_parents: list[int], depth: int):
    """The draft's greedy chain below the root through the n-gram's guessed subtree, and how many of its
    tokens had a known distribution (were guessed at their place): a lookup by (parent, token)."""
    guessed: dict[tuple[int, int], int] = {}
    for i, key in enumerate(zip(g_parents, g_tokens)):
        guessed.setdefault(key, i)  # the first of equal guesses
    chain, free, node, dist = [], 0, ROOT, root_dist
    while len(chain) < depth:
        token = int(dist.argmax())
        chain.append(token)
        node = guessed.get((node, token))
        if node is None:  # its children would need another draft forward
            break
        free += 1
        dist = guessed_dists[node]
    return chain, free


def staged_tree(root_dist, guessed_dists, g_tokens: list[int], g_parents: list[int], width: int, depth: int,
                budget: int) -> tuple[list[int], list[int]]:
    """The staged drafter's tree from its one draft forward (``rounds=0``): the package's best-first growth
    (``Drafter._grow``), where a node's distribution is known when the n-gram guessed its whole path."""
    guessed: dict[tuple[int, int], int] = {}
    for i, key in enumerate(zip(g_parents, g_tokens)):
        guessed.setdefault(key, i)

    class OneForward(Drafter):
        def _known_dist(self, tree, node, context, sampling):
            place = ROOT
            for i in tree.path(node):
                place = guessed.get((place, tree.tokens[i]))
                if place is None:
                    return None
            return guessed_dists[place]

    tree = OneForward(width=width, depth=depth, budget=budget)._grow(root_dist, [], Sampling(), None, rounds=0)
    return tree.tokens, tree.parents


def draft_forwards_saved(tree_run, staged_run) -> tuple[int, int, float]:
    """Draft forwards of a tree run and a staged run, and those saved per generated token: the runs' own
    counters."""
    tree, staged = tree_run.stats.draft_forwards, staged_run.stats.draft_forwards
    return tree, staged, (tree - staged) / staged_run.stats.new_tokens


# ----------------------------------------------------------------------------- 06 · reproducing the paper

def tokens_per_second_estimate(run: dict, baseline: dict, cost_ratio: float) -> tuple[float, float]:
    """Seconds per step and tokens per second of a speculative run, from the benchmark's counters: its target
    forward costs ``cost_ratio`` baseline forwards, and is its ``target_seconds`` share of the step."""
    target_share = run["time_split"]["target_seconds"]
    estimate = run["tokens_per_target_forward"] * baseline["tokens_per_second"] * target_share / cost_ratio
    return run["tokens_per_target_forward"] / estimate, estimate


def break_even(speedup: Callable[[float], float], tolerance: float = 1e-6) -> float:
    """The smallest acceptance a in [0, 1] with speedup(a) >= 1, for a speedup that grows with a: a bisection."""
    if speedup(1.0) < 1:
        raise ValueError("no acceptance up to 1 pays: speedup(1) < 1")
    low, high = 0.0, 1.0  # speedup(high) >= 1
    if speedup(low) >= 1:
        return low
    while high - low > tolerance:
        middle = (low + high) / 2
        if speedup(middle) >= 1:
            high = middle
        else:
            low = middle
    return high


def chain_accounting(gamma: int, c: float, tokens_per_forward: float,
                     measured_speedup: float) -> tuple[float, float, float]:
    """A chain's accounting in target forwards, for a flat forward (verifying gamma + 1 tokens costs one
    forward): the acceptance at which it breaks even, the speedup it predicts from measured tokens per target
    forward, and the share of the step that work outside the forwards must take for the measured speedup.

    The step's forwards cost gamma * c + 1 target forwards; at the measured speed a step takes
    tokens_per_forward / measured_speedup of them, and the host has the rest."""
    forwards = gamma * c + 1
    acceptance = break_even(lambda a: expected_tokens_per_forward(a, gamma) / forwards)
    step = tokens_per_forward / measured_speedup
    return acceptance, tokens_per_forward / forwards, (step - forwards) / step


def weights_share_of_token(parameters: float, bytes_per_weight: float, bandwidth: float,
                           tokens_per_second: float) -> tuple[float, float, float]:
    """Milliseconds to read a model's weights once at ``bandwidth`` bytes/s, milliseconds per generated token at
    ``tokens_per_second``, and the share of the token's time that reading the weights explains."""
    read_ms = 1000 * parameters * bytes_per_weight / bandwidth
    token_ms = 1000 / tokens_per_second
    return read_ms, token_ms, read_ms * tokens_per_second / 1000


# ----------------------------------------------------------------------------- 07 · beyond the paper

def acceptance_and_total_variation(p, q) -> tuple[float, "torch.Tensor", float]:
    """Speculative sampling's acceptance, the overlap sum of min(p, q); the set of tokens (a mask) on which p and
    q disagree most, where p gives more than q; and the total variation distance, p's probability of that set
    minus q's."""
    disagree = p > q
    return float(torch.minimum(p, q).sum()), disagree, float(p[disagree].sum() - q[disagree].sum())


def chain_or_tree(shapes: dict, rank_acceptance, c: float, r) -> tuple[dict, dict, str]:
    """For each tree (its nodes' parents, -1 the root): the expected tokens one step emits under positional
    acceptance, and the step's cost in one-token target forwards (a draft forward per level, ``c`` each, and
    the verification over the root and the nodes, ``r[n]``); then the tree with the most tokens per cost."""
    tokens = {name: tokens_per_forward(parents, rank_acceptance) for name, parents in shapes.items()}
    cost = {name: len(draft_forward_sizes(parents)) * c + r[1 + len(parents)] for name, parents in shapes.items()}
    return tokens, cost, max(shapes, key=lambda name: tokens[name] / cost[name])


def planned_tree(rank_acceptance, rate: Callable[[list], float], max_nodes: int, max_depth: int) -> list[int]:
    """The capstone: the tree of at most ``max_nodes`` nodes and ``max_depth`` levels with the largest
    ``rate(parents)``, the empty tree (a baseline step) included.  For every size and depth limit, the tree that
    accepts the most (the package's dynamic programme, ``autotree.optimal_tree``), priced by ``rate``; the
    smaller tree wins a tie."""
    best, best_rate = [], rate([])
    for nodes in range(1, max_nodes + 1):
        for depth in range(1, min(nodes, max_depth) + 1):
            parents, _ = optimal_tree(rank_acceptance, nodes, depth)
            if rate(parents) > best_rate * (1 + 1e-12):
                best, best_rate = parents, rate(parents)
    return best


# ----------------------------------------------------------------------------- 08 · a draft that reads the target's features

def feature_forward(draft, features, next_ids, positions):
    """The feature draft's forward without a cache: the projection of the joined pair written as two products
    (fc's weight split into its feature half and its embedding half), then the layer and the head."""
    d = features.shape[-1]
    w, b = draft.fc.weight, draft.fc.bias
    embedded = draft.target.tok_emb(next_ids).to(features.dtype)
    x = features @ w[:, :d].T + embedded @ w[:, d:].T + (b if b is not None else 0)
    h = draft.layer(x, position_ids=positions)
    return draft.head_logits(h), h


def training_loss(draft, features, tokens, valid, token_weight: float = 0.1):
    """EAGLE-1's loss, the package's own (``feature_loss``, without noise or unrolling)."""
    from .feature_draft import feature_loss

    return feature_loss(draft, features, tokens, valid, token_weight)[0]


def acceptance_by_depth(steps, gamma: int) -> list[float]:
    """P(the drafted token at depth d is accepted | the step drafted and reached depth d), d = 1..gamma, from
    (proposed, accepted) per step: depth d is reached when the step drafted d tokens and accepted the d - 1 above."""
    out = []
    for d in range(1, gamma + 1):
        reached = [accepted for proposed, accepted in steps if proposed >= d and accepted >= d - 1]
        out.append(sum(1 for accepted in reached if accepted >= d) / len(reached) if reached else 0.0)
    return out


def predicted_chain_speedups(by_depth: dict, c: dict, r: float, gamma: int) -> tuple[dict, str]:
    """Each draft's predicted speedup for a chain of ``gamma``: expected tokens a step (1 + the sum over depths
    of the product of the acceptances down to it) over the step's cost in one-token target forwards
    (gamma draft forwards at c each, and a verification of gamma + 1 tokens, r); and the draft predicted to win."""
    predicted = {}
    for name, accept in by_depth.items():
        reach, tokens = 1.0, 1.0
        for a in accept[:gamma]:
            reach *= a
            tokens += reach
        predicted[name] = tokens / (gamma * c[name] + r)
    return predicted, max(predicted, key=predicted.get)

