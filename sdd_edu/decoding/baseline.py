"""Baseline decoding with a KV cache: one target forward per new token.

The loop is three small functions, as in gpt-fast: ``prefill`` the prompt, then
``decode_one_token`` until EOS or the length limit.
"""

from __future__ import annotations

import time

import torch

from ..fast import new_cache
from ..loading import LoadedModel
from ..model import KVCache, Transformer
from ..sampling import Sampling, next_token
from .common import GenerationResult, GenerationStats, StreamCallback, Timer, check_lengths, synchronize


def prefill(model: Transformer, cache: KVCache, prompt_ids: list[int]) -> torch.Tensor:
    """Run the whole prompt through the model, filling the cache; logits (V,) for the next token."""
    x = torch.tensor([prompt_ids], device=model.device)
    return model(x, cache, last_only=True)[0, -1]


def decode_one_token(model: Transformer, cache: KVCache, token: int) -> torch.Tensor:
    """One new token in, logits (V,) for the one after it out."""
    x = torch.tensor([[token]], device=model.device)
    return model(x, cache)[0, -1]


def new_stats(method: str, target: LoadedModel, prompt_len: int) -> GenerationStats:
    return GenerationStats(method=method, device=str(target.device), dtype=str(target.dtype).replace("torch.", ""),
                           threads=torch.get_num_threads(), prompt_tokens=prompt_len)


@torch.inference_mode()
def baseline_decode(target: LoadedModel, prompt_ids: list[int], max_new_tokens: int = 128,
                    sampling: Sampling = Sampling(), stream: StreamCallback = None,
                    stop_at_eos: bool = True, fast: bool = False) -> GenerationResult:
    model = target.model
    check_lengths(prompt_ids, max_new_tokens, model.config.max_seq_len)
    stats = new_stats("baseline", target, len(prompt_ids))
    timer = Timer(stats, target.device)
    generator = None if sampling.greedy else sampling.generator()
    eos = target.eos_token_id if stop_at_eos else None

    synchronize(target.device)
    t_start = time.perf_counter()
    cache = new_cache(model, len(prompt_ids) + max_new_tokens, fast=fast)
    with timer("target_seconds"):
        logits = prefill(model, cache, prompt_ids)
    stats.prefill_seconds = time.perf_counter() - t_start
    out: list[int] = []
    trace = []
    stats.finish_reason = "length"
    while True:
        token = next_token(logits, sampling, generator)
        out.append(token)
        trace.append({"proposed": 0, "accepted": 0, "emitted": 1})
        if stream:
            stream([token])
        if token == eos:
            stats.finish_reason = "eos"
            break
        if len(out) >= max_new_tokens:
            break
        with timer("target_seconds"):
            logits = decode_one_token(model, cache, token)
        stats.target_forwards += 1
    synchronize(target.device)
    stats.wall_seconds = time.perf_counter() - t_start
    stats.new_tokens = len(out)
    return GenerationResult(target.decode(out), out, list(prompt_ids), ["target"] * len(out), stats, trace)
