"""Turning logits into the next token: greedy, temperature, top-k and top-p.

Every decoder uses the same two functions, so "the distribution baseline samples from"
is one well-defined thing that the speculative decoders must reproduce exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import SddError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self):
        t = self.temperature
        if not isinstance(t, (int, float)) or math.isnan(t) or t < 0 or math.isinf(t):
            raise SddError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise SddError(f"top-k must be a positive integer (or unset), got {self.top_k!r}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise SddError(f"top-p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        g = torch.Generator()  # on the CPU, so a seed gives the same draws on every device
        if self.seed is not None:
            g.manual_seed(int(self.seed))
        else:
            g.seed()
        return g


def probabilities(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The distribution to sample from, (..., V) float32: temperature, then top-k, then top-p."""
    logits = logits.float()
    if s.greedy:  # a one-hot on the argmax: greedy is sampling from this
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / s.temperature
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p is not None and s.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= s.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token from a (V,) distribution."""
    return int(torch.multinomial(probs.float().cpu(), 1, generator=generator))


def next_token(logits: torch.Tensor, s: Sampling, generator: Optional[torch.Generator]) -> int:
    """Greedy argmax, or a draw from ``probabilities``, for (V,) logits."""
    if s.greedy:
        return int(logits.argmax())
    return sample(probabilities(logits, s), generator)
