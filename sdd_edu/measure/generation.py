"""``sdd_edu.generate``: decoding with what was measured on this device.

The decoders (``sdd_edu.decoding``) take what the device measured as data: a tree plan whose shape they
use, and forward latencies that price the adaptive schedule's sizes.  This is where those come from:
the plan filed for this device, ladder and method (``tree_plan``; measured now for ``budget="auto"``),
and ``roofline.forward_latency_ms`` on the path decoding takes (the fast path on CUDA).  Measuring sits
above decoding, so decoding never imports it.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

from ..decoding import SHAPE_KEYS, GenerationResult, asks_for_a_plan, make_drafter
from ..decoding import generate as decode
from ..fast import on_by_default
from ..loading import LoadedModel
from . import roofline
from .tree_plan import PROBE_PROMPTS, filed_plan, plan_tree, planning_ladder


def generate(ladder: Union[str, LoadedModel, "object"] = "embedded", prompt: Union[str, list[int]] = "",
             method: str = "baseline", max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             stream=None, stop_at_eos: bool = True, device=None, dtype=None, fast: Optional[bool] = None,
             **settings) -> GenerationResult:
    """Generate a continuation of ``prompt`` (text, a HumanEval id such as 'HumanEval/0', or token ids).

    The arguments are those of ``sdd_edu.decoding.generate``; the tree plan and the forward latencies it
    takes as data are measured here (once per device, then kept on disk): ``budget="auto"``
    (``gamma="auto"``) plans the tree now, a plan filed before supplies the default shape, and the
    adaptive schedule prices its sizes by this device's forward latencies.
    """
    if isinstance(ladder, str):
        from ..ladders import load_ladder

        ladder = load_ladder(ladder, device=device, dtype=dtype)
    target = ladder if isinstance(ladder, LoadedModel) else getattr(ladder, "target", None)
    plan = None
    # a plan belongs to what it was measured with: the feature draft for draft="features", prompt lookup on or off
    if method in SHAPE_KEYS and not isinstance(ladder, LoadedModel) and target is not None:
        planned = planning_ladder(ladder, method, settings)
        if settings.get("draft") == "features" and (getattr(ladder, "feature_draft", None) is None
                                                    or method == "staged"):
            # no feature draft here, or staged with one: the drafter refuses it, in one line, before any plan
            make_drafter(ladder, method, **{k: v for k, v in settings.items() if k not in SHAPE_KEYS[method]})
        if asks_for_a_plan(method, settings):
            # the probe prompts need a tokenizer; a model without one is probed on this prompt
            prompts = PROBE_PROMPTS if target.tokenizer is not None else [list(prompt)]
            plan = plan_tree(planned, method, prompts=prompts)
        else:
            plan = filed_plan(planned, method)
    if fast is None and target is not None:
        fast = on_by_default(target.device)
    return decode(ladder, prompt, method, max_new_tokens, temperature, top_k, top_p, seed, stream, stop_at_eos,
                  device, dtype, fast, plan=plan, forward_ms=functools.partial(_forward_ms, fast=fast),
                  **settings)


def _forward_ms(model, max_tokens: int, fast: Optional[bool]) -> list[float]:
    """This device's forward latencies on the path decoding takes (measured once, then kept on disk)."""
    return roofline.forward_latency_ms(model, max_tokens, fast=fast)
