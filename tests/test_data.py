"""Task samplers and the DataModule: distributions, determinism per (seed, step, rank), resume."""

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from icl_lightning.data import ICLBatch, ICLDataModule, LinearRegression, seeded_generator, shard
from icl_lightning.models import LSA
from icl_lightning.modules import ICLRegressionModule


def test_linear_regression_uniform_inputs_and_weights():
    task = LinearRegression(input_dim=4, input_range=2.0, weight_scale=3.0)
    batch = task.sample(20_000, 5, seeded_generator("cpu", 1), dtype=torch.float64)
    x = batch.context_x
    assert x.min() >= -1.0 and x.max() <= 1.0  # U(-r/2, r/2)
    assert x.var().item() == pytest.approx(2.0**2 / 12, rel=0.02)
    # y = <w, x>: var(y) = s^2 d var(x)
    assert batch.query_y.var().item() == pytest.approx(9.0 * 4 * 4 / 12, rel=0.05)


def test_linear_regression_normal_inputs_noise_and_linearity():
    task = LinearRegression(input_dim=3, input_distribution="normal", noise_std=0.5)
    batch = task.sample(50_000, 2, seeded_generator("cpu", 2), dtype=torch.float64)
    assert batch.context_x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert batch.context_x.var().item() == pytest.approx(1.0, rel=0.02)
    assert batch.query_y.var().item() == pytest.approx(3.0 + 0.25, rel=0.03)
    # noiseless: the d = 3 context points determine w, which then gives y_q exactly
    clean = LinearRegression(input_dim=3).sample(8, 3, seeded_generator("cpu", 3), torch.float64)
    w = torch.linalg.solve(clean.context_x, clean.context_y)
    assert torch.allclose(torch.einsum("bd,bd->b", clean.query_x, w), clean.query_y, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"input_dim": 0}, "input_dim"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"input_range": 0.0}, "input_range"),
        ({"input_distribution": "cauchy"}, "input_distribution"),
    ],
)
def test_linear_regression_rejects_bad_options(kwargs, option):
    with pytest.raises(ValueError, match=option):
        LinearRegression(**kwargs)


def test_batch_shapes_are_checked():
    with pytest.raises(ValueError, match=r"query_x has shape \(2, 4\); expected \(2, 3\)"):
        ICLBatch(torch.zeros(2, 5, 3), torch.zeros(2, 5), torch.zeros(2, 4), torch.zeros(2))


def test_train_batch_is_a_pure_function_of_seed_step_rank():
    dm = ICLDataModule(LinearRegression(input_dim=3), batch_size=16, num_context=4, seed=7)
    a, b = dm.train_batch(step=5, rank=0), dm.train_batch(step=5, rank=0)
    assert torch.equal(a.context_x, b.context_x) and torch.equal(a.query_y, b.query_y)
    for other in (dm.train_batch(step=6, rank=0), dm.train_batch(step=5, rank=1)):
        assert not torch.equal(a.context_x, other.context_x)
    other_seed = ICLDataModule(LinearRegression(input_dim=3), batch_size=16, num_context=4, seed=8)
    assert not torch.equal(a.context_x, other_seed.train_batch(step=5).context_x)


@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 4), (8, 2), (1, 1)])
def test_shards_partition_the_set(n, world):
    bounds = [shard(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


class _RecordBatches(L.Callback):
    def __init__(self):
        self.batches = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches[trainer.global_step] = batch.context_x.clone()


def _fit(tmp_path, steps, ckpt_path=None):
    recorder = _RecordBatches()
    trainer = quiet_trainer(tmp_path, max_steps=steps, callbacks=[recorder])
    dm = ICLDataModule(
        LinearRegression(input_dim=3), batch_size=8, num_context=4, batches_per_epoch=4
    )
    trainer.fit(ICLRegressionModule(LSA(3)), datamodule=dm, ckpt_path=ckpt_path)
    return trainer, recorder.batches


def test_resume_at_step_k_gives_the_batch_of_step_k(tmp_path):
    _, straight = _fit(tmp_path / "a", 6)
    trainer, first = _fit(tmp_path / "b", 3)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    _, resumed = _fit(tmp_path / "c", 6, ckpt_path=ckpt)
    assert sorted(resumed) == [3, 4, 5]
    for step in range(6):
        assert torch.equal((first | resumed)[step], straight[step])


def test_validation_set_is_fixed_and_independent_of_training_seed():
    a = ICLDataModule(LinearRegression(input_dim=3), num_context=4, num_val_tasks=32, seed=1)
    b = ICLDataModule(LinearRegression(input_dim=3), num_context=4, num_val_tasks=32, seed=2)
    assert torch.equal(a.eval_set(1, "cpu").context_x, b.eval_set(1, "cpu").context_x)
    assert not torch.equal(a.eval_set(1, "cpu").context_x, a.eval_set(2, "cpu").context_x)
