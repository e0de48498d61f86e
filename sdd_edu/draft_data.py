"""Training data for the embedded draft: what the target itself writes.

A draft is only as good as its agreement with the target, so the draft learns from the
target's own continuations ("on-policy" data) of prompts shaped like the evaluation set
(a Python signature and docstring) but taken from the standard library's functions,
never from HumanEval.  Generation runs in batches with the KV cache and keeps, at every
generated position, the target's top-k probabilities: distillation targets for free.
"""

from __future__ import annotations

import ast
import sysconfig
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .loading import LoadedModel
from .sampling import Sampling

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def stdlib_function_prompts(max_prompt_chars: int = 1200, root: Optional[Path] = None) -> list[str]:
    """Signature + docstring of every documented function in the standard library (or the Python files under
    ``root``), HumanEval-style."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    prompts = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not ast.get_docstring(node):
                continue
            doc = node.body[0]
            text = textwrap.dedent("\n".join(lines[node.lineno - 1:doc.end_lineno])) + "\n"
            if 40 <= len(text) <= max_prompt_chars and text.lstrip().startswith(("def ", "async def ")):
                prompts.append(text)
    return prompts


@torch.inference_mode()
def generate_batch(target: LoadedModel, prompts: list[list[int]], new_tokens: int, sampling: Sampling,
                   generator: torch.Generator, keep_top: int = 16, features: bool = False):
    """Sample continuations for a batch of prompts at once (left-padded); also the target's top-k at each step.

    Returns tokens (B, new_tokens), top ids (B, new_tokens, keep_top), top probs (same shape); with
    ``features``, also the target's normalised hidden states (B, T + new_tokens, d) in fp16, T the longest
    prompt, the shorter prompts' rows left-padded like their tokens (a feature draft learns from them).
    """
    model = target.model
    B, T = len(prompts), max(len(p) for p in prompts)
    pad = [T - len(p) for p in prompts]
    ids = torch.tensor([[0] * pad[b] + prompts[b] for b in range(B)], device=model.device)
    real = torch.tensor([[False] * pad[b] + [True] * len(prompts[b]) for b in range(B)])  # (B, T)
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    cache = model.new_cache(T + new_tokens, batch_size=B)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    mask = causal[None] & real[:, None, :]  # (B, T, T): a pad slot is never attended to
    mask |= torch.eye(T, dtype=torch.bool)[None]  # pads attend to themselves (their output is discarded)
    logits = model(ids, cache, position_ids=positions.to(model.device), attention_mask=mask.to(model.device),
                   last_only=True, features=features)
    if features:
        logits, h = logits
        feats = torch.zeros(B, T + new_tokens, h.shape[-1], dtype=torch.float16)
        feats[:, :T] = h.half().cpu()
    logits = logits[:, -1]
    seen = real.clone()
    next_pos = positions[:, -1] + 1
    out = torch.zeros(B, new_tokens, dtype=torch.long)
    top_ids = torch.zeros(B, new_tokens, keep_top, dtype=torch.int32)
    top_probs = torch.zeros(B, new_tokens, keep_top, dtype=torch.float16)
    k_sample = sampling.top_k or logits.shape[-1]
    for t in range(new_tokens):
        logits = logits.float()
        # one top-k serves both: the teacher's top probabilities at T = 1 (distillation targets) and the
        # top-k sampling distribution (sampling among the top k only is exactly top-k sampling)
        top = torch.topk(logits, max(keep_top, k_sample), dim=-1)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        top_ids[:, t] = top.indices[:, :keep_top].int().cpu()
        top_probs[:, t] = torch.exp(top.values[:, :keep_top] - lse).half().cpu()
        p = torch.softmax(top.values[:, :k_sample] / sampling.temperature, dim=-1).cpu()
        choice = torch.searchsorted(p.cumsum(-1), torch.rand(B, 1, generator=generator)).clamp_(max=k_sample - 1)
        token = top.indices[:, :k_sample].cpu().gather(1, choice)[:, 0]
        out[:, t] = token
        seen = torch.cat([seen, torch.ones(B, 1, dtype=torch.bool)], dim=1)
        step_mask = seen[:, None, :]  # (B, 1, S)
        logits = model(token[:, None].to(model.device), cache, position_ids=next_pos[:, None].to(model.device),
                       attention_mask=step_mask.to(model.device), features=features)
        if features:
            logits, h = logits
            feats[:, T + t] = h[:, 0].half().cpu()
        logits = logits[:, -1]
        next_pos = next_pos + 1
    return (out, top_ids, top_probs, feats) if features else (out, top_ids, top_probs)


def write_shard(path: Path, prompt_ids: list[list[int]], tokens, top_ids, top_probs) -> None:
    lengths = np.array([len(p) for p in prompt_ids], dtype=np.int32)
    flat = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompt_ids])
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, prompt_lengths=lengths, prompt_tokens=flat, tokens=tokens.numpy().astype(np.int32),
             top_ids=top_ids.numpy(), top_probs=top_probs.numpy())
    tmp.replace(path)


def read_shards(folder: Path):
    """Yield (prompt ids, continuation ids, top ids, top probs) per example from every shard in ``folder``."""
    for path in sorted(folder.glob("shard-*.npz")):
        z = np.load(path)
        offsets = np.concatenate([[0], np.cumsum(z["prompt_lengths"])])
        for i in range(len(z["prompt_lengths"])):
            yield (z["prompt_tokens"][offsets[i]:offsets[i + 1]], z["tokens"][i], z["top_ids"][i], z["top_probs"][i])


def prompt_batches(target, batch: int, max_prompt_tokens: int, limit: int = 0) -> tuple[list, list]:
    """The standard library's prompts encoded for ``target`` (8 to ``max_prompt_tokens`` tokens, the first
    ``limit`` of a fixed shuffle when given) and batches of their indices, similar lengths together (less
    padding), in a fixed shuffled order: (encoded prompts, batches).  The same for every run, so that a data
    step resumed or rerun writes the same shards."""
    import random

    prompts = stdlib_function_prompts()
    random.Random(0).shuffle(prompts)
    encoded = [ids for ids in (target.encode(p) for p in prompts) if 8 <= len(ids) <= max_prompt_tokens]
    if limit:
        encoded = encoded[:limit]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    random.Random(1).shuffle(batches)
    return encoded, batches
