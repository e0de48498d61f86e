"""Speculative decoding, one loop for chains, trees and staged trees.

Each step:
  1. the drafter proposes a token tree below the root (the last committed token);
  2. the target runs ONE forward over root + tree, through the tree attention mask;
  3. the walk down the tree accepts a path (``tree.verify``) and the target adds one token;
  4. the target cache keeps the root and the accepted path (``KVCache.keep``), nothing recomputed;
  5. the drafter is told what was accepted, so it can keep its own cache likewise.

The tree's size is set each step by a ``DraftSchedule`` (``schedule.py``): fixed at the configured
size, or adaptive, following the recent acceptance down to size 0, a plain baseline step.

A chain is a tree of width 1, so standard speculative decoding (Leviathan et al. 2022,
Chen et al. 2023) is this loop with a one-child-per-node drafter; its sampling rule is
recursive rejection sampling with a single candidate: accept with min(1, p/q), else
sample from norm(max(0, p - q)).
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..fast import new_cache
from ..loading import LoadedModel
from ..sampling import Sampling
from .baseline import new_stats
from .common import GenerationResult, StreamCallback, Timer, check_lengths, synchronize
from .drafters import Drafter
from .schedule import DraftSchedule
from .tree import TokenTree, tree_attention_mask, verify


@torch.inference_mode()
def speculative_decode(target: LoadedModel, drafter: Drafter, prompt_ids: list[int], max_new_tokens: int = 128,
                       sampling: Sampling = Sampling(), method: str = "speculative", rule: str = "rrs",
                       stream: StreamCallback = None, stop_at_eos: bool = True,
                       keep_trees: bool = True, schedule: Optional[DraftSchedule] = None,
                       fast: bool = False) -> GenerationResult:
    model = target.model
    if schedule is None:  # the configured tree every step
        schedule = DraftSchedule(drafter.budget, drafter.budget, adaptive=False)
    drafter.max_size = schedule.max_size
    extra = drafter.max_nodes + 1
    context = model.config.max_seq_len
    if drafter.context_limit is not None:
        context = min(context, drafter.context_limit + extra)
    check_lengths(prompt_ids, max_new_tokens, context, extra=extra)
    stats = new_stats(method, target, len(prompt_ids))
    timer = Timer(stats, target.device)
    generator = None if sampling.greedy else sampling.generator()
    eos = target.eos_token_id if stop_at_eos else None

    synchronize(target.device)
    t_start = time.perf_counter()
    cache = new_cache(model, len(prompt_ids) + max_new_tokens + extra, fast=fast)
    drafter.fast = fast  # the draft model's cache too
    drafter.begin(prompt_ids, len(prompt_ids) + max_new_tokens + extra)
    # a feature draft (``FeatureDrafter``) reads the target's features of every committed token
    features = getattr(drafter, "wants_features", False)
    # the target cache holds everything but the root, which each verification forward brings along
    if len(prompt_ids) > 1:
        with timer("target_seconds"):
            out = model(torch.tensor([prompt_ids[:-1]], device=model.device), cache, last_only=True,
                        features=features)
        if features:
            drafter.observe(out[1][0])
    if schedule.adaptive:  # the draft reads the prompt now (its first draft would anyway): how well it predicts it
        schedule.record_prompt(drafter.prefill(list(prompt_ids)))
    stats.prefill_seconds = time.perf_counter() - t_start

    context = list(prompt_ids)
    out: list[int] = []
    origins: list[str] = []
    trace: list[dict] = []
    stats.finish_reason = "length"
    while len(out) < max_new_tokens:
        # 1. draft (size 0: no tree, so this step is a baseline step)
        step_start = time.perf_counter()
        forwards_before, draft_seconds_before = drafter.forwards, drafter.seconds
        size = schedule.size()
        shadow = size == 0 and schedule.shadow_due()  # draft one node but keep it out of the target's forward
        drafter.set_size(1 if shadow else size)
        tree = drafter.get_candidates(context, sampling, generator)
        shadow_tree, tree = (tree, TokenTree()) if shadow else (None, tree)
        # 2. verify the root and the whole tree in one target forward
        start = cache.length
        mask, pos = tree_attention_mask(tree.parents, cached=start, chain=1, device=model.device) if len(tree) \
            else (None, None)
        x = torch.tensor([[context[-1]] + tree.tokens], device=model.device)
        with timer("target_seconds"):
            logits = model(x, cache, position_ids=pos, attention_mask=mask, features=features)
        if features:
            logits, hidden = logits
        logits = logits[0]  # (1 + nodes, V)
        stats.target_forwards += 1
        # 3. accept a path
        verdict = verify(tree, logits, sampling, generator, rule)
        if features:  # the root's feature and the accepted path's, computed by this forward
            drafter.observe(hidden[0, [0] + [1 + i for i in verdict.accepted]])
        # 4. keep the root and the accepted path in the target cache
        if verdict.accepted:
            cache.keep(start, [0] + [1 + i for i in verdict.accepted])
        else:  # only the root stays, already in place
            cache.truncate(start + 1)
        new = [tree.tokens[i] for i in verdict.accepted] + [verdict.next_token]
        new_origins = [tree.origins[i] for i in verdict.accepted] + ["target"]
        step = {"size": size, "shadow": shadow, "proposed": len(tree), "accepted": len(verdict.accepted),
                "tested": verdict.tested, "emitted": len(new), "depth": tree.max_depth,
                "draft_forwards": drafter.forwards - forwards_before,
                "draft_seconds": drafter.seconds - draft_seconds_before}
        if keep_trees:
            step["tree"] = tree.to_dict()
            step["accepted_nodes"] = verdict.accepted
        trace.append(step)
        new = emit(new, new_origins, out, origins, max_new_tokens, eos, stats, stream)
        if stats.finish_reason == "eos":
            break
        context += new
        # 5. let the drafter keep what was accepted
        drafter.update(context, shadow_tree or tree, verdict.accepted)
        learn(schedule, size, shadow, len(verdict.accepted), verdict.tested, time.perf_counter() - step_start,
              shadow and bool(shadow_tree.tokens) and shadow_tree.tokens[0] == verdict.next_token,
              drafter.lookup_landed)
    synchronize(target.device)
    stats.wall_seconds = time.perf_counter() - t_start
    stats.new_tokens = len(out)
    stats.draft_forwards = drafter.forwards
    stats.draft_seconds = drafter.seconds
    stats.ngram_seconds = drafter.ngram_seconds
    return GenerationResult(target.decode(out), out, list(prompt_ids), origins, stats, trace)


def emit(new: list[int], new_origins: list[str], out: list[int], origins: list[str], max_new_tokens: int,
         eos: Optional[int], stats, stream) -> list[int]:
    """Append a step's tokens and their origins to the output, cut at EOS or the length limit, whichever
    comes first, and stream them; returns the tokens appended (``stats.finish_reason`` is "eos" at EOS)."""
    if eos is not None and eos in new:
        cut = new.index(eos) + 1
        new, new_origins = new[:cut], new_origins[:cut]
        stats.finish_reason = "eos"
    new, new_origins = new[:max_new_tokens - len(out)], new_origins[:max_new_tokens - len(out)]
    out += new
    origins += new_origins
    if stream:
        stream(new)
    return new


def learn(schedule: DraftSchedule, size: int, shadow: bool, accepted: int, tested: int, seconds: float,
          shadow_landed: bool, free_guess: Optional[bool]) -> None:
    """Tell the schedule what a step of ``size`` got: its acceptance and time, whether a shadow draft
    would have landed, and at a baseline step whether prompt lookup's free guess would have (None: none)."""
    schedule.record(size, accepted, tested, None if shadow else seconds)
    if shadow:
        schedule.record_shadow(shadow_landed)
    elif size == 0 and free_guess is not None:
        schedule.record_free_guess(free_guess)
