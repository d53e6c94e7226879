"""The batched lasso is the exact minimiser of scikit-learn's objective at every prefix."""

import pytest
import torch

from icl_lightning.data import SparseLinear
from icl_lightning.theory import baselines as bl

F64 = torch.float64
ALPHAS = [1.0, 0.1, 0.01, 0.001]


def sparse_prompts(B, K, d, seed=0):
    """``(xs, ys)`` ``(B, K+1, ...)``: sparse linear tasks (2 non-zero weights, normal inputs)
    with a little noise, so the fit below d points is not the true weights."""
    task = SparseLinear(d, 2, noise_std=0.1)
    batch = task.sample(B, K, torch.Generator().manual_seed(seed), F64)
    xs = torch.cat([batch.context_x, batch.query_x[:, None]], 1)
    return xs, torch.cat([batch.context_y, batch.query_y[:, None]], 1)


def kkt_violation(xs, ys, w, alpha):
    """The largest violation of the optimality conditions of ``1/(2k)|y - Xw|^2 + alpha
    |w|_1`` over all prompts and prefixes: with ``g = X^T (y - X w) / k``, ``g_i = alpha
    sign(w_i)`` where ``w_i != 0`` and ``|g_i| <= alpha`` where ``w_i = 0``."""
    worst = 0.0
    for k in range(1, w.shape[1] + 1):
        X, y, wk = xs[:, :k], ys[:, :k], w[:, k - 1]
        g = (X.mT @ (y - (X @ wk[..., None])[..., 0])[..., None])[..., 0] / k
        on = wk != 0
        worst = max(
            worst,
            float(((g - alpha * wk.sign()).abs() * on).max()),
            float(((g.abs() - alpha).clamp_min(0) * ~on).max()),
        )
    return worst


@pytest.mark.parametrize("alpha", ALPHAS)
def test_lasso_weights_are_optimal_at_every_prefix(alpha):
    """Every prefix k = 1..12 at d = 6 (half of them below d points), float64: the KKT
    conditions hold to 1e-10, and below d points at most k weights are non-zero (the unique
    solution for continuous data)."""
    xs, ys = sparse_prompts(B=32, K=12, d=6)
    w = bl.lasso_weights(xs[:, :-1], ys[:, :-1], alpha)
    assert w.shape == (32, 12, 6) and w.dtype == F64
    assert kkt_violation(xs, ys, w, alpha) < 1e-10
    support = (w != 0).sum(-1)
    assert (support <= torch.arange(1, 13)).all()
    assert support.max() > (1 if alpha < 1 else 0)  # not trivially 0


def test_lasso_weights_are_optimal_on_degenerate_inputs():
    """Integer inputs with a repeated column: ties between columns and more candidate
    columns than points; the conditions still hold (the path skips tied columns)."""
    xs, ys = sparse_prompts(B=32, K=10, d=5, seed=1)
    xs = xs.round()
    xs[..., 4] = xs[..., 3]
    for alpha in [0.1, 0.001]:
        w = bl.lasso_weights(xs[:, :-1], ys[:, :-1], alpha)
        assert kkt_violation(xs, ys, w, alpha) < 1e-10


def test_lasso_predicts_with_the_weights_of_each_prefix():
    xs, ys = sparse_prompts(B=8, K=9, d=4, seed=2)
    qs = torch.randn(xs.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    w = bl.lasso_weights(xs[:, :-1], ys[:, :-1], 0.05)
    pred = bl.lasso(xs, ys, qs, 0.05)
    assert (pred[:, 0] == 0).all()
    torch.testing.assert_close(pred[:, 1:], (w * qs[:, 1:]).sum(-1), rtol=0, atol=1e-14)
    assert bl.lasso(xs.float(), ys.float(), qs.float(), 0.05).dtype == torch.float32


def test_lasso_gives_up_after_max_steps_naming_it():
    xs, ys = sparse_prompts(B=2, K=8, d=4)
    with pytest.raises(RuntimeError, match="max_steps=1"):
        bl.lasso_weights(xs, ys, 0.001, max_steps=1)


@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.001])
def test_lasso_equals_scikit_learn_where_installed(alpha):
    """scikit-learn's ``Lasso`` (coordinate descent to ``tol=1e-12``) on 8 sparse prompts,
    d = 8, 16 points, every prefix: equal predictions to 1e-8."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    xs, ys = sparse_prompts(B=8, K=15, d=8, seed=4)
    pred = bl.lasso(xs, ys, xs, alpha)
    for b in range(8):
        for k in range(1, 16):
            fit = linear_model.Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**6)
            fit.fit(xs[b, :k].numpy(), ys[b, :k].numpy())
            assert abs(float(pred[b, k]) - float(fit.coef_ @ xs[b, k].numpy())) < 1e-8
