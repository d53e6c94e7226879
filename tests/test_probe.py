"""The Probe base class: sharding, reduction, dtype, mode restoring, logging."""

from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS, read_scalars, run_cli, tiny_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from icl_lightning.callbacks import ContextLengthProbe
from icl_lightning.data import ICLDataModule, LinearRegression
from icl_lightning.models import LSA
from icl_lightning.modules import ICLRegressionModule


class _RecordingStrategy:
    """Stands in for a DDP strategy: records what each rank would all-reduce."""

    def __init__(self):
        self.sent = []

    def reduce(self, tensor, reduce_op):
        assert reduce_op == "sum"
        self.sent.append(tensor.clone())
        return tensor


def _trainer(rank, world, strategy):
    dm = ICLDataModule(LinearRegression(input_dim=3), num_context=5)
    return SimpleNamespace(global_rank=rank, world_size=world, strategy=strategy, datamodule=dm)


@pytest.mark.parametrize(("num_tasks", "world"), [(11, 2), (10, 3), (1, 2), (5, 8)])
def test_shares_summed_over_ranks_equal_one_process(num_tasks, world):
    torch.manual_seed(0)
    module = ICLRegressionModule(LSA(3))
    probe = ContextLengthProbe(num_tasks=num_tasks, batch_size=4)
    single = _RecordingStrategy()
    probe.measure(_trainer(0, 1, single), module)
    ranks = _RecordingStrategy()
    for rank in range(world):  # ranks with no share (num_tasks < world) send zeros, no hang
        probe.measure(_trainer(rank, world, ranks), module)
    assert len(ranks.sent) == world
    assert torch.allclose(sum(ranks.sent), single.sent[0], rtol=1e-6)
    assert sum(ranks.sent)[0] == num_tasks  # the task count travels with the sums


def test_measure_restores_train_mode_and_grad_and_keeps_weights_dtype():
    module = ICLRegressionModule(LSA(3)).train()
    probe = ContextLengthProbe(num_tasks=8, dtype="float64")
    results = probe.measure(_trainer(0, 1, _RecordingStrategy()), module)
    assert results["loss"].dtype == torch.float64 and results["loss"].shape == (5,)
    assert module.training and torch.is_grad_enabled()
    assert next(module.parameters()).dtype == torch.float32
    float32 = ContextLengthProbe(num_tasks=8).measure(_trainer(0, 1, _RecordingStrategy()), module)
    assert torch.allclose(results["loss"].float(), float32["loss"], rtol=1e-5)


def test_context_length_loss_is_the_mean_half_squared_error_per_prefix():
    module = ICLRegressionModule(LSA(3))
    probe = ContextLengthProbe(num_tasks=16, batch_size=5)
    trainer = _trainer(0, 1, _RecordingStrategy())
    results = probe.measure(trainer, module)
    tasks = probe.evaluation_set(trainer, torch.device("cpu"))
    with torch.no_grad():
        n3 = 0.5 * ((module(tasks.prefix(3)) - tasks.query_y) ** 2).mean()
    assert torch.allclose(results["loss"][2], n3)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"num_tasks": 0}, "num_tasks"),
        ({"every_n_steps": -1}, "every_n_steps"),
        ({"dtype": "float16"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_probe_options(kwargs, option):
    with pytest.raises(ValueError, match=option):
        ContextLengthProbe(**kwargs)


def test_probe_without_task_source_says_so():
    probe = ContextLengthProbe(num_tasks=4)
    trainer = SimpleNamespace(
        global_rank=0, world_size=1, strategy=_RecordingStrategy(), datamodule=None
    )
    with pytest.raises(ValueError, match="ContextLengthProbe.task/num_context"):
        probe.measure(trainer, ICLRegressionModule(LSA(3)))


def _image_steps(log_dir) -> dict[str, set[int]]:
    """Steps at which each image tag was written to the TensorBoard event files."""
    steps: dict[str, set[int]] = {}
    for events in log_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            steps.setdefault(tag, set()).update(e.step for e in accumulator.Images(tag))
    return steps


def test_fit_logs_scalars_at_every_measurement_and_figures_once_at_the_end(tmp_path):
    """Drawing figures costs several measurements: during fit they are drawn only at its end
    (they show the whole run's curves), the scalars at every measurement."""
    run_cli(["fit", f"--config={CONFIGS / 'lsa_linear.yaml'}", *tiny_args(tmp_path, steps=4)])
    assert set(read_scalars(tmp_path)["gd/loss_model"]) == {0, 4}  # at the start and the end
    images = _image_steps(tmp_path)
    assert images["gd/weights"] == {4} and images["ood/loss_vs_alpha"] == {4}
