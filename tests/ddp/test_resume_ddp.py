"""Resuming a 2-process (DDP, gloo, CPU) run twice from a relative path continues it: one run
folder, one ``last.ckpt`` at the last step, every training step logged once."""

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, run_cli_subprocess, tiny_args
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader


def _train_loss_steps(run: Path) -> list[int]:
    """The step of every ``train/loss`` event in the run's event files, repeats kept."""
    return sorted(
        event.step
        for path in run.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
        if value.tag == "train/loss"
    )


@pytest.mark.slow
def test_two_process_run_resumed_twice_from_a_relative_path(tmp_path):
    base = ["fit", f"--config={CONFIGS / 'demo.yaml'}", *tiny_args(Path("logs"))]
    base += ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.callbacks=[]"]
    base += ["--checkpoint.every_n_train_steps=4"]
    run_cli_subprocess([*base, "--trainer.max_steps=6"], tmp_path)
    (run,) = (tmp_path / "logs").glob("*/version_*")
    last = run.relative_to(tmp_path) / "checkpoints" / "last.ckpt"
    for steps in (12, 18):
        run_cli_subprocess([*base, f"--trainer.max_steps={steps}", f"--ckpt_path={last}"], tmp_path)
        assert torch.load(tmp_path / last, weights_only=True)["global_step"] == steps

    assert list((tmp_path / "logs").glob("*/version_*")) == [run]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert _train_loss_steps(run) == list(range(18))  # each step once: nothing redone
