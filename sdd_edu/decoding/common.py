"""What every decoder shares: input checks, timing, statistics and the result record."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from ..errors import SddError

# where an emitted token came from: the paper's Figure 3 stages (target, draft, n-gram), and prompt lookup,
# which copies from the context
ORIGINS = ("target", "draft", "ngram", "lookup")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class GenerationStats:
    method: str
    device: str
    dtype: str
    threads: int
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0  # decoding forwards of the target, prefill not included
    draft_forwards: int = 0
    wall_seconds: float = 0.0  # prefill + decoding
    prefill_seconds: float = 0.0
    target_seconds: float = 0.0  # time inside target forwards (prefill included)
    draft_seconds: float = 0.0
    ngram_seconds: float = 0.0
    finish_reason: str = ""
    # the device path: reads of the device by the host while decoding (prefill aside), and the seconds it
    # waited in them (on a GPU the host runs ahead until it reads: the rest of a step is its own time)
    device_reads: int = 0
    read_wait_seconds: float = 0.0
    graph_replays: int = 0  # steps replayed from CUDA graphs (``device/graphs.py``)
    graph_failure: Optional[str] = None  # why the phases could not be recorded on this device, if so

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        dt = self.wall_seconds - self.prefill_seconds
        return self.new_tokens / dt if dt > 0 else 0.0

    @property
    def ms_per_target_forward(self) -> float:
        n = self.target_forwards + 1  # + prefill
        return 1000 * self.target_seconds / n if n else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.wall_seconds - self.target_seconds - self.draft_seconds - self.ngram_seconds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_second=self.tokens_per_second, decode_tokens_per_second=self.decode_tokens_per_second,
                 ms_per_target_forward=self.ms_per_target_forward,
                 tokens_per_target_forward=self.tokens_per_target_forward, overhead_seconds=self.overhead_seconds)
        return d

    def summary(self) -> str:
        return (f"{self.new_tokens} tokens in {self.wall_seconds:.2f} s = {self.tokens_per_second:.1f} tok/s "
                f"({self.method}, {self.device}, {self.dtype}, {self.threads} threads; "
                f"{self.target_forwards} target forwards, {self.ms_per_target_forward:.1f} ms each, "
                f"{self.tokens_per_target_forward:.2f} tokens per target forward; finished by {self.finish_reason})")


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    origins: list[str]
    stats: GenerationStats
    trace: list[dict] = field(default_factory=list)

    def to_dict(self, with_trace: bool = False) -> dict:
        d = {"text": self.text, "token_ids": self.token_ids, "origins": self.origins,
             "stats": self.stats.to_dict(), "trace_summary": trace_summary(self.trace)}
        if with_trace:
            d["trace"] = self.trace
        return d


def trace_summary(trace: list[dict]) -> dict:
    """Steps, and the histogram of tokens accepted per step (gpt-fast prints this beside tokens/s)."""
    hist: dict[int, int] = {}
    for step in trace:
        n = step.get("accepted", 0)
        hist[n] = hist.get(n, 0) + 1
    proposed = sum(step.get("proposed", 0) for step in trace)
    accepted = sum(step.get("accepted", 0) for step in trace)
    tested = sum(step.get("tested", 0) for step in trace)
    emitted = sum(step.get("emitted", 0) for step in trace)
    # acceptance rate: of the draft tokens the walk tested, the fraction accepted (the paper's alpha)
    return {"steps": len(trace), "accepted_histogram": dict(sorted(hist.items())),
            "proposed": proposed, "accepted": accepted, "tested": tested,
            "acceptance_rate": accepted / tested if tested else None,
            "tokens_per_step": emitted / len(trace) if trace else None}


class Timer:
    """Accumulates device-synchronised seconds into named fields of a stats record."""

    def __init__(self, stats: GenerationStats, device: torch.device):
        self.stats, self.device = stats, device

    @contextmanager
    def __call__(self, name: str):
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            setattr(self.stats, name, getattr(self.stats, name) + time.perf_counter() - t0)


def check_lengths(prompt_ids, max_new_tokens: int, context: int, extra: int = 0) -> None:
    """Clear errors for empty prompts, non-positive lengths and prompts that do not fit the context."""
    if len(prompt_ids) == 0:
        raise SddError("the prompt is empty: give at least one token of text")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise SddError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if len(prompt_ids) >= context:
        raise SddError(f"the prompt has {len(prompt_ids)} tokens, longer than the model's context of {context}")
    if len(prompt_ids) + max_new_tokens + extra > context:
        raise SddError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens})"
                       + (f" + {extra} slots for speculation" if extra else "")
                       + f" exceeds the model's context of {context} tokens; ask for at most "
                       f"{context - len(prompt_ids) - extra} new tokens")


StreamCallback = Optional[Callable[[list[int]], None]]
