"""The classic in-context baselines of Garg et al. (2022), at every prefix of the prompt at once.

Every learner takes the prompt's points ``xs`` ``(B, K+1, d)``, ``ys`` ``(B, K+1)`` and
queries ``qs`` ``(B, K+1, d)`` and returns ``(B, K+1)`` predictions: column k is the
prediction for ``q_k`` fitted on the first k points ``(x_j, y_j), j < k`` (column 0, no
points: 0, as Garg et al.). For the standard curve ``qs = xs``: the prediction for the next
point of the prompt. Work is batched over prompts and prefixes (no Python loop over prompts;
loops over k only where each prefix is its own solve: GD, GD++), in float64 inside.

- :func:`least_squares`: ``w_k = X_k^+ y_k`` (minimum norm below d points), with ``ridge``
  ``lambda > 0``: ``w_k = (X_k^T X_k + lambda I)^-1 X_k^T y_k`` (the posterior mean for
  ``w ~ N(0, s^2 I)`` and noise ``sigma^2`` at ``lambda = sigma^2 / s^2``: Bayes-optimal);
- :func:`nearest_neighbours`: the mean of ``y_j`` over the n points nearest ``q_k``;
- :func:`averaging`: ``<mean_j y_j x_j, q_k>``;
- :func:`lasso`: ``argmin_w 1/(2k) |y_k - X_k w|^2 + alpha |w|_1`` (scikit-learn's objective,
  no intercept), exact by the lasso homotopy on all prefixes at once;
- :func:`gd_curve`: L steps of paper A's GD / GD++ from 0 with step sizes per k.
"""

import math
from functools import partial

import torch

from icl_lightning.theory.gd import (
    gd_plus_plus_predict,
    gd_predict,
    grid_search,
    optimal_eta_gamma,
)


def _exclusive_cumsum(t: torch.Tensor) -> torch.Tensor:
    """``out[:, k] = sum_{j<k} t[:, j]`` along dim 1 (the sums over each prefix)."""
    return torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], 1).cumsum(1)


def _matvec(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``A x`` per prompt, ``(B, d, d) x (B, d)`` (a broadcast product: on CPU faster than a
    batched matmul of such tiny matrices)."""
    return (A * x[:, None, :]).sum(-1)


def least_squares(xs, ys, qs, ridge: float = 0.0, rank_tol: float = 1e-10) -> torch.Tensor:
    """``(B, K+1)`` least-squares predictions ``<w_k, q_k>`` (module docstring), every prefix
    by one pass over the points, O(d^2) per prompt and point.

    With ``H = (X^T X + lambda I)^+`` and the projector ``M`` onto the span of the rows seen,
    a new point ``(x, y)`` has the part ``u = (I - M) x`` outside that span. If
    ``|u|^2 > rank_tol |x|^2`` (a new direction; only for ``lambda = 0``) it is fitted exactly
    without moving the others' residuals: ``w <- w + (y - <w, x>) u / |u|^2`` (Gram-Schmidt);
    otherwise recursive least squares, ``w <- w + H x (y - <w, x>) / (1 + x^T H x)``,
    ``H <- H - H x x^T H / (1 + x^T H x)``. This is the minimum-norm solution ``X_k^+ y_k``
    below d points and the ordinary or ridge solution from d points on. When every prompt's
    points span R^d by the d-th, H starts there as ``(X_d^T X_d)^-1``; otherwise (inputs in
    a subspace) :func:`_greville` carries H through the new directions too.
    """
    dtype, (B, K1, d) = xs.dtype, xs.shape
    xs, ys, qs = xs.double(), ys.double(), qs.double()
    pred = torch.zeros(B, K1, dtype=torch.float64, device=xs.device)
    w = torch.zeros(B, d, dtype=torch.float64, device=xs.device)
    start = 0
    if ridge == 0:  # Gram-Schmidt while the points are new directions
        M = torch.zeros(B, d, d, dtype=torch.float64, device=xs.device)  # projector
        for k in range(min(d, K1 - 1)):
            pred[:, k] = (w * qs[:, k]).sum(-1)
            x = xs[:, k]
            u = x - _matvec(M, x)
            u = u - _matvec(M, u)  # twice: one Gram-Schmidt pass loses orthogonality
            uu = (u * u).sum(-1)
            if not bool((uu > rank_tol * (x * x).sum(-1)).all()):
                return _greville(xs, ys, qs, rank_tol).to(dtype)
            w = w + ((ys[:, k] - (w * x).sum(-1)) / uu)[:, None] * u
            M.addcmul_(u[:, :, None], (u / uu[:, None])[:, None, :])
        start = min(d, K1 - 1)
        if start == K1 - 1:
            pred[:, start] = (w * qs[:, start]).sum(-1)
            return pred.to(dtype)
        X = xs[:, :d]
        H = torch.cholesky_inverse(torch.linalg.cholesky(X.mT @ X))
    else:
        H = torch.eye(d, dtype=torch.float64, device=xs.device).repeat(B, 1, 1) / ridge
    for k in range(start, K1):  # recursive least squares
        pred[:, k] = (w * qs[:, k]).sum(-1)
        if k == K1 - 1:
            break
        x = xs[:, k]
        Hx = _matvec(H, x)
        s = 1 + (x * Hx).sum(-1)
        w = w + Hx * ((ys[:, k] - (w * x).sum(-1)) / s)[:, None]
        H.addcmul_(Hx[:, :, None], (Hx / s[:, None])[:, None, :], value=-1)
    return pred.to(dtype)


def _greville(xs, ys, qs, rank_tol: float) -> torch.Tensor:
    """:func:`least_squares` at ``lambda = 0`` for inputs that may not span R^d: both updates
    for every point, chosen per prompt, and H through a new direction ``u`` (``v = u/|u|^2``,
    ``s = 1 + x^T H x``): ``H <- H - H x v^T - v x^T H + s v v^T``, ``M <- M + u v^T``."""
    B, K1, d = xs.shape
    H = torch.zeros(B, d, d, dtype=xs.dtype, device=xs.device)
    M = torch.zeros_like(H)
    w = torch.zeros(B, d, dtype=xs.dtype, device=xs.device)
    pred = torch.zeros(B, K1, dtype=xs.dtype, device=xs.device)
    for k in range(K1):
        pred[:, k] = (w * qs[:, k]).sum(-1)
        if k == K1 - 1:
            break
        x = xs[:, k]
        error = ys[:, k] - (w * x).sum(-1)
        u = x - (M @ x[..., None])[..., 0]
        u = u - (M @ u[..., None])[..., 0]
        uu = (u * u).sum(-1)
        new = (uu > rank_tol * (x * x).sum(-1))[:, None]
        Hx = (H @ x[..., None])[..., 0]
        s = 1 + (x * Hx).sum(-1)
        v = u / torch.where(new[:, 0], uu, 1.0)[:, None]
        w = w + torch.where(new, v, Hx / s[:, None]) * error[:, None]
        H = H + torch.where(
            new[..., None],
            s[:, None, None] * v[:, :, None] * v[:, None, :]
            - Hx[:, :, None] * v[:, None, :]
            - v[:, :, None] * Hx[:, None, :],
            -(Hx[:, :, None] * Hx[:, None, :]) / s[:, None, None],
        )
        M = M + torch.where(new[..., None], u[:, :, None] * v[:, None, :], 0.0)
    return pred


def nearest_neighbours(xs, ys, qs, neighbours: int = 3) -> torch.Tensor:
    """``(B, K+1)``: the mean of ``y_j`` over the ``min(k, n)`` points ``x_j, j < k`` nearest
    ``q_k`` (Euclidean; uniform weights, as Garg et al.'s ``NNModel``)."""
    K1 = xs.shape[1]
    dist = torch.cdist(qs.double(), xs.double())  # (B, K+1, K+1): |q_k - x_j|
    later = torch.ones(K1, K1, dtype=torch.bool, device=xs.device).triu()  # j >= k
    dist = dist.masked_fill(later, torch.inf)
    n = min(neighbours, K1)
    nearest, index = dist.topk(n, dim=-1, largest=False)
    valid = nearest.isfinite()
    chosen = ys.double()[:, None, :].expand(-1, K1, -1).gather(2, index)
    total = torch.where(valid, chosen, 0.0).sum(-1)
    return (total / valid.sum(-1).clamp_min(1)).to(xs.dtype)


def averaging(xs, ys, qs) -> torch.Tensor:
    """``(B, K+1)``: ``<(1/k) sum_{j<k} y_j x_j, q_k>`` (0 for k = 0)."""
    k = torch.arange(xs.shape[1], device=xs.device).clamp_min(1)
    mean = _exclusive_cumsum(xs.double() * ys.double()[..., None]) / k[:, None]
    return (mean * qs.double()).sum(-1).to(xs.dtype)


def lasso(xs, ys, qs, alpha: float, max_steps: int | None = None) -> torch.Tensor:
    """``(B, K+1)`` predictions ``<w_k, q_k>`` of the lasso fitted on every prefix
    (:func:`lasso_weights`; column 0, no points: 0)."""
    dtype = xs.dtype
    w = lasso_weights(xs[:, :-1], ys[:, :-1], alpha, max_steps)
    pred = torch.zeros(xs.shape[:2], dtype=torch.float64, device=xs.device)
    pred[:, 1:] = (w * qs[:, 1:].double()).sum(-1)
    return pred.to(dtype)


def lasso_weights(xs, ys, alpha: float, max_steps: int | None = None) -> torch.Tensor:
    """``(B, K, d)``: ``w_k = argmin_w 1/(2k) |y_k - X_k w|^2 + alpha |w|_1`` on the first
    k = 1..K points (scikit-learn's ``Lasso(alpha, fit_intercept=False)`` objective), exact:
    :func:`_lasso_path` on ``G = X_k^T X_k / k``, ``c = X_k^T y_k / k`` (prefix sums), in at
    most ``max_steps`` (default 10 d) steps."""
    B, K, d = xs.shape
    xs, ys = xs.double(), ys.double()
    k = torch.arange(1, K + 1, device=xs.device, dtype=torch.float64)[:, None]
    gram = (xs[:, :, :, None] * xs[:, :, None, :]).cumsum(1) / k[..., None]
    c = (xs * ys[..., None]).cumsum(1) / k
    w = _lasso_path(
        gram.reshape(-1, d, d), c.reshape(-1, d), alpha, 10 * d if max_steps is None else max_steps
    )
    return w.reshape(B, K, d)


_TIE = 1e-9  # |1 -+ b_j| below this: g_j moves along +-lambda, never joins


def _lasso_path(G: torch.Tensor, c: torch.Tensor, alpha: float, max_steps: int) -> torch.Tensor:
    """``(n, d)`` minimisers of ``w^T G w / 2 - c^T w + alpha |w|_1`` for n problems at once,
    by the lasso homotopy (LARS with the lasso modification), exact up to rounding.

    Optimality (KKT): ``g = c - G w`` has ``g_A = lambda s_A`` on the active set A (signs
    ``s``) and ``|g_j| <= lambda`` off it. From ``lambda = max |c|`` (w = 0, A = the argmax) the
    solution is linear in lambda while A holds: ``w_A = G_AA^-1 (c_A - lambda s_A) = u - lambda
    v`` and ``g = a + lambda b``. Going down, the next event is the largest lambda where an
    inactive ``g_j`` reaches ``+-lambda`` from inside (``a_j / (1 - b_j)`` if ``b_j < 1``,
    ``-a_j / (1 + b_j)`` if ``b_j > -1``: j joins with the sign of ``g_j``) or an active
    ``w_i`` reaches 0 (``u_i / v_i`` if ``s_i v_i < 0``: i leaves); no event above ``alpha``:
    ``w = u - alpha v``. Each step solves every unfinished problem's ``G_AA`` (identity off
    A; one row and column change a step; one batched solve); finished problems leave the
    batch once they are a quarter of it. Below d points ``|A| <= k`` (continuous data: the
    solution is unique).
    """
    d = c.shape[-1]
    eye = torch.eye(d, dtype=c.dtype, device=c.device)
    w = torch.zeros_like(c)
    lam, first = c.abs().max(-1)
    todo = (lam > alpha).nonzero()[:, 0]
    G, c, lam, first = G[todo], c[todo], lam[todo], first[todo]
    active = torch.nn.functional.one_hot(first, d).bool()
    sign = active * c.sign()
    M = torch.where(active[:, :, None] & active[:, None, :], G, eye)  # G_AA, identity off A
    for _ in range(max_steps):
        if not len(todo):
            break
        uv = torch.linalg.solve(M, torch.stack([c * active, sign], -1))
        u, v = uv.unbind(-1)
        Guv = G @ uv
        a, b = c - Guv[..., 0], Guv[..., 1]
        # each event's lambda, at most the current one (an inactive g_j already past
        # +-lambda by rounding joins now); -inf where it cannot happen or where g_j moves
        # along +-lambda (|b_j| = 1: a column tied with the active ones, degenerate inputs)
        none = torch.tensor(-torch.inf, dtype=c.dtype, device=c.device)
        reach_up = torch.where(~active & (b < 1 - _TIE), a / (1 - b), none)
        reach_down = torch.where(~active & (b > _TIE - 1), -a / (1 + b), none)
        join = torch.minimum(torch.maximum(reach_up, reach_down), lam[:, None])
        leave = torch.minimum(torch.where(active & (sign * v < 0), u / v, none), lam[:, None])
        (join_at, j), (leave_at, i) = join.max(-1), leave.max(-1)
        lam = torch.maximum(torch.maximum(join_at, leave_at), torch.full_like(lam, alpha))
        done = lam <= alpha
        w[todo[done]] = (u - alpha * v)[done]
        rows = torch.arange(len(todo), device=c.device)
        joins, leaves = rows[~done & (join_at >= leave_at)], rows[~done & (join_at < leave_at)]
        active[joins, j[joins]], active[leaves, i[leaves]] = True, False
        row = G[joins, j[joins]] * active[joins]
        M[joins, j[joins]], M[joins, :, j[joins]] = row, row
        M[leaves, i[leaves]], M[leaves, :, i[leaves]] = eye[i[leaves]], eye[i[leaves]]
        g = a[joins, j[joins]] + lam[joins] * b[joins, j[joins]]
        sign[joins, j[joins]], sign[leaves, i[leaves]] = g.sign(), 0.0
        if 4 * int(done.sum()) >= len(done):  # finished problems stay as they are till then
            todo, G, M, c, lam, active, sign = (
                t[~done] for t in (todo, G, M, c, lam, active, sign)
            )
    if len(todo):
        raise RuntimeError(
            f"lasso: not every prompt and prefix solved in max_steps={max_steps} homotopy "
            "steps (inputs in degenerate position?)"
        )
    return w


def gd_curve(xs, ys, qs, etas, num_steps: int = 1, gammas=None) -> torch.Tensor:
    """``(B, K+1)``: L = ``num_steps`` steps of GD (GD++ with ``gammas``) from ``w = 0`` on the
    first k points, ``etas[k]`` (and ``gammas[k]``) the step sizes for k points (k >= 1)."""
    pred = torch.zeros(xs.shape[:2], dtype=xs.dtype, device=xs.device)
    for k in range(1, xs.shape[1]):
        X, y, q = xs[:, :k], ys[:, :k], qs[:, k]
        if gammas is None:
            pred[:, k] = gd_predict(X, y, q, etas[k], num_steps)
        else:
            pred[:, k] = gd_plus_plus_predict(X, y, q, etas[k], gammas[k], num_steps)
    return pred


def _powers(xs, ys, qs, count: int) -> torch.Tensor:
    """``(B, count)``: ``u_j = q^T A^j s`` for ``A = X^T X``, ``s = X^T y``, j < ``count``."""
    v = (xs * ys[..., None]).sum(1)  # broadcast products: faster than batched tiny matmuls
    out = []
    for _ in range(count):
        out.append((qs * v).sum(-1))
        v = (xs * (xs * v[:, None, :]).sum(-1, keepdim=True)).sum(1)
    return torch.stack(out, -1)


def step_size_polynomial(xs, ys, qs, num_steps: int, plus_plus: bool):
    """GD's (GD++'s) prediction as a polynomial in its step sizes: ``(features (B, M),
    monomials)`` with ``pred = features @ monomials(a, gamma)``, ``a = eta / k``.

    L steps of GD from 0: ``pred = sum_{l=1..L} (-1)^(l+1) C(L, l) a^l u_{l-1}``,
    ``u_j = q^T A^j s``. Two steps of GD++ (shared ``eta, gamma``; the inputs become
    ``(I - gamma A) x`` after step 1): ``pred = 2a u_0 - a^2 u_1 - 2a gamma u_1
    + 2a^2 gamma u_2 + a gamma^2 u_2 - a^2 gamma^2 u_3``.
    """
    if not plus_plus:
        u = _powers(xs, ys, qs, num_steps)
        signs = [(-1) ** j * math.comb(num_steps, j + 1) for j in range(num_steps)]
        features = u * torch.tensor(signs, dtype=u.dtype, device=u.device)

        def monomials(a, gamma):
            return torch.stack([a ** (j + 1) for j in range(num_steps)])

        return features, monomials
    u0, u1, u2, u3 = _powers(xs, ys, qs, 4).unbind(-1)
    features = torch.stack([2 * u0, -u1, -2 * u1, 2 * u2, u2, -u3], -1)

    def monomials(a, gamma):
        return torch.stack([a, a**2, a * gamma, a**2 * gamma, a * gamma**2, a**2 * gamma**2])

    return features, monomials


def _quadratic_loss(monomials, S, v, k, eta, gamma=None) -> torch.Tensor:
    """``m^T S m - 2 v^T m`` for each candidate ``(eta, gamma)``: the mean squared error up to
    the constant ``E y^2``, with ``m = monomials(eta / k, gamma)``."""
    m = monomials(eta / k, torch.zeros_like(eta) if gamma is None else gamma)
    return torch.einsum("mc,mn,nc->c", m, S, m) - 2 * (v @ m)


def tuned_step_sizes(xs, ys, num_steps: int, plus_plus: bool) -> tuple[list, list]:
    """Per k = 0..K, the step sizes of L-step GD (``gammas`` 0) or 2-step GD++ (shared
    ``eta, gamma``; more steps: :func:`~icl_lightning.theory.gd.optimal_eta_gamma`) minimising
    the mean squared error of the prediction for point k from the first k points, on the
    tuning prompts ``xs, ys``. The loss is a quadratic form in the monomials of
    :func:`step_size_polynomial`, ``E y^2 - 2 m^T E[y F] + m^T E[F F^T] m``: its moments are
    taken once per k, then :func:`~icl_lightning.theory.gd.grid_search` costs nothing per
    prompt (``eta in [0, 6k / mean lam_max]``, ``gamma in [0, 1 / mean lam_max]``, as
    ``optimal_eta``'s, widened by ``lam_max >= trace(A) / d``)."""
    xs, ys = xs.double(), ys.double()
    etas, gammas = [0.0], [0.0]
    for k in range(1, xs.shape[1]):
        X, y, q, target = xs[:, :k], ys[:, :k], xs[:, k], ys[:, k]
        if plus_plus and num_steps > 2:
            eta, gamma = optimal_eta_gamma(X, y, q, target, num_steps)
            etas.append(eta)
            gammas.append(gamma)
            continue
        F, monomials = step_size_polynomial(X, y, q, num_steps, plus_plus)
        loss = partial(_quadratic_loss, monomials, F.T @ F / len(F), F.T @ target / len(F), k)
        # lam_max >= trace(A) / d: the bounds of optimal_eta's search, widened to be safe
        scale = float((X * X).sum()) / (X.shape[0] * X.shape[-1])
        if plus_plus:
            (eta, gamma), _ = grid_search(loss, [0.0, 0.0], [6 * k / scale, 1 / scale])
        else:
            (eta,), _ = grid_search(loss, [0.0], [6 * k / scale], num=64)
            gamma = 0.0
        etas.append(eta)
        gammas.append(gamma)
    return etas, gammas


def _net(params, x: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` outputs ``w_2^T relu(W_1 x + b_1) + b_2`` of each prompt's network."""
    W1, b1, w2, b2 = params
    return (torch.relu(x @ W1 + b1) * w2[:, None]).sum(-1) + b2


def two_layer_net(
    xs, ys, qs, hidden: int = 100, steps: int = 100, lr: float = 5e-3, generator=None
) -> torch.Tensor:
    """``(B, K+1)`` predictions of Garg et al.'s ``GDModel``: for each k a fresh network
    ``f(x) = w_2^T relu(W_1 x + b_1) + b_2`` per prompt (``nn.Linear``'s initialisation), trained
    by ``steps`` full-batch Adam steps (lr ``lr``) on the mean squared error over the first k
    points (Garg et al.: hidden 100, 100 steps, lr 5e-3, batches of 100 >= k), then evaluated
    at ``q_k``. All prompts' networks train at once (one loss, the sum of theirs)."""
    B, K1, d = xs.shape
    kw = {"dtype": xs.dtype, "device": xs.device, "generator": generator}
    pred = torch.zeros(B, K1, dtype=xs.dtype, device=xs.device)

    def uniform(shape, fan_in):
        return ((torch.rand(shape, **kw) * 2 - 1) / fan_in**0.5).requires_grad_()

    for k in range(1, K1):
        W1, b1 = uniform((B, d, hidden), d), uniform((B, 1, hidden), d)
        w2, b2 = uniform((B, hidden), hidden), uniform((B, 1), hidden)
        params = [W1, b1, w2, b2]
        optimizer = torch.optim.Adam(params, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                (_net(params, xs[:, :k]) - ys[:, :k]).square().mean(-1).sum().backward()
                optimizer.step()
        with torch.no_grad():
            pred[:, k] = _net(params, qs[:, k : k + 1])[:, 0]
    return pred
