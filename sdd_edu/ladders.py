"""Ladders: a target, the draft that speculates for it, and the n-gram stage that speculates for the draft.

This module is the one place that lists them.  ``load_ladder`` returns the loaded models,
cached in-process so that notebooks and the benchmark load each model once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import SddError
from .loading import EMBEDDED, LoadedModel, load_model


@dataclass(frozen=True)
class Ladder:
    name: str
    target: str
    draft: Optional[str]  # a model name, or None: the n-gram stage drafts alone
    ngram: str  # "trigram" (Katz backoff, fitted offline) or "prompt-lookup"
    description: str
    offline: bool = False


LADDERS: dict[str, Ladder] = {l.name: l for l in [
    Ladder("embedded", EMBEDDED, None, "trigram",
           "SmolLM2-135M-Instruct (embedded GGUF) with n-gram drafts; runs offline on a CPU", offline=True),
    Ladder("gpt2", "gpt2-large", "gpt2", "trigram",
           "the paper's setup: GPT-2-L target, GPT-2 small draft, trigram (hub, GPU recommended)"),
    Ladder("gpt2-distil", "gpt2-large", "distilgpt2", "trigram", "GPT-2-L target, DistilGPT-2 draft (hub)"),
    Ladder("codeparrot", "codeparrot/codeparrot", "codeparrot/codeparrot-small", "trigram",
           "GPT-2s trained on Python: 1.5B target, 110M draft (hub, GPU recommended)"),
    Ladder("smollm2", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "trigram",
           "SmolLM2 1.7B target, 135M draft, 12.6x apart (hub, GPU recommended)"),
]}
DEFAULT_LADDER = "embedded"


def get_ladder(name: str) -> Ladder:
    if name not in LADDERS:
        raise SddError(f"unknown ladder {name!r}. Valid ladders: {', '.join(LADDERS)}")
    return LADDERS[name]


_LOADED: dict[tuple, LoadedModel] = {}


def load_cached(name: str, device=None, dtype=None) -> LoadedModel:
    """load_model, remembered for the life of the process (models are read-only during decoding)."""
    key = (name, str(device), str(dtype))
    if key not in _LOADED:
        _LOADED[key] = load_model(name, device=device, dtype=dtype)
    return _LOADED[key]
