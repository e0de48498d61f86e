"""How well a draft predicts its target: agreement along the target's own greedy continuations, and cost."""

from __future__ import annotations

import torch

from ..data import humaneval_prompts
from ..decoding.baseline import baseline_decode
from ..loading import LoadedModel
from .timing import median, time_call


@torch.inference_mode()
def greedy_agreement(target: LoadedModel, draft: LoadedModel, prompts: int = 20, new_tokens: int = 64,
                     start: int = 0, ks=(1, 4)) -> dict:
    """Fraction of positions where the target's greedy token is the draft's top-1 (and in its top-k).

    Top-1 agreement is the greedy acceptance rate of a one-token draft; top-k coverage says how
    often a tree with k children per node holds the target's choice.
    """
    hits = {k: 0 for k in ks}
    total = 0
    for _, text in humaneval_prompts(prompts, start=start):
        ids = target.encode(text)
        cont = baseline_decode(target, ids, new_tokens, stop_at_eos=False).token_ids
        seq = torch.tensor([ids + cont], device=draft.device)
        logits = draft.model(seq[:, :-1])[0, len(ids) - 1:]  # predictions for each continuation token
        truth = torch.tensor(cont, device=logits.device)
        top = torch.topk(logits, max(ks), dim=-1).indices
        for k in ks:
            hits[k] += int((top[:, :k] == truth[:, None]).any(-1).sum())
        total += len(cont)
    return {f"top{k}": hits[k] / total for k in ks} | {"positions": total, "prompts": prompts}


@torch.inference_mode()
def forward_cost(model: LoadedModel, context: int = 256, tokens: int = 1, repeats: int = 20) -> float:
    """Median seconds of one cached forward over ``tokens`` new tokens after ``context`` cached ones."""
    cache = model.model.new_cache(context + tokens)
    model.model(torch.randint(0, 1000, (1, context), device=model.device), cache)
    x = torch.randint(0, 1000, (1, tokens), device=model.device)

    def step():
        model.model(x, cache)
        cache.truncate(context)

    return median(time_call(step, model.device, repeats=repeats, warmup=3))
