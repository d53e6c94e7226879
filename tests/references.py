"""Independent references: paper A's learners written out prompt by prompt with Python loops.

Nothing here imports the code under test; the loops follow the papers' update rules literally.
"""

import torch


def _dot(a: list[float], b: list[float]) -> float:
    return sum(u * v for u, v in zip(a, b, strict=True))


def naive_gd_predict(context_x, context_y, query_x, eta: float, num_steps: int) -> torch.Tensor:
    """``<w_L, x_q>`` after L steps ``w <- w + (eta/N) sum_i (y_i - <w, x_i>) x_i`` from 0."""
    B, N, d = context_x.shape
    preds = []
    for b in range(B):
        xs, ys = context_x[b].tolist(), context_y[b].tolist()
        w = [0.0] * d
        for _ in range(num_steps):
            residuals = [y - _dot(w, x) for x, y in zip(xs, ys, strict=True)]
            w = [
                w[k] + eta / N * sum(r * x[k] for r, x in zip(residuals, xs, strict=True))
                for k in range(d)
            ]
        preds.append(_dot(w, query_x[b].tolist()))
    return torch.tensor(preds, dtype=torch.float64)


def naive_gd_plus_plus(context_x, context_y, query_x, eta, gamma, num_steps) -> torch.Tensor:
    """Paper A's GD++ as its token update, token by token: every token ``(x_j, y_j)`` (the
    query's y starts at 0) moves by ``x_j -= gamma sum_i x_i <x_i, x_j>`` and
    ``y_j -= (eta/N) sum_i y_i <x_i, x_j>`` over the context points i, all from the tokens
    before the step; the prediction is ``-y_q``. ``gamma = 0`` is plain GD."""
    B, N, d = context_x.shape
    preds = []
    for b in range(B):
        xs = context_x[b].tolist() + [query_x[b].tolist()]
        ys = context_y[b].tolist() + [0.0]
        for _ in range(num_steps):
            dots = [[_dot(xs[i], xs[j]) for j in range(N + 1)] for i in range(N)]
            xs = [
                [xs[j][k] - gamma * sum(xs[i][k] * dots[i][j] for i in range(N)) for k in range(d)]
                for j in range(N + 1)
            ]
            ys = [ys[j] - eta / N * sum(ys[i] * dots[i][j] for i in range(N)) for j in range(N + 1)]
        preds.append(-ys[N])
    return torch.tensor(preds, dtype=torch.float64)


def finite_difference_sensitivities(fn, context_x, context_y, query_x, h=1e-5) -> torch.Tensor:
    """``(B, d)`` central differences ``(f(x_q + h e_k) - f(x_q - h e_k)) / 2h`` of a batched
    learner ``fn(context_x, context_y, query_x) -> (B,)``."""
    columns = []
    for k in range(query_x.shape[-1]):
        step = torch.zeros_like(query_x)
        step[:, k] = h
        plus, minus = (
            fn(context_x, context_y, query_x + step),
            fn(context_x, context_y, query_x - step),
        )
        columns.append((plus - minus) / (2 * h))
    return torch.stack(columns, dim=-1)


# ---------------------------------------------- paper B: its formulas as written, and W replaced
def delta_W_sequence(W: torch.Tensor, A_seq: torch.Tensor) -> torch.Tensor:
    """Proposition 3.1: ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` for i = 1..N, every
    ``(m, D)`` matrix formed, ``(B, N, m, D)``, from ``A_seq = (A_0, .., A_N)``
    ``(B, N + 1, D)``."""
    A_0 = A_seq[:, :1]  # (B, 1, D)
    u = (A_seq[:, 1:] - A_0) @ W.T  # (B, N, m)
    return u.unsqueeze(-1) * (A_0 / (A_0 * A_0).sum(-1, keepdim=True)).unsqueeze(-2)


def gradient_steps(W: torch.Tensor, A_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposition 3.1's gradient-step form: the step size ``h = 1 / ||A_0||^2`` ``(B,)`` and
    ``Delta_i = W (A_{i-1} - A_i) A_0^T`` for i = 1..N ``(B, N, m, D)``."""
    A_0 = A_seq[:, 0]
    u = (A_seq[:, :-1] - A_seq[:, 1:]) @ W.T  # (B, N, m)
    return 1.0 / (A_0 * A_0).sum(-1), u.unsqueeze(-1) * A_0[:, None, None, :]


def token_loss(Delta_i: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``L_i(W) = trace(Delta_i^T W)``, whose gradient in W is ``Delta_i``."""
    return (Delta_i * W).sum((-2, -1))


def output_with(mlp: torch.nn.Module, z: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``M_{W'}(z)[-1]`` with the MLP's first weight replaced by ``W'`` (``torch.func``, so the
    module is untouched): ``W`` ``(m, D)`` for every z ``(..., D)``, or ``(..., m, D)``, one
    per z."""
    if W.ndim == 2:
        return torch.func.functional_call(mlp, {"W": W}, (z,))[..., -1]
    one = torch.vmap(lambda w, u: torch.func.functional_call(mlp, {"W": w}, (u,))[-1])
    flat = one(W.reshape(-1, *W.shape[-2:]), z.reshape(-1, z.shape[-1]))
    return flat.reshape(z.shape[:-1])


def forward_with(model: torch.nn.Module, W: torch.Tensor, context_x, context_y, query_x):
    """``T_{W'}(C, x)`` ``(B,)``: a one-block model's own forward with ``mlp.W`` replaced by
    ``W`` ``(m, D)``, or by one ``(m, D)`` matrix per prompt ``(B, m, D)``."""
    if W.ndim == 2:
        return torch.func.functional_call(model, {"mlp.W": W}, (context_x, context_y, query_x))

    def one(w, cx, cy, qx):
        prompt = (cx.unsqueeze(0), cy.unsqueeze(0), qx.unsqueeze(0))
        return torch.func.functional_call(model, {"mlp.W": w}, prompt)[0]

    return torch.vmap(one)(W, context_x, context_y, query_x)
