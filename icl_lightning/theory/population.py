"""GD++'s population loss on paper A's tasks, estimated without bias by importance sampling.

For a noiseless linear task ``y = <w, x>``, ``w ~ N(0, s^2 I_a)``, inputs ``x ~ U(-r/2, r/2)^a``
(``a`` the active input dimension), L steps of GD++ leave in every eigendirection k of
``A = X^T X`` (eigenvalue ``lam_k``) the fraction

    E(lam) = prod_{l < L} (1 - a_l lam_l),   a_l = eta_l / N,
    lam_0 = lam,   lam_{l+1} = lam_l (1 - gamma_l lam_l)^2

of the query's target: ``y_q - pred = sum_k q_k w_k E(lam_k)`` (``q = U^T x_q``, ``w_k = u_k^T w``;
:func:`error_factor`, the spectral form of :func:`~icl_lightning.theory.gd.spectral_predict`).
Averaged over ``w`` and over the query (independent of X, ``E[x_q x_q^T] = r^2/12 I``) the loss
of one context X is

    l(X) = (s^2 r^2 / 24) sum_k E(lam_k)^2,

so the population loss ``E_X l(X)`` depends on the context's eigenvalues alone. Its tail is
extreme: ``E`` is a polynomial of degree ``(3^L - 1) / 2`` in ``lam``, and ``lam_max`` reaches
``N a r^2 / 4`` (all entries at a corner of the box) with a tiny probability. The estimate
draws X from a mixture of tilted boxes, each entry with density ``exp(theta u^2) / Z(theta)`` on
``[-1/2, 1/2]`` (times r), ``theta`` in :data:`TILTS` in equal shares (``theta = 0``: the task's
own inputs), and weighs each draw by ``p(X) / q(X) = 1 / sum_j alpha_j exp(theta_j |U|_F^2 -
N a log Z(theta_j))``: an unbiased estimate of any ``E_X f(X)``, with many draws at the large
``lam_max`` that decide the tail (:func:`draw_population`).

The tuned objective is the population loss on the *support* ``lam_max <= Lambda``, ``Lambda``
the smallest value with ``P(lam_max > Lambda) <= SUPPORT_TAIL`` (estimated from the same
draws): a test set of M prompts lies in it with probability ``>= 1 - M SUPPORT_TAIL``, and
there every prompt's loss is at most ``0.5 |x_q|^2 |w|^2 max_{[0, Lambda]} E^2`` (finite:
:func:`contraction`). Beyond ``Lambda`` the mean is unbounded for any sizes with a large
``gamma`` (docs/theory.md, "Stability of the tuned GD++").
"""

import math
from dataclasses import dataclass

import torch

#: input tilts ``theta`` of the importance sampler, drawn in equal shares
TILTS = (0.0, 8.0, 16.0, 32.0)
#: ``P(lam_max > Lambda)`` at the support's edge ``Lambda``
SUPPORT_TAIL = 1e-12


@dataclass(frozen=True)
class PopulationSample:
    """Importance-sampled contexts of a task, as their eigenvalues.

    Attributes:
        lam: ``(B, a)`` eigenvalues of ``X^T X``, ascending.
        weight: ``(B,)`` importance weights ``p / q``, 0 outside the support (their mean
            estimates ``P(lam_max <= support)``).
        scale: ``s^2 r^2 / 24``: ``l(X) = scale sum_k E(lam_k)^2``.
        support: ``Lambda``.
        tail: the estimated ``P(lam_max > Lambda)``.
        num_context: N.
    """

    lam: torch.Tensor
    weight: torch.Tensor
    scale: float
    support: float
    tail: float
    num_context: int


def supports_population(task) -> bool:
    """Whether ``task`` is a noiseless linear task with uniform inputs (paper A's), whose
    population loss this module estimates."""
    from icl_lightning.data.tasks import LinearRegression

    return (
        isinstance(task, LinearRegression)
        and task.input_distribution == "uniform"
        and task.noise_std == 0
    )


def _log_normaliser(theta: float) -> float:
    """``log Z(theta) = log int_{-1/2}^{1/2} exp(theta u^2) du`` (Simpson's rule, 2^16 cells)."""
    if theta == 0:
        return 0.0
    u = torch.linspace(-0.5, 0.5, 2**16 + 1, dtype=torch.float64)
    simpson = torch.ones_like(u)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    return float(torch.logsumexp(theta * u**2 + simpson.log(), 0)) + math.log(1 / (3 * 2**16))


def tilted_uniform(theta: float, shape, generator: torch.Generator) -> torch.Tensor:
    """Draws with density ``exp(theta u^2) / Z(theta)`` on ``[-1/2, 1/2]`` (``theta >= 0``).

    ``u = +-(1/2 - v)``, a random sign, and ``v`` on ``[0, 1/2]`` with density proportional to
    ``exp(-theta v + theta v^2)``, by rejection from the truncated exponential density
    proportional to ``exp(-theta v / 2)`` (``v^2 <= v / 2`` there), accepted with
    ``exp(theta v (v - 1/2)) >= exp(-theta / 16)``."""
    count = math.prod(shape)
    if theta == 0:
        return (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5).reshape(shape)
    rate, kept = theta / 2, []
    while sum(len(k) for k in kept) < count:
        uniform = torch.rand(3, 2 * count, generator=generator, dtype=torch.float64)
        v = -torch.log1p(-uniform[0] * -math.expm1(-rate / 2)) / rate
        sign = torch.where(uniform[1] < 0.5, -1.0, 1.0)
        accept = uniform[2] < torch.exp(theta * v * (v - 0.5))
        kept.append((sign * (0.5 - v))[accept])
    return torch.cat(kept)[:count].reshape(shape)


def draw_population(
    task, num_context: int, active_dim: int, count: int, generator: torch.Generator
) -> PopulationSample:
    """``count`` contexts of ``task`` (:func:`supports_population`) in ``active_dim`` input
    dimensions, importance-sampled over :data:`TILTS` (the first ``count // len(TILTS)`` from
    the task's own inputs), truncated to the support (module docstring)."""
    N, a, r = num_context, active_dim, task.input_range
    share = -(-count // len(TILTS))
    logs = [_log_normaliser(theta) for theta in TILTS]
    lams, weights = [], []
    for theta in TILTS:
        u = tilted_uniform(theta, (share, N, a), generator)
        norm = (u**2).sum((-2, -1))
        log_q = torch.stack([t * norm - N * a * z for t, z in zip(TILTS, logs, strict=True)])
        weights.append(torch.exp(-torch.logsumexp(log_q - math.log(len(TILTS)), 0)))
        x = r * u
        lams.append(torch.linalg.eigvalsh(x.transpose(-1, -2) @ x).clamp_min(0))
    lam, weight = torch.cat(lams)[:count], torch.cat(weights)[:count]
    top = lam[:, -1]
    order = torch.argsort(top, descending=True)
    beyond = torch.cumsum(weight[order], 0) / len(weight)  # P(lam_max >= top[order[i]])
    edge = int((beyond <= SUPPORT_TAIL).sum())  # draws beyond the support
    support = float(top[order[edge]]) if edge < len(order) else float(top.max())
    tail = float(beyond[edge - 1]) if edge > 0 else 0.0
    weight = torch.where(top <= support, weight, torch.zeros_like(weight))
    scale = task.weight_scale**2 * r**2 / 24
    return PopulationSample(lam, weight, scale, support, tail, N)


def error_factor(
    lam: torch.Tensor, etas: torch.Tensor, gammas: torch.Tensor, num_context: int
) -> torch.Tensor:
    """``E(lam)`` (module docstring) for ``(M, L)`` step sizes: ``(M, *lam.shape)``."""
    shape = (-1,) + (1,) * lam.ndim
    out = torch.ones(etas.shape[0], *lam.shape, dtype=lam.dtype, device=lam.device)
    lam = lam.unsqueeze(0)
    for step in range(etas.shape[1]):
        a, gamma = etas[:, step].reshape(shape) / num_context, gammas[:, step].reshape(shape)
        out = out * (1 - a * lam)
        lam = lam * (1 - gamma * lam) ** 2
    return out


def contraction(etas, gammas, support: float, num_context: int, num: int = 20_001) -> float:
    """``max |E(lam)|`` over ``lam in [0, support]`` (a grid of ``num`` points): every prompt
    with ``lam_max <= support`` has a loss of at most ``0.5 |x_q|^2 |w|^2`` times its square."""
    grid = torch.linspace(0, support, num, dtype=torch.float64)
    etas = torch.as_tensor(etas, dtype=torch.float64).reshape(1, -1)
    gammas = torch.as_tensor(gammas, dtype=torch.float64).reshape(1, -1)
    return float(error_factor(grid, etas, gammas, num_context).abs().max())
