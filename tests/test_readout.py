"""The R^2 read-out (theory/readout.py) against a least-squares fit written out here, float64."""

import torch

from icl_lightning.theory.readout import readout_r2, readout_sums

TOL = 1e-10


def reference_r2(states: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - |y - Z beta|^2 / |y - mean y|^2`` with ``beta`` from ``torch.linalg.lstsq``."""
    z = torch.cat([states, torch.ones(states.shape[0], 1, dtype=states.dtype)], dim=1)
    beta = torch.linalg.lstsq(z, target[:, None]).solution[:, 0]
    residual = ((target - z @ beta) ** 2).sum()
    return 1 - residual / ((target - target.mean()) ** 2).sum()


def test_r2_from_moment_sums_is_the_least_squares_r2():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = h @ torch.randn(6, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        300, generator=g, dtype=torch.float64
    )
    expected = reference_r2(h, y)
    assert 0.2 < expected < 0.99  # neither trivial nor perfect
    assert (readout_r2(readout_sums(h, y)) - expected).abs() < TOL


def test_sums_add_up_over_chunks():
    """Sums of two halves (two processes, or two batches) give the R^2 of the whole."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    y = h.sum(-1) + torch.randn(2, 50, generator=g, dtype=torch.float64)
    halves = [readout_sums(h[i], y[i]) for i in range(2)]
    summed = {k: halves[0][k] + halves[1][k] for k in halves[0]}
    expected = reference_r2(h.reshape(-1, 4), y.reshape(-1))
    assert (readout_r2(summed) - expected).abs() < TOL


def test_singular_moments_from_a_dead_unit_still_fit():
    """A constant-zero state (a singular ``Z^T Z``, e.g. a dead unit) gives the R^2 of the
    other columns."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = h[:, 0] - h[:, 2] + torch.randn(200, generator=g, dtype=torch.float64)
    dead = torch.cat([h, torch.zeros_like(h[:, :1])], dim=1)
    assert (readout_r2(readout_sums(dead, y)) - reference_r2(h, y)).abs() < TOL
