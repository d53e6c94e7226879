"""Launching the reproduction's runs: in parallel here (``--jobs``), as submitit jobs (the
local executor stands in for SLURM), interrupted and resumed, from relative paths."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from icl_lightning.reproduce import cli, runner
from icl_lightning.reproduce.experiments import Experiment
from icl_lightning.reproduce.figures import StepFigure
from icl_lightning.reproduce.progress import Progress
from icl_lightning.reproduce.runner import Child, jobs_and_threads
from icl_lightning.reproduce.runs import Run
from icl_lightning.reproduce.scalars import read_scalars
from icl_lightning.reproduce.verdicts import Check


def tiny(steps: int) -> Experiment:
    """The demo config shrunk to seconds of CPU work: no probes, batch 64, ``steps`` steps."""
    return Experiment(
        "tiny",
        "Tiny: the demo config, a few steps",
        "configs/demo.yaml",
        full_steps=steps,
        quick_steps=steps,
        seconds=10,
        quick_seconds=5,
        changes={
            "trainer.callbacks": [],
            "trainer.log_every_n_steps": 10,
            "trainer.enable_model_summary": False,
            "data.init_args.batch_size": 64,
            "data.init_args.num_val_tasks": 96,
            "data.init_args.batches_per_epoch": 10,
        },
        checks=(Check("val / zero loss", "val/loss", "falls", "< 0.9", "val/zero_loss"),),
        figures=(StepFigure("loss", "Tiny: validation loss", {"val": "val/loss"}),),
    )


def reproduce(experiment: Experiment, *args: str) -> None:
    cli.main(["--seeds", "1", *args], experiments=[experiment])


def test_jobs_and_threads_divide_the_cores():
    """One thread per run unless asked (results then do not depend on --jobs), as many jobs as
    the cores hold."""
    assert jobs_and_threads(None, None, cores=2) == (2, 1)
    assert jobs_and_threads(1, None, cores=2) == (1, 1)
    assert jobs_and_threads(None, 2, cores=16) == (8, 2)
    assert jobs_and_threads(None, 4, cores=2) == (1, 4)
    assert jobs_and_threads(4, 3, cores=2) == (4, 3)  # as asked


class SlowProcess:
    """A stub ``fit`` child that runs for ``polls`` polls, then exits 0."""

    alive: list["SlowProcess"] = []
    most = 0

    def __init__(self, command, env, **kwargs):
        self.command, self.env, self.kwargs, self.polls = command, env, kwargs, 3
        SlowProcess.alive.append(self)
        SlowProcess.most = max(SlowProcess.most, len(SlowProcess.alive))

    @property
    def returncode(self):
        return None if self.polls > 0 else 0

    def poll(self):
        self.polls -= 1
        if self.polls <= 0 and self in SlowProcess.alive:
            SlowProcess.alive.remove(self)
        return self.returncode


def test_jobs_runs_at_once_each_with_its_threads(tmp_path, monkeypatch, capsys):
    """``--jobs 2 --threads 1``: never more than 2 children at once, each in its own session
    with one OpenMP thread; the progress lines count the runs and estimate the time left."""
    started = []
    monkeypatch.setattr(
        runner.subprocess,
        "Popen",
        lambda c, **k: started.append(SlowProcess(c, **k)) or started[-1],
    )
    monkeypatch.setattr(cli, "write_report", lambda *a, **k: {})
    experiment = tiny(10)
    cli.main(
        ["--seeds", "5", "--jobs", "2", "--threads", "1", "--logs", str(tmp_path)], [experiment]
    )
    assert len(started) == 5 and SlowProcess.most == 2
    assert all(p.env["OMP_NUM_THREADS"] == "1" and p.kwargs["start_new_session"] for p in started)
    out = capsys.readouterr().out
    assert "2 at once here with 1 thread(s) each" in out
    assert "[1/5] tiny/default seed " in out and "min left)" in out and "[5/5]" in out


def test_progress_estimates_the_time_left_from_the_runs_so_far(tmp_path):
    runs = [Run(tiny(10), "default", s, True, tmp_path) for s in range(4)]  # 5 s estimated each
    progress = Progress(runs, jobs=2)
    assert progress.seconds_left() == 4 * 5 / 2
    progress.started(runs[0])
    progress.ended_run(runner.Outcome(runs[0], "trained", "trained", seconds=10.0))  # 2x slower
    assert progress.seconds_left() == 3 * 5 * 2 / 2


class Ended:
    """A finished stub child with exit code ``returncode``."""

    def __init__(self, returncode: int):
        self.returncode = returncode


@pytest.mark.parametrize(
    "code,log,status",
    [
        (-15, "", "interrupted"),
        (1, "Interrupted at step 7; saved /r/last.ckpt. Resume with: ...\n", "interrupted"),
        (1, "Traceback ...\nValueError: bad\n", "failed"),
        (0, "", "trained"),
    ],
)
def test_a_child_stopped_by_a_signal_is_interrupted_not_failed(code, log, status, tmp_path):
    run = Run(tiny(10), "default", 0, True, tmp_path)
    run.directory.mkdir(parents=True)
    run.log.write_text(log)
    outcome = Child(run, ["fit"], Ended(code)).outcome()
    assert outcome.status == status
    if status == "interrupted" and log:
        assert "Interrupted at step 7; saved /r/last.ckpt" in outcome.message
    if status == "failed":
        assert str(run.log) in outcome.message
    assert (run.directory / "done.json").exists() == (status == "trained")


def test_parallel_runs_train_and_report(tmp_path, capsys):
    """Two seeds of a tiny experiment, two at once, each its own ``fit`` process: both finish,
    and the report has both seeds."""
    reproduce(
        tiny(20),
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--logs",
        str(tmp_path / "logs"),
        "--out",
        str(tmp_path / "out"),
    )
    for seed in (0, 1):
        done = json.loads(
            (
                tmp_path / "logs" / "full" / "tiny" / "default" / f"seed{seed}" / "done.json"
            ).read_text()
        )
        assert done["steps"] == 20
    results = json.loads((tmp_path / "out" / "full" / "results.json").read_text())
    assert results["tiny"]["default"][0]["seeds"] == 2
    assert "all runs finished" in capsys.readouterr().out


def wait_for(path: Path, text: str = "", timeout: float = 120) -> None:
    """Wait until ``path`` exists and holds ``text``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} never said {text!r}")


def signal_while_training(signum: int, tmp_path: Path) -> tuple[int, Run]:
    """Run a long tiny experiment and send this process ``signum`` once its child trains;
    return the reproduction's exit code and the run."""
    experiment = tiny(100_000)
    run = Run(experiment, "default", 0, False, tmp_path / "full")
    sender = threading.Thread(
        target=lambda: (wait_for(run.log, "Training;"), os.kill(os.getpid(), signum))
    )
    # Ctrl+C as in a terminal, even where this process was started ignoring SIGINT (a
    # background job of a non-interactive shell)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sender.start()
    try:
        with pytest.raises(SystemExit) as exit_info:
            reproduce(experiment, "--jobs", "1", "--logs", str(tmp_path), "--out", str(tmp_path))
    finally:
        signal.signal(signal.SIGINT, previous)
    sender.join()
    return exit_info.value.code, run


def test_ctrl_c_saves_every_run_and_says_how_to_continue(tmp_path, capsys):
    """A Ctrl+C during training: each child stops after its step and writes last.ckpt, the
    runs are reported interrupted (not failed), with the command that continues them; no
    traceback, exit 130."""
    code, run = signal_while_training(signal.SIGINT, tmp_path)
    assert code == 130
    out = capsys.readouterr().out
    assert "tiny/default seed 0: interrupted: Interrupted at step" in out
    command = f"icl-reproduce --seeds 1 --jobs 1 --logs {tmp_path}"
    assert f"Continue (finished runs are skipped, the others resume): {command}" in out
    assert "failed" not in out
    step = torch.load(run.checkpoint, weights_only=False, map_location="cpu")["global_step"]
    assert 0 < step < 100_000 and not (run.directory / "done.json").exists()
    assert run.prepare()[-1] == f"--ckpt_path={run.checkpoint}"


def event_steps(directory: Path) -> list[list[int]]:
    """The ``train/loss`` steps of each event file under ``directory``, oldest file first."""
    files = sorted(directory.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    steps = []
    for events in files:
        scalars = read_scalars_of_file(events)
        steps.append(sorted(scalars.get("train/loss", {})))
    return steps


def read_scalars_of_file(events: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        t: {e.step: e.value for e in accumulator.Scalars(t)} for t in accumulator.Tags()["scalars"]
    }


@pytest.mark.slow
def test_max_steps_100_200_300_with_a_relative_logs_continues_never_rewinds(tmp_path, monkeypatch):
    """From a working directory, with ``--logs logs``: 100 -> 200 -> 300 steps continue the
    same run (one last.ckpt at step 300; each later event file starts where the last ended)."""
    monkeypatch.chdir(tmp_path)
    experiment = tiny(300)
    for cap in (100, 200, 300):
        reproduce(experiment, "--max-steps", str(cap), "--logs", "logs", "--out", "reports")
    directory = tmp_path / "logs" / "full" / "tiny" / "default" / "seed0"
    assert sorted(p.name for p in (directory / "checkpoints").iterdir()) == ["last.ckpt"]
    checkpoint = torch.load(
        directory / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu"
    )
    assert checkpoint["global_step"] == 300
    steps = event_steps(directory)
    assert len(steps) == 3
    assert steps[0][-1] < 100 <= steps[1][0] and steps[1][-1] < 200 <= steps[2][0]
    assert max(read_scalars(directory)["train/loss"]) == 299


def test_submitit_local_launcher_trains_and_reports(tmp_path, capsys):
    """``--launcher submitit-local``: the SLURM code path (one submitit job per run) on
    submitit's local executor; the runs finish and the report is built from their folders."""
    pytest.importorskip("submitit")
    logs, out = tmp_path / "logs", tmp_path / "out"
    reproduce(tiny(20), "--launcher", "submitit-local", "--logs", str(logs), "--out", str(out))
    run = Run(tiny(20), "default", 0, False, logs / "full")
    assert json.loads((run.directory / "done.json").read_text())["steps"] == 20
    assert (logs / "full" / "submitit").is_dir()
    results = json.loads((out / "full" / "results.json").read_text())
    assert results["tiny"]["default"][0]["seeds"] == 1
    assert "submitted tiny/default seed 0: job " in capsys.readouterr().out


def test_a_preempted_job_stops_its_fit_and_requeues_resuming_from_last_ckpt(tmp_path):
    """FitJob.checkpoint (called by submitit on preemption or near the time limit) stops the
    running child with SIGTERM and requeues the same run, whose command resumes from last.ckpt."""
    slurm = pytest.importorskip("icl_lightning.reproduce.slurm")
    run = Run(tiny(20), "default", 0, False, tmp_path)
    run.prepare()
    job = slurm.FitJob(str(run.directory), run.steps, threads=1)
    assert "--ckpt_path" not in " ".join(job.command())
    job._process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    resubmission = job.checkpoint()
    assert job._process.returncode == -signal.SIGTERM
    requeued = resubmission.function
    assert isinstance(requeued, slurm.FitJob) and requeued.directory == str(run.directory)
    run.checkpoint.parent.mkdir()
    run.checkpoint.write_bytes(b"")
    assert requeued.command()[-1] == f"--ckpt_path={run.checkpoint}"


@pytest.mark.slow
def test_a_preempted_job_requeues_and_resumes_from_last_ckpt(tmp_path):
    """A real submitit job (local executor) gets SLURM's preemption signal (SIGUSR2) while its
    fit trains: the fit saves last.ckpt, the job is requeued and resumes there to the end; its
    curves continue across the two attempts."""
    slurm = pytest.importorskip("icl_lightning.reproduce.slurm")
    run = Run(tiny(3000), "default", 0, False, tmp_path / "full")
    run.prepare()
    ex = slurm.submitit.LocalExecutor(tmp_path / "submitit")
    ex.update_parameters(timeout_min=10)
    job = ex.submit(slurm.FitJob(str(run.directory), run.steps, threads=1))
    wait_for(run.checkpoint)  # written every 100 steps
    controller = job._process.pid  # the local executor's controller; the job is its child
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    assert job.result() > 0
    log = run.log.read_text()
    assert "Interrupted at step" in log and log.count("Training;") == 2
    checkpoint = torch.load(run.checkpoint, weights_only=False, map_location="cpu")
    assert checkpoint["global_step"] == 3000
    steps = event_steps(run.directory)
    assert len(steps) == 2 and steps[0][-1] < steps[1][0]
    assert json.loads((run.directory / "done.json").read_text())["steps"] == 3000


def test_a_submitit_launcher_without_submitit_is_a_usage_error(monkeypatch, capsys):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name: None if name == "submitit" else real(name)
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--launcher", "slurm", "--report-only"])
    assert exit_info.value.code == 2
    assert "--launcher slurm needs submitit" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_the_runs_like_ctrl_c(tmp_path, capsys):
    """SIGTERM to the reproduction (e.g. its own job ending) stops and saves its children too,
    instead of leaving them training in their own sessions."""
    code, run = signal_while_training(signal.SIGTERM, tmp_path)
    assert code == 130
    assert "interrupted: Interrupted at step" in capsys.readouterr().out
    assert run.checkpoint.exists()
    assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler  # restored


class Stubborn:
    """A child process that has not stopped yet; ``wait`` is cut by a second Ctrl+C."""

    def __init__(self):
        self.signals, self.returncode = [], None

    def send_signal(self, signum):
        self.signals.append(signum)

    def wait(self, timeout=None):
        if self.returncode is None and timeout is not None:
            raise KeyboardInterrupt
        return self.returncode

    def poll(self):
        return self.returncode

    def kill(self):
        self.returncode = -9


def test_a_second_ctrl_c_kills_the_children_still_saving(tmp_path, capsys):
    children = [Child(Run(tiny(10), "default", s, True, tmp_path), [], Stubborn()) for s in (0, 1)]
    runner.stop(children)
    assert all(c.process.signals == [signal.SIGTERM] for c in children)
    assert all(c.process.returncode == -9 for c in children)
    assert "Ctrl+C again: stop them now" in capsys.readouterr().out
    assert children[0].outcome(stopped=True).status == "interrupted"
