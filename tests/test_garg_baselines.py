"""The in-context baselines at every prefix equal their definitions, one prefix at a time."""

import pytest
import torch

from icl_lightning.theory import baselines as bl
from icl_lightning.theory.gd import gd_plus_plus_predict, gd_predict

F64 = torch.float64


def prompts(B=16, K=9, d=4, seed=0, deficient=False):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, K + 1, d, generator=g, dtype=F64)
    qs = torch.randn(B, K + 1, d, generator=g, dtype=F64)
    ys = torch.randn(B, K + 1, generator=g, dtype=F64)
    if deficient:  # half the prompts' inputs in a 2-dimensional subspace
        xs[: B // 2, :, 2:] = 0
        qs[: B // 2, :, 2:] = 0
    return xs, ys, qs


@pytest.mark.parametrize("deficient", [False, True])
@pytest.mark.parametrize("ridge", [0.0, 0.7])
def test_least_squares_is_the_pseudo_inverse_or_ridge_solution_at_every_k(deficient, ridge):
    xs, ys, qs = prompts(deficient=deficient)
    pred = bl.least_squares(xs, ys, qs, ridge)
    assert (pred[:, 0] == 0).all()
    eye = torch.eye(xs.shape[-1], dtype=F64)
    for k in range(1, xs.shape[1]):
        X, y = xs[:, :k], ys[:, :k, None]
        if ridge == 0:
            w = torch.linalg.pinv(X, rtol=1e-8) @ y  # the minimum-norm least-squares solution
        else:
            w = torch.linalg.solve(X.mT @ X + ridge * eye, X.mT @ y)
        expected = (w[..., 0] * qs[:, k]).sum(-1)
        torch.testing.assert_close(pred[:, k], expected, rtol=0, atol=1e-10)


def test_nearest_neighbours_and_averaging_one_prompt_at_a_time():
    xs, ys, qs = prompts()
    nn3, avg = bl.nearest_neighbours(xs, ys, qs, 3), bl.averaging(xs, ys, qs)
    for b in range(xs.shape[0]):
        for k in range(1, xs.shape[1]):
            dist = [float((qs[b, k] - xs[b, j]).norm()) for j in range(k)]
            nearest = sorted(range(k), key=dist.__getitem__)[:3]
            assert abs(float(nn3[b, k]) - float(ys[b, nearest].mean())) < 1e-12
            w = sum(ys[b, j] * xs[b, j] for j in range(k)) / k
            assert abs(float(avg[b, k]) - float(w @ qs[b, k])) < 1e-12
    assert (nn3[:, 0] == 0).all() and (avg[:, 0] == 0).all()


def test_gd_curves_are_gd_and_gd_plus_plus_on_each_prefix():
    xs, ys, qs = prompts()
    etas, gammas = [0.0] + [0.3 + 0.01 * k for k in range(1, 10)], [0.0] + [0.02] * 9
    gd, gdpp = bl.gd_curve(xs, ys, qs, etas, 2), bl.gd_curve(xs, ys, qs, etas, 2, gammas)
    for k in range(1, 10):
        prompt = (xs[:, :k], ys[:, :k], qs[:, k])
        torch.testing.assert_close(gd[:, k], gd_predict(*prompt, etas[k], 2))
        torch.testing.assert_close(gdpp[:, k], gd_plus_plus_predict(*prompt, etas[k], 0.02, 2))


def test_tuned_step_sizes_beat_their_neighbours():
    xs, ys, _ = prompts(B=400, K=6, d=3, seed=5)
    etas, _ = bl.tuned_step_sizes(xs, ys, 1, plus_plus=False)

    def loss(eta, k):
        return (gd_predict(xs[:, :k], ys[:, :k], xs[:, k], eta) - ys[:, k]).square().mean()

    for k in range(1, 7):
        assert loss(etas[k], k) <= min(loss(0.9 * etas[k], k), loss(1.1 * etas[k], k))


def test_two_layer_net_fits_its_points():
    """Asked at its first training point, each prefix's trained network returns that point's
    target (the networks train on their own prefixes); untrained (0 steps) it does not."""
    xs, ys, _ = prompts(B=3, K=4, d=2, seed=1)
    first = xs[:, :1].expand_as(xs)  # q_k = x_0, a point of every prefix k >= 1
    g = torch.Generator().manual_seed(0)
    trained = bl.two_layer_net(xs, ys, first, hidden=20, steps=150, lr=5e-2, generator=g)
    untrained = bl.two_layer_net(xs, ys, first, hidden=20, steps=0, generator=g)
    assert (trained[:, 0] == 0).all()
    assert (trained[:, 1:] - ys[:, :1]).abs().max() < 0.05
    assert (untrained[:, 1:] - ys[:, :1]).abs().max() > 0.1


def test_tree_learners_fit_each_prefix_where_the_extra_is_installed():
    """A depth-4 tree fitted on k points of a sign task predicts a training point's label."""
    pytest.importorskip("sklearn")
    pytest.importorskip("xgboost")
    from icl_lightning.theory.tree_baselines import fitted_predictions, tree_learners

    xs, _, _ = prompts(B=3, K=8, d=2)
    ys = xs[..., 0].sign()
    first = xs[:, :1].expand_as(xs)  # q_k = x_0, seen by every prefix k >= 1
    pred = fitted_predictions(tree_learners()["tree_depth4"], xs, ys, first)
    torch.testing.assert_close(pred[:, 1:], ys[:, :1].expand(-1, 8))
    assert (pred[:, 0] == 0).all()
