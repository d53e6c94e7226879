"""Runs on this machine: up to ``jobs`` ``fit`` processes at once, ``threads`` torch threads each.

Each child runs in its own session, so a Ctrl+C reaches only this process, which then asks every
running child to stop (SIGINT: the child stops after its current step and writes ``last.ckpt``),
waits for them to save, and raises :class:`Interrupted` with what each one saved.
"""

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from icl_lightning.reproduce.progress import Outcome, Progress
from icl_lightning.reproduce.runs import Run, child_environment, interrupted_at, write_done

#: how long the children may take to write their last.ckpt after a Ctrl+C before they are killed
SAVE_GRACE_SECONDS = 600.0


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def jobs_and_threads(jobs: int | None, threads: int | None, cores: int) -> tuple[int, int]:
    """``(jobs, threads)``: ``threads`` torch threads per run, 1 unless given (a run's results
    then do not depend on ``--jobs``: the thread count changes float rounding; and one thread
    per run wastes none on synchronisation), and as many jobs as fit, ``cores // threads``
    (at least 1), unless given."""
    threads = threads or 1
    return jobs or max(1, cores // threads), threads


@dataclass
class Child:
    """A running ``fit`` process of ``run``."""

    run: Run
    command: list[str]
    process: subprocess.Popen
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def start_run(cls, run: Run, threads: int) -> "Child":
        command = run.prepare()
        with open(run.log, "a") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(threads),
                start_new_session=True,
            )
        return cls(run, command, process)

    def outcome(self, stopped: bool = False) -> Outcome:
        """How the finished child ended (``stopped``: this process interrupted it); writes
        ``done.json`` when it trained to the end."""
        seconds = time.perf_counter() - self.start
        code, run = self.process.returncode, self.run
        if code == 0:
            write_done(run.directory, seconds, run.steps, self.command)
            return Outcome(run, "trained", f"trained in {seconds:.0f} s", seconds)
        said = interrupted_at(run.log)
        if stopped or code < 0 or said:
            saved = said or "stopped before it wrote a checkpoint"
            return Outcome(run, "interrupted", f"interrupted: {saved}", seconds)
        return Outcome(run, "failed", f"failed (rc {code}); see {run.log}", seconds)


def handle(signum: int, handler):
    """``signal.signal(signum, handler)`` in the main thread (the only one that may set it);
    returns the previous handler, or None (and sets nothing) elsewhere or for a None handler."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


class Interrupted(Exception):
    """Ctrl+C stopped the runs (or the waiting for them); ``outcomes`` holds every run's ending
    so far, ``note`` what else the user must know."""

    def __init__(self, outcomes: list[Outcome], note: str = ""):
        super().__init__("interrupted")
        self.outcomes, self.note = outcomes, note


def run_local(
    runs: list[Run], jobs: int, threads: int, progress: Progress, poll: float = 0.2
) -> list[Outcome]:
    """Train the unfinished ``runs``, ``jobs`` at a time; return every run's :class:`Outcome`.
    SIGTERM stops them as Ctrl+C does (the children, in their own sessions, would outlive
    this process otherwise)."""
    waiting, running, outcomes = list(runs), [], []

    def end(child: Child, stopped: bool = False) -> None:
        outcomes.append(child.outcome(stopped))
        progress.ended_run(outcomes[-1])

    previous = handle(signal.SIGTERM, signal.default_int_handler)
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                run = waiting.pop(0)
                if run.finished():
                    outcomes.append(Outcome(run, "skipped", "done earlier, skipped"))
                    progress.ended_run(outcomes[-1])
                    continue
                running.append(Child.start_run(run, threads))
                progress.started(run)
            for child in [c for c in running if c.process.poll() is not None]:
                running.remove(child)
                end(child)
            time.sleep(poll if running else 0)
    except KeyboardInterrupt:
        stop(running)
        for child in running:
            end(child, stopped=True)
        raise Interrupted(outcomes) from None
    finally:
        handle(signal.SIGTERM, previous)
    return outcomes


def stop(children: list[Child], grace: float = SAVE_GRACE_SECONDS) -> None:
    """Send each child SIGINT (it stops after its current step, and the probes' measurement of
    that step, and writes ``last.ckpt``) and wait for them, ``grace`` seconds at most; then,
    or at a second Ctrl+C, kill those still running (they resume from their previous
    ``last.ckpt``)."""
    if not children:
        return
    print(
        f"\nStopping {len(children)} run(s); each saves its last.ckpt after its current step "
        "(Ctrl+C again: stop them now, losing the steps since their previous last.ckpt) ...",
        flush=True,
    )
    deadline = time.monotonic() + grace
    try:
        for child in children:
            child.process.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    except KeyboardInterrupt:
        pass
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()


def log_tail(log: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a child's ``fit.log`` (to show with a failure)."""
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
