"""GD++ with per-step (eta_l, gamma_l): its two forms agree, and training beats the shared pair."""

import pytest
import torch
from references import naive_gd_plus_plus
from test_theory_gd import TOL, mean_loss, tasks

from icl_lightning.theory import (
    gd_plus_plus_predict,
    optimal_eta_gamma,
    spectral_form,
    spectral_predict,
)
from icl_lightning.theory.gd_plus_plus_training import per_layer_eta_gamma


def spectral_per_step(cx, cy, qx, etas, gammas):
    """Per-step GD++ in the eigenbasis of X^T X (an independent form of the same update)."""
    lam, q, s = spectral_form(cx, cy, qx)
    eta = torch.tensor([etas], dtype=torch.float64)
    gamma = torch.tensor([gammas], dtype=torch.float64)
    return spectral_predict(lam, q, s, eta, gamma, len(etas), cx.shape[1])[0]


@pytest.mark.parametrize("L", [2, 3])
def test_per_step_gd_plus_plus_has_two_agreeing_forms(L):
    """The token-update form and the spectral form of GD++ agree with per-step sizes, and a
    repeated size equals the shared scalar (and the naive reference of paper A's update)."""
    cx, cy, qx, _ = tasks(N=12, d=5)
    etas, gammas = [0.9, 1.4, 0.6][:L], [0.02, 0.0, 0.05][:L]
    direct = gd_plus_plus_predict(cx, cy, qx, etas, gammas, L)
    torch.testing.assert_close(direct, spectral_per_step(cx, cy, qx, etas, gammas), **TOL)
    shared = gd_plus_plus_predict(cx, cy, qx, [0.9] * L, [0.03] * L, L)
    torch.testing.assert_close(shared, naive_gd_plus_plus(cx, cy, qx, 0.9, 0.03, L), **TOL)


def test_wrong_number_of_step_sizes_is_a_clear_error():
    cx, cy, qx, _ = tasks(num=4)
    with pytest.raises(ValueError, match="one number or 3 numbers"):
        gd_plus_plus_predict(cx, cy, qx, [0.9, 1.0], 0.0, 3)


@pytest.mark.parametrize("L", [2, 3])
def test_trained_per_layer_sizes_beat_the_shared_pair(L):
    """On the tuning prompts, trained (eta_l, gamma_l) lose less than the best shared pair, and
    they keep that advantage on fresh prompts of the same distribution (with as many tuning
    prompts as GDAlignment uses: with a few thousand, L = 3 overfits the heavy tail)."""
    tuning, fresh = tasks(num=10_000, seed=1), tasks(num=10_000, seed=2)  # StepSizes' default
    eta, gamma = optimal_eta_gamma(*tuning, num_steps=L)
    etas, gammas = per_layer_eta_gamma(*tuning, num_steps=L)
    assert len(etas) == len(gammas) == L
    for cx, cy, qx, qy in (tuning, fresh):
        shared = mean_loss(gd_plus_plus_predict(cx, cy, qx, eta, gamma, L), qy)
        trained = mean_loss(gd_plus_plus_predict(cx, cy, qx, etas, gammas, L), qy)
        assert trained < shared


def test_one_step_is_the_closed_form():
    tuning = tasks(num=512)
    etas, gammas = per_layer_eta_gamma(*tuning, num_steps=1)
    assert (etas[0], gammas[0]) == optimal_eta_gamma(*tuning, num_steps=1)
