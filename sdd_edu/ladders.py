"""Ladders: a target, the draft that speculates for it, and the n-gram stage that speculates for the draft.

This module is the one place that lists them.  ``load_ladder`` returns the loaded models,
cached in-process so that notebooks and the benchmark load each model once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import SddError
from .loading import (DRAFT_ASSET, EMBEDDED, EMBEDDED_DRAFT, EMBEDDED_FEATURE_DRAFT, FEATURE_DRAFT_ASSET, LoadedModel,
                      load_feature_draft_model, load_model, saved_linear_paths)


@dataclass(frozen=True)
class Ladder:
    name: str
    target: str
    draft: Optional[str]  # a model name, or None: the n-gram stage drafts alone
    ngram: str  # "trigram-draft" (Katz, on draft samples), "trigram" (Katz, on stdlib Python) or "prompt-lookup"
    description: str
    offline: bool = False
    # a feature draft (``sdd_edu.feature_draft``) beside the draft, chosen per call with ``draft="features"``
    feature_draft: Optional[str] = None


LADDERS: dict[str, Ladder] = {l.name: l for l in [
    Ladder("embedded", EMBEDDED, EMBEDDED_DRAFT if DRAFT_ASSET.joinpath("model.safetensors").exists() else None,
           "trigram-draft", "SmolLM2-135M-Instruct (embedded GGUF), the draft trained for it, and a trigram "
           "fitted on the draft's samples; runs offline on a CPU", offline=True,
           feature_draft=EMBEDDED_FEATURE_DRAFT if FEATURE_DRAFT_ASSET.joinpath("model.safetensors").exists()
           else None),
    Ladder("embedded-ngram", EMBEDDED, None, "trigram",
           "SmolLM2-135M-Instruct with a trigram fitted on standard-library Python as its only draft", offline=True),
    Ladder("embedded-lookup", EMBEDDED, None, "prompt-lookup",
           "SmolLM2-135M-Instruct with prompt lookup as its only draft", offline=True),
    Ladder("gpt2", "gpt2-large", "gpt2", "trigram",
           "closest to the paper's setup: GPT-2-L target, GPT-2 small draft, trigram (hub, GPU recommended)"),
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


def _placement(device, dtype) -> tuple[str, str]:
    """Resolved (device, dtype): 'auto', None and the explicit default name the same loaded model."""
    from .loading import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return str(dev), str(resolve_dtype(dtype, dev))


def load_cached(name: str, device=None, dtype=None) -> LoadedModel:
    """load_model, remembered for the life of the process (models are read-only during decoding)."""
    key = (name,) + _placement(device, dtype)
    if key not in _LOADED:
        _LOADED[key] = load_model(name, device=device, dtype=dtype)
    return _LOADED[key]


# ----------------------------------------------------------------------------- n-gram stage

TRIGRAM_CORPUS_CHARS = 6_000_000  # about 2M tokens of Python: a ~3 s fit, cached afterwards


def python_corpus(max_chars: int = TRIGRAM_CORPUS_CHARS) -> list[str]:
    """Python source text that is on every machine: the standard library (tests excluded; never HumanEval)."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts


def _cached_trigram(name: str, key: str, vocab_size: int, streams):
    """Load the trigram cached under ``name``-``key``, or fit it on ``streams()`` and cache it."""
    import hashlib

    from .loading import cache_dir
    from .ngram import KatzTrigram

    path = cache_dir() / "ngram" / f"trigram-{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        return KatzTrigram.load(path)
    trigram = KatzTrigram.fit(streams(), vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    trigram.save(path)
    return trigram


def draft_trigram(model: LoadedModel):
    """The embedded ladder's trigram: fitted on text sampled from the shipped draft, as the paper does.

    The package ships the sampled token ids (a few MB); the fit takes seconds on first use and is cached.
    Without them (a checkout that has no trained draft) the standard-library trigram stands in.
    """
    import hashlib

    import numpy as np

    from .loading import DRAFT_ASSET

    samples = DRAFT_ASSET / "draft-samples.npz"
    if not samples.exists():
        return stdlib_trigram(model)

    def streams():
        z = np.load(samples)
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        tokens = z["tokens"].astype(np.int64)
        return [tokens[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]

    return _cached_trigram("draft", hashlib.sha1(samples.read_bytes()).hexdigest(), model.config.vocab_size, streams)


def stdlib_trigram(model: LoadedModel, max_chars: int = TRIGRAM_CORPUS_CHARS):
    """A Katz trigram over ``model``'s tokens, fitted on standard-library Python and cached on disk."""
    if model.tokenizer is None:
        raise SddError(f"model {model.name!r} has no tokenizer, so no trigram can be fitted for it")
    probe = "|".join(model.tokenizer.convert_ids_to_tokens(list(range(0, model.config.vocab_size, 997))))
    return _cached_trigram("stdlib", f"{probe}|{model.config.vocab_size}|{max_chars}", model.config.vocab_size,
                           lambda: [model.encode(text) for text in python_corpus(max_chars)])


@dataclass
class LoadedLadder:
    ladder: Ladder
    target: LoadedModel
    draft: Optional[LoadedModel]
    ngram: object  # KatzTrigram or PromptLookup
    feature_draft: Optional[LoadedModel] = None  # drafts from the target's features (``draft="features"``)

    def __repr__(self):
        return f"LoadedLadder({self.describe()})"

    def describe(self) -> str:
        """The ladder in words, for titles and reports: its name and its three models."""
        return (f"{self.ladder.name}: target {self.target.name}, draft {self.draft.name if self.draft else 'none'}, "
                f"n-gram {type(self.ngram).__name__}"
                + (f", feature draft {self.feature_draft.name}" if self.feature_draft is not None else ""))


_LADDERS_LOADED: dict[tuple, LoadedLadder] = {}


def load_ladder(name: str = DEFAULT_LADDER, device=None, dtype=None) -> LoadedLadder:
    """Target, draft and n-gram stage of a ladder, loaded once per process."""
    from .ngram import PromptLookup

    lad = get_ladder(name)
    key = (name,) + _placement(device, dtype)
    if key not in _LADDERS_LOADED:
        target = load_cached(lad.target, device, dtype)
        draft = load_cached(lad.draft, device, dtype) if lad.draft else None
        if draft is not None:
            check_compatible(target, draft)
        saved_linear_paths(target.device, target.model.dtype)  # the matrix products measured fastest here, if measured
        if lad.ngram == "trigram-draft":
            ngram = draft_trigram(target)
        elif lad.ngram == "trigram":
            ngram = stdlib_trigram(target)
        else:
            ngram = PromptLookup()
        features = load_feature_draft_model(target, lad.feature_draft) if lad.feature_draft else None
        _LADDERS_LOADED[key] = LoadedLadder(lad, target, draft, ngram, features)
    return _LADDERS_LOADED[key]


def make_ladder(target: LoadedModel, draft: Optional[LoadedModel] = None, ngram=None,
                name: str = "custom", feature_draft: Optional[LoadedModel] = None) -> LoadedLadder:
    """A ladder from models already loaded (notebooks and tests use this with their own models)."""
    from .ngram import PromptLookup

    for model in (draft, feature_draft):
        if model is not None:
            check_compatible(target, model)
    lad = Ladder(name, target.name, draft.name if draft else None,
                 "prompt-lookup" if ngram is None or isinstance(ngram, PromptLookup) else "trigram", "custom ladder",
                 feature_draft=feature_draft.name if feature_draft else None)
    return LoadedLadder(lad, target, draft, ngram if ngram is not None else PromptLookup(), feature_draft)


def near_random_ladder(seed: int = 67, vocab: int = 50, spread: float = 0.02) -> LoadedLadder:
    """A small random target and a draft near it (the target's weights plus a little noise: it agrees at most
    positions, not all), with prompt lookup: a ladder on which a wrong position, a missing mask or a lost cache
    slot changes the text, where the embedded ladder's confident greedy text may hide it.  Checks run on it."""
    import torch

    from .model import ModelConfig, Transformer

    def tiny(name):
        torch.manual_seed(seed)
        config = ModelConfig(family="llama", vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                             d_ff=48, max_seq_len=256)
        model = Transformer(config).eval().requires_grad_(False)
        with torch.no_grad():  # weights large enough that the greedy text does not repeat one token
            for w in model.parameters():
                w.normal_(0, 0.5)
        return LoadedModel(f"{name}-{seed}", model, None, "random")

    target, draft = tiny("near-target"), tiny("near-draft")
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for w in draft.model.parameters():
            w.add_(torch.randn(w.shape, generator=noise) * spread)
    return make_ladder(target, draft, name=f"near-random-{seed}")


def with_random_draft(ladder: LoadedLadder, seed: int = 0) -> LoadedLadder:
    """The ladder with its draft replaced by random weights of the same shape: a draft that costs the
    same and is always wrong, the worst case a speculation schedule must survive."""
    import copy

    import torch

    if ladder.draft is None:
        raise SddError(f"ladder {ladder.ladder.name!r} has no draft model to replace")
    model = copy.deepcopy(ladder.draft.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * float(p.float().std()))
    draft = LoadedModel(f"{ladder.draft.name}-random", model, ladder.draft.tokenizer, "random weights")
    lad = Ladder(f"{ladder.ladder.name}-random-draft", ladder.ladder.target, draft.name, ladder.ladder.ngram,
                 f"{ladder.ladder.description}; draft replaced by random weights", ladder.ladder.offline)
    return LoadedLadder(lad, ladder.target, draft, ladder.ngram, ladder.feature_draft)


def check_compatible(target: LoadedModel, draft: LoadedModel) -> None:
    """Draft and target must share a tokenizer: the draft's token ids must mean the same text."""
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise SddError(f"draft {draft.name!r} and target {target.name!r} have different vocabularies "
                       f"({dv} vs {tv} tokens); speculative decoding needs one shared tokenizer")
    if target.tokenizer is not None and draft.tokenizer is not None:
        probe = "def f(x):\n    return x  # héllo 123"
        if target.encode(probe) != draft.encode(probe):
            raise SddError(f"draft {draft.name!r} and target {target.name!r} tokenize text differently; "
                           "speculative decoding needs one shared tokenizer")
