"""Nothing silently wrong or lost: wrong prediction shapes, full disks, two runs in one folder,
NaN data, read-only folders and networks of any signature, each through the real CLI from a
working directory with relative paths."""

import errno
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, run_cli, tiny_args
from torch import nn

from icl_lightning.cli import main
from icl_lightning.data import LinearRegression

DEMO = str(CONFIGS / "demo.yaml")
NO_PROBES = "--trainer.callbacks=[]"


class OnlyInputDim(nn.Module):
    """A linear read-out of the query, ``<w, x_q>``, whose only option is ``input_dim``."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.w = nn.Parameter(torch.zeros(input_dim))

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        return query_x @ self.w


class ColumnPredictions(OnlyInputDim):
    """The same read-out returned as a ``(B, 1)`` column: a shape bug."""

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        return (query_x @ self.w)[:, None]


class NaNTargets(LinearRegression):
    """Linear tasks whose first context target is NaN (broken data)."""

    def sample(self, batch_size, num_context, generator, dtype=torch.float32):
        batch = super().sample(batch_size, num_context, generator, dtype)
        batch.context_y[:, 0] = float("nan")
        return batch


def _network(name: str) -> str:
    return f"--model.init_args.model=test_data_safety.{name}"


NAN_TASK = "--data.init_args.task=" + json.dumps(
    {"class_path": "test_data_safety.NaNTargets", "init_args": {"input_dim": 5}}
)


def _fit(steps: int, *extra: str) -> None:
    main(["fit", f"--config={DEMO}", *tiny_args(Path("logs"), steps=steps), *extra])


def _run() -> Path:
    """The one run directory under ``./logs``."""
    (run,) = Path("logs").glob("*/*")
    return run


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _usage_error(capsys, args: list[str]) -> str:
    """The error of ``args``, which must be a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    error = err[err.find("error:") :].replace("\n", " ")
    assert exit_info.value.code == 2, error
    return error


@pytest.mark.parametrize("probes", [True, False], ids=["with_probes", "without_probes"])
def test_prediction_of_wrong_shape_stops_at_the_first_batch(tmp_path, monkeypatch, probes):
    monkeypatch.chdir(tmp_path)
    extra = [] if probes else [NO_PROBES]
    with pytest.raises(ValueError, match=r"ColumnPredictions.*shape \(64, 1\); expected \(64,\)"):
        _fit(2, _network("ColumnPredictions"), *extra)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_network_whose_only_argument_is_input_dim_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*tiny_args(Path("logs"), steps=2), _network("OnlyInputDim"), NO_PROBES]
    cli = run_cli(["fit", f"--config={DEMO}", *args])
    assert cli.model.model.input_dim == 5  # linked from the data
    assert cli.trainer.global_step == 2
    last = next(tmp_path.rglob("last.ckpt"))
    cli = run_cli(["validate", f"--config={DEMO}", *args, f"--ckpt_path={last}"])
    assert torch.equal(cli.model.model.w, torch.load(last)["state_dict"]["model.w"])


def test_full_disk_keeps_the_last_checkpoint_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    every_2 = ["--checkpoint.every_n_train_steps=2", NO_PROBES]
    _fit(4, *every_2)
    last = _run() / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def full_disk(obj, file, *args, **kwargs) -> None:
        """A write that runs out of space halfway."""
        file.write(before[: len(before) // 2]) if hasattr(file, "write") else None
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_disk)
        with pytest.raises(SystemExit) as error:
            _fit(8, *every_2, f"--ckpt_path={last}")
    message = capsys.readouterr().err
    assert error.value.code == 1 and "Traceback" not in message
    assert str(last) in message and "No space left on device" in message
    assert "previous version, unchanged (step 4)" in message
    assert last.read_bytes() == before  # the previous checkpoint, whole
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
    _fit(8, *every_2, f"--ckpt_path={last}")  # and it resumes
    assert torch.load(last, weights_only=True)["global_step"] == 8


def test_second_run_into_the_same_version_is_refused_unless_overwritten(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = ["fit", f"--config={DEMO}", *tiny_args(Path("logs"), steps=2), NO_PROBES]
    args.append("--trainer.logger.init_args.version=7")
    main(args)
    run = _run()
    first = _digest(run)
    error = _usage_error(capsys, args)
    assert f"the run directory {run} already holds a run" in error
    assert "--overwrite=true" in error and "--ckpt_path" in error
    assert _digest(run) == first  # nothing written, nothing changed
    main([*args, "--trainer.max_steps=3", "--overwrite=true"])
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the earlier run's are gone
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    main([*args, "--trainer.max_steps=4", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])


def _named_checkpoints(message: str) -> list[Path]:
    return [Path(p) for p in re.findall(r"(\S+\.ckpt)\b", message)]


def test_nan_data_before_any_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FloatingPointError, match="train/loss is nan at step 1") as error:
        _fit(4, NAN_TASK, NO_PROBES)
    assert "No checkpoint was written" in str(error.value)
    assert not _named_checkpoints(str(error.value)) and not list(tmp_path.rglob("*.ckpt"))
    # the weights guard (at a checkpoint, before the loss check's next step) says the same
    rare_check = ["--trainer.log_every_n_steps=1000", "--checkpoint.every_n_train_steps=2"]
    with pytest.raises(FloatingPointError, match="weights are not finite at step 2") as error:
        _fit(4, NAN_TASK, NO_PROBES, *rare_check)
    assert "No checkpoint was written" in str(error.value)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_nan_data_after_a_checkpoint_names_that_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(4, NO_PROBES)
    last = _run() / "checkpoints" / "last.ckpt"
    with pytest.raises(FloatingPointError, match="train/loss is nan at step 5") as error:
        _fit(8, NAN_TASK, NO_PROBES, f"--ckpt_path={last}", "--allow_changes=true")
    named = _named_checkpoints(str(error.value))
    assert named and all(path.is_file() for path in named)
    assert torch.load(last, weights_only=True)["global_step"] == 4


def test_unlogged_run_resumes_into_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    unlogged = ["--trainer.logger=false", NO_PROBES]
    _fit(2, *unlogged)
    (run,) = Path("logs/unlogged").iterdir()
    for steps in (4, 6):
        _fit(steps, *unlogged, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert list(Path("logs/unlogged").iterdir()) == [run]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
