"""GD++ with per-step (eta_l, gamma_l): its two forms agree; tuned sizes are converged minima."""

import pytest
import torch
from references import naive_gd_plus_plus
from test_theory_gd import F64, TOL, mean_loss, tasks

from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.theory import (
    gd_plus_plus_predict,
    optimal_eta_gamma,
    prediction_loss,
    spectral_form,
    spectral_predict,
)
from icl_lightning.theory.gd_plus_plus_training import (
    _QueryLoss,
    per_layer_eta_gamma,
    per_layer_eta_gamma_fit,
    shared_eta_gamma_fit,
)
from icl_lightning.theory.population import (
    SUPPORT_TAIL,
    TILTS,
    contraction,
    draw_population,
    error_factor,
)


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


def relative_gradient(prompts, etas, gammas, shared=False):
    """``|grad_theta loss| / loss`` of the direct GD++ form (not the spectral one the tuning
    uses), in the tuning's coordinates ``eta_l lam / N`` and ``gamma_l lam`` (gamma_L is free),
    or of one shared pair."""
    cx, cy, qx, qy = prompts
    L, N = len(etas), cx.shape[1]
    lam = float(torch.linalg.eigvalsh(cx.transpose(-1, -2) @ cx)[:, -1].mean())
    eta = torch.tensor(etas[:1] if shared else etas, dtype=F64, requires_grad=True)
    gamma = torch.tensor(gammas[:1] if shared else gammas, dtype=F64, requires_grad=True)
    steps = (eta.expand(L), gamma.expand(L)) if shared else (eta, gamma)
    loss = prediction_loss(gd_plus_plus_predict(cx, cy, qx, *steps, L), qy).mean()
    d_eta, d_gamma = torch.autograd.grad(loss, (eta, gamma))
    grad = torch.cat([d_eta * N / lam, (d_gamma if shared else d_gamma[: L - 1]) / lam])
    return float(grad.norm() / loss.detach())


@pytest.mark.parametrize("L", [2, 3, 4])
def test_tuned_per_layer_sizes_are_a_minimum_never_worse_than_the_shared_pair(L):
    """The tuned (eta_l, gamma_l) are a stationary point of the tuning loss (checked through the
    direct form), and on the selection prompts they do no worse than the tuned shared pair;
    the reported losses are the losses of the reported sizes."""
    tuning, selection = tasks(num=1000, seed=1), tasks(num=1000, seed=2)
    fit = per_layer_eta_gamma_fit(tuning, selection, L, num_random=1, early_stopping=False)
    shared = shared_eta_gamma_fit(tuning, selection, L)
    assert len(fit.etas) == len(fit.gammas) == L and fit.gammas[-1] == 0.0
    assert fit.gradient_norm < 1e-6 and not fit.early_stopped
    assert relative_gradient(tuning, fit.etas, fit.gammas) < 1e-6
    assert fit.selection_loss <= shared.selection_loss
    for prompts, reported in ((tuning, fit.tuning_loss), (selection, fit.selection_loss)):
        cx, cy, qx, qy = prompts
        direct = mean_loss(gd_plus_plus_predict(cx, cy, qx, fit.etas, fit.gammas, L), qy)
        assert direct == pytest.approx(reported, rel=1e-9)
    assert (fit.num_tuning, fit.num_selection) == (1000, 1000)


@pytest.mark.parametrize("L", [2, 3, 4, pytest.param(5, marks=pytest.mark.slow)])
def test_polished_shared_pair_is_a_minimum_no_wide_grid_point_beats(L):
    """The shared pair is a stationary point of the tuning loss, below the best pair of
    optimal_eta_gamma's grid and below every pair of a coarse grid over a box far wider than
    that grid's (eta up to 100, gamma up to 1: the search is not confined to its first box)."""
    tuning = tasks(num=800, seed=3)
    cx, cy, qx, qy = tuning
    fit = shared_eta_gamma_fit(tuning, tasks(num=300, seed=4), L)
    assert fit.gradient_norm < 1e-8
    assert fit.etas == [fit.etas[0]] * L and fit.gammas == [fit.gammas[0]] * L
    assert relative_gradient(tuning, fit.etas, fit.gammas, shared=True) < 1e-8
    eta, gamma = optimal_eta_gamma(*tuning, num_steps=L)
    assert fit.tuning_loss < mean_loss(gd_plus_plus_predict(cx, cy, qx, eta, gamma, L), qy)
    axes = torch.linspace(0, 100, 20, dtype=F64), torch.linspace(0, 1, 20, dtype=F64)
    etas, gammas = (a.reshape(-1) for a in torch.meshgrid(*axes, indexing="ij"))
    lam, q, s = spectral_form(cx, cy, qx)
    wide = prediction_loss(spectral_predict(lam, q, s, etas, gammas, L, 10), qy).mean(-1)
    assert fit.tuning_loss <= float(torch.nan_to_num(wide, nan=float("inf")).min())


def test_stratified_tuning_loss_keeps_the_tail_and_estimates_the_mean():
    """More tuning prompts than TUNING_PROMPTS are stratified by lam_max: the top half of the
    kept prompts are the largest-lam_max ones, the weights sum to 1, and the weighted loss
    estimates the mean over all prompts."""
    prompts = tasks(num=4000, seed=12)
    full = _QueryLoss.of(prompts, 3)
    part = full.stratified(1000)
    assert len(part.target) <= 1000 and part.count == 4000
    assert float(part.weight.sum()) == pytest.approx(1.0, rel=1e-12)
    top = torch.sort(full.lam[:, -1], descending=True).values[:500]
    torch.testing.assert_close(part.lam[:500, -1], top)
    etas = torch.tensor([[20.0, 20.0, 20.0]], dtype=F64)
    gammas = torch.tensor([[0.2, 0.2, 0.2]], dtype=F64)
    assert float(part(etas, gammas)[0]) == pytest.approx(float(full(etas, gammas)[0]), rel=0.1)
    assert full.stratified(4000) is full


@pytest.mark.parametrize("L", [3, 4])
def test_early_stopped_tuning_reports_its_sizes_honestly(L):
    """With early stopping (the default), the winner is a polished start's converged end or its
    iterate with the lowest selection loss: never worse than the shared pair on the selection
    prompts, its reported losses and |grad|/loss are those of its sizes (direct form), and a
    converged end is a stationary point."""
    tuning, selection = tasks(num=1000, seed=13), tasks(num=1000, seed=14)
    fit = per_layer_eta_gamma_fit(tuning, selection, L, num_random=1)
    shared = shared_eta_gamma_fit(tuning, selection, L)
    assert fit.selection_loss <= shared.selection_loss and fit.gammas[-1] == 0.0
    gradient = relative_gradient(tuning, fit.etas, fit.gammas)
    assert gradient == pytest.approx(fit.gradient_norm, rel=1e-4, abs=1e-9)
    if not fit.early_stopped:
        assert fit.gradient_norm < 1e-6
    for prompts, reported in ((tuning, fit.tuning_loss), (selection, fit.selection_loss)):
        cx, cy, qx, qy = prompts
        direct = mean_loss(gd_plus_plus_predict(cx, cy, qx, fit.etas, fit.gammas, L), qy)
        assert direct == pytest.approx(reported, rel=1e-9)


def test_polish_improves_on_an_under_trained_start():
    """From a poor start (the shared pair with the step sizes spread apart), the result is a
    stationary point with a lower tuning loss than the start's."""
    tuning, selection = tasks(num=800, seed=5), tasks(num=800, seed=6)
    cx, cy, qx, qy = tuning
    eta, gamma = optimal_eta_gamma(*tuning, num_steps=3)
    start = ([0.5 * eta, eta, 1.5 * eta], [gamma, gamma, 0.0])
    fit = per_layer_eta_gamma_fit(
        tuning, selection, 3, num_random=0, extend=False, given=start, num_wide=0,
        early_stopping=False,
    )  # fmt: skip
    start_loss = mean_loss(gd_plus_plus_predict(cx, cy, qx, *start, 3), qy)
    assert fit.tuning_loss < 0.9 * start_loss and fit.gradient_norm < 1e-6


def test_tuning_is_deterministic_and_the_seed_draws_the_random_starts():
    tuning, selection = tasks(num=800, seed=7), tasks(num=800, seed=8)
    first = per_layer_eta_gamma_fit(tuning, selection, 2, num_random=2, seed=3)
    assert per_layer_eta_gamma_fit(tuning, selection, 2, num_random=2, seed=3) == first


def test_without_selection_prompts_the_last_quarter_selects():
    """With no selection prompts, the last quarter of the given ones is held out (the same fit as
    passing the split explicitly), and the wrapper returns the fit's sizes."""
    prompts = tasks(num=400, seed=9)
    tuning, selection = tuple(t[:300] for t in prompts), tuple(t[300:] for t in prompts)
    explicit = per_layer_eta_gamma_fit(tuning, selection, 2, num_random=1)
    assert per_layer_eta_gamma_fit(prompts, None, 2, num_random=1) == explicit
    assert per_layer_eta_gamma(*prompts, num_steps=2, num_random=1) == (
        explicit.etas,
        explicit.gammas,
    )


def test_tuning_works_under_inference_mode():
    """Probes measure under ``torch.inference_mode``; the tuning turns autograd back on."""
    tuning, selection = tasks(num=400, seed=10), tasks(num=400, seed=11)
    with torch.inference_mode():
        fit = per_layer_eta_gamma_fit(tuning, selection, 2, num_random=0, early_stopping=False)
    assert fit.gradient_norm < 1e-6


def test_one_step_is_the_closed_form():
    tuning, selection = tasks(num=512), tasks(num=256, seed=1)
    fit = per_layer_eta_gamma_fit(tuning, selection, 1)
    assert (fit.etas[0], fit.gammas[0]) == optimal_eta_gamma(*tuning, num_steps=1)
    # its losses are the spectral form's at (eta, gamma = 0), on the prompts of each set
    eta, zero = torch.tensor([fit.etas], dtype=F64), torch.zeros(1, 1, dtype=F64)
    for prompts, value in ((tuning, fit.tuning_loss), (selection, fit.selection_loss)):
        expected = float(_QueryLoss.of(prompts, 1)(eta, zero)[0])
        assert value == pytest.approx(expected, rel=1e-12, abs=0)


# ------------------------------------------------------------- the stability criterion
#: the per-step sizes the sample-based tuning found at L = 3 (docs/theory.md): a loss of 7,985
#: on the prompt with the largest lam_max (5.29) of 500,000
SAMPLE_TUNED_L3 = ([4.944634, 25.563549, 228.923116], [0.278134, 2.488028, 0.0])


def large_eigenvalue_prompt(lam_max: float, seed: int = 0):
    """One prompt of paper A's box (d = N = 10) whose ``X^T X`` has the top eigenvalue
    ``lam_max``: a rank-one sign pattern ``c s t^T`` (eigenvalue ``100 c^2``) plus small noise,
    rescaled so that the top eigenvalue is exactly ``lam_max``; ``w`` and ``x_q`` drawn."""
    g = torch.Generator().manual_seed(seed)
    signs = [torch.where(torch.rand(10, generator=g) < 0.5, -1.0, 1.0).double() for _ in "st"]
    x = torch.outer(*signs) * 0.2 + 0.02 * (torch.rand(10, 10, generator=g).double() - 0.5)
    x = x * (lam_max / torch.linalg.eigvalsh(x.T @ x)[-1]).sqrt()
    assert x.abs().max() <= 0.5  # inside the box
    w = torch.randn(10, generator=g, dtype=F64)
    query = torch.rand(10, generator=g, dtype=F64) - 0.5
    return x[None], (x @ w)[None], query[None], (query @ w)[None], w


def test_the_residual_is_the_factor_e_in_every_eigendirection():
    """``y_q - pred = sum_k q_k w_k E(lam_k)`` (docs/theory.md) against the direct GD++."""
    cx, cy, qx, qy = tasks(num=64, N=10, d=10)
    w = torch.linalg.lstsq(cx[0], cy[0, :, None]).solution[:, 0]  # the task's weights
    etas, gammas = SAMPLE_TUNED_L3
    direct = qy[0] - gd_plus_plus_predict(cx[:1], cy[:1], qx[:1], etas, gammas, 3)[0]
    lam, U = torch.linalg.eigh(cx[0].T @ cx[0])
    factor = error_factor(
        lam, torch.tensor([etas], dtype=F64), torch.tensor([gammas], dtype=F64), 10
    )
    spectral = ((U.T @ qx[0]) * (U.T @ w) * factor[0]).sum()
    torch.testing.assert_close(direct, spectral, rtol=1e-9, atol=1e-12)


def test_importance_sampling_estimates_the_plain_mean():
    """The tilted draws' weighted mean of ``sum_k E(lam_k)^2 / 24`` (and of 1) agree with the
    plain draws' mean; the support's edge has the estimated tail ``<= SUPPORT_TAIL``."""
    task = LinearRegression(input_dim=10)
    sample = draw_population(task, 10, 10, 8000, seeded_generator("cpu", 0, 1))
    plain = draw_population(task, 10, 10, 40_000, seeded_generator("cpu", 0, 2))
    plain_lam = plain.lam[: 40_000 // len(TILTS)]  # the untilted share
    sizes = torch.tensor([[4.0, 30.0]], dtype=F64), torch.tensor([[0.3, 0.0]], dtype=F64)
    weighted = sample.scale * (error_factor(sample.lam, *sizes, 10)[0] ** 2).sum(-1) @ sample.weight
    direct = (error_factor(plain_lam, *sizes, 10)[0] ** 2).sum(-1).mean() / 24
    assert float(weighted / len(sample.weight)) == pytest.approx(float(direct), rel=0.03)
    assert float(sample.weight.mean()) == pytest.approx(1.0, abs=0.03)
    assert 0 < sample.tail <= SUPPORT_TAIL and 5.0 < sample.support < 7.0


def test_the_stability_criterion_bounds_a_large_eigenvalue_prompts_loss():
    """Tuned on the population (support ``Lambda``, contraction C): a prompt with
    ``lam_max`` inside the support loses at most ``0.5 |x_q|^2 |w|^2 C^2``; the sample-tuned
    sizes lose 1e4 times more there, their contraction on the same support is 100 times
    larger."""
    task = LinearRegression(input_dim=10)
    tuning, selection = (
        draw_population(task, 10, 10, 4000, seeded_generator("cpu", 0, k)) for k in (1, 2)
    )
    fit = per_layer_eta_gamma_fit(tuning, selection, 3, num_random=0, num_wide=0, extend=False)
    assert fit.support == tuning.support and 0 < fit.tail <= SUPPORT_TAIL
    assert fit.contraction == contraction(fit.etas, fit.gammas, fit.support, 10) < 1e4
    cx, cy, qx, qy, w = large_eigenvalue_prompt(0.98 * fit.support)
    bound = 0.5 * float(qx.square().sum() * w.square().sum()) * fit.contraction**2
    tuned = mean_loss(gd_plus_plus_predict(cx, cy, qx, fit.etas, fit.gammas, 3), qy)
    assert tuned <= bound
    old = mean_loss(gd_plus_plus_predict(cx, cy, qx, *SAMPLE_TUNED_L3, 3), qy)
    assert (
        old > 1e4 * tuned and contraction(*SAMPLE_TUNED_L3, fit.support, 10) > 100 * fit.contraction
    )
    assert fit.selection_loss < 0.07  # still useful: L-step GD ~0.13, 0.041 with every start
