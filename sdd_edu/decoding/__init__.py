"""The decoders, behind one function: ``generate(ladder, prompt, method=...)``."""

from __future__ import annotations

from typing import Optional, Union

from ..data import resolve_prompt
from ..errors import SddError
from ..loading import LoadedModel
from ..sampling import Sampling
from .baseline import baseline_decode, decode_one_token, prefill
from .common import ORIGINS, GenerationResult, GenerationStats, trace_summary

METHODS = ("baseline",)


def generate(ladder: Union[str, LoadedModel, "object"] = "embedded", prompt: Union[str, list[int]] = "",
             method: str = "baseline", max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             stream=None, stop_at_eos: bool = True, device=None, dtype=None, **settings) -> GenerationResult:
    """Generate a continuation of ``prompt`` (text, a HumanEval id such as 'HumanEval/0', or token ids).

    ``ladder`` is a ladder name (see ``sdd_edu.ladders.LADDERS``), a loaded ladder, or a loaded model.
    ``stream`` is called with each batch of newly emitted token ids.
    """
    from ..ladders import load_cached, get_ladder

    if method not in METHODS:
        raise SddError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if isinstance(ladder, str):
        target = load_cached(get_ladder(ladder).target, device=device, dtype=dtype)
    elif isinstance(ladder, LoadedModel):
        target = ladder
    else:
        target = ladder.target
    if isinstance(prompt, str):
        text = resolve_prompt(prompt)
        if not text.strip():
            raise SddError("the prompt is empty: give some text or a HumanEval id such as HumanEval/0")
        prompt_ids = target.encode(text)
    else:
        prompt_ids = [int(t) for t in prompt]
    if settings:
        raise SddError(f"method {method!r} takes no settings {sorted(settings)}")
    return baseline_decode(target, prompt_ids, max_new_tokens, sampling, stream, stop_at_eos)


__all__ = ["generate", "METHODS", "ORIGINS", "GenerationResult", "GenerationStats", "trace_summary",
           "baseline_decode", "prefill", "decode_one_token"]
