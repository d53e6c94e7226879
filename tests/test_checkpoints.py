"""Checkpoints end to end: no non-finite weights on disk, exact resume, saves on signals."""

import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, ROOT, run_cli, tiny_args
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from icl_lightning.cli import main

DEMO = str(CONFIGS / "demo.yaml")


def _steps(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


def test_divergence_between_checkpoints_keeps_the_last_finite_one(tmp_path):
    # lr 3e4 without clipping diverges within a few steps; the loss check (every
    # log_every_n_steps = 1000 steps) never runs, so only the checkpoint guard can stop it
    diverging = ["--optimizer.init_args.lr=3e4", "--trainer.gradient_clip_val=null"]
    args = [*tiny_args(tmp_path, steps=40), *diverging, "--trainer.log_every_n_steps=1000"]
    args += ["--checkpoint.every_n_train_steps=2", "--trainer.callbacks=[]"]
    with pytest.raises(FloatingPointError, match=r"weights are not finite at step (\d+)") as err:
        run_cli(["fit", f"--config={DEMO}", *args])
    stopped = int(re.search(r"step (\d+)", str(err.value)).group(1))
    last = next(tmp_path.rglob("last.ckpt"))
    assert str(last) in str(err.value)  # the message names the checkpoint kept
    for ckpt in tmp_path.rglob("*.ckpt"):
        weights = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(w.isfinite().all() for w in weights.values()), ckpt
    assert 0 < _steps(last) < stopped
    cli = run_cli(["validate", f"--config={DEMO}", *tiny_args(tmp_path), f"--ckpt_path={last}"])
    assert "val/loss" in cli.trainer.callback_metrics  # it loads and evaluates
    assert all(w.isfinite().all() for w in cli.model.parameters())


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event in the run's event files, tag -> [(step, value)], duplicates kept."""
    events: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    (scalar,) = value.tensor.float_val
                    events.setdefault(value.tag, []).append((event.step, scalar))
    return {tag: sorted(points) for tag, points in events.items()}


@pytest.mark.parametrize("split", [8, 6], ids=["at_epoch_end", "mid_epoch"])
def test_resumed_run_continues_the_same_tensorboard_run_with_identical_curves(tmp_path, split):
    def fit(save_dir: Path, steps: int, *extra: str) -> None:
        args = [*tiny_args(save_dir, steps=steps), "--trainer.log_every_n_steps=2"]
        args += ["--data.init_args.batches_per_epoch=4", "--checkpoint.every_n_train_steps=4"]
        run_cli(["fit", f"--config={DEMO}", *args, *extra])

    fit(tmp_path / "straight", 16)
    fit(tmp_path / "split", split)  # 4 steps per epoch
    (run,) = (tmp_path / "split" / "demo").iterdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "split", 16, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    # the data makes a mid-epoch resume exact, so Lightning's "not resumable" warning is wrong
    assert not [w for w in caught if "not resumable" in str(w.message)]

    assert [p.name for p in (tmp_path / "split" / "demo").iterdir()] == [run.name]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no second copy
    straight = _events(next((tmp_path / "straight" / "demo").iterdir()))
    resumed = _events(run)
    assert {"train/loss", "val/loss", "epoch", "context/loss_n1", "gd/loss_ratio"} <= set(straight)
    assert set(resumed) == set(straight)
    for tag in straight:
        # probes also measure where the first fit ended
        first_end = {split} if tag.startswith(("gd/", "context/")) else set()
        points = [(s, v) for s, v in resumed[tag] if s not in first_end]
        if split % 4 and (tag.startswith("val/") or tag == "epoch"):
            # the first fit ended mid-epoch, so it validated once at its last step
            # (ValidateAtEnd; Lightning logs that validation at step split - 1)
            points.remove(next(p for p in points if p[0] == split - 1))
        assert points == straight[tag], tag  # same steps, same values, nothing twice


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "icl_lightning", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_last_checkpoint_that_resumes(tmp_path, signum):
    args = [*tiny_args(tmp_path, steps=100_000), "--trainer.callbacks=[]"]
    args += ["--checkpoint.every_n_train_steps=100000", "--trainer.enable_progress_bar=false"]
    process = _start(["fit", f"--config={DEMO}", *args], tmp_path)
    output = []
    for line in process.stdout:  # wait until training runs
        output.append(line)
        if "Ctrl+C (or SIGTERM) stops" in line:
            break
    else:
        pytest.fail("training never started:\n" + "".join(output))
    process.send_signal(signum)
    output += process.communicate(timeout=120)[0]
    log = "".join(output)
    assert process.returncode != 0, log
    written = list(tmp_path.rglob("*.ckpt"))
    assert [p.name for p in written] == ["last.ckpt"], log[-3000:]  # the signal's, no other
    (last,) = written
    stopped = _steps(last)
    assert f"Interrupted at step {stopped}" in log
    resume = [f"--ckpt_path={last}", f"--trainer.max_steps={stopped + 2}"]
    cli = run_cli(["fit", f"--config={DEMO}", *args, *resume])
    assert cli.trainer.global_step == stopped + 2


def test_three_resumes_from_a_relative_path_continue_one_run(tmp_path, monkeypatch):
    """The README's resume, three times, from a working directory with a relative save_dir:
    one run folder, one ``last.ckpt`` (at the last step), and every TensorBoard tag equal to a
    straight run's, step for step."""
    monkeypatch.chdir(tmp_path)

    def fit(save_dir: str, steps: int, *extra: str) -> None:
        args = [*tiny_args(Path(save_dir), steps=steps), "--checkpoint.every_n_train_steps=20"]
        main(["fit", f"--config={DEMO}", *args, *extra])

    fit("straight", 90)
    fit("logs", 30)
    (run,) = Path("logs").glob("*/version_*")
    last = run / "checkpoints" / "last.ckpt"
    assert not last.is_absolute()
    for steps in (60, 90):
        fit("logs", steps, f"--ckpt_path={last}")
        assert _steps(last) == steps

    assert list(Path("logs").glob("*/version_*")) == [run]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    (straight_run,) = Path("straight").glob("*/version_*")
    straight, resumed = _events(straight_run), _events(run)
    assert {"train/loss", "val/loss", "gd/loss_ratio", "context/loss_n1"} <= set(straight)
    assert set(resumed) == set(straight)
    for tag in straight:
        # each fit's end: the probes' end-of-fit measurement
        fit_ends = {30, 60} if tag.startswith(("gd/", "context/")) else set()
        assert [(s, v) for s, v in resumed[tag] if s not in fit_ends] == straight[tag], tag
