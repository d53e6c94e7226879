"""GD++ step sizes tuned to convergence: one ``(eta_l, gamma_l)`` per step, or one shared pair.

Paper A's official code learns a step size and an input-transformation strength for each of
the L steps of GD++ by minimising the query loss. Here the loss is the exact mean query loss
``0.5 mean_b (y_b - pred_b)^2`` of L GD++ steps on float64 tuning prompts, in the spectral form
(:func:`~icl_lightning.theory.gd.spectral_predict`, O(B d) per evaluation). It has several
local minima and a heavy tail (a few prompts with a large ``lam_max`` dominate it), so:

- every start is polished to convergence: rounds of L-BFGS with a strong-Wolfe line search
  (at most ``max_iterations``) and damped (Levenberg-Marquardt) Newton steps, until the
  relative gradient ``|grad_theta loss| / loss`` is at most ``TOLERANCE`` (``theta``: the
  dimensionless coordinates ``eta_l lam_l / N`` and ``gamma_l lam_l``, ``lam_l`` the mean
  largest eigenvalue of ``X^T X`` as step l sees it, :func:`_layer_lams`);
- several starts are polished (the polished shared pair, the L-1 solution extended by one step,
  seeded random ones, the best of many wide random draws) and the winner is the one with the
  lowest loss on selection prompts drawn apart from the tuning prompts.

On paper A's tasks (:func:`~icl_lightning.theory.population.supports_population`) the tuning and
selection "prompts" are :class:`~icl_lightning.theory.population.PopulationSample` draws: the
loss is then GD++'s population loss on the support ``lam_max <= Lambda`` (``w`` and the query
integrated out exactly, contexts importance-sampled so that the large-``lam_max`` tail is
estimated without bias; :mod:`~icl_lightning.theory.population`), and the fit reports the
support and ``max |E|`` on it (``contraction``): the stability criterion of docs/theory.md.

On other tasks, per step, by default (``early_stopping``), the selection prompts also watch
every iterate of the polish, and a start's iterate with the lowest selection loss competes
beside its converged end (:func:`_fit`): at L >= 4 the deepest minima of a 10,000-prompt
tuning loss fit its few largest-``lam_max`` prompts and blow up on prompts with a larger
``lam_max`` (a selection or population loss of 1e14 at a tuning loss of 0.016), so the
winner may be an early-stopped point, not a stationary one; its ``gradient_norm`` and
``early_stopped`` say so.

The last step's ``gamma_L`` transforms the inputs after the last prediction update, so it
cannot change the prediction; it is reported as 0.
"""

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from icl_lightning.theory.gd import (
    gd_predict,
    grid_search,
    optimal_eta,
    spectral_form,
    spectral_predict,
)
from icl_lightning.theory.loss import prediction_loss
from icl_lightning.theory.population import PopulationSample, contraction, error_factor

#: ``(context_x, context_y, query_x, query_y)``
Prompts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

#: the tuner's version: cached step sizes (:mod:`~icl_lightning.theory.tuning_cache`) tuned by
#: another version are tuned again; raise it with any change that changes the sizes
TUNER_VERSION = 3

#: prompts the shared pair's grid search scores (the polish then uses all tuning prompts)
GRID_PROMPTS = 2000

#: nodes of a population loss (:class:`_PopulationLoss`)
NODES = 1024

#: more tuning prompts than this are stratified down to this many (:meth:`_QueryLoss.stratified`)
TUNING_PROMPTS = 20_000

#: the polish's stopping rule: ``|grad_theta loss| / loss`` at most this
TOLERANCE = 1e-10
#: at most this many rounds of L-BFGS and damped Newton in one polish
ROUNDS = 3
#: at most this many damped Newton steps in one round
NEWTON_STEPS = 12


@dataclass(frozen=True)
class GDPlusPlusFit:
    """Tuned GD++ step sizes and how they were found.

    Attributes:
        etas, gammas: one number per step (equal numbers for a shared pair; ``gammas[-1]`` is 0
            for per-step sizes, see the module's docstring).
        tuning_loss: mean query loss on the tuning prompts.
        selection_loss: mean query loss on the selection prompts.
        gradient_norm: ``|grad_theta loss| / loss`` on the tuning prompts at the result.
        start: the start that won (``"shared"``, ``"extended"``, ``"random k"``, ``"wide k"``,
            ``"given"``, ``"grid"``).
        num_tuning, num_selection: the numbers of prompts.
        early_stopped: the sizes are the iterate of the start's polish with the lowest loss on
            the selection prompts (early stopping), not its converged end (then
            ``gradient_norm`` is not tiny; see :func:`_fit`).
        support: with population samples, ``Lambda`` (the losses are population losses on
            ``lam_max <= Lambda``); 0 with prompts.
        tail: with population samples, the estimated ``P(lam_max > Lambda)``.
        contraction: with population samples, ``max |E(lam)|`` over ``[0, Lambda]``
            (:func:`~icl_lightning.theory.population.contraction`).
    """

    etas: list[float]
    gammas: list[float]
    tuning_loss: float
    selection_loss: float
    gradient_norm: float
    start: str
    num_tuning: int
    num_selection: int
    early_stopped: bool = False
    support: float = 0.0
    tail: float = 0.0
    contraction: float = 0.0


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

    def __init__(
        self, lam, q, s, target, num_steps: int, num_context: int, weight=None, count=None
    ) -> None:
        self.lam, self.q, self.s, self.target = lam, q, s, target
        self.num_steps, self.num_context = num_steps, num_context
        self.weight = weight  # per prompt, summing to 1 (None: the plain mean)
        self.count = len(target) if count is None else count  # the prompts it stands for

    #: weights of the mean largest eigenvalue (:func:`_layer_lams`); None: the plain mean
    unit_weight = None

    @classmethod
    def of(cls, prompts: Prompts, num_steps: int) -> "_QueryLoss":
        context_x, context_y, query_x, query_y = (t.detach().double().clone() for t in prompts)
        lam, q, s = spectral_form(context_x, context_y, query_x)
        return cls(lam, q, s, query_y, num_steps, context_x.shape[-2])

    def steps(self, num_steps: int) -> "_QueryLoss":
        """The same (unstratified) prompts' loss for ``num_steps`` steps, sharing the spectral
        form (computing it is the costly part: one eigendecomposition per prompt)."""
        return _QueryLoss(self.lam, self.q, self.s, self.target, num_steps, self.num_context)

    def first(self, count: int) -> "_QueryLoss":
        """The same loss on the first ``count`` prompts only (of all, if stratified)."""
        if self.weight is not None:
            return self.source.first(count)
        parts = (t[:count] for t in (self.lam, self.q, self.s, self.target))
        return _QueryLoss(*parts, self.num_steps, self.num_context)

    def stratified(self, count: int) -> "_QueryLoss":
        """The same mean over ``count`` of the prompts, stratified by ``lam_max`` (the tail that
        dominates the loss is kept whole): the ``count // 2`` prompts with the largest
        ``lam_max`` with weight 1, and every k-th of the others with weight k (k such that
        ``count - count // 2`` are kept), normalised; an unbiased estimate of the mean over
        all the prompts with far fewer of them. Itself when it has at most ``count``."""
        if self.count <= count or self.weight is not None:
            return self
        order = torch.argsort(self.lam[:, -1], descending=True)
        top, rest = order[: count // 2], order[count // 2 :]
        stride = -(-len(rest) // (count - count // 2))
        kept = rest[::stride]
        index = torch.cat([top, kept])
        weight = (
            torch.cat(
                [torch.ones(len(top)), torch.full((len(kept),), len(rest) / len(kept))]
            ).double()
            / self.count
        )
        parts = (t[index] for t in (self.lam, self.q, self.s, self.target))
        result = _QueryLoss(*parts, self.num_steps, self.num_context, weight, self.count)
        result.source = self
        return result

    def __call__(self, etas: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
        pred = spectral_predict(
            self.lam, self.q, self.s, etas, gammas, self.num_steps, self.num_context
        )
        loss = prediction_loss(pred, self.target)
        return loss.mean(-1) if self.weight is None else loss @ self.weight


class _PopulationLoss:
    """GD++'s population loss on the support, ``scale mean_b weight_b sum_k E(lam_bk)^2``
    (:mod:`~icl_lightning.theory.population`), for ``(M, L)`` step sizes: the interface of
    :class:`_QueryLoss`. The sum runs over every eigenvalue of every draw, so it is computed
    on ``NODES`` nodes: the eigenvalues sorted and cut into runs of equal length, each run
    replaced by its weighted mean with its total weight (the importance sampler puts many
    draws in the tail, so the runs are narrow where ``E`` grows fastest). The per-draw
    eigenvalues (``lam``, ``unit_weight``) give the units of the sizes only."""

    def __init__(self, sample: PopulationSample, num_steps: int, nodes=None) -> None:
        self.sample, self.num_steps = sample, num_steps
        self.lam, self.num_context = sample.lam, sample.num_context
        self.weight = None  # no stratification: the importance weights take its place
        self.unit_weight = sample.weight
        self.count = len(sample.lam)
        self.nodes = self._nodes(sample) if nodes is None else nodes

    @staticmethod
    def _nodes(sample: PopulationSample) -> tuple[torch.Tensor, torch.Tensor]:
        lam = sample.lam.reshape(-1)
        weight = (sample.weight[:, None] * sample.scale / len(sample.weight)).expand_as(sample.lam)
        order = torch.argsort(lam)
        lam, weight = lam[order], weight.reshape(-1)[order]
        length = -(-len(lam) // NODES)
        pad = length * NODES - len(lam)
        lam, weight = (
            torch.cat([t, t.new_zeros(pad)]).reshape(NODES, length) for t in (lam, weight)
        )
        total = weight.sum(-1)
        mean = (lam * weight).sum(-1) / total.clamp_min(torch.finfo(total.dtype).tiny)
        keep = total > 0
        return mean[keep], total[keep]

    def steps(self, num_steps: int) -> "_PopulationLoss":
        return _PopulationLoss(self.sample, num_steps, self.nodes)

    def first(self, count: int) -> "_PopulationLoss":
        """The same loss (its nodes are already few), with the units of the first ``count``
        draws only (the task's own inputs come first)."""
        part = _PopulationLoss(self.sample, self.num_steps, self.nodes)
        part.lam, part.unit_weight = self.lam[:count], self.unit_weight[:count]
        return part

    def stratified(self, count: int) -> "_PopulationLoss":
        return self

    def __call__(self, etas: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
        if etas.ndim == 1:
            etas = etas[:, None].expand(-1, self.num_steps)
            gammas = gammas[:, None].expand(-1, self.num_steps)
        lam, weight = self.nodes
        return error_factor(lam, etas, gammas, self.num_context).square() @ weight


class _Coordinates:
    """``theta <-> (etas, gammas)``: ``eta = N theta_eta / lam``, ``gamma = theta_gamma / lam``.

    Per step (``shared=False``): ``theta = (eta_1..eta_L, gamma_1..gamma_{L-1})`` scaled, and
    ``gamma_L = 0``; shared: ``theta = (eta, gamma)`` scaled, repeated over the L steps.
    """

    def __init__(self, num_steps: int, num_context: int, lam: float, shared: bool) -> None:
        self.L, self.eta_unit, self.gamma_unit = num_steps, num_context / lam, 1 / lam
        self.shared, self.lam = shared, lam

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
    loss: _QueryLoss,
    coords: _Coordinates,
    theta: torch.Tensor,
    max_iterations: int,
    scale: torch.Tensor | None = None,
    monitor=None,
    rounds: int = ROUNDS,
    newton_steps: int = NEWTON_STEPS,
) -> tuple[torch.Tensor, float, float]:
    """Minimise ``loss`` from ``theta`` until ``|grad_theta loss| / loss <= TOLERANCE`` (the
    stopping rule), in at most ``ROUNDS`` rounds of: L-BFGS (strong Wolfe, at most
    ``max_iterations`` iterations) in the coordinates ``theta / scale`` (default: ``|theta|``
    at the start, at least 1e-3 of the largest: each coordinate in its own unit), then
    damped Newton (Levenberg-Marquardt: the Hessian plus ``mu diag|H|``, ``mu`` raised until
    the step is a descent, lowered after each accepted one; plain Newton while the Hessian is
    positive definite) for at most ``NEWTON_STEPS`` steps. Returns
    ``(theta, loss, |grad| / loss)``; the loss is ``inf`` if the start or the result is not
    finite."""
    theta = theta.detach().clone()
    if scale is None:
        scale = theta.abs().clamp_min(1e-3 * float(theta.abs().max()) + 1e-12)

    def value(x: torch.Tensor) -> torch.Tensor:  # of the scaled coordinates
        return loss(*coords.sizes(x * scale))[0]

    def value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        point = x.clone().requires_grad_(True)
        current = value(point)
        (grad,) = torch.autograd.grad(current, point)
        return current.detach(), grad

    def converged(current: torch.Tensor, grad: torch.Tensor) -> bool:  # theta's gradient
        return float((grad / scale).norm()) <= TOLERANCE * float(current)

    x = theta / scale

    def watch(x: torch.Tensor) -> None:  # the iterate with the lowest monitored loss
        if monitor is not None:
            with torch.no_grad():
                watched = float(monitor(x * scale))
            if watched < monitor.best[0]:
                monitor.best = (watched, (x * scale).detach().clone())

    with torch.no_grad():
        if not torch.isfinite(value(x)):
            return theta, float("inf"), float("inf")
    watch(x)
    for _ in range(rounds):
        x = x.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [x],
            lr=1.0,
            max_iter=max_iterations if monitor is None else 1,
            history_size=20,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )

        def closure(optimizer=optimizer, x=x) -> torch.Tensor:
            optimizer.zero_grad()
            v = value(x)
            v.backward()
            return v

        if monitor is None:
            optimizer.step(closure)
        else:  # one iteration at a time, each iterate watched
            for _ in range(max_iterations):
                before = x.detach().clone()
                optimizer.step(closure)
                watch(x.detach())
                if torch.equal(before, x.detach()):
                    break
        x, mu = x.detach(), 0.0
        for _ in range(newton_steps):
            current, grad = value_and_grad(x)
            if not torch.isfinite(current) or converged(current, grad):
                break
            hessian = torch.autograd.functional.hessian(value, x)
            damping = torch.diag(hessian.diagonal().abs().clamp_min(1e-12))
            while mu < 1e10:
                factor, info = torch.linalg.cholesky_ex(hessian + mu * damping)
                if info == 0:
                    step = torch.cholesky_solve(-grad[:, None], factor)[:, 0]
                    with torch.no_grad():
                        trial = value(x + step)
                    if torch.isfinite(trial) and trial <= current * (1 + 1e-13):  # rounding
                        break
                mu = max(1e-6, 10 * mu)
            else:
                break  # no descent step: back to L-BFGS
            x, mu = x + step, (mu / 100 if mu >= 1e-4 else 0.0)
            watch(x)
        current, grad = value_and_grad(x)
        if not torch.isfinite(current):
            return x * scale, float("inf"), float("inf")
        if converged(current, grad):
            break
    return x * scale, float(current), float((grad / scale).norm() / current)


def _mean_top(lam: torch.Tensor, weight: torch.Tensor | None) -> float:
    """The mean largest eigenvalue, weighted by ``weight`` (importance weights) if given."""
    top = lam.max(-1).values
    return float(top.mean() if weight is None else top @ weight / weight.sum())


def _layer_lams(lam: torch.Tensor, gammas: list[float], weight=None) -> list[float]:
    """The mean largest eigenvalue of the transformed ``X^T X`` that each step sees:
    ``lam_k <- lam_k (1 - gamma_l lam_k)^2`` after step l. It falls fast once
    ``gamma_l lam`` is near 1 (to at most ``4 / (27 gamma_l)``), so the sizes that suit a
    later step grow with depth; it is the unit of each step's sizes in the random starts and
    in the polish."""
    lams = []
    for gamma in gammas:
        lams.append(_mean_top(lam, weight))
        lam = lam * (1 - gamma * lam) ** 2
    return lams


def _from_relative(
    lam: torch.Tensor, num_context: int, u: list[float], v: list[float], weight=None
) -> tuple[list[float], list[float]]:
    """Per-step sizes ``eta_l = N u_l / lam_l``, ``gamma_l = v_l / lam_l`` in the units of the
    eigenvalue each step sees (:func:`_layer_lams`, built up step by step)."""
    etas, gammas = [], []
    for u_l, v_l in zip(u, v, strict=True):
        top = _mean_top(lam, weight)
        etas.append(num_context * u_l / top)
        gammas.append(v_l / top)
        lam = lam * (1 - gammas[-1] * lam) ** 2
    return etas, gammas


def _to_relative(
    lam: torch.Tensor, num_context: int, etas: list[float], gammas: list[float], weight=None
) -> tuple[list[float], list[float]]:
    """The inverse of :func:`_from_relative`."""
    lams = _layer_lams(lam, gammas, weight)
    u = [eta * top / num_context for eta, top in zip(etas, lams, strict=True)]
    return u, [gamma * top for gamma, top in zip(gammas, lams, strict=True)]


#: with early stopping: L-BFGS iterations of every start before the finalists are chosen
SHORT_ITERATIONS = 30
#: with early stopping: starts polished to convergence
FINALISTS = 2
#: with early stopping: an early-stopped point wins only if its selection loss is lower than a
#: converged end's by more than this fraction (it is no stationary point)
EARLY_MARGIN = 0.01

#: wide random starts drawn, of which the ``num_wide`` best on ``WIDE_PROMPTS`` are polished
WIDE_DRAWS = 1024
WIDE_PROMPTS = 1000


def _wide_starts(
    loss: _QueryLoss, num_steps: int, count: int, generator: torch.Generator
) -> list[tuple[list[float], list[float]]]:
    """The ``count`` best of ``WIDE_DRAWS`` random per-step sizes on the first ``WIDE_PROMPTS``
    tuning prompts: in the unit of the eigenvalue each step sees (:func:`_from_relative`, that
    unit from 256 prompts), ``u_l`` log-uniform in ``[0.3, 30]`` and ``v_l ~ U(-0.3, 1.2)``
    (a negative gamma included)."""
    if count <= 0:
        return []
    shape = (WIDE_DRAWS, num_steps)
    w, v = torch.rand(2, *shape, generator=generator, dtype=torch.float64)
    u = (math.log(0.3) + w * math.log(100.0)).exp()
    v = -0.3 + 1.5 * v
    few = loss.first(256)
    lam = few.lam.unsqueeze(0).expand(WIDE_DRAWS, -1, -1)
    unit = (
        torch.ones(len(few.lam), dtype=torch.float64)
        if few.unit_weight is None
        else few.unit_weight
    )
    etas, gammas = torch.empty(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    for step in range(num_steps):
        top = lam.max(-1).values @ unit / unit.sum()
        etas[:, step] = loss.num_context * u[:, step] / top
        if step < num_steps - 1:
            gammas[:, step] = v[:, step] / top
        lam = lam * (1 - gammas[:, step, None, None] * lam) ** 2
    few = loss.first(WIDE_PROMPTS)
    with torch.no_grad():
        values = torch.cat(
            [few(etas[i : i + 256], gammas[i : i + 256]) for i in range(0, len(etas), 256)]
        )
    order = torch.argsort(torch.nan_to_num(values, nan=float("inf")))[:count]
    return [(etas[i].tolist(), gammas[i].tolist()) for i in order.tolist()]


def _fit(
    coords: _Coordinates,
    tuning: _QueryLoss,
    selection: _QueryLoss,
    starts: dict[str, tuple[list[float], list[float]]],
    max_iterations: int,
    early_stopping: bool = False,
    screen: bool = False,
) -> GDPlusPlusFit:
    """Polish starts on ``tuning``; the lowest ``selection`` loss wins.

    Without ``early_stopping`` or ``screen``, every start is polished to convergence. With
    ``screen`` (population losses, whose tuning loss is itself an unbiased estimate of the
    population loss) and more than ``FINALISTS`` starts, every start gets
    ``SHORT_ITERATIONS`` L-BFGS iterations and only the ``FINALISTS`` with the lowest tuning
    loss then are polished to convergence. With ``early_stopping``, the selection prompts
    (stratified by ``lam_max`` to ``TUNING_PROMPTS``, their tail kept whole) watch
    every iterate: each start gets ``SHORT_ITERATIONS`` L-BFGS iterations first, and only the
    ``FINALISTS`` starts with the lowest watched loss are then polished to convergence; for
    each finalist both its converged end and its iterate with the lowest watched loss
    (early stopping; ``early_stopped`` in the fit) compete on the whole selection set, an
    early-stopped point only if its loss there is lower by more than ``EARLY_MARGIN``. The
    converged minima of the tuning loss at L >= 4 can fit the few large-``lam_max`` tuning
    prompts and blow up on prompts with a larger ``lam_max``, which the selection ones contain;
    an early-stopped winner is not a stationary point (its ``gradient_norm`` says how far)."""
    watched = selection.stratified(TUNING_PROMPTS)

    class Monitor:
        best = (float("inf"), None)

        def __call__(self, theta):
            return watched(*coords.sizes(theta))[0]

    def result(theta, name, early) -> GDPlusPlusFit:
        theta = theta.detach().clone().requires_grad_(True)
        sizes = coords.sizes(theta)
        tuning_loss = tuning(*sizes)[0]
        (grad,) = torch.autograd.grad(tuning_loss, theta)
        with torch.no_grad():
            selection_loss = float(selection(*sizes)[0])
        return _with_support(
            tuning,
            GDPlusPlusFit(
                sizes[0][0].detach().tolist(),
                sizes[1][0].detach().tolist(),
                float(tuning_loss.detach()),
                selection_loss,
                float(grad.norm() / tuning_loss.detach()),
                name,
                tuning.count,
                selection.count,
                early,
            ),
        )

    def scale_of(gammas) -> torch.Tensor | None:
        if coords.shared:
            return None
        units = [coords.lam / top for top in _layer_lams(tuning.lam, gammas, tuning.unit_weight)]
        return torch.tensor(units + units[: coords.L - 1], dtype=torch.float64)

    def rank(fit: GDPlusPlusFit) -> float:  # an early-stopped point must win by a margin
        return fit.selection_loss * (1 + EARLY_MARGIN if fit.early_stopped else 1)

    runs = []  # (name, theta, scale, monitor, screened loss)
    for name, (etas, gammas) in starts.items():
        theta, scale = coords.theta(etas, gammas), scale_of(gammas)
        monitor, loss = None, 0.0
        if early_stopping or (screen and len(starts) > FINALISTS):
            monitor = Monitor() if early_stopping else None
            theta, loss, _ = _polish(tuning, coords, theta, SHORT_ITERATIONS, scale, monitor, 1, 0)
            if loss == float("inf") and (monitor is None or monitor.best[1] is None):
                continue
        runs.append((name, theta, scale, monitor, loss))
    if early_stopping:
        runs = sorted(runs, key=lambda run: run[3].best[0])[:FINALISTS]
    elif screen and len(starts) > FINALISTS:
        runs = sorted(runs, key=lambda run: run[4])[:FINALISTS]
    best = None
    for name, theta, scale, monitor, _ in runs:
        theta, tuning_loss, _ = _polish(tuning, coords, theta, max_iterations, scale, monitor)
        fits = [] if tuning_loss == float("inf") else [result(theta, name, False)]
        if monitor is not None and monitor.best[1] is not None:
            fits.append(result(monitor.best[1], name, True))
        for fit in fits:
            if math.isfinite(fit.selection_loss) and (best is None or rank(fit) < rank(best)):
                best = fit
    if best is None:  # the polished shared start is always finite; only degenerate data lands here
        raise ValueError("GD++ tuning: no start gave a finite loss on the tuning prompts")
    return best


def _with_support(tuning, fit: GDPlusPlusFit) -> GDPlusPlusFit:
    """``fit`` with the support, its tail and ``max |E|`` on it, when ``tuning`` is a
    population loss (the stability criterion; unchanged otherwise)."""
    if not isinstance(tuning, _PopulationLoss):
        return fit
    s = tuning.sample
    bound = contraction(fit.etas, fit.gammas, s.support, s.num_context)
    return dataclasses.replace(fit, support=s.support, tail=s.tail, contraction=bound)


def _split(tuning: Prompts, selection: Prompts | None) -> tuple[Prompts, Prompts]:
    """``(tuning, selection)``; without ``selection``, the last quarter of ``tuning`` becomes the
    selection prompts (which select among the polished starts) and is not tuned on."""
    if isinstance(tuning, PopulationSample):
        if selection is None:
            raise ValueError("GD++ tuning on a population sample needs a selection sample")
        return tuning, selection
    if selection is None:
        split = len(tuning[3]) - max(1, len(tuning[3]) // 4)
        tuning, selection = tuple(t[:split] for t in tuning), tuple(t[split:] for t in tuning)
    return tuning, selection


class _Problem:
    """The tuning and selection prompts of one tuning (:func:`_split`), with their spectral forms
    computed once, at first use, for every number of steps the tuning visits (the shared pair,
    the per-step sizes, and the L-1, L-2, ... steps of the extended starts); or two
    :class:`~icl_lightning.theory.population.PopulationSample` draws (:attr:`population`)."""

    def __init__(self, tuning, selection) -> None:
        self.tuning, self.selection = _split(tuning, selection)
        self.population = isinstance(self.tuning, PopulationSample)

    @functools.cached_property
    def _losses(self):
        if self.population:
            return _PopulationLoss(self.tuning, 1), _PopulationLoss(self.selection, 1)
        return _QueryLoss.of(self.tuning, 1), _QueryLoss.of(self.selection, 1)

    def prepare(self, num_steps: int, shared: bool):
        """``(coordinates, tuning loss, selection loss)`` for ``num_steps`` steps; the tuning
        loss stratified to ``TUNING_PROMPTS``."""
        tuning, selection = (loss.steps(num_steps) for loss in self._losses)
        loss = tuning.stratified(TUNING_PROMPTS)
        if loss.unit_weight is not None:
            lam = _mean_top(loss.lam, loss.unit_weight)
        else:
            lam = float(
                loss.lam[:, -1] @ loss.weight if loss.weight is not None else loss.lam[:, -1].mean()
            )
        return _Coordinates(num_steps, loss.num_context, lam, shared), loss, selection


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


def _one_step_fit(problem: _Problem) -> GDPlusPlusFit:
    """One GD++ step is one GD step (``gamma_1`` acts after the only prediction update): the
    closed-form ``eta`` (:func:`~icl_lightning.theory.gd.optimal_eta`) and its mean query loss
    ``0.5 mean_b (y_b - <w_b, x_b>)^2`` on both prompt sets, ``w_b`` one GD step from 0, in
    float64 (no spectral form: its eigendecompositions cost more than the rest of a probe's
    first measurement). On population samples: ``eta = N sum w lam / sum w lam^2`` (sums over
    draws and eigenvalues), the minimiser of ``sum w (1 - eta lam / N)^2``."""
    if problem.population:
        tuning, selection = (_PopulationLoss(p, 1) for p in (problem.tuning, problem.selection))
        w = tuning.sample.weight[:, None]
        eta = tuning.num_context * float((w * tuning.lam).sum() / (w * tuning.lam**2).sum())
        sizes = (torch.tensor([[eta]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
        fit = GDPlusPlusFit(
            [eta], [0.0], float(tuning(*sizes)[0]), float(selection(*sizes)[0]), 0.0,
            "closed form", tuning.count, selection.count,
        )  # fmt: skip
        return _with_support(tuning, fit)
    tuning, selection = (
        [t.detach().double() for t in p] for p in (problem.tuning, problem.selection)
    )
    eta = optimal_eta(*tuning)

    def loss(prompts) -> float:
        pred = gd_predict(*prompts[:3], eta=eta)
        return float(prediction_loss(pred, prompts[3]).mean())

    return GDPlusPlusFit(
        [eta], [0.0], loss(tuning), loss(selection), 0.0, "closed form",
        len(tuning[3]), len(selection[3]),
    )  # fmt: skip


@_with_autograd
def shared_eta_gamma_fit(
    tuning: Prompts,
    selection: Prompts | None,
    num_steps: int,
    max_iterations: int = 200,
) -> GDPlusPlusFit:
    """One ``(eta, gamma)`` for all L steps: the best pair on a grid whose box grows until it
    holds the optimum, polished to convergence on ``tuning`` (see the module's docstring),
    scored on ``selection`` (default: the last quarter of ``tuning``, then not used for tuning).
    One step: GD's closed form (:func:`~icl_lightning.theory.gd.optimal_eta`), ``gamma = 0``."""
    return _shared_fit(_Problem(tuning, selection), num_steps, max_iterations)


def _shared_fit(problem: _Problem, num_steps: int, max_iterations: int) -> GDPlusPlusFit:
    """:func:`shared_eta_gamma_fit` on ``problem``'s prompts."""
    if num_steps == 1:
        return _one_step_fit(problem)
    coords, tuning_loss, selection_loss = problem.prepare(num_steps, True)
    with torch.no_grad():
        eta, gamma = _grid_pair(tuning_loss, coords)
    starts = {"grid": ([eta] * num_steps, [gamma] * num_steps)}
    return _fit(coords, tuning_loss, selection_loss, starts, max_iterations)


@_with_autograd
def per_layer_eta_gamma_fit(
    tuning: Prompts,
    selection: Prompts | None,
    num_steps: int,
    num_random: int = 4,
    seed: int = 0,
    extend: bool = True,
    given: tuple[list[float], list[float]] | None = None,
    max_iterations: int = 200,
    num_wide: int = 2,
    early_stopping: bool = True,
) -> GDPlusPlusFit:
    """One ``(eta_l, gamma_l)`` per step, tuned from several starts (module docstring).

    Starts, each step's sizes in the unit of the eigenvalue it sees (``eta_l = N u_l /
    lam_l``, ``gamma_l = v_l / lam_l``, ``lam_l`` the mean largest eigenvalue of the inputs
    transformed by the steps before, :func:`_layer_lams`; so gamma grows over the steps):
    ``"shared"`` (:func:`shared_eta_gamma_fit` repeated), ``"extended"`` (with ``extend``: the
    result at L-1 steps, computed the same way, with one more step before its last whose
    ``(u, v)`` repeat the step before it, or the shared pair's when L-1 = 1), ``"random k"`` for
    k < ``num_random`` (``u_l = exp(w)``, ``w ~ U(log 0.5, log 4)``, ``v_l ~ U(0, 1.5)``, from a
    generator seeded with ``seed``), ``"wide k"`` for k < ``num_wide`` (the best of
    ``WIDE_DRAWS`` wider draws on a few tuning prompts, negative gammas included,
    :func:`_wide_starts`, from the same generator) and ``"given"`` (``given``, e.g. earlier
    sizes). The polished start with the lowest loss on ``selection`` (default: the last quarter
    of ``tuning``, then not used for tuning) wins, unless the shared fit itself does better
    there (then it is returned: never worse than the shared pair on the selection prompts).
    With ``early_stopping``, only the ``FINALISTS`` best starts after ``SHORT_ITERATIONS`` are
    polished to convergence, and each one's iterate with the lowest selection loss also
    competes (:func:`_fit`; ``early_stopped`` in the result). One step: the shared fit.
    """
    options = (num_random, seed, extend, given, max_iterations, num_wide, early_stopping)
    return _per_layer_fit(_Problem(tuning, selection), num_steps, *options)


def _per_layer_fit(
    problem: _Problem,
    num_steps: int,
    num_random: int = 4,
    seed: int = 0,
    extend: bool = True,
    given: tuple[list[float], list[float]] | None = None,
    max_iterations: int = 200,
    num_wide: int = 2,
    early_stopping: bool = True,
) -> GDPlusPlusFit:
    """:func:`per_layer_eta_gamma_fit` on ``problem``'s prompts."""
    shared = _shared_fit(problem, num_steps, max_iterations)
    if num_steps == 1:
        return shared
    coords, tuning_loss, selection_loss = problem.prepare(num_steps, False)
    lam, num_context = tuning_loss.lam, tuning_loss.num_context
    weight = tuning_loss.unit_weight
    early_stopping = early_stopping and not problem.population  # no tail left to overfit
    starts = {"shared": (shared.etas, shared.gammas)}
    if extend:
        fewer = _per_layer_fit(
            problem, num_steps - 1, num_random, seed, extend, None, max_iterations
        )
        u, v = _to_relative(lam, num_context, fewer.etas, fewer.gammas, weight)
        if num_steps == 2:
            u_shared, v_shared = _to_relative(lam, num_context, shared.etas, shared.gammas, weight)
            inner = (u_shared[0], v_shared[0])
        else:
            inner = (u[-2], v[-2])
        u, v = u[:-1] + [inner[0], u[-1]], v[:-1] + [inner[1], 0.0]
        starts["extended"] = _from_relative(lam, num_context, u, v, weight)
    generator = torch.Generator().manual_seed(seed)
    eta, gamma = shared.etas[0], shared.gammas[0]
    low, high = math.log(0.5), math.log(4.0)
    for k in range(num_random):
        w, v = torch.rand(2, num_steps, generator=generator, dtype=torch.float64)
        if k % 2 == 0:  # near the shared pair
            starts[f"random {k}"] = ((eta * (2 * w - 1).exp()).tolist(), (gamma * 2 * v).tolist())
        else:  # in the units of the eigenvalue each step sees: gamma grows over the steps
            u = (low + (high - low) * w).exp().tolist()
            starts[f"random {k}"] = _from_relative(lam, num_context, u, (1.5 * v).tolist(), weight)
    for k, pair in enumerate(_wide_starts(tuning_loss, num_steps, num_wide, generator)):
        starts[f"wide {k}"] = pair
    if given is not None:
        starts["given"] = (list(given[0]), list(given[1]))
    fit = _fit(
        coords, tuning_loss, selection_loss, starts, max_iterations, early_stopping,
        screen=problem.population,
    )  # fmt: skip
    return shared if shared.selection_loss < fit.selection_loss else fit


def per_layer_eta_gamma(
    context_x,
    context_y,
    query_x,
    query_y,
    num_steps: int,
    selection: Prompts | None = None,
    **options,
) -> tuple[list[float], list[float]]:
    """``([eta_1..eta_L], [gamma_1..gamma_L])`` of :func:`per_layer_eta_gamma_fit` on these
    tuning prompts (``selection``: the selection prompts; ``options``: its keyword arguments)."""
    fit = per_layer_eta_gamma_fit(
        (context_x, context_y, query_x, query_y), selection, num_steps, **options
    )
    return fit.etas, fit.gammas
