"""The decoders, behind one function: ``generate(ladder, prompt, method=...)``."""

from __future__ import annotations

import copy
from typing import Optional, Union

import torch

from ..data import resolve_prompt
from ..errors import SddError
from ..fast import BUCKETS, on_by_default
from ..ladders import load_ladder
from ..loading import DTYPES, LoadedModel
from ..ngram import PromptLookup
from ..sampling import Sampling
from .baseline import baseline_decode, decode_one_token, prefill
from .common import ORIGINS, GenerationResult, GenerationStats, trace_summary
from .device import loop as device_loop  # the same steps on the device: the fast path's loops
from .drafters import FeatureDrafter, ModelDrafter, NgramDrafter
from .schedule import DraftSchedule, ForwardCosts, linear_step_cost, measured_step_cost
from .speculative import speculative_decode
from .tree import RULES

METHODS = ("baseline", "speculative", "tree", "staged")

# Defaults per method; every one can be passed to ``generate`` as a keyword.  On a GPU a forward over
# dozens of tokens costs about what one token costs, so the paper's big trees pay; on a CPU the cost
# climbs after two or three tokens (see ``sdd_edu.measure.roofline.latency_curve``), so small trees win.
# ``adaptive``: the tree's size follows the recent acceptance (``schedule.DraftSchedule``), between 0
# (a baseline step) and twice the configured size, pricing each size by the times measured on this
# device (``node_cost="measured"``) or, given a number, by that cost per node relative to a one-token
# forward (then the sizes, and so a seeded sample, do not depend on timing).
# ``lookup``: prompt lookup proposes from the context beside the draft (staged's n-gram stage).
# ``draft``: "model", the ladder's draft; or "features", its feature draft (``sdd_edu.feature_draft``), which
# drafts chains and trees from the target's own features (staged has no n-gram stage for it).
SCHEDULE = {"adaptive": True, "node_cost": "measured", "draft": "model"}
DEFAULTS = {
    "speculative": {"gamma": 4, "rule": "rrs", "lookup": False, **SCHEDULE},
    "tree": {"width": 4, "depth": 6, "budget": 16, "beam": 4, "rule": "rrs", "lookup": False, **SCHEDULE},
    "staged": {"width": 4, "depth": 8, "budget": 36, "beam": 4, "rounds": 1,
               "ngram_fanout": (12, 7, 4, 1, 1, 1), "rule": "rrs", "lookup": True, **SCHEDULE},
}
# ``beam`` 1 on a CPU: each draft forward expands the one best node (a forward over more tokens costs
# more there; measured with beam 4, top-k 50 sampling, HumanEval/0-9: tree 24.5 against 27.7 tok/s,
# its adaptive schedule drafting at 41% of the steps instead of 91%).
CPU_DEFAULTS = {
    "speculative": {"gamma": 3},
    "tree": {"width": 2, "depth": 3, "budget": 3, "beam": 1},
    "staged": {"width": 2, "depth": 3, "budget": 3, "beam": 1, "ngram_fanout": (4, 2, 1)},
}
# In bf16 on a CPU with bf16 dot-product instructions (AVX512-BF16, AMX), a forward stays near its
# one-token cost for longer (measured: 1.2x at 8 tokens; fp32: 1.7x at 4), so bigger trees pay there.
CPU_BF16_DEFAULTS = {
    "speculative": {"gamma": 3},
    "tree": {"width": 2, "depth": 4, "budget": 6, "beam": 1},
    "staged": {"width": 2, "depth": 4, "budget": 6, "beam": 1, "ngram_fanout": (4, 2, 1)},
}


def defaults_for(method: str, device, dtype=None) -> dict:
    """The method's default settings on ``device`` in ``dtype`` (CPU defaults are smaller: see DEFAULTS' comment)."""
    s = dict(DEFAULTS[method])
    if getattr(device, "type", str(device)) == "cpu":
        sixteen_bit = DTYPES.get(dtype, dtype) in (torch.bfloat16, torch.float16)
        s.update((CPU_BF16_DEFAULTS if sixteen_bit else CPU_DEFAULTS).get(method, {}))
    return s


def make_drafter(ladder, method: str, **settings):
    """The drafter a method uses on a ladder: the draft model when there is one, else the n-gram stage."""
    unknown = set(settings) - set(DEFAULTS[method])
    if unknown:
        raise SddError(f"method {method!r} has no setting(s) {sorted(unknown)}; "
                       f"it takes {sorted(DEFAULTS[method])}")
    s = {**defaults_for(method, ladder.target.device, ladder.target.dtype), **settings}
    for flag in ("adaptive", "lookup"):
        if not isinstance(s[flag], bool):
            raise SddError(f"{flag} must be True or False, got {s[flag]!r}")
    for key in ("rule", "adaptive", "node_cost"):  # the verification rule and the schedule are not the drafter's
        s.pop(key)
    lookup = PromptLookup() if s.pop("lookup") else None
    vocab = ladder.target.config.vocab_size
    which = s.pop("draft")
    if which not in ("model", "features"):
        raise SddError(f"draft must be 'model' (the ladder's draft) or 'features' (its feature draft), got {which!r}")
    if which == "features":
        if ladder.feature_draft is None:
            raise SddError(f"ladder {ladder.ladder.name!r} has no feature draft; draft='features' needs one "
                           "(the embedded ladder's: python -m sdd_edu.train_feature_draft --help)")
        ladder = with_feature_draft(ladder)
    if ladder.draft is not None and reads_features(ladder.draft):
        if method == "staged":
            raise SddError(f"ladder {ladder.ladder.name!r} drafts with a feature draft, which reads its parent's "
                           "predicted feature at every level, so an n-gram cannot guess ahead of it in one forward; "
                           "use method 'tree' (lookup=True mixes prompt lookup in) or 'speculative'")
        if method == "speculative":
            gamma = s["gamma"]
            if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
                raise SddError(f"gamma (draft length) must be a positive integer, got {gamma!r}")
            return FeatureDrafter(ladder.draft, width=1, depth=gamma, budget=gamma, beam=1, rounds=gamma,
                                  lookup=lookup)
        return FeatureDrafter(ladder.draft, width=s["width"], depth=s["depth"], budget=s["budget"], beam=s["beam"],
                              lookup=lookup)
    if method == "speculative":
        gamma = s["gamma"]
        if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
            raise SddError(f"gamma (draft length) must be a positive integer, got {gamma!r}")
        if ladder.draft is None:
            return NgramDrafter(ladder.ngram, vocab, width=1, depth=gamma)
        return ModelDrafter(ladder.draft, width=1, depth=gamma, budget=gamma, beam=1, rounds=gamma, lookup=lookup)
    if method == "tree":
        if ladder.draft is None:
            return NgramDrafter(ladder.ngram, vocab, width=s["width"], depth=s["depth"], budget=s["budget"])
        return ModelDrafter(ladder.draft, width=s["width"], depth=s["depth"], budget=s["budget"], beam=s["beam"],
                            lookup=lookup)
    if ladder.draft is None:
        raise SddError(f"ladder {ladder.ladder.name!r} has no draft model, and staged decoding speculates a draft "
                       "model with the n-gram stage; use method 'tree' or 'speculative' (n-gram drafts) here")
    return ModelDrafter(ladder.draft, width=s["width"], depth=s["depth"], budget=s["budget"], beam=s["beam"],
                        rounds=s["rounds"], ngram=ladder.ngram, ngram_fanout=tuple(s["ngram_fanout"]), lookup=lookup)


def with_feature_draft(ladder):
    """A copy of ``ladder`` whose draft is its feature draft: what ``draft="features"`` drafts with."""
    ladder = copy.copy(ladder)
    ladder.draft = ladder.feature_draft
    return ladder


def reads_features(draft: LoadedModel) -> bool:
    """Whether ``draft`` is a feature draft (``sdd_edu.feature_draft``), drafting from the target's features."""
    return getattr(draft.model, "reads_features", False)


def make_schedule(target: LoadedModel, drafter, adaptive: bool = True, node_cost="measured",
                  fast: Optional[bool] = None, forward_ms: Optional[ForwardCosts] = None, **_):
    """The speculation schedule for ``drafter``: its configured size every step, or adaptive (up to twice it).
    ``fast``: whether the forwards run on the fast path (the largest graph then caps the size).
    ``node_cost="measured"`` prices the sizes by ``forward_ms``, this device's forward latencies on the path
    decoding takes, measured by the caller (``sdd_edu.generate`` hands in ``roofline.forward_latency_ms``)."""
    if not adaptive:
        return DraftSchedule(drafter.budget, drafter.budget, adaptive=False)
    max_size = 2 * drafter.budget
    if fast:  # a bigger tree than the largest graph (its new token + nodes) would run the slow eager forward
        max_size = max(drafter.budget, min(max_size, BUCKETS[-1] - 1))
    drafter.max_size = max_size  # the forwards_for() estimates below may look at sizes up to it
    if node_cost == "measured":  # measured before, then learnt from this generation's own steps
        if forward_ms is None:
            raise SddError("node_cost='measured' prices each size by this device's forward latencies: pass "
                           "forward_ms (sdd_edu.generate measures them), or a number for node_cost")
        return DraftSchedule(drafter.budget, max_size, measured_step_cost(target, drafter, max_size, forward_ms),
                             learn_times=True)
    return DraftSchedule(drafter.budget, max_size, linear_step_cost(node_cost))  # repeatable: no timing


def generate(ladder: Union[str, LoadedModel, "object"] = "embedded", prompt: Union[str, list[int]] = "",
             method: str = "baseline", max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             stream=None, stop_at_eos: bool = True, device=None, dtype=None, fast: Optional[bool] = None,
             plan: Optional[dict] = None, forward_ms: Optional[ForwardCosts] = None, **settings) -> GenerationResult:
    """Generate a continuation of ``prompt`` (text, a HumanEval id such as 'HumanEval/0', or token ids).

    ``ladder``: a ladder name (see ``sdd_edu.ladders.LADDERS``), a ``LoadedLadder``, or a loaded
    model (baseline only).  ``method``: one of METHODS; its settings (``gamma``; ``width``, ``depth``,
    ``budget``, ``beam``; ``rounds``, ``ngram_fanout``; the sampling ``rule``, 'rrs' or 'target';
    ``adaptive``, ``node_cost`` and ``lookup``, see DEFAULTS) are keywords, with defaults from
    ``defaults_for(method, device, dtype)``.  ``stream`` is called with each batch of new token ids.
    ``fast``: forwards of fixed shapes, replayed from CUDA graphs on a GPU (``sdd_edu/fast.py``); by
    default on for CUDA, off elsewhere (on a CPU it computes the same, with nothing to gain).

    What was measured on the device comes in as data: ``plan``, a tree plan (``sdd_edu.measure.tree_plan``)
    whose shape is the method's default shape (and the shape of ``budget="auto"``); ``forward_ms``, the
    forward latencies that price the adaptive schedule's sizes (``node_cost="measured"``, the default).
    ``sdd_edu.generate`` measures and files both, and hands them in.
    """
    if method not in METHODS:
        raise SddError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if isinstance(ladder, str):
        ladder = load_ladder(ladder, device=device, dtype=dtype)
    if isinstance(ladder, LoadedModel):
        target, loaded = ladder, None
    else:
        target, loaded = ladder.target, ladder
    if fast is None:
        fast = on_by_default(target.device)
    if not isinstance(fast, bool):
        raise SddError(f"fast must be True, False or None (on for CUDA), got {fast!r}")
    if isinstance(prompt, str):
        text = resolve_prompt(prompt)
        if not text.strip():
            raise SddError("the prompt is empty: give some text or a HumanEval id such as HumanEval/0")
        prompt_ids = target.encode(text)
    else:
        prompt_ids = [int(t) for t in prompt]
    if method == "baseline":
        if settings:
            raise SddError(f"method 'baseline' takes no settings {sorted(settings)}")
        if fast:  # the token stays on the device between reads (``device/loop.py``)
            return device_loop.baseline_decode(target, prompt_ids, max_new_tokens, sampling, stream, stop_at_eos)
        return baseline_decode(target, prompt_ids, max_new_tokens, sampling, stream, stop_at_eos)
    if loaded is None:
        raise SddError(f"method {method!r} needs a ladder (target + draft + n-gram), not a single model; "
                       "see sdd_edu.ladders.make_ladder")
    rule = settings.get("rule", "rrs")
    if rule not in RULES:
        raise SddError(f"unknown sampling rule {rule!r}; use one of {RULES}")
    settings = tree_shape(method, settings, plan)
    drafter = make_drafter(loaded, method, **settings)
    schedule = make_schedule(target, drafter, **{**defaults_for(method, target.device, target.dtype), **settings},
                             fast=fast, forward_ms=forward_ms)
    if isinstance(drafter, FeatureDrafter):  # the host's loop: the target's forwards (fast or not) return features
        return speculative_decode(target, drafter, prompt_ids, max_new_tokens, sampling, method, rule, stream,
                                  stop_at_eos, schedule=schedule, fast=fast)
    if fast and isinstance(drafter, ModelDrafter):  # the whole step on the device, one read per step
        return device_loop.speculative_decode(target, drafter, prompt_ids, max_new_tokens, sampling, method, rule,
                                              stream, stop_at_eos, schedule=schedule)
    return speculative_decode(target, drafter, prompt_ids, max_new_tokens, sampling, method, rule, stream,
                              stop_at_eos, schedule=schedule, fast=fast)


SHAPE_KEYS = {"speculative": ("gamma",), "tree": ("width", "depth", "budget"), "staged": ("width", "depth", "budget")}


def asks_for_a_plan(method: str, settings: dict) -> bool:
    """Whether ``settings`` ask for the shape planned for this device (``budget="auto"``; ``gamma="auto"`` for
    a chain), checked: "auto" stands for the method's last shape key, alone."""
    keys = SHAPE_KEYS.get(method, ())
    given = {k: settings[k] for k in ("gamma", "width", "depth", "budget") if k in settings}
    auto = [k for k, v in given.items() if isinstance(v, str)]
    if not auto:
        return False
    if not keys or any(given[k] != "auto" for k in auto) or set(auto) != {keys[-1]} or len(given) > 1:
        raise SddError(f"{method} chooses its shape with {keys[-1] if keys else 'budget'}='auto' alone (no other "
                       f"{'/'.join(keys)} beside it), got {given}")
    return True


def tree_shape(method: str, settings: dict, plan: Optional[dict]) -> dict:
    """The settings with the shape ``plan`` gives: for ``budget="auto"`` (``gamma="auto"``), or as the default
    when no shape is given.  Without a plan the constants of ``defaults_for`` are the defaults."""
    keys = ("gamma", "width", "depth", "budget")
    if asks_for_a_plan(method, settings):
        if plan is None:
            raise SddError(f"{SHAPE_KEYS[method][-1]}='auto' needs the tree planned for this device: call "
                           "sdd_edu.generate, which measures and files it, or pass plan=")
        return {**{k: v for k, v in settings.items() if k not in keys}, **_plan_shape(plan, method)}
    if plan is not None and not any(k in settings for k in keys):
        return {**_plan_shape(plan, method), **settings}
    return settings


def _plan_shape(plan: dict, method: str) -> dict:
    if plan.get("method") != method:
        raise SddError(f"a tree plan for {plan.get('method')!r} cannot shape {method!r}")
    return dict(plan["shape"])


__all__ = ["generate", "make_drafter", "make_schedule", "tree_shape", "asks_for_a_plan", "SHAPE_KEYS", "defaults_for", "DEFAULTS", "CPU_DEFAULTS", "CPU_BF16_DEFAULTS", "METHODS", "ORIGINS", "GenerationResult", "GenerationStats",
           "trace_summary", "baseline_decode", "prefill", "decode_one_token"]
