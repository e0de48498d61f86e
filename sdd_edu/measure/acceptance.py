"""Acceptance: how many draft tokens the target keeps per step, measured and expected.

With a per-token acceptance rate ``alpha`` (independent tokens, the usual simplification),
a chain of ``gamma`` draft tokens yields on average

    E[tokens per target forward] = (1 - alpha^(gamma + 1)) / (1 - alpha)

(Leviathan et al. 2022): the accepted prefix plus the one token the target adds itself.
``acceptance_records`` turns generation traces into the measured counterpart.
"""

from __future__ import annotations

from ..decoding.common import trace_summary


def expected_tokens_per_forward(alpha: float, gamma: int) -> float:
    """Expected tokens emitted by one verification of a ``gamma``-token chain at acceptance rate ``alpha``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def acceptance_records(results) -> dict:
    """Pool the traces of several generations: histogram of accepted lengths, acceptance rate, tokens per step."""
    trace = [step for r in results for step in r.trace]
    if not trace:
        return {"steps": 0, "histogram": [], "acceptance_rate": None, "tokens_per_forward": None,
                "accepted_histogram": {}}
    summary = trace_summary(trace)
    steps = summary["steps"]
    longest = max(summary["accepted_histogram"])
    histogram = [{"accepted": n, "steps": summary["accepted_histogram"].get(n, 0),
                  "fraction": summary["accepted_histogram"].get(n, 0) / steps} for n in range(longest + 1)]
    return {"steps": steps, "histogram": histogram, "acceptance_rate": summary["acceptance_rate"],
            "tokens_per_forward": summary["tokens_per_step"], "accepted_histogram": summary["accepted_histogram"],
            "mean_depth": sum(s.get("depth", 0) for s in trace) / steps,
            "mean_tree_size": sum(s.get("proposed", 0) for s in trace) / steps}
