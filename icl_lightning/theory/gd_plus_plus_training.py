"""GD++ step sizes tuned to convergence: one ``(eta_l, gamma_l)`` per step, or one shared pair.

Paper A's official code learns a step size and an input-transformation strength for each of
the L steps of GD++ by minimising the query loss. Here the loss is the exact mean query loss
``0.5 mean_b (y_b - pred_b)^2`` of L GD++ steps on float64 tuning prompts, in the spectral form
(:func:`~icl_lightning.theory.gd.spectral_predict`, O(B d) per evaluation). It has several
local minima and a heavy tail (a few prompts with a large ``lam_max`` dominate it), so:

- every start is polished to convergence: L-BFGS with a strong-Wolfe line search (at most
  ``max_iterations``), then Newton steps while the Hessian is positive definite, until the
  relative gradient ``|grad_theta loss| / loss`` is tiny (``theta``: the
  dimensionless coordinates ``eta_l lam / N`` and ``gamma_l lam``, ``lam`` the mean largest
  eigenvalue of ``X^T X`` over the tuning prompts);
- several starts are polished (the polished shared pair, the L-1 solution extended by one step,
  seeded random ones) and the winner is the one with the lowest loss on held-out prompts drawn
  apart from the tuning prompts.

The last step's ``gamma_L`` transforms the inputs after the last prediction update, so it
cannot change the prediction; it is reported as 0.
"""

import functools
from dataclasses import dataclass

import torch

from icl_lightning.theory.gd import grid_search, optimal_eta, spectral_form, spectral_predict
from icl_lightning.theory.loss import prediction_loss

#: ``(context_x, context_y, query_x, query_y)``
Prompts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

#: prompts the shared pair's grid search scores (the polish then uses all tuning prompts)
GRID_PROMPTS = 2000


@dataclass(frozen=True)
class GDPlusPlusFit:
    """Tuned GD++ step sizes and how they were found.

    Attributes:
        etas, gammas: one number per step (equal numbers for a shared pair; ``gammas[-1]`` is 0
            for per-step sizes, see the module's docstring).
        tuning_loss: mean query loss on the tuning prompts.
        held_out_loss: mean query loss on the held-out prompts.
        gradient_norm: ``|grad_theta loss| / loss`` on the tuning prompts at the result.
        start: the start that won (``"shared"``, ``"extended"``, ``"random k"``, ``"given"``,
            ``"grid"``).
        num_tuning, num_held_out: the numbers of prompts.
    """

    etas: list[float]
    gammas: list[float]
    tuning_loss: float
    held_out_loss: float
    gradient_norm: float
    start: str
    num_tuning: int
    num_held_out: int


def _with_autograd(function):
    """Run ``function`` with autograd on, also when called under ``no_grad`` or
    ``inference_mode`` (probes measure so); its inputs are cloned out of inference mode."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return function(*args, **kwargs)

    return wrapper


class _QueryLoss:
    """The mean query loss of L GD++ steps on some prompts, for ``(M, L)`` step sizes, from
    their spectral form ``(lam, q, s)`` and targets."""

    def __init__(self, lam, q, s, target, num_steps: int, num_context: int) -> None:
        self.lam, self.q, self.s, self.target = lam, q, s, target
        self.num_steps, self.num_context, self.count = num_steps, num_context, len(target)

    @classmethod
    def of(cls, prompts: Prompts, num_steps: int) -> "_QueryLoss":
        context_x, context_y, query_x, query_y = (t.detach().double().clone() for t in prompts)
        lam, q, s = spectral_form(context_x, context_y, query_x)
        return cls(lam, q, s, query_y, num_steps, context_x.shape[-2])

    def first(self, count: int) -> "_QueryLoss":
        """The same loss on the first ``count`` prompts only."""
        parts = (t[:count] for t in (self.lam, self.q, self.s, self.target))
        return _QueryLoss(*parts, self.num_steps, self.num_context)

    def __call__(self, etas: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
        pred = spectral_predict(
            self.lam, self.q, self.s, etas, gammas, self.num_steps, self.num_context
        )
        return prediction_loss(pred, self.target).mean(-1)


class _Coordinates:
    """``theta <-> (etas, gammas)``: ``eta = N theta_eta / lam``, ``gamma = theta_gamma / lam``.

    Per step (``shared=False``): ``theta = (eta_1..eta_L, gamma_1..gamma_{L-1})`` scaled, and
    ``gamma_L = 0``; shared: ``theta = (eta, gamma)`` scaled, repeated over the L steps.
    """

    def __init__(self, num_steps: int, num_context: int, lam: float, shared: bool) -> None:
        self.L, self.eta_unit, self.gamma_unit = num_steps, num_context / lam, 1 / lam
        self.shared = shared

    def sizes(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, L)`` etas and gammas."""
        if self.shared:
            eta, gamma = theta[0] * self.eta_unit, theta[1] * self.gamma_unit
            return eta.expand(1, self.L), gamma.expand(1, self.L)
        etas = theta[: self.L] * self.eta_unit
        gammas = torch.cat([theta[self.L :] * self.gamma_unit, theta.new_zeros(1)])
        return etas[None], gammas[None]

    def theta(self, etas: list[float], gammas: list[float]) -> torch.Tensor:
        if self.shared:
            values = [etas[0] / self.eta_unit, gammas[0] / self.gamma_unit]
        else:
            values = [e / self.eta_unit for e in etas]
            values += [g / self.gamma_unit for g in gammas[: self.L - 1]]
        return torch.tensor(values, dtype=torch.float64)


def _polish(
    loss: _QueryLoss, coords: _Coordinates, theta: torch.Tensor, max_iterations: int
) -> tuple[torch.Tensor, float, float]:
    """Minimise ``loss`` from ``theta``: L-BFGS (strong Wolfe), then Newton steps with
    backtracking while the Hessian is positive definite. Returns ``(theta, loss, |grad| / loss)``;
    the loss is ``inf`` if the start or the result is not finite."""

    def value(t: torch.Tensor) -> torch.Tensor:
        return loss(*coords.sizes(t))[0]

    theta = theta.clone().requires_grad_(True)
    with torch.no_grad():
        if not torch.isfinite(value(theta)):
            return theta.detach(), float("inf"), float("inf")
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iterations,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        v = value(theta)
        v.backward()
        return v

    optimizer.step(closure)
    theta = theta.detach()
    for _ in range(8):  # Newton: quadratic convergence from where L-BFGS stops
        point = theta.clone().requires_grad_(True)
        current = value(point)
        (grad,) = torch.autograd.grad(current, point)
        current = current.detach()
        if not torch.isfinite(current) or float(grad.norm()) <= 1e-13 * float(current):
            break
        hessian = torch.autograd.functional.hessian(value, theta)
        factor, info = torch.linalg.cholesky_ex(hessian)
        if info != 0:
            break
        step = torch.cholesky_solve(-grad[:, None], factor)[:, 0]
        for _ in range(20):
            with torch.no_grad():
                if value(theta + step) <= current:
                    break
            step = step / 2
        else:
            break
        theta = theta + step
    point = theta.clone().requires_grad_(True)
    final = value(point)
    (grad,) = torch.autograd.grad(final, point)
    final = final.detach()
    if not torch.isfinite(final):
        return theta, float("inf"), float("inf")
    return theta, float(final), float(grad.norm() / final)


def _fit(
    coords: _Coordinates,
    tuning: _QueryLoss,
    held_out: _QueryLoss,
    starts: dict[str, tuple[list[float], list[float]]],
    max_iterations: int,
) -> GDPlusPlusFit:
    """Polish every start on ``tuning``; the lowest ``held_out`` loss wins."""
    best = None
    for name, (etas, gammas) in starts.items():
        theta, tuning_loss, gradient_norm = _polish(
            tuning, coords, coords.theta(etas, gammas), max_iterations
        )
        if tuning_loss == float("inf"):
            continue
        with torch.no_grad():
            sizes = coords.sizes(theta)
            held_out_loss = float(held_out(*sizes)[0])
        fit = GDPlusPlusFit(
            sizes[0][0].tolist(),
            sizes[1][0].tolist(),
            tuning_loss,
            held_out_loss,
            gradient_norm,
            name,
            tuning.count,
            held_out.count,
        )
        if best is None or fit.held_out_loss < best.held_out_loss:
            best = fit
    if best is None:  # the polished shared start is always finite; only degenerate data lands here
        raise ValueError("GD++ tuning: no start gave a finite loss on the tuning prompts")
    return best


def _prepare(tuning: Prompts, held_out: Prompts | None, num_steps: int, shared: bool):
    """``(coordinates, tuning loss, held-out loss, tuning prompts)``."""
    if held_out is None:  # the last quarter of the prompts selects among the polished starts
        split = len(tuning[3]) - max(1, len(tuning[3]) // 4)
        tuning, held_out = tuple(t[:split] for t in tuning), tuple(t[split:] for t in tuning)
    loss = _QueryLoss.of(tuning, num_steps)
    lam = float(loss.lam[:, -1].mean())
    coords = _Coordinates(num_steps, loss.num_context, lam, shared)
    return coords, loss, _QueryLoss.of(held_out, num_steps), tuning


def _grid_pair(loss: _QueryLoss, coords: _Coordinates) -> tuple[float, float]:
    """The best shared ``(eta, gamma)`` on a grid (:func:`~icl_lightning.theory.gd.grid_search`)
    over ``eta in [0, 6 c N / lam]``, ``gamma in [0, c / lam]``, from ``c = 1`` (the box of
    :func:`~icl_lightning.theory.gd.optimal_eta_gamma`), ``c`` doubled while the best pair lies
    on the box's upper edge (at depth the optimal eta exceeds ``6N / lam``). The grid only
    locates the basin for the polish, so it scores the first ``GRID_PROMPTS`` prompts."""
    loss = loss.first(GRID_PROMPTS)
    for c in (1, 2, 4, 8, 16):
        highs = [6 * c * coords.eta_unit, c * coords.gamma_unit]
        (eta, gamma), _ = grid_search(loss, [0.0, 0.0], highs, num=10, rounds=6)
        if eta < 0.95 * highs[0] and gamma < 0.95 * highs[1]:
            break
    return eta, gamma


@_with_autograd
def shared_eta_gamma_fit(
    tuning: Prompts,
    held_out: Prompts | None,
    num_steps: int,
    max_iterations: int = 200,
) -> GDPlusPlusFit:
    """One ``(eta, gamma)`` for all L steps: the best pair on a grid whose box grows until it
    holds the optimum, polished to convergence on ``tuning`` (see the module's docstring),
    scored on ``held_out`` (default: the last quarter of ``tuning``, then not used for tuning).
    One step: GD's closed form (:func:`~icl_lightning.theory.gd.optimal_eta`), ``gamma = 0``."""
    coords, tuning_loss, held_out_loss, tuning = _prepare(tuning, held_out, num_steps, True)
    if num_steps == 1:
        eta = optimal_eta(*tuning)
        sizes = torch.tensor([[eta]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
        return GDPlusPlusFit(
            [eta], [0.0], float(tuning_loss(*sizes)[0]), float(held_out_loss(*sizes)[0]),
            0.0, "closed form", tuning_loss.count, held_out_loss.count,
        )  # fmt: skip
    with torch.no_grad():
        eta, gamma = _grid_pair(tuning_loss, coords)
    starts = {"grid": ([eta] * num_steps, [gamma] * num_steps)}
    return _fit(coords, tuning_loss, held_out_loss, starts, max_iterations)


@_with_autograd
def per_layer_eta_gamma_fit(
    tuning: Prompts,
    held_out: Prompts | None,
    num_steps: int,
    num_random: int = 3,
    seed: int = 0,
    extend: bool = True,
    given: tuple[list[float], list[float]] | None = None,
    max_iterations: int = 200,
) -> GDPlusPlusFit:
    """One ``(eta_l, gamma_l)`` per step, tuned from several starts (module docstring).

    Starts: ``"shared"`` (:func:`shared_eta_gamma_fit` repeated), ``"extended"`` (with
    ``extend``: the result at L-1 steps, computed the same way, with one more step that repeats
    its last ``(eta, gamma)``; its inner gamma comes from the shared pair when L-1 = 1),
    ``"random k"`` for k < ``num_random`` (``eta_l = eta* exp(u)``, ``u ~ U(-1, 1)``,
    ``gamma_l = gamma* v``, ``v ~ U(0, 2)``, from a generator seeded with ``seed``; ``(eta*,
    gamma*)`` the polished shared pair) and ``"given"`` (``given``, e.g. earlier sizes). The
    polished start with the lowest loss on ``held_out`` (default: the last quarter of
    ``tuning``, then not used for tuning) wins, unless the shared fit itself does better there
    (then it is returned: never worse than the shared pair on the held-out prompts). One step:
    the shared fit.
    """
    shared = shared_eta_gamma_fit(tuning, held_out, num_steps, max_iterations)
    if num_steps == 1:
        return shared
    coords, tuning_loss, held_out_loss, _ = _prepare(tuning, held_out, num_steps, False)
    eta, gamma = shared.etas[0], shared.gammas[0]
    starts = {"shared": (shared.etas, shared.gammas)}
    if extend:
        fewer = per_layer_eta_gamma_fit(
            tuning, held_out, num_steps - 1, num_random, seed, extend, None, max_iterations
        )
        inner = fewer.gammas[-2] if num_steps > 2 else gamma
        starts["extended"] = (
            fewer.etas + fewer.etas[-1:],
            fewer.gammas[:-1] + [inner, 0.0],
        )
    generator = torch.Generator().manual_seed(seed)
    for k in range(num_random):
        u = torch.rand(num_steps, generator=generator, dtype=torch.float64) * 2 - 1
        v = torch.rand(num_steps, generator=generator, dtype=torch.float64) * 2
        starts[f"random {k}"] = ((eta * u.exp()).tolist(), (gamma * v).tolist())
    if given is not None:
        starts["given"] = (list(given[0]), list(given[1]))
    fit = _fit(coords, tuning_loss, held_out_loss, starts, max_iterations)
    return shared if shared.held_out_loss < fit.held_out_loss else fit


def per_layer_eta_gamma(
    context_x,
    context_y,
    query_x,
    query_y,
    num_steps: int,
    held_out: Prompts | None = None,
    **options,
) -> tuple[list[float], list[float]]:
    """``([eta_1..eta_L], [gamma_1..gamma_L])`` of :func:`per_layer_eta_gamma_fit` on these
    tuning prompts (``held_out``: the selection prompts; ``options``: its keyword arguments)."""
    fit = per_layer_eta_gamma_fit(
        (context_x, context_y, query_x, query_y), held_out, num_steps, **options
    )
    return fit.etas, fit.gammas
