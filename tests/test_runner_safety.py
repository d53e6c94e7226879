"""The reproduction runner never loses what a run wrote and never leaves a run to two owners:
unresumable attempts are moved aside (never deleted), one lock per run folder, children that
stop and die with the runner, each run's status from this attempt only, and usage errors
before any training for a machine or options that cannot work (issue 29, items 2, 5 and 9)."""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_launch import tiny, wait_for

from icl_lightning import run_lock
from icl_lightning.reproduce import cli, runner, runs
from icl_lightning.reproduce.lock import LOCK_NAME, claim_folder
from icl_lightning.reproduce.progress import Outcome, Progress
from icl_lightning.reproduce.runs import Run, mark_attempt

#: a stand-in for ``fit``: says ``READY <pid> <its SIGINT handler>`` (words its command line,
#: which the attempt's first line in fit.log repeats, does not hold), then sleeps
SLEEPER = (
    "import os, signal, sys, time; "
    "print('ready'.upper(), os.getpid(), signal.getsignal(signal.SIGINT), flush=True); "
    "time.sleep(float(sys.argv[1]))"
)


def sleeper_pid(log: Path) -> int:
    return int(log.read_text().split("READY ")[1].split()[0])


class Exits:
    """A stub ``fit`` child that has already exited with ``returncode``."""

    def __init__(self, command, returncode=0, **kwargs):
        self.command, self.returncode, self.kwargs, self.pid = command, returncode, kwargs, 0

    def poll(self):
        return self.returncode


def stub_children(monkeypatch, returncode: int = 0) -> list[Exits]:
    started = []

    def popen(command, **kwargs):
        started.append(Exits(command, returncode, **kwargs))
        return started[-1]

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    return started


def sleepers(monkeypatch, seconds: float = 60) -> None:
    """Runs whose ``fit`` is :data:`SLEEPER` (real processes, started in a few ms)."""
    command = [sys.executable, "-c", SLEEPER, str(seconds)]
    monkeypatch.setattr(runs, "fit_command", lambda config, checkpoint: command)


def reproduce(tmp_path: Path, *args: str, experiment=None) -> None:
    logs, out = str(tmp_path / "logs"), str(tmp_path / "out")
    cli.main(["--seeds", "1", "--logs", logs, "--out", out, *args], [experiment or tiny(10)])


def the_run(tmp_path: Path, seed: int = 0) -> Run:
    return Run(tiny(10), "default", seed, False, tmp_path / "logs" / "full")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


# --- never delete -------------------------------------------------------------------------


def test_an_attempt_without_last_ckpt_is_moved_aside_not_overwritten(tmp_path, monkeypatch, capsys):
    """Event files, a checkpoint other than last.ckpt and the log of an attempt whose last.ckpt
    and done.json are gone stay, byte for byte, in ``seed0.stale-<time>/``; the new attempt
    starts in an empty folder, without --overwrite."""
    started = stub_children(monkeypatch)
    monkeypatch.setattr(cli, "write_report", lambda *a, **k: {})
    run = the_run(tmp_path)
    earlier = {
        "events.out.tfevents.1.host": b"curves",
        "checkpoints/step=50.ckpt": b"weights",
        "fit.log": b"Training; ...\n",
        "hparams.yaml": b"lr: 1\n",
    }
    for name, data in earlier.items():
        (run.directory / name).parent.mkdir(parents=True, exist_ok=True)
        (run.directory / name).write_bytes(data)
    reproduce(tmp_path)
    (aside,) = run.directory.parent.glob("seed0.stale-*")
    assert {n: (aside / n).read_bytes() for n in earlier} == earlier
    assert not any("--overwrite" in part for part in started[0].command)
    assert not (run.directory / "checkpoints").exists()
    new = sorted(p.name for p in run.directory.iterdir())
    assert new == ["done.json", "fit.log", "reproduce.yaml"]  # the lock file goes with the lock
    assert f"moved it to {aside}" in capsys.readouterr().out


def test_two_set_asides_in_one_second_keep_both(tmp_path, monkeypatch):
    run = the_run(tmp_path)
    monkeypatch.setattr(runs.time, "strftime", lambda *a: "20260101-000000")
    for attempt in (b"first", b"second"):
        run.directory.mkdir(parents=True, exist_ok=True)
        (run.directory / "metrics.csv").write_bytes(attempt)
        run.set_aside()
    kept = sorted(p.name for p in run.directory.parent.glob("seed0.stale-*"))
    assert kept == ["seed0.stale-20260101-000000", "seed0.stale-20260101-000000-1"]
    assert (run.directory.parent / kept[1] / "metrics.csv").read_bytes() == b"second"


def test_a_resumable_or_empty_folder_is_not_moved(tmp_path):
    run = the_run(tmp_path)
    run.checkpoint.parent.mkdir(parents=True)
    (run.directory / "fit.log").write_text("stopped during setup\n")
    assert run.set_aside() is None  # no run files: nothing to keep apart
    run.checkpoint.write_bytes(b"")
    (run.directory / "events.out.tfevents.1.host").write_bytes(b"curves")
    assert run.set_aside() is None and run.prepare()[-1] == f"--ckpt_path={run.checkpoint}"


# --- one owner per run folder ----------------------------------------------------------------


def test_a_run_owned_by_another_process_is_not_touched_and_names_its_owner(tmp_path, monkeypatch):
    """Another runner holds the folder: no child starts, no file there changes, and the message
    names the owner (pid, host, command)."""
    started = stub_children(monkeypatch)
    run = the_run(tmp_path)
    other = claim_folder(run.directory)
    (run.directory / "events.out.tfevents.1.host").write_bytes(b"live curves")
    try:
        with pytest.raises(SystemExit) as exit_info:
            reproduce(tmp_path)
    finally:
        other.release()
    message = str(exit_info.value.code)
    assert "1 run(s) did not finish" in message and "not started:" in message
    assert f"the run folder {run.directory} is in use by pid {os.getpid()} on " in message
    assert Path(sys.argv[0]).name in message
    assert started == []
    assert [p.name for p in run.directory.iterdir()] == ["events.out.tfevents.1.host"]


def test_two_runners_at_once_start_each_run_once(tmp_path, monkeypatch):
    """Two runners on one --logs at the same instant: each run is started by exactly one of
    them; the other says it is busy."""
    started = []

    class Running(Exits):
        def __init__(self, command, **kwargs):
            super().__init__(command, None, **kwargs)
            started.append(self)

    monkeypatch.setattr(runner.subprocess, "Popen", Running)
    monkeypatch.setattr(Run, "prepare", lambda self: ["fit"])
    planned = [the_run(tmp_path, seed) for seed in range(6)]
    barrier, results = threading.Barrier(2), []

    def one_runner():
        barrier.wait()
        results.append([runner.start(run, 1) for run in planned])

    threads = [threading.Thread(target=one_runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 6
    for first, second in zip(*results, strict=True):
        kinds = sorted(type(x).__name__ for x in (first, second))
        assert kinds == ["Child", "Outcome"]
        busy = first if isinstance(first, Outcome) else second
        assert busy.status == "busy" and "is in use by pid" in busy.message
    for child in (x for r in results for x in r if isinstance(x, runner.Child)):
        child.lock.release()


def test_the_child_keeps_the_folder_after_the_runner_dies(tmp_path):
    """The open lock travels to the child: a rerun cannot claim the folder while a child of a
    runner that died still trains or saves; once it ends, the folder is free."""
    run = the_run(tmp_path)
    lock = claim_folder(run.directory)
    command = [sys.executable, "-c", SLEEPER, "30"]
    child = runner.spawn(command, run.log, 1, lock.fd)
    os.close(lock.fd)  # what the kernel does to the runner's files at kill -9
    try:
        with pytest.raises(run_lock.RunLocked, match=f"in use by pid {os.getpid()}"):
            claim_folder(run.directory)
    finally:
        child.kill()
        child.wait()
    claim_folder(run.directory).release()


def test_a_lock_file_left_by_a_dead_process_is_claimed_again(tmp_path):
    """A crash leaves runner.lock behind, naming a process that has ended: it holds no lock."""
    run = the_run(tmp_path)
    run.directory.mkdir(parents=True)
    (run.directory / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "h"}))
    lock = claim_folder(run.directory)
    assert json.loads((run.directory / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_submitit_job_in_an_owned_folder_fails_naming_the_owner(tmp_path):
    slurm = pytest.importorskip("icl_lightning.reproduce.slurm")
    run = the_run(tmp_path)
    other = claim_folder(run.directory)
    try:
        with pytest.raises(RuntimeError, match=f"not started: .* in use by pid {os.getpid()}"):
            slurm.FitJob(str(run.directory), run.steps, threads=1)()
    finally:
        other.release()
    assert not run.log.exists()


# --- children stop and die with the runner -------------------------------------------------


def test_a_child_handles_sigint_even_when_the_runner_ignores_it(tmp_path):
    """A runner started in the background ignores SIGINT; its children must not inherit that."""
    run = the_run(tmp_path)
    run.directory.mkdir(parents=True)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = runner.spawn([sys.executable, "-c", SLEEPER, "0"], run.log, 1, None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert child.wait(30) == 0
    assert "default_int_handler" in run.log.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_before_training_stops_the_children_at_once(
    signum, tmp_path, monkeypatch, capsys
):
    """A runner started in the background (SIGINT ignored) gets SIGTERM (or its terminal
    closes: SIGHUP) while its children still start up: they end at once, reported
    interrupted, and the runner exits 130 in seconds, not after the runs."""
    if signal.getsignal(signum) is signal.SIG_IGN:
        pytest.skip(f"{signum.name} is ignored here (nohup): the runner leaves it so")
    sleepers(monkeypatch, seconds=60)
    run = the_run(tmp_path)
    sender = threading.Thread(
        target=lambda: (wait_for(run.log, "READY"), os.kill(os.getpid(), signum))
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    begin = time.monotonic()
    sender.start()
    try:
        with pytest.raises(SystemExit) as exit_info:
            reproduce(tmp_path, "--jobs", "1")
    finally:
        signal.signal(signal.SIGINT, previous)
        sender.join()
    assert exit_info.value.code == 130 and time.monotonic() - begin < 30
    assert not alive(sleeper_pid(run.log))
    out = capsys.readouterr().out
    assert "interrupted: killed by SIGTERM before it wrote a checkpoint" in out


RUNNER = """
import sys
from icl_lightning.reproduce import cli, runs
from icl_lightning.reproduce.experiments import Experiment

runs.Run.prepare = lambda run: [sys.executable, "-c", {sleeper!r}, "60"]
tiny = Experiment("tiny", "Tiny", "configs/demo.yaml", 10, 10, 1, 1)
cli.main(sys.argv[1:], [tiny])
"""


def test_kill_9_of_the_runner_ends_its_children_and_frees_their_folders(tmp_path):
    """``kill -9`` of the runner: its children (which would go on training as orphans) get
    SIGTERM from the kernel and end; their folders are free for a rerun."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(sleeper=SLEEPER))
    logs = tmp_path / "logs"
    command = [sys.executable, str(script), "--seeds", "2", "--jobs", "2"]
    command += ["--logs", str(logs), "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, cwd=Path(runs.ROOT), stdout=subprocess.DEVNULL)
    planned = [Run(tiny(10), "default", s, False, logs / "full") for s in (0, 1)]
    try:
        for run in planned:
            wait_for(run.log, "READY", timeout=60)
    finally:
        process.kill()
        process.wait()
    pids = [sleeper_pid(run.log) for run in planned]
    deadline = time.monotonic() + 10
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, pids))
    for run in planned:
        claim_folder(run.directory).release()


def test_an_error_in_the_runner_stops_the_children_it_started(tmp_path, monkeypatch):
    """An error while starting a later run (here the experiment's config cannot be built) ends
    the children already running instead of leaving them to train unseen."""
    sleepers(monkeypatch, seconds=60)
    build = Run.config

    def config(self):
        if self.seed == 1:
            wait_for(self.directory.parent / "seed0" / "fit.log", "READY")
            raise KeyError("trainer")
        return build(self)

    monkeypatch.setattr(Run, "config", config)
    with pytest.raises(KeyError):
        reproduce(tmp_path, "--seeds", "2", "--jobs", "2")
    assert not alive(sleeper_pid(the_run(tmp_path).log))


# --- a run's status -----------------------------------------------------------------------


def test_a_failure_after_an_earlier_interruption_is_failed(tmp_path, monkeypatch):
    """fit.log keeps every attempt: the line of an earlier interruption must not make this
    attempt's crash look like an interruption."""
    stub_children(monkeypatch, returncode=1)
    run = the_run(tmp_path)
    run.directory.mkdir(parents=True)
    run.log.write_text("Interrupted at step 7; saved /r/last.ckpt. Resume with: ...\n")
    with pytest.raises(SystemExit) as exit_info:
        reproduce(tmp_path)
    message = str(exit_info.value.code)
    assert f"tiny/default seed 0: failed (rc 1); see {run.log}" in message
    assert "interrupted" not in message


@pytest.mark.parametrize(
    "code,status,words",
    [
        (-signal.SIGKILL, "failed", "failed (killed by SIGKILL (out of memory?))"),
        (-signal.SIGSEGV, "failed", "failed (killed by SIGSEGV)"),
        (-signal.SIGTERM, "interrupted", "interrupted: killed by SIGTERM before it wrote"),
    ],
)
def test_a_child_killed_by_the_machine_is_failed_not_interrupted(code, status, words, tmp_path):
    run = the_run(tmp_path)
    run.directory.mkdir(parents=True)
    mark_attempt(run.log, ["fit"])
    outcome = runner.Child(run, ["fit"], Exits(["fit"], code)).outcome()
    assert outcome.status == status and outcome.message.startswith(words)


@pytest.mark.parametrize(
    "text",
    ['{"steps": "300"}', '{"steps": null}', '{"steps": true}', "[300]", "null", "\udcff"],
    ids=["string", "null-steps", "bool", "list", "null", "bytes"],
)
def test_a_malformed_done_json_is_a_warning_not_a_traceback(text, tmp_path):
    run = the_run(tmp_path)
    run.directory.mkdir(parents=True)
    (run.directory / "done.json").write_bytes(text.encode(errors="surrogateescape"))
    with pytest.warns(UserWarning, match="is not a complete record of a finished run"):
        assert not run.finished()


def test_a_done_json_that_is_a_folder_is_a_warning(tmp_path):
    run = the_run(tmp_path)
    (run.directory / "done.json").mkdir(parents=True)
    with pytest.warns(UserWarning, match="IsADirectoryError"):
        assert not run.finished()


def test_a_full_disk_at_done_json_is_a_failed_run_not_a_traceback(tmp_path, monkeypatch):
    stub_children(monkeypatch)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "write_done", full)
    with pytest.raises(SystemExit) as exit_info:
        reproduce(tmp_path)
    message = str(exit_info.value.code)
    assert "trained, but its done.json cannot be written" in message
    assert "No space left on device" in message


def test_a_file_in_place_of_a_run_folder_fails_that_run_only(tmp_path, monkeypatch, capsys):
    started = stub_children(monkeypatch)
    monkeypatch.setattr(cli, "write_report", lambda *a, **k: {})
    blocked = the_run(tmp_path, seed=0).directory
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        reproduce(tmp_path, "--seeds", "2")
    assert "seed 0: cannot claim its folder" in str(exit_info.value.code)
    assert len(started) == 1 and "seed1" in started[0].command[-1]


# --- usage errors before any training ------------------------------------------------------


def refused(tmp_path, monkeypatch, capsys, *args: str) -> str:
    """Call the runner with ``args``; it must exit 2 without training; return stderr."""
    monkeypatch.setattr(cli, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--seeds", "1", *args], [tiny(10)])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_launcher_slurm_without_sbatch_is_a_usage_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))
    err = refused(tmp_path, monkeypatch, capsys, "--launcher", "slurm", "--logs", str(tmp_path))
    assert "--launcher slurm: no `sbatch` on PATH" in err


@pytest.mark.parametrize("option", ["--logs", "--out"])
@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_an_unusable_logs_or_out_is_a_usage_error(option, where, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    folder = {
        "a file": tmp_path / "file",
        "under a file": tmp_path / "file" / "sub",
        "read-only": Path("/proc/icl"),  # not writable, not even by root
    }[where]
    other = "--out" if option == "--logs" else "--logs"
    err = refused(tmp_path, monkeypatch, capsys, option, str(folder), other, str(tmp_path / "ok"))
    assert f"{option}={folder}" in err and "cannot be written" in err


def test_more_threads_than_cores_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "available_cores", lambda: 2)
    monkeypatch.setattr(cli, "train", lambda *a, **k: [])
    monkeypatch.setattr(cli, "write_report", lambda *a, **k: {})
    with pytest.warns(UserWarning, match=r"--jobs 2 x --threads 2 = 4 threads on 2 core"):
        reproduce(tmp_path, "--jobs", "2", "--threads", "2")


def test_logs_and_out_default_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stub_children(monkeypatch)
    where = []
    monkeypatch.setattr(cli, "write_report", lambda e, s, logs, out, *a: where.append((logs, out)))
    cli.main(["--seeds", "1"], [tiny(10)])
    assert where == [(tmp_path / "logs" / "reproduce" / "full", tmp_path / "reports" / "full")]
    assert (tmp_path / "logs" / "reproduce" / "full" / "tiny" / "default" / "seed0").is_dir()


# --- more of the same (item 9) -------------------------------------------------------------


def test_a_full_disk_at_the_report_is_one_message(tmp_path, monkeypatch):
    stub_children(monkeypatch)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "write_report", full)
    with pytest.raises(SystemExit) as exit_info:
        reproduce(tmp_path)
    message = str(exit_info.value.code)
    assert "the report cannot be written" in message and "--report-only" in message


def test_ctrl_c_while_the_report_is_written_is_no_traceback(tmp_path, monkeypatch, capsys):
    stub_children(monkeypatch)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_report", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        reproduce(tmp_path)
    assert exit_info.value.code == 130
    assert "Stopped while writing the report; the runs are kept" in capsys.readouterr().out


def test_a_child_that_cannot_be_started_fails_that_run_only(tmp_path, monkeypatch):
    """fork fails (no memory, too many processes) for one run: that run fails with the reason,
    the others train."""
    started = stub_children(monkeypatch)
    popen = runner.subprocess.Popen

    def fork_fails_once(command, **kwargs):
        if not started and not getattr(fork_fails_once, "failed", False):
            fork_fails_once.failed = True
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return popen(command, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", fork_fails_once)
    with pytest.raises(SystemExit) as exit_info:
        reproduce(tmp_path, "--seeds", "2")
    message = str(exit_info.value.code)
    assert "seed 0: cannot be started ([Errno 11] Resource temporarily unavailable)" in message
    assert len(started) == 1 and "seed1" in started[0].command[-1]


def test_a_refused_submission_is_one_message(tmp_path):
    """sbatch refuses the jobs (a wrong --partition): one message, nothing trained."""
    slurm = pytest.importorskip("icl_lightning.reproduce.slurm")

    class Refusing:
        def batch(self):
            return contextlib.nullcontext()

        def submit(self, job):
            raise slurm.submitit.core.utils.FailedJobError("sbatch: error: invalid partition")

    planned = [the_run(tmp_path)]
    with pytest.raises(SystemExit, match="submitting the 1 job.* invalid partition"):
        slurm.run_submitit(planned, Refusing(), 1, Progress(planned, 1))


def test_the_time_left_counts_only_the_jobs_that_can_run(tmp_path):
    """--jobs 8 with 2 runs: two run at once, not eight."""
    planned = [Run(tiny(10), "default", s, True, tmp_path) for s in range(2)]
    assert Progress(planned, jobs=8).seconds_left() == 5.0


# --- the same with real fits (slow) ----------------------------------------------------------


@pytest.mark.slow
def test_a_real_rerun_keeps_the_curves_of_an_attempt_without_last_ckpt(tmp_path):
    """A real fit in a folder whose earlier attempt left curves but no last.ckpt: the earlier
    event file is kept byte for byte (before: ``--overwrite=true`` deleted it), the run trains."""
    experiment = tiny(20)
    run = Run(experiment, "default", 0, False, tmp_path / "logs" / "full")
    run.directory.mkdir(parents=True)
    earlier = run.directory / "events.out.tfevents.1.host"
    earlier.write_bytes(b"\x18\x00 the earlier curves")
    reproduce(tmp_path, experiment=experiment)
    (aside,) = run.directory.parent.glob("seed0.stale-*")
    assert (aside / earlier.name).read_bytes() == b"\x18\x00 the earlier curves"
    assert json.loads((run.directory / "done.json").read_text())["steps"] == 20


REAL_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from test_launch import tiny
from icl_lightning.reproduce import cli
cli.main(sys.argv[1:], [tiny(100_000)])
"""


@pytest.mark.slow
def test_kill_9_of_the_runner_saves_its_training_child_at_a_checkpoint(tmp_path):
    """``kill -9`` of the runner while its fit trains: the fit gets SIGTERM, stops after its
    step, writes last.ckpt and ends (before: it trained on, an orphan); a rerun resumes there."""
    script = tmp_path / "runner.py"
    script.write_text(REAL_RUNNER.format(tests=str(Path(__file__).parent)))
    logs = tmp_path / "logs"
    command = [sys.executable, str(script), "--seeds", "1", "--jobs", "1", "--logs", str(logs)]
    process = subprocess.Popen([*command, "--out", str(tmp_path / "out")])
    run = Run(tiny(100_000), "default", 0, False, logs / "full")
    try:
        wait_for(run.log, "Training;", timeout=180)
        path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        (child,) = map(int, path.read_text().split())
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 120
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(child)
    assert "Interrupted at step" in run.log.read_text() and run.checkpoint.exists()
    assert run.prepare()[-1] == f"--ckpt_path={run.checkpoint}"


def test_a_filesystem_without_locks_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    """Lustre mounted without ``flock`` answers ENOSYS: the run goes on unlocked, with a
    warning saying what that risks, instead of every job failing."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="this filesystem has no file locks"):
        assert claim_folder(the_run(tmp_path).directory) is None
