"""Garg et al.'s tasks draw what their definitions say, and Garg's every-prefix loss."""

import math

import pytest
import torch

from icl_lightning.data import (
    DecisionTree,
    LinearClassification,
    LinearRegression,
    NoisyLinearRegression,
    QuadraticRegression,
    seeded_generator,
)
from icl_lightning.models import LSA
from icl_lightning.modules import PrefixRegressionModule
from icl_lightning.modules.prefix import prefix_loss


def draw(task, batch_size=4, num_context=6, seed=0):
    return task.sample(batch_size, num_context, seeded_generator("cpu", seed), torch.float64)


def points(batch):
    x = torch.cat([batch.context_x, batch.query_x[:, None]], dim=1)
    y = torch.cat([batch.context_y, batch.query_y[:, None]], dim=1)
    return x, y


def replay_inputs_and_weights(task, batch_size, num_context, seed=0):
    """The same draws as ``_GargTask.sample``, in the same order, from the same seed."""
    g = seeded_generator("cpu", seed)
    x = task.sample_inputs((batch_size, num_context + 1, task.input_dim), g, torch.float64)
    w = task.weight_scale * torch.randn(
        batch_size, task.input_dim, generator=g, dtype=torch.float64
    )
    return x, w, g


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_linear_classification_and_quadratic_are_their_formulas(distribution):
    d = 3
    for task, f in [
        (LinearClassification(d, distribution), lambda x, w: torch.sign(x @ w)),
        (QuadraticRegression(d, distribution), lambda x, w: (x**2) @ w / math.sqrt(3)),
    ]:
        x, y = points(draw(task))
        x_ref, w, _ = replay_inputs_and_weights(task, 4, 6)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
        for b in range(4):  # one task at a time, as the definition reads
            for i in range(7):
                assert abs(float(y[b, i]) - float(f(x[b, i], w[b]))) < 1e-12
    if distribution == "uniform":
        assert x.abs().max() <= 0.5  # U(-1/2, 1/2): paper A's inputs
    assert set(points(draw(LinearClassification(d, distribution)))[1].unique().tolist()) == {-1, 1}


def test_decision_tree_walks_sign_splits_to_normal_leaves():
    d, depth, B, n = 4, 3, 5, 9
    task = DecisionTree(d, depth=depth)
    x, y = points(draw(task, B, n, seed=3))
    g = seeded_generator("cpu", 3)  # replay the draws: inputs, split coordinates, leaf values
    task.sample_inputs((B, n + 1, d), g, torch.float64)
    coords = torch.randint(0, d, (B, 2**depth - 1), generator=g)
    leaves = torch.randn(B, 2**depth, generator=g, dtype=torch.float64)
    for b in range(B):
        for i in range(n + 1):
            node = 0
            while node < 2**depth - 1:  # a naive walk down the heap-numbered tree
                node = 2 * node + (2 if x[b, i, coords[b, node]] > 0 else 1)
            assert float(y[b, i]) == float(leaves[b, node - (2**depth - 1)])
    big = draw(DecisionTree(20), 4000, 40)
    _, y = points(big)
    assert abs(float(y.mean())) < 0.03 and abs(float(y.var()) - 1) < 0.03  # leaves ~ N(0, 1)
    assert all(len(row.unique()) <= 16 for row in y[:50])  # at most 2^4 leaves per task


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_noisy_linear_regression_noise_and_renormalisation(distribution):
    d, sigma = 5, 0.5
    plain = NoisyLinearRegression(d, distribution, noise_std=sigma)
    x, y = points(draw(plain, 20_000, 3))
    x_ref, w, g = replay_inputs_and_weights(plain, 20_000, 3)
    noise = y - torch.einsum("bnd,bd->bn", x_ref, w)
    assert abs(float(noise.std()) - sigma) < 0.005 and abs(float(noise.mean())) < 0.005
    scaled = NoisyLinearRegression(d, distribution, noise_std=sigma, renormalize=True)
    _, y2 = points(draw(scaled, 20_000, 3))
    torch.testing.assert_close(y2, scaled.output_scale * y)  # the same draws, rescaled
    assert abs(float(y2.square().mean()) / d - 1) < 0.03  # E y^2 = d


def test_input_variance_of_both_distributions():
    for dist, r, v in [("uniform", 2.0, 4 / 12), ("normal", 2.0, 4.0)]:
        task = LinearRegression(3, dist, input_range=r)
        x = task.sample_inputs((200_000, 3), seeded_generator("cpu", 0), torch.float64)
        assert task.input_variance == v and abs(float(x.var()) / v - 1) < 0.01


def test_prefix_loss_is_the_mean_squared_error_over_every_prefix_over_d():
    batch = draw(LinearRegression(4, "normal"), 3, 5)
    pred = torch.randn(3, 6, dtype=torch.float64)
    _, y = points(batch)
    naive = sum((y[b, k] - pred[b, k]) ** 2 for b in range(3) for k in range(6)) / (3 * 6 * 4)
    assert abs(float(prefix_loss(pred, batch)) - float(naive)) < 1e-12
    big = draw(LinearRegression(20, "normal"), 4000, 40)
    assert abs(float(prefix_loss(torch.zeros(4000, 41, dtype=torch.float64), big)) - 1) < 0.02


def test_garg_loss_needs_prefix_predictions():
    with pytest.raises(ValueError, match="loss='garg' is invalid.*prefix_predictions"):
        PrefixRegressionModule(LSA(input_dim=3), loss="garg")
    PrefixRegressionModule(LSA(input_dim=3), loss="paper_a")
    with pytest.raises(ValueError, match="loss='mse' is invalid"):
        PrefixRegressionModule(LSA(input_dim=3), loss="mse")


def test_tree_depth_is_checked():
    with pytest.raises(ValueError, match="depth=0 is invalid"):
        DecisionTree(4, depth=0)
