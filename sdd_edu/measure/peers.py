"""The same prompts through ``transformers`` itself: plain ``generate``, assisted generation with our
draft exported as a Hugging Face model, and prompt-lookup decoding.

Rows have the shape of ``sdd_edu.measure.bench`` rows, so one table shows both engines side by side.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from ..decoding.common import synchronize
from ..errors import SddError
from ..loading import EMBEDDED, LoadedModel, cache_dir, export_hf


def exported_draft(draft: LoadedModel):
    """The draft as a ``transformers`` model, exported once into the cache (fp32 file, loaded in the draft's dtype)."""
    from transformers import AutoModelForCausalLM


    import hashlib

    w = draft.model.tok_emb.weight
    fingerprint = hashlib.sha1(draft.name.encode() + w[:8].float().cpu().numpy().tobytes()).hexdigest()[:12]
    out = cache_dir() / "hf-export" / fingerprint  # a new draft gets a new folder
    if not (out / "model.safetensors").exists():
        export_hf(draft, out)
    return AutoModelForCausalLM.from_pretrained(str(out), dtype=draft.dtype).to(draft.device).eval()


PEERS = ("transformers", "transformers-assisted", "transformers-lookup")


class _DropOwnDeprecation(logging.Filter):
    """transformers' assisted generation calls the assistant's ``generate`` with a ``generation_config`` and
    generation arguments together, and then warns about its own call (transformers 5.x): nothing a caller can
    change, so that one message is dropped while the peers run; every other warning still shows."""

    def filter(self, record) -> bool:
        return "Passing `generation_config` together with generation-related" not in record.getMessage()


@contextlib.contextmanager
def _quiet_assistant_call():
    logger = logging.getLogger("transformers.generation.utils")
    rule = _DropOwnDeprecation()
    logger.addFilter(rule)
    try:
        yield
    finally:
        logger.removeFilter(rule)


@torch.inference_mode()
def run_peers(ladder, encoded: list[tuple[str, list[int]]], mode: str, sampling: dict, max_new_tokens: int,
              seed: int = 0, peers=PEERS) -> list[dict]:
    from .engine_bench import load_reference

    target = ladder.target
    name = EMBEDDED if target.source.startswith("gguf:") else target.name
    ref = load_reference(name, target)
    extra = {}
    if "transformers-assisted" in peers:
        if ladder.draft is None:
            raise SddError("assisted generation needs a draft model; this ladder has none")
        extra["transformers-assisted"] = {"assistant_model": exported_draft(ladder.draft)}
    extra["transformers-lookup"] = {"prompt_lookup_num_tokens": 10}
    extra["transformers"] = {}
    kw = {"do_sample": False} if sampling.get("temperature", 0) == 0 else {
        "do_sample": True, "temperature": sampling["temperature"], "top_k": sampling.get("top_k") or 0}
    with _quiet_assistant_call():
        return _run(ref, target, encoded, mode, kw, extra, max_new_tokens, seed, peers)


def _run(ref, target, encoded, mode, kw, extra, max_new_tokens, seed, peers) -> list[dict]:
    rows = []
    for peer in peers:
        x0 = torch.tensor([encoded[0][1][:16]], device=target.device)  # warm-up
        ref.generate(x0, attention_mask=torch.ones_like(x0), max_new_tokens=4, pad_token_id=ref.config.eos_token_id,
                     **kw, **extra[peer])
        for task, ids in encoded:
            torch.manual_seed(seed)
            x = torch.tensor([ids], device=target.device)
            synchronize(target.device)
            t0 = time.perf_counter()
            out = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               pad_token_id=ref.config.eos_token_id, **kw, **extra[peer])
            synchronize(target.device)
            seconds = time.perf_counter() - t0
            new = out[0, len(ids):].tolist()
            rows.append({"mode": mode, "method": peer, "task_id": task, "new_tokens": len(new), "seconds": seconds,
                         "tokens_per_second": len(new) / seconds, "target_forwards": None, "draft_forwards": None,
                         "tokens_per_target_forward": None, "acceptance_rate": None, "target_seconds": 0.0,
                         "draft_seconds": 0.0, "ngram_seconds": 0.0, "overhead_seconds": 0.0,
                         "origins": None, "token_ids": new})
    return rows
