"""Robust summaries of heavy-tailed per-prompt losses, and ties between them.

A deep LSA and L steps of GD++ are polynomials of high degree in the prompt: their per-prompt
loss is heavy-tailed, so a mean alone can be decided by one prompt. :func:`summarize` reports
the mean with a percentile-bootstrap interval, the median, the 99.9 % quantile and the number
of prompts whose loss exceeds 1; :func:`tie` calls two means tied when their intervals
overlap.
"""

import torch

#: bootstrap resamples of :func:`summarize`
RESAMPLES = 200
#: the bootstrap interval's coverage
LEVEL = 0.95


def summarize(losses: torch.Tensor, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """``{"count", "mean", "mean_low", "mean_high", "median", "q999", "above_1"}`` of the
    per-prompt ``losses`` (float64): ``[mean_low, mean_high]`` is the central ``LEVEL``
    percentile interval of the means of ``resamples`` resamples drawn with replacement (from a
    generator seeded with ``seed``); ``q999`` the 99.9 % quantile; ``above_1`` the number of
    losses > 1. A non-finite loss makes the mean and its interval ``inf``."""
    losses = losses.detach().double().reshape(-1).cpu()
    count = len(losses)
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    for k in range(resamples):
        means[k] = losses[torch.randint(count, (count,), generator=generator)].mean()
    low, high = torch.quantile(means, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2]).double())
    sorted_losses = losses.sort().values
    return {
        "count": count,
        "mean": float(losses.mean()),
        "mean_low": float(low),
        "mean_high": float(high),
        "median": float(_quantile(sorted_losses, 0.5)),
        "q999": float(_quantile(sorted_losses, 0.999)),
        "above_1": int((losses > 1).sum()),
    }


def _quantile(sorted_values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile by linear interpolation (``torch.quantile``'s rule, any length)."""
    position = q * (len(sorted_values) - 1)
    below = int(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] + fraction * (sorted_values[above] - sorted_values[below])


def tie(a: dict, b: dict) -> bool:
    """Whether the bootstrap intervals of two :func:`summarize` results overlap."""
    return a["mean_low"] <= b["mean_high"] and b["mean_low"] <= a["mean_high"]


def compare(a: dict, b: dict) -> str:
    """``"tie"`` (:func:`tie`), ``"lower"`` or ``"higher"``: ``a``'s mean against ``b``'s."""
    if tie(a, b):
        return "tie"
    return "lower" if a["mean"] < b["mean"] else "higher"
