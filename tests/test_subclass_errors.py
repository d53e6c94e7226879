"""A subclasser's mistakes are errors naming the class, before or at the first step, never a
PyTorch traceback without the class's name nor a run that trains nothing: a network returning a
tuple, a module or network without ``super().__init__()``, a ``training_step`` returning None,
an unreduced or detached loss, a probe whose ``compute`` returns a tensor or per-prompt values,
and a non-scalar probe result (an error, never dropped)."""

import pytest
import torch
from conftest import CONFIGS, quiet_trainer, run_cli, tiny_args
from torch import nn

from icl_lightning.callbacks import Probe
from icl_lightning.data import ICLDataModule, LinearRegression
from icl_lightning.models import LSA
from icl_lightning.modules import ICLRegressionModule


# ---------------------------------------------------------------- networks and modules
class TupleLSA(LSA):
    """Returns its predictions and something else."""

    def forward(self, context_x, context_y, query_x):
        return super().forward(context_x, context_y, query_x), None


class NoSuperNet(nn.Module):
    """Forgets ``super().__init__()`` and sets a parameter."""

    def __init__(self, input_dim: int):
        self.w = nn.Parameter(torch.zeros(input_dim))

    def forward(self, context_x, context_y, query_x):
        return query_x @ self.w


class NoSuperPlainNet(nn.Module):
    """Forgets ``super().__init__()`` and sets only a number (PyTorch does not notice)."""

    def __init__(self, input_dim: int):
        self.input_dim = input_dim

    def forward(self, context_x, context_y, query_x):
        return query_x.sum(-1)


class NoSuperModule(ICLRegressionModule):
    """Forgets ``super().__init__(model)``."""

    def __init__(self, model: nn.Module, scale: float = 1.0):
        self.scale = scale
        self.model = model


class NoneStep(ICLRegressionModule):
    """Forgets to return the loss."""

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)


class UnreducedStep(ICLRegressionModule):
    """Returns the per-prompt losses."""

    def training_step(self, batch, batch_idx):
        return 0.5 * (self(batch) - batch.query_y) ** 2


class DetachedStep(ICLRegressionModule):
    """Returns a loss without a graph."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx).detach()


# ------------------------------------------------------------------------------ probes
class TensorProbe(Probe):
    """``compute`` returns the summed loss itself, not a dict."""

    def compute(self, model, batch):
        return ((model(batch.context_x, batch.context_y, batch.query_x) - batch.query_y) ** 2).sum()


class PerPromptProbe(Probe):
    """``compute`` returns one loss per prompt instead of their sum."""

    def compute(self, model, batch):
        pred = model(batch.context_x, batch.context_y, batch.query_x)
        return {"loss": (pred - batch.query_y) ** 2}


class VectorResultProbe(Probe):
    """A fixed-shape, non-scalar result that no figure declares: the default scalars() would
    drop it."""

    def compute(self, model, batch):
        pred = model(batch.context_x, batch.context_y, batch.query_x)
        return {"loss": ((pred - batch.query_y) ** 2).sum(), "moments": batch.query_x.sum(0)}


class FigureOnlyProbe(VectorResultProbe):
    """The same result, named as drawn only by figures: fine."""

    figure_only = ("moments",)


class NoSuperProbe(Probe):
    """Forgets ``super().__init__()``."""

    def __init__(self, every_n_steps: int = 1):
        self.k = every_n_steps


HERE = __name__  # the CLI finds the classes above by their class paths, HERE.<name>


def fit(tmp_path, *extra: str):
    """``icl-lightning fit`` of the demo, 3 steps, no probes, plus ``extra``."""
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny_args(tmp_path / "logs", steps=3)]
    return run_cli([*args, "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", *extra])


def usage_error(capsys, tmp_path, *extra: str) -> str:
    """The CLI's usage error (exit 2) for ``extra``, with nothing written."""
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, *extra)
    assert exit_info.value.code == 2
    assert not (tmp_path / "logs").exists()
    err = capsys.readouterr().err
    return err[err.find("error:") :].replace("\n", " ")


def test_network_returning_a_tuple_is_an_error_naming_it(tmp_path):
    with pytest.raises(
        ValueError, match=r"TupleLSA\(context_x, context_y, query_x\) returned a tuple"
    ):
        fit(tmp_path, f"--model.init_args.model={HERE}.TupleLSA")


def test_network_without_super_init_is_a_usage_error_naming_it(tmp_path, capsys):
    error = usage_error(capsys, tmp_path, f"--model.init_args.model={HERE}.NoSuperNet")
    assert "NoSuperNet" in error and "Module.__init__() call" in error
    error = usage_error(capsys, tmp_path, f"--model.init_args.model={HERE}.NoSuperPlainNet")
    assert "NoSuperPlainNet.__init__ does not call super().__init__()" in error


def test_module_without_super_init_is_a_usage_error_naming_it(tmp_path, capsys):
    error = usage_error(
        capsys,
        tmp_path,
        f"--model={HERE}.NoSuperModule",
        "--model.init_args.model=icl_lightning.models.LSA",
    )
    assert "NoSuperModule.__init__ does not call super().__init__()" in error


def test_the_python_api_names_the_class_too():
    with pytest.raises(ValueError, match=r"NoSuperPlainNet.__init__ does not call super"):
        ICLRegressionModule(NoSuperPlainNet(3))
    with pytest.raises(ValueError, match=r"NoSuperModule.__init__ does not call super"):
        NoSuperModule(LSA(3))
    with pytest.raises(ValueError, match=r"ICLRegressionModule\(model=...\) got a function"):
        ICLRegressionModule(lambda x, y, q: q.sum(-1))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("NoneStep", r"NoneStep.training_step returned None at step 1"),
        ("UnreducedStep", r"UnreducedStep.training_step returned a loss of shape \(64,\)"),
        ("DetachedStep", r"DetachedStep.training_step returned a loss without an autograd graph"),
    ],
)
def test_training_step_must_return_a_scalar_loss_with_a_graph(tmp_path, module, message):
    model = ["--model.init_args.model=icl_lightning.models.LSA"]
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, f"--model={HERE}.{module}", *model)


def _measure(tmp_path, probe: Probe, num_tasks: int) -> Probe:
    """Train 1 step with ``probe`` on ``num_tasks`` prompts in chunks of 8."""
    probe.num_tasks, probe.batch_size = num_tasks, 8
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[probe])
    data = ICLDataModule(LinearRegression(input_dim=3), batch_size=8, num_context=4)
    trainer.fit(ICLRegressionModule(LSA(3)), datamodule=data)
    return probe


def test_probe_compute_returning_a_tensor_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"TensorProbe.compute returned Tensor; expected a dict"):
        _measure(tmp_path, TensorProbe(), 16)


@pytest.mark.parametrize("num_tasks", [8, 16, 20], ids=["one_chunk", "equal_chunks", "ragged"])
def test_probe_per_prompt_values_are_an_error_naming_it(tmp_path, num_tasks):
    """In one chunk, in equal chunks (where the sums would add up) and in a ragged last one."""
    with pytest.raises(ValueError, match=r"PerPromptProbe.compute returned 'loss' of shape \(8,\)"):
        _measure(tmp_path, PerPromptProbe(), num_tasks)


def test_a_non_scalar_result_is_an_error_never_dropped(tmp_path):
    with pytest.raises(ValueError, match=r"VectorResultProbe: result 'moments' has shape \(3,\)"):
        _measure(tmp_path, VectorResultProbe(), 16)
    probe = _measure(tmp_path, FigureOnlyProbe(), 16)
    assert set(probe.last_results) == {"probe/loss"}
    assert probe._results["moments"].shape == (3,)  # kept for the figures


def test_probe_without_super_init_is_an_error_naming_it(tmp_path):
    message = r"NoSuperProbe.__init__ does not call super\(\).__init__\(...\)"
    with pytest.raises(AttributeError, match=message):
        fit(tmp_path, f"--trainer.callbacks+={HERE}.NoSuperProbe")
    assert not hasattr(NoSuperProbe(), "tag")  # hasattr and getattr defaults still work
    assert getattr(Probe(), "not_an_option", None) is None
