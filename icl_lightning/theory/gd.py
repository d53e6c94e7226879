"""Gradient-descent learners of paper A, their LSA weight constructions, and the eta search.

Every function is pure and batched over prompts: ``context_x`` ``(B, N, d)``, ``context_y``
``(B, N)``, ``query_x`` ``(B, d)``. The learner is a linear model ``f(x) = <w, x>`` trained on
the context loss ``L(w) = 1/(2N) sum_i (<w, x_i> - y_i)^2``, whose gradient is
``(1/N) X^T (X w - y)``. Loops run over GD steps (L <= a few), never over prompts.

The constructions return per-layer weight dicts ``{"W_Q", "W_K", "W_V", "P"}`` with one head
and key size ``D = d + 1``, laid out as :class:`~icl_lightning.models.LSALayer` expects
(:meth:`~icl_lightning.models.LSA.from_weights` builds the model); with them an LSA computes
``h_j <- h_j + P sum_i (W_Q h_j . W_K h_i) W_V h_i``.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from icl_lightning.checks import require
from icl_lightning.theory.loss import prediction_loss

Weights = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------- learners
def gd_weights(context_x, context_y, eta, num_steps: int = 1, w0=None) -> torch.Tensor:
    """``(B, d)`` weights after ``num_steps`` GD steps ``w <- w - (eta/N) X^T (X w - y)``.

    Starts from ``w0`` (``(d,)`` or ``(B, d)``; default 0). ``eta`` is a float or a tensor
    broadcastable to ``(B, 1)``.
    """
    N = context_x.shape[-2]
    w = torch.zeros_like(context_x[..., 0, :])
    if w0 is not None:
        w = w + w0
    for _ in range(num_steps):
        residual = context_y - torch.einsum("...nd,...d->...n", context_x, w)
        w = w + eta / N * torch.einsum("...nd,...n->...d", context_x, residual)
    return w


def gd_predict(context_x, context_y, query_x, eta, num_steps: int = 1, w0=None) -> torch.Tensor:
    """``(B,)`` predictions ``<w_k, x_q>`` of the linear model after k = ``num_steps`` GD steps."""
    w = gd_weights(context_x, context_y, eta, num_steps, w0)
    return torch.einsum("...d,...d->...", w, query_x)


def linear_kernel(context_phi, query_phi) -> torch.Tensor:
    """``(B, N)`` kernel values ``k_i = <phi_i, phi_q>`` of context and query features (the raw
    inputs x, or learned features ``phi(x)``)."""
    return torch.einsum("...nf,...f->...n", context_phi, query_phi)


def one_step_gd(kernel, context_y, eta=1.0) -> torch.Tensor:
    """``(B,)`` predictions of one GD step from ``w0 = 0`` with the kernel ``k_i = k(x_i, x_q)``:
    ``pred = (eta / N) sum_i y_i k_i``.

    With :func:`linear_kernel` of features ``phi`` this is ``<w_1, phi(x_q)>`` for
    ``w_1 = -eta grad L(0)``, ``L(w) = 1/(2N) sum_i (<w, phi_i> - y_i)^2``; another bilinear form
    ``k_i = phi_i^T M phi_q`` is the step preconditioned by M. ``kernel`` is ``(B, N)``; the
    prediction is linear in ``eta``.
    """
    return eta / context_y.shape[-1] * (context_y * kernel).sum(-1)


def per_step(value: float | Sequence[float], num_steps: int) -> list[float]:
    """``value`` for each of ``num_steps`` steps: a number repeated, or a sequence of them."""
    values = [float(value)] * num_steps if isinstance(value, int | float) else list(value)
    require(len(values) == num_steps, "step sizes", values, f"one number or {num_steps} numbers")
    return values


def gd_plus_plus_weights(context_x, context_y, eta, gamma, num_steps: int = 1) -> torch.Tensor:
    """``(B, d)`` weights ``w`` of GD++, whose prediction is ``<w, x_q>`` (see
    :func:`gd_plus_plus_predict` for the steps).

    GD++ transforms the query linearly, ``x_q^(l) = T_l x_q`` with ``T_0 = I`` and
    ``T_{l+1} = (I - gamma_l A_l) T_l``, and adds ``(eta_l/N) <X_l^T r_l, x_q^(l)>`` at step l,
    so ``w = sum_l (eta_l/N) T_l^T X_l^T r_l``: GD++ is a linear model of the query, and ``w`` is
    also its sensitivity ``d pred / d x_q``. O(N d^2 + d^3) per prompt and step.
    """
    N, d = context_x.shape[-2:]
    x, r = context_x, context_y
    eye = torch.eye(d, dtype=context_x.dtype, device=context_x.device)
    T = eye  # T_l
    w = torch.zeros_like(context_x[..., 0, :])
    etas, gammas = per_step(eta, num_steps), per_step(gamma, num_steps)
    for step, (eta_l, gamma_l) in enumerate(zip(etas, gammas, strict=True)):
        Xr = torch.einsum("...nd,...n->...d", x, r)  # X^T r = sum_j r_j x_j
        w = w + eta_l / N * (Xr.unsqueeze(-2) @ T).squeeze(-2)  # T_l^T X_l^T r_l
        if step + 1 == num_steps:
            break
        A = x.transpose(-1, -2) @ x
        r = r - eta_l / N * torch.einsum("...nd,...d->...n", x, Xr)
        x = x - gamma_l * x @ A
        T = (eye - gamma_l * A) @ T
    return w


def gd_plus_plus_predict(
    context_x, context_y, query_x, eta, gamma, num_steps: int = 1
) -> torch.Tensor:
    """``(B,)`` predictions of GD++: GD on residuals plus paper A's input transformation.

    From ``r_i = y_i`` and ``pred = 0``, each step uses the inputs before the step and, with
    ``A = sum_j x_j x_j^T``, sets::

        pred <- pred + (eta/N) sum_i r_i <x_i, x_q>
        r_i  <- r_i  - (eta/N) sum_j r_j <x_j, x_i>
        x    <- x - gamma A x          (every input: context and query)

    ``gamma = 0`` is plain GD from ``w0 = 0``; the transformation is a curvature correction
    (it shrinks large eigenvalues of ``A``), so L steps of GD++ beat L steps of GD. ``eta`` and
    ``gamma`` are one number shared by the steps, or one per step (``eta_l``, ``gamma_l``, as
    paper A's official code trains them). Computed as ``<w, x_q>`` with the weights of
    :func:`gd_plus_plus_weights` (``sum_j r_j <x_j, x_i> = <X^T r, x_i>``: no N x N Gram).

    The specification of GD++: the tests hold the spectral form the tuners use
    (:func:`spectral_predict`) and the LSA construction to it; the probes read
    :func:`gd_plus_plus_weights` directly.
    """
    w = gd_plus_plus_weights(context_x, context_y, eta, gamma, num_steps)
    return torch.einsum("...d,...d->...", w, query_x)


# --------------------------------------------------------------------------- constructions
def _heads(**weights: torch.Tensor) -> Weights:
    return {name: w.unsqueeze(0) for name, w in weights.items()}


def gd_lsa_layer(
    input_dim: int, num_context: int, eta: float, dtype=torch.float64, device=None
) -> Weights:
    """Paper A's one-step construction (``w0 = 0``): one LSA layer == one GD step.

    ``W_Q = W_K = [[I_d, 0], [0, 0]]``, ``W_V = [[0, 0], [0, -1]]``, ``P = (eta/N) I``. The
    query's last entry becomes ``-(eta/N) sum_i y_i <x_i, x_q>``, so ``pred = <w_1, x_q>``;
    each context token's last entry becomes its residual ``y_i - <w_1, x_i>``, so stacking L
    such layers (or applying one L times) performs L GD steps.
    """
    d, D = input_dim, input_dim + 1
    kw = dict(dtype=dtype, device=device)
    W_QK = torch.zeros(D, D, **kw)
    W_QK[:d, :d] = torch.eye(d, **kw)
    W_V = torch.zeros(D, D, **kw)
    W_V[d, d] = -1.0
    P = eta / num_context * torch.eye(D, **kw)
    return _heads(W_Q=W_QK, W_K=W_QK.clone(), W_V=W_V, P=P)


def gd_plus_plus_lsa_layer(
    input_dim: int, num_context: int, eta: float, gamma: float, dtype=torch.float64, device=None
) -> Weights:
    """One GD++ step as an LSA layer.

    ``W_Q = W_K = [[I_d, 0], [0, 0]]``, ``W_V = diag(-gamma I_d, -1)``, ``P = diag(I_d, eta/N)``:
    each token's input part moves by ``-gamma sum_i x_i <x_i, x>`` and its last entry by
    ``-(eta/N) sum_i y_i <x_i, x>`` (see :func:`gd_plus_plus_predict`).
    """
    d = input_dim
    kw = dict(dtype=dtype, device=device)
    W_QK = torch.zeros(d + 1, d + 1, **kw)
    W_QK[:d, :d] = torch.eye(d, **kw)
    W_V = torch.diag(torch.cat([torch.full((d,), -gamma, **kw), torch.tensor([-1.0], **kw)]))
    P = torch.diag(torch.cat([torch.ones(d, **kw), torch.tensor([eta / num_context], **kw)]))
    return _heads(W_Q=W_QK, W_K=W_QK.clone(), W_V=W_V, P=P)


def gd_lsa_layers(
    input_dim: int, num_context: int, eta: float, num_layers: int, gamma: float = 0.0, **kw
) -> list[Weights]:
    """L layers, each one step of GD (``gamma = 0``) or of GD++ (``gamma != 0``).

    The specification of paper A's construction at depth (``LSA.from_weights`` of these is L
    steps of the learner): the tests and ``docs/theory.md`` use it; the probes compare with
    the closed forms (:func:`gd_weights`, :func:`gd_plus_plus_weights`) instead.
    """
    if gamma == 0:
        return [gd_lsa_layer(input_dim, num_context, eta, **kw) for _ in range(num_layers)]
    return [
        gd_plus_plus_lsa_layer(input_dim, num_context, eta, gamma, **kw) for _ in range(num_layers)
    ]


# ------------------------------------------------------------------------------ eta search
def one_step_sums(p: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over prompts from which the best step size of one GD step follows.

    One step is linear in eta, ``pred = eta p`` with ``p`` the prediction at ``eta = 1``
    (:func:`one_step_gd`); :func:`best_eta` needs only ``{"py": sum p y, "pp": sum p^2,
    "yy": sum y^2}``. Sums add up over chunks and processes.
    """
    return {"py": (p * target).sum(), "pp": (p * p).sum(), "yy": (target * target).sum()}


def best_eta(sums: dict[str, torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eta*, loss)`` of one GD step with the loss-minimising step size, from
    :func:`one_step_sums` over ``count`` prompts.

    The mean loss ``0.5/n sum_b (y_b - eta p_b)^2`` is a parabola in eta, minimised by
    ``eta* = sum p y / sum p^2``, where it equals ``0.5/n (sum y^2 - (sum p y)^2 / sum p^2)``.
    """
    pp = sums["pp"].clamp_min(torch.finfo(sums["pp"].dtype).tiny)
    return sums["py"] / pp, 0.5 * (sums["yy"] - sums["py"] ** 2 / pp) / count


def spectral_form(context_x, context_y, query_x) -> tuple[torch.Tensor, ...]:
    """``(lam, q, s)``, each ``(B, d)``: eigenvalues of ``A = X^T X``, and ``U^T x_q``,
    ``U^T X^T y`` in its eigenvectors U.

    GD and GD++ act on each eigendirection separately (the input transformation is a polynomial
    in A), which makes the eta search cost O(B d) per candidate.
    """
    lam, U = torch.linalg.eigh(context_x.transpose(-1, -2) @ context_x)
    q = torch.einsum("bde,bd->be", U, query_x)
    s = torch.einsum("bde,bnd,bn->be", U, context_x, context_y)
    return lam, q, s


def spectral_predict(lam, q, s, eta, gamma, num_steps: int, num_context: int) -> torch.Tensor:
    """GD++ predictions (GD when ``gamma = 0``) from :func:`spectral_form`, per candidate.

    ``eta`` and ``gamma`` have shape ``(M,)``; the result is ``(M, B)``. Per direction k, with
    ``a = eta/N``: ``pred += a q_k s_k``, ``s_k *= (1 - gamma lam_k)(1 - a lam_k)``,
    ``q_k *= 1 - gamma lam_k``, ``lam_k *= (1 - gamma lam_k)^2``.
    With ``(M, L)`` tensors, step l uses ``eta[:, l]`` and ``gamma[:, l]`` (per-step sizes).
    """
    if eta.ndim == 1:
        eta, gamma = eta[:, None].expand(-1, num_steps), gamma[:, None].expand(-1, num_steps)
    a = (eta / num_context)[:, None, None, :]
    gamma = gamma[:, None, None, :]
    lam, q, s = lam.unsqueeze(0), q.unsqueeze(0), s.unsqueeze(0)
    pred = torch.zeros(a.shape[0], lam.shape[1], dtype=lam.dtype, device=lam.device)
    for step in range(num_steps):
        a_l, gamma_l = a[..., step], gamma[..., step]
        pred = pred + (a_l * q * s).sum(-1)
        shrink = 1 - gamma_l * lam
        s, q, lam = shrink * (1 - a_l * lam) * s, shrink * q, lam * shrink**2
    return pred


def grid_search(
    loss: Callable[..., torch.Tensor],
    lows: list[float],
    highs: list[float],
    num: int = 10,
    rounds: int = 8,
) -> tuple[list[float], float]:
    """Minimise ``loss(*params) -> (M,)`` over a box, vectorised over candidates.

    Each round evaluates a full ``num^k`` grid in one call, then zooms in to the two grid cells
    around the best point. Returns the best parameters and their loss.
    """
    lo = torch.tensor(lows, dtype=torch.float64)
    hi = torch.tensor(highs, dtype=torch.float64)
    floor, ceiling = lo.clone(), hi.clone()
    for _ in range(rounds):
        axes = [
            torch.linspace(float(a), float(b), num, dtype=torch.float64)
            for a, b in zip(lo, hi, strict=True)
        ]
        grid = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")])
        values = torch.nan_to_num(loss(*grid).cpu().double(), nan=float("inf"))
        index = int(values.argmin())
        best, step = grid[:, index], (hi - lo) / (num - 1)
        lo, hi = torch.maximum(best - step, floor), torch.minimum(best + step, ceiling)
    return best.tolist(), float(values[index])


def optimal_eta(context_x, context_y, query_x, query_y, num_steps: int = 1) -> float:
    """The GD step size minimising the mean query loss of ``num_steps`` GD steps on these tasks.

    One step: :func:`best_eta` (closed form). More steps: the loss is a polynomial of
    degree 2L in eta (:func:`gd_loss_polynomial`), minimised exactly over
    ``eta in [0, 6N / mean_b lam_max]``: the least loss among the ends and the real roots of
    its derivative there.
    """
    if num_steps == 1:
        p = one_step_gd(linear_kernel(context_x, query_x), context_y)
        eta, _ = best_eta(one_step_sums(p, query_y), len(query_y))
        return float(eta)
    N = context_x.shape[-2]
    lam, q, s = spectral_form(*(t.double() for t in (context_x, context_y, query_x)))
    loss = gd_loss_polynomial(lam, q, s, query_y.double(), num_steps)
    a_max = 6 / float(lam[:, -1].mean())
    slope = loss.deriv()
    candidates = [0.0, a_max] + [
        float(r.real)
        for r in slope.roots()
        if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and 0 <= r.real <= a_max
    ]
    eta = torch.tensor(candidates, dtype=torch.float64) * N
    pred = spectral_predict(lam, q, s, eta, torch.zeros_like(eta), num_steps, N)
    return float(eta[prediction_loss(pred, query_y.double()).mean(-1).argmin()])


def gd_loss_polynomial(lam, q, s, target, num_steps: int) -> np.polynomial.Polynomial:
    """The mean query loss of ``num_steps`` GD steps from 0 as a polynomial in ``a = eta/N``,
    from :func:`spectral_form`.

    GD leaves ``(1 - a lam_k)^L`` of each direction, so
    ``pred = sum_k q_k s_k (1 - (1 - a lam_k)^L) / lam_k = sum_{m=1..L} c_m a^m`` with
    ``c_m = (-1)^(m+1) C(L, m) u_{m-1}``, ``u_j = sum_k q_k s_k lam_k^j``. With ``c_0 = -y``
    and ``G = mean_b c c^T`` the loss ``0.5 mean (pred - y)^2`` has the coefficients
    ``p_n = 0.5 sum_{i+j=n} G_ij`` (degree 2L).
    """
    L = num_steps
    powers = torch.stack([lam**j for j in range(L)], -1)  # (B, d, L)
    u = torch.einsum("bk,bkj->bj", q * s, powers)
    signs = torch.tensor([(-1) ** m * math.comb(L, m + 1) for m in range(L)], dtype=u.dtype)
    c = torch.cat([-target.reshape(-1, 1), u * signs], -1)
    G = (c.T @ c / len(c)).numpy()
    p = np.zeros(2 * L + 1)
    for i in range(L + 1):
        p[i : i + L + 1] += 0.5 * G[i]
    return np.polynomial.Polynomial(p)


def optimal_eta_gamma(
    context_x, context_y, query_x, query_y, num_steps: int
) -> tuple[float, float]:
    """``(eta, gamma)`` of GD++ (shared by all steps) minimising the mean query loss.

    Grid search over ``eta in [0, 6N / mean lam_max]``, ``gamma in [0, 1 / mean lam_max]``. With
    one step the transformation cannot act (it changes the inputs after the only step), so
    ``gamma = 0`` and eta is GD's closed form.
    """
    if num_steps == 1:
        return optimal_eta(context_x, context_y, query_x, query_y), 0.0
    (eta, gamma), _ = _search_plus_plus(context_x, context_y, query_x, query_y, num_steps)
    return eta, gamma


def _search_plus_plus(context_x, context_y, query_x, query_y, num_steps):
    """:func:`grid_search` of GD++'s shared ``(eta, gamma)`` on the spectral form."""
    N = context_x.shape[-2]
    x64 = [t.double() for t in (context_x, context_y, query_x)]
    lam, q, s = spectral_form(*x64)
    target = query_y.double()
    scale = float(lam[:, -1].mean())

    def loss(eta, gamma):
        pred = spectral_predict(lam, q, s, eta.to(lam.device), gamma.to(lam.device), num_steps, N)
        return prediction_loss(pred, target).mean(-1)

    return grid_search(loss, [0.0, 0.0], [6 * N / scale, 1 / scale], num=10, rounds=6)
