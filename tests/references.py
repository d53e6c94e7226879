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
