"""The non-linear task samplers draw what their definitions say."""

import math

import pytest
import torch

from icl_lightning.data import ICLDataModule, ReLUNetwork, Sine, SparseLinear, seeded_generator


def draw(task, batch_size=20_000, num_context=10, seed=0, dtype=torch.float64):
    return task.sample(batch_size, num_context, seeded_generator("cpu", seed), dtype)


def close(value: torch.Tensor, expected: float, tol: float) -> None:
    assert abs(float(value) - expected) < tol, (float(value), expected)


def test_sine_inputs_amplitudes_and_phases():
    batch = draw(Sine())
    x = torch.cat([batch.context_x[..., 0], batch.query_x], dim=1)
    y = torch.cat([batch.context_y, batch.query_y[:, None]], dim=1)
    assert batch.input_dim == 1 and x.abs().max() <= 5
    close(x.mean(), 0.0, 0.02)
    close(x.var(), 100 / 12, 0.05)
    # y = a sin(x + phi) = (a cos phi) sin x + (a sin phi) cos x: recover a, phi per task exactly
    basis = torch.stack([torch.sin(x), torch.cos(x)], dim=-1)
    c = torch.linalg.lstsq(basis, y[..., None]).solution[..., 0]
    torch.testing.assert_close(basis @ c[..., None], y[..., None])  # exactly a shifted sine
    a, phi = c.norm(dim=-1), torch.atan2(c[:, 1], c[:, 0])
    assert a.min() >= 0.1 - 1e-9 and a.max() <= 0.5 + 1e-9
    assert phi.min() >= -1e-9 and phi.max() <= math.pi + 1e-9
    close(a.mean(), 0.3, 0.003)  # U(0.1, 0.5)
    close(a.var(), 0.4**2 / 12, 0.0005)
    close(phi.mean(), math.pi / 2, 0.02)  # U(0, pi)
    close(phi.var(), math.pi**2 / 12, 0.02)
    # E y = E a * E_phi,x sin(x + phi) = 0.3 * (2/pi) * sin(5)/5 ; E y^2 = E a^2 / 2
    close(y.mean(), 0.3 * 2 / math.pi * math.sin(5) / 5, 0.002)
    close((y**2).mean(), (0.4**2 / 12 + 0.09) / 2, 0.001)


def test_relu_network_moments_and_piecewise_linearity():
    d = 4
    batch = draw(ReLUNetwork(input_dim=d, hidden_dim=50), batch_size=20_000)
    x, y = batch.context_x, batch.context_y
    close(x.mean(), 0.0, 0.01)
    close(x.var(), 1.0, 0.01)  # x ~ N(0, I)
    close(y.mean(), 0.0, 0.05)
    close(y.var(), d, 0.15)  # E y^2 = sum_j E a_j^2 E relu(<w_j, x>)^2 = k * 2/k * d/2
    # two points of one task share the network: E[y y'] = sum_j E a_j^2 E_w (E_x relu(<w, x>))^2
    #   = k * 2/k * E|w|^2 / (2 pi) = d / pi  (and 0 across tasks)
    close((y[:, 0] * y[:, 1]).mean(), d / math.pi, 0.12)
    close((y[:-1, 0] * y[1:, 1]).mean(), 0.0, 0.12)


def test_sparse_linear_has_exactly_k_nonzero_weights_at_uniform_positions():
    d, k = 8, 3
    task = SparseLinear(input_dim=d, num_nonzero=k)
    w = task.sample_weights(40_000, seeded_generator("cpu", 1), torch.float64)
    nonzero = w != 0
    assert (nonzero.sum(dim=1) == k).all()
    close(nonzero.double().mean(0).min(), k / d, 0.01)  # each position equally likely
    close(nonzero.double().mean(0).max(), k / d, 0.01)
    close(w[nonzero].mean(), 0.0, 0.02)
    close(w[nonzero].var(), 1.0, 0.02)  # N(0, 1) entries


def test_sparse_linear_prompts_come_from_a_k_sparse_weight():
    d, k = 6, 2
    batch = draw(SparseLinear(input_dim=d, num_nonzero=k), batch_size=500, num_context=3 * d)
    w = torch.linalg.lstsq(batch.context_x, batch.context_y[..., None]).solution[..., 0]
    assert ((w.abs() > 1e-9).sum(dim=1) == k).all()
    torch.testing.assert_close(torch.einsum("bd,bd->b", w, batch.query_x), batch.query_y)
    close(batch.context_x.var(), 1.0, 0.02)  # normal inputs by default (Garg et al.)


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: Sine(amplitude_min=0.5, amplitude_max=0.1), "amplitude_max"),
        (lambda: ReLUNetwork(hidden_dim=0), "hidden_dim"),
        (lambda: SparseLinear(input_dim=3, num_nonzero=4), "num_nonzero"),
    ],
)
def test_bad_options_name_themselves(make, option):
    with pytest.raises(ValueError, match=option):
        make()


@pytest.mark.parametrize("task", [Sine(), ReLUNetwork(3, 7), SparseLinear(5, 2)], ids=repr)
def test_samplers_work_in_the_datamodule(task):
    dm = ICLDataModule(task, batch_size=4, num_context=6, num_val_tasks=8)
    batch = dm.train_batch(step=2)
    assert batch.context_x.shape == (4, 6, task.input_dim) and batch.query_y.shape == (4,)
    assert batch.context_x.dtype == torch.float32
    torch.testing.assert_close(batch.context_y, dm.train_batch(step=2).context_y)
    assert not torch.equal(batch.context_y, dm.train_batch(step=3).context_y)
