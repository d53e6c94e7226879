"""Exactness of paper A's GD learners, LSA constructions and eta search (float64, random tasks)."""

from functools import partial

import pytest
import torch
from references import finite_difference_sensitivities, naive_gd_plus_plus, naive_gd_predict

from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import LSA
from icl_lightning.theory import (
    best_eta,
    gd_loss_polynomial,
    gd_lsa_layer,
    gd_lsa_layers,
    gd_plus_plus_lsa_layer,
    gd_plus_plus_predict,
    gd_plus_plus_weights,
    gd_predict,
    gd_weights,
    interpolate_lsa_layer,
    linear_kernel,
    one_step_gd,
    one_step_sums,
    optimal_eta,
    optimal_eta_gamma,
    prediction_loss,
    sensitivities,
    spectral_form,
    spectral_predict,
)

F64 = torch.float64
TOL = dict(rtol=0, atol=1e-10)


def tasks(num=64, N=10, d=10, seed=0, **task_args):
    task = LinearRegression(input_dim=d, **task_args)
    batch = task.sample(num, N, seeded_generator("cpu", seed), dtype=F64)
    return batch.context_x, batch.context_y, batch.query_x, batch.query_y


def mean_loss(pred, target):
    return float(prediction_loss(pred, target).mean())


def test_gd_weights_follow_the_gradient_of_the_context_loss():
    cx, cy, _, _ = tasks(num=8, N=7, d=5, seed=1)
    w0 = torch.randn(8, 5, dtype=F64)
    eta, steps = 0.7, 4
    w = w0.clone().requires_grad_(True)
    for _ in range(steps):  # the definition, by autograd: w <- w - eta grad L(w)
        loss = (0.5 * (torch.einsum("bnd,bd->bn", cx, w) - cy) ** 2).mean(-1).sum()
        (g,) = torch.autograd.grad(loss, w)
        w = (w - eta * g).detach().requires_grad_(True)
    torch.testing.assert_close(gd_weights(cx, cy, eta, steps, w0), w.detach(), **TOL)


def test_one_lsa_layer_is_one_gd_step():
    cx, cy, qx, _ = tasks(seed=2)
    eta = 3.7
    one_step = (eta / 10) * torch.einsum("bn,bnd,bd->b", cy, cx, qx)  # paper A's formula
    torch.testing.assert_close(gd_predict(cx, cy, qx, eta), one_step, **TOL)
    torch.testing.assert_close(one_step_gd(linear_kernel(cx, qx), cy, eta), one_step, **TOL)
    lsa = LSA.from_weights([gd_lsa_layer(10, 10, eta)])
    torch.testing.assert_close(lsa(cx, cy, qx), one_step, **TOL)


@pytest.mark.parametrize("L", [2, 3, 5])
@pytest.mark.parametrize("recurrent", [False, True])
def test_L_lsa_layers_are_L_gd_steps(L, recurrent):
    cx, cy, qx, _ = tasks(d=6, N=12, seed=L)
    eta = 5.3
    layers = gd_lsa_layers(6, 12, eta, 1 if recurrent else L)
    lsa = LSA.from_weights(layers, num_layers=L, recurrent=recurrent)
    expected = naive_gd_predict(cx, cy, qx, eta, L)
    torch.testing.assert_close(gd_predict(cx, cy, qx, eta, L), expected, **TOL)
    torch.testing.assert_close(lsa(cx, cy, qx), expected, **TOL)


@pytest.mark.parametrize("L", [1, 2, 4])
def test_gd_plus_plus_and_its_construction_follow_the_papers_token_update(L):
    cx, cy, qx, _ = tasks(num=16, d=5, N=9, seed=10 + L)
    eta, gamma = 4.1, 0.09
    expected = naive_gd_plus_plus(cx, cy, qx, eta, gamma, L)
    torch.testing.assert_close(gd_plus_plus_predict(cx, cy, qx, eta, gamma, L), expected, **TOL)
    lsa = LSA.from_weights([gd_plus_plus_lsa_layer(5, 9, eta, gamma) for _ in range(L)])
    torch.testing.assert_close(lsa(cx, cy, qx), expected, **TOL)
    # the input transformation really acts from the second step on
    assert L == 1 or (expected - naive_gd_predict(cx, cy, qx, eta, L)).abs().max() > 1e-4


@pytest.mark.parametrize("L", [1, 2, 3])
def test_gd_and_gd_plus_plus_weights_are_their_sensitivities(L):
    """Both learners are linear in the query: ``pred = <w, x_q>`` and ``d pred/d x_q = w``
    (what GDAlignment uses instead of differentiating them). Against the naive token update,
    by central differences (exact for a linear function, so h = 1), and against autograd with
    one step size pair per step."""
    cx, cy, qx, _ = tasks(num=8, d=5, N=9, seed=20 + L)
    w = gd_plus_plus_weights(cx, cy, 3.9, 0.07, L)
    naive = partial(naive_gd_plus_plus, eta=3.9, gamma=0.07, num_steps=L)
    torch.testing.assert_close(w, finite_difference_sensitivities(naive, cx, cy, qx, h=1.0), **TOL)
    torch.testing.assert_close((w * qx).sum(-1), naive(cx, cy, qx), **TOL)
    etas, gammas = [3.9, 4.4, 2.0][:L], [0.05, 0.11, 0.02][:L]
    per_step = partial(gd_plus_plus_predict, eta=etas, gamma=gammas, num_steps=L)
    torch.testing.assert_close(
        gd_plus_plus_weights(cx, cy, etas, gammas, L), sensitivities(per_step, cx, cy, qx), **TOL
    )
    gd = partial(gd_predict, eta=3.9, num_steps=L)
    torch.testing.assert_close(gd_weights(cx, cy, 3.9, L), sensitivities(gd, cx, cy, qx), **TOL)


def test_gd_plus_plus_without_transformation_is_gd():
    cx, cy, qx, _ = tasks(seed=3)
    torch.testing.assert_close(
        gd_plus_plus_predict(cx, cy, qx, 6.0, 0.0, 3), gd_predict(cx, cy, qx, 6.0, 3), **TOL
    )


def test_spectral_form_predicts_like_gd_plus_plus():
    cx, cy, qx, _ = tasks(seed=4)
    eta, gamma = torch.tensor([2.0, 7.5], dtype=F64), torch.tensor([0.0, 0.05], dtype=F64)
    pred = spectral_predict(*spectral_form(cx, cy, qx), eta, gamma, 3, num_context=10)
    for m in range(2):
        direct = gd_plus_plus_predict(cx, cy, qx, float(eta[m]), float(gamma[m]), 3)
        torch.testing.assert_close(pred[m], direct, **TOL)


def test_closed_form_eta_minimises_the_one_step_loss():
    cx, cy, qx, qy = tasks(num=2000, seed=5)
    p = one_step_gd(linear_kernel(cx, qx), cy)  # the prediction at eta = 1
    eta, loss = best_eta(one_step_sums(p, qy), len(qy))
    assert float(loss) == pytest.approx(
        mean_loss(gd_predict(cx, cy, qx, float(eta)), qy), rel=1e-12
    )
    grid = torch.linspace(0.5 * float(eta), 1.5 * float(eta), 20001, dtype=F64)
    grid_losses = [mean_loss(naive_gd_predict(cx, cy, qx, float(e), 1), qy) for e in grid[::1000]]
    assert float(loss) <= min(grid_losses) + 1e-14
    g = torch.einsum("bnd,bd,bn->b", cx, qx, cy) / 10
    fine = (0.5 * (qy - grid[:, None] * g) ** 2).mean(-1)  # the loss written out, on a fine grid
    assert float(grid[fine.argmin()]) == pytest.approx(float(eta), abs=1e-4 * float(eta))
    assert optimal_eta(cx, cy, qx, qy, num_steps=1) == pytest.approx(float(eta), rel=1e-12)


@pytest.mark.parametrize("L", [2, 4])
def test_searched_eta_minimises_the_L_step_loss(L):
    cx, cy, qx, qy = tasks(num=500, seed=6 + L)
    eta = optimal_eta(cx, cy, qx, qy, num_steps=L)
    best = mean_loss(gd_predict(cx, cy, qx, eta, L), qy)
    grid = torch.linspace(0.9 * eta, 1.1 * eta, 401, dtype=F64)
    preds = spectral_predict(*spectral_form(cx, cy, qx), grid, torch.zeros_like(grid), L, 10)
    assert best <= float((0.5 * (qy - preds) ** 2).mean(-1).min()) + 1e-12


@pytest.mark.parametrize("L", [2, 3, 5])
def test_gd_loss_polynomial_is_the_mean_loss_of_L_gd_steps(L):
    """The polynomial's value at a = eta/N equals the mean query loss of L GD steps written
    out (naive_gd_predict) to 1e-10, on untrained float64 prompts."""
    cx, cy, qx, qy = tasks(num=200, seed=20 + L)
    polynomial = gd_loss_polynomial(*spectral_form(cx, cy, qx), qy, L)
    assert polynomial.degree() == 2 * L
    for eta in (0.0, 0.7, 3.1, 9.0):
        direct = mean_loss(naive_gd_predict(cx, cy, qx, eta, L), qy)
        assert polynomial(eta / 10) == pytest.approx(direct, rel=1e-10, abs=1e-14)


def test_gd_plus_plus_search_beats_gd_and_a_finer_grid():
    cx, cy, qx, qy = tasks(num=500, seed=9)
    L = 3
    eta, gamma = optimal_eta_gamma(cx, cy, qx, qy, L)
    loss_pp = mean_loss(gd_plus_plus_predict(cx, cy, qx, eta, gamma, L), qy)
    loss_gd = mean_loss(gd_predict(cx, cy, qx, optimal_eta(cx, cy, qx, qy, L), L), qy)
    assert gamma > 0 and loss_pp < 0.95 * loss_gd  # the curvature correction helps
    e, g = torch.meshgrid(
        torch.linspace(0.95 * eta, 1.05 * eta, 41, dtype=F64),
        torch.linspace(0.95 * gamma, 1.05 * gamma, 41, dtype=F64),
        indexing="ij",
    )
    preds = spectral_predict(*spectral_form(cx, cy, qx), e.reshape(-1), g.reshape(-1), L, 10)
    assert loss_pp <= float((0.5 * (qy - preds) ** 2).mean(-1).min()) + 1e-12


def test_sensitivities_of_the_construction_are_the_gd_weights():
    cx, cy, qx, _ = tasks(d=4, seed=11)
    lsa = LSA.from_weights(gd_lsa_layers(4, 10, 2.5, 3))
    torch.testing.assert_close(sensitivities(lsa, cx, cy, qx), gd_weights(cx, cy, 2.5, 3), **TOL)


@pytest.mark.parametrize("scale", [5.0, -0.5])
@pytest.mark.parametrize("gamma", [0.0, 0.04])
@pytest.mark.parametrize("L", [1, 3])
def test_interpolation_of_a_rescaled_construction_is_the_construction_halfway(scale, gamma, L):
    """A GD++ layer (eta 2, gamma) disguised as ``W_Q -> s W_Q``, ``P -> P / s`` computes the
    same function; halfway between it and the GD layer with eta 4 is the GD++ layer with eta 3
    and gamma / 2 (both products are linear in eta and gamma), applied L times."""
    cx, cy, qx, _ = tasks(num=16, d=4, seed=12)
    trained = gd_plus_plus_lsa_layer(4, 10, 2.0, gamma)
    disguised = dict(trained, W_Q=scale * trained["W_Q"], P=trained["P"] / scale)
    mid = interpolate_lsa_layer(disguised, gd_lsa_layer(4, 10, 4.0), 4)
    lsa = LSA.from_weights([mid], num_layers=L, recurrent=True)
    expected = naive_gd_plus_plus(cx, cy, qx, 3.0, gamma / 2, L)
    torch.testing.assert_close(lsa(cx, cy, qx), expected, **TOL)
