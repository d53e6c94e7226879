"""theory/robust_stats.py on a known heavy-tailed sample: Pareto losses with shape 3 and scale
1/2 (mean 3/4, median 2^(1/3)/2, 99.9 % quantile 5, P(loss > 1) = 1/8)."""

import math

import pytest
import torch

from icl_lightning.theory.robust_stats import compare, summarize, tie

SHAPE, SCALE = 3.0, 0.5


def pareto(count: int, seed: int) -> torch.Tensor:
    """Inverse-CDF draws: ``SCALE (1 - U)^(-1 / SHAPE)``."""
    u = torch.rand(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return SCALE * (1 - u) ** (-1 / SHAPE)


def test_the_summary_recovers_a_pareto_samples_known_values():
    losses = pareto(200_000, seed=0)
    s = summarize(losses, resamples=100)
    assert s["count"] == 200_000 and s["mean"] == pytest.approx(float(losses.mean()), rel=1e-12)
    assert s["mean_low"] < SHAPE * SCALE / (SHAPE - 1) < s["mean_high"]  # the true mean 0.75
    assert s["mean_high"] - s["mean_low"] < 0.02
    assert s["median"] == pytest.approx(SCALE * 2 ** (1 / SHAPE), rel=0.01)
    assert s["q999"] == pytest.approx(SCALE * 1000 ** (1 / SHAPE), rel=0.05)
    assert s["median"] == pytest.approx(float(torch.quantile(losses, 0.5)), rel=1e-12)
    assert s["above_1"] == int((losses > 1).sum())
    assert s["above_1"] / 200_000 == pytest.approx(SCALE**SHAPE, rel=0.03)


def test_one_huge_loss_moves_the_mean_and_its_interval_not_the_median():
    losses = pareto(20_000, seed=1)
    spoiled = losses.clone()
    spoiled[0] = 1e12
    clean, bad = summarize(losses, resamples=100), summarize(spoiled, resamples=100)
    assert bad["mean"] > 1e7 and bad["mean_high"] > 1e7
    assert bad["median"] == pytest.approx(clean["median"], rel=1e-3)
    assert bad["above_1"] == clean["above_1"] + (losses[0] <= 1)
    infinite = spoiled.clone()
    infinite[1] = math.inf
    assert summarize(infinite, resamples=20)["mean"] == math.inf


def test_overlapping_intervals_are_ties_and_separate_ones_are_not():
    a, b = summarize(pareto(50_000, 2), resamples=100), summarize(pareto(50_000, 3), resamples=100)
    assert tie(a, b) and compare(a, b) == "tie"  # two draws of one distribution
    lower = summarize(0.5 * pareto(50_000, 4), resamples=100)
    assert not tie(lower, a) and compare(lower, a) == "lower" and compare(a, lower) == "higher"
