"""How much to speculate next step: the draft size follows the recent acceptance.

A drafted node pays off only if the target accepts it often enough to cover its cost.  With a
per-level acceptance ``a`` (the fraction of tested tree levels accepted), a draft of ``s`` nodes
yields on average about 1 + a + ... + a^s tokens per target forward (exactly so for a chain:
Leviathan et al. 2022).  What a step of ``s`` nodes costs is measured: before anything is seen,
from the target's and the draft's forward latencies on this device (``forward_latency_ms``: on a
CPU the target's forward grows with every token, on a GPU it stays flat for dozens); then from the
steps of this very generation, timed whole (draft, target, bookkeeping), which also catches what
an isolated measurement misses.  Each step the schedule picks the size with the most expected
tokens per second, given the acceptance seen over the last few steps.

* The first three steps use the configured size (two, if neither accepts anything); from then on
  the measured acceptance and times decide.  Before that, the draft reads the prompt (the forward its
  first draft would run anyway): if its first choice was the prompt's next token at fewer than
  ``PROMPT_FLOOR`` of the positions (prose or Japanese for a draft trained on code), there is no burn-in
  and speculation starts off, to come back when shadow drafts land.
* Speculation stays on, at the configured size, while that size is expected to beat a baseline
  step.  Sizes in between are not tried: the configured size is the one chosen for the device,
  and on a CPU a forward over 2 tokens can cost as much as one over 4.
* Drafts that land make ``a`` climb and the tree grow, up to twice its configured size, when a
  bigger tree clearly pays (as ``transformers``' assisted generation grows its draft after a fully
  accepted step).
* Drafts that miss turn speculation off: size 0, a plain baseline step with no draft forward.
  Nothing is tested then, so after 1, 2, 4, ... 32 such steps (the wait doubles unless a draft
  lands and brings speculation within reach; it starts at 8 when the prompt turned speculation
  off) the drafter drafts in the shadow: one draft forward, nothing added to the target's
  forward, and its first token compared with the target's.  A shadow draft costs a draft forward
  (a few percent of a step), where a real probe would also make the target's forward bigger.
  Prompt lookup's guess is free, so a staged drafter checks it at every baseline step, and a guess
  that would have landed calls the shadow draft at once.

Exactness never depends on the schedule: each step's size is fixed before that step draws
anything, from what earlier steps accepted, and every verification rule is exact for any tree.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Callable, Optional

from ..errors import SddError

MAX_IDLE_WAIT = 32  # longest run of baseline steps between shadow drafts
PROMPT_OFF_WAIT = 8  # the first wait when the prompt turned speculation off (no sign yet that drafts land)


def expected_tokens(acceptance: float, size: int) -> float:
    """1 + a + a^2 + ... + a^size: tokens per target forward for a chain of ``size`` with i.i.d. acceptance a."""
    if acceptance >= 1.0:
        return size + 1.0
    return (1.0 - acceptance ** (size + 1)) / (1.0 - acceptance)  # the geometric sum, in one expression


class DraftSchedule:
    """The draft size for the next step (``size()``), updated from each verification (``record``).

    ``step_cost(size)``: the expected time of a step that drafts ``size`` nodes, in units of a
    baseline step.  ``learn_times``: replace it, size by size, by the step times this generation
    measures (a prior cost is then only a starting point).  ``adaptive=False`` keeps the configured
    size every step (the paper's fixed tree).  ``decay`` weights past steps (0.9: the last ten or so
    count); ``prior`` is the acceptance assumed before anything was tested, worth one tested level.
    """

    TIMES_KEPT = 8  # recent step times per size; their median is the size's cost
    BURN_IN = 3  # steps at the configured size first (two, if they accept nothing): an acceptance and a time
    GROWTH_MARGIN = 1.05  # grow past the configured size only for a clear gain (step times are noisy)
    OFF_MARGIN = 0.9  # stop speculating only for a clear loss
    PROMPT_FLOOR = 0.15  # below this agreement with the prompt, start with speculation off
    PROMPT_WEIGHT = 2.0  # tested levels the prompt's agreement then counts for

    def __init__(self, configured: int, max_size: int, step_cost: Callable[[int], float] = lambda s: 1.0,
                 adaptive: bool = True, learn_times: bool = False, decay: float = 0.9, prior: float = 0.5):
        self.configured, self.max_size, self.step_cost = configured, max_size, step_cost
        self.adaptive, self.learn_times, self.decay, self.prior = adaptive, learn_times, decay, prior
        self.accepted = 0.0  # decayed sums over recent steps
        self.tested = 0.0
        self.idle = 0  # baseline steps since the last draft
        self.wait = 1  # baseline steps before the next shadow draft
        self.times: dict[int, deque] = {}  # size -> recent step seconds
        self.steps = 0
        self.last_size = configured  # the size of the last step (0: speculation is off)
        self.prompt_agreement: Optional[float] = None

    @property
    def acceptance(self) -> float:
        """Recent per-level acceptance, with the prior counted as one tested level."""
        return (self.accepted + self.prior) / (self.tested + 1.0)

    def gain(self, size: int, acceptance: Optional[float] = None, seen: Optional[dict] = None) -> float:
        """Expected tokens per unit of time at ``size`` (1.0 for a baseline step)."""
        a = self.acceptance if acceptance is None else acceptance
        return expected_tokens(a, size) / self.cost(size, seen)

    def measured_costs(self) -> dict[int, float]:
        """The median step time of every size with at least two timed steps."""
        return {s: statistics.median(t) for s, t in self.times.items() if len(t) >= 2}

    def cost(self, size: int, seen: Optional[dict] = None) -> float:
        """Expected time of a step of ``size``: its own measured median once it has two steps, else
        the prior cost scaled as the nearest measured size compares with its prior.  ``seen``:
        ``measured_costs()``, when the caller prices many sizes at once."""
        seen = self.measured_costs() if seen is None else seen
        if size in seen:
            return seen[size]
        if not seen:
            return self.step_cost(size)
        near = min(seen, key=lambda s: (abs(s - size), -s))
        return self.step_cost(size) * seen[near] / self.step_cost(near)

    def best_size(self) -> int:
        """0, the configured size, or a bigger one that clearly beats it (by ``GROWTH_MARGIN``).

        Speculation that is on stays on until the configured size is clearly worse than a baseline
        step (``OFF_MARGIN``): acceptance comes in bursts, and a dip costs less than the way back."""
        seen = self.measured_costs()  # once per step: a GPU step of a big tree is a few milliseconds
        configured = self.gain(self.configured, seen=seen)
        if configured < self.gain(0, seen=seen) * (self.OFF_MARGIN if self.last_size else 1.0):
            return 0
        gains = {s: self.gain(s, seen=seen) for s in range(self.configured + 1, self.max_size + 1)}
        grown = [s for s, g in gains.items() if g > self.GROWTH_MARGIN * configured]
        return max(grown, key=gains.get, default=self.configured)

    def size(self) -> int:
        if not self.adaptive:
            return self.configured
        # first trust the configuration, and time it, unless its first two drafts both land nothing
        if self.burning_in():
            return self.configured
        return self.best_size()

    def burning_in(self) -> bool:
        if self.prompt_agreement is not None and self.prompt_agreement < self.PROMPT_FLOOR:
            return False  # the draft could not even predict the prompt
        return self.steps < 2 and self.accepted == 0 or self.steps < self.BURN_IN and self.accepted > 0

    def record_prompt(self, agreement: Optional[float]) -> None:
        """How often the drafter's first choice was the prompt's next token (None: not known).  Low, it
        counts as ``PROMPT_WEIGHT`` tested levels and the burn-in is skipped; otherwise it is only kept."""
        self.prompt_agreement = agreement
        if agreement is not None and agreement < self.PROMPT_FLOOR:
            self.observe(self.PROMPT_WEIGHT * agreement, self.PROMPT_WEIGHT)
            # a shadow draft costs more than its own forward (it also slows the target's next ones: measured
            # about 2.4 ms a step on this CPU with one every few steps), so start probing slowly
            self.wait = PROMPT_OFF_WAIT

    def shadow_due(self) -> bool:
        """At size 0: time to draft without verifying, to see whether drafts would land again."""
        return self.adaptive and self.idle >= self.wait

    def record(self, size: int, accepted: int, tested: int, seconds: Optional[float] = None) -> None:
        """What the step of ``size`` nodes got: ``accepted`` of ``tested`` tree levels, in ``seconds``."""
        self.steps += 1
        self.last_size = size
        if self.learn_times and seconds is not None and self.steps > 1:  # step 1 also fills the draft's cache
            self.times.setdefault(size, deque(maxlen=self.TIMES_KEPT)).append(seconds)
        if size == 0:
            self.idle += 1
        elif tested:  # (a drafter may find nothing to propose: then nothing was learnt)
            self.observe(accepted, tested)

    def observe(self, accepted: float, tested: float) -> None:
        self.accepted = self.decay * self.accepted + accepted
        self.tested = self.decay * self.tested + tested

    def record_free_guess(self, landed: bool) -> None:
        """At size 0, a guess that cost nothing (prompt lookup) would have been right: shadow-draft now."""
        if landed:
            self.wait = min(self.wait, self.idle)

    def record_shadow(self, landed: bool) -> None:
        """A baseline step's shadow draft (not verified): would its first token have been the target's?

        The next one comes at once only if this one landed and speculation is now within reach (inside
        the ``OFF_MARGIN`` band below a baseline step); drafts that land now and then, too rarely to pay,
        would otherwise call a shadow draft every other step and cost more than they tell."""
        self.observe(float(landed), 1.0)
        within_reach = self.gain(self.configured) >= self.OFF_MARGIN * self.gain(0)
        self.wait = 1 if landed and within_reach else min(2 * self.wait, MAX_IDLE_WAIT)
        self.idle = 0


# What a forward over 0 .. n new tokens costs a model, in ms (index n): measured by the caller on this device
# and handed in (``sdd_edu.measure.roofline.forward_latency_ms``), so that decoding never imports the measuring.
ForwardCosts = Callable[["object", int], list]


def measured_step_cost(target, drafter, max_size: int, forward_ms: ForwardCosts) -> Callable[[int], float]:
    """``step_cost`` from the forward latencies of the target and the draft that ``forward_ms`` gives."""
    target_ms = forward_ms(target, 1 + max_size)
    draft = getattr(drafter, "draft", None)
    draft_ms = forward_ms(draft, 1 + max_size) if draft is not None else None

    def cost(size: int) -> float:
        ms = target_ms[1 + size]
        if size and draft_ms is not None:  # a draft forward covers about a tree's worth of tokens
            ms += drafter.forwards_for(size) * draft_ms[1 + size]
        return ms / target_ms[1]

    return cost


def linear_step_cost(node_cost: float) -> Callable[[int], float]:
    """``step_cost`` when each node costs ``node_cost`` of a one-token forward, draft forwards included."""
    if not isinstance(node_cost, (int, float)) or isinstance(node_cost, bool) or not 0 <= node_cost < 10:
        raise SddError(f"node_cost must be 'measured' or a number in [0, 10) (the cost of one more drafted "
                       f"node relative to a one-token target forward), got {node_cost!r}")
    return lambda size: 1.0 + node_cost * size
