"""Runs on this machine: up to ``jobs`` ``fit`` processes at once, ``threads`` torch threads each.

Each run's folder is claimed first (:func:`~icl_lightning.reproduce.lock.claim_folder`, held by
its child until it exits), so two runners never train one run. Each child runs in its own session,
so a Ctrl+C reaches only this process, which then asks every running child to stop (SIGTERM:
before training the child ends at once, during training it stops after its current step and
writes ``last.ckpt``), waits for them to save, and raises :class:`Interrupted` with what each
one saved; SIGTERM and SIGHUP to this process do the same, and on Linux a child gets SIGTERM
when this process dies in any way (``kill -9`` included), so none trains on as an orphan.
"""

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from icl_lightning.reproduce.lock import claim_folder
from icl_lightning.reproduce.progress import Outcome, Progress
from icl_lightning.reproduce.runs import (
    Run,
    child_environment,
    interrupted_at,
    mark_attempt,
    write_done,
)
from icl_lightning.run_lock import RunLock, RunLocked

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


#: the signals that ask the runner (and through it its children) to stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
if LIBC is not None:
    LIBC.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]


def child_setup(parent: int) -> None:
    """Run in the child between fork and exec (C calls, no Python lock taken): SIGINT back
    to its default (a runner started in the background ignores it, and the child would inherit
    that), and SIGTERM when the thread that started it ends (``PR_SET_PDEATHSIG``), at once if
    the runner ``parent`` is gone already."""
    if LIBC is None:
        return
    LIBC.signal(signal.SIGINT, None)  # SIG_DFL
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def spawn(command: list[str], log: Path, threads: int, lock: int | None) -> subprocess.Popen:
    """Start ``command`` writing to ``log`` (after a line opening this attempt), with
    ``threads`` torch threads, in its own session, holding the open folder ``lock``; it dies
    with the runner (:func:`child_setup`)."""
    mark_attempt(log, command)
    with open(log, "a") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_environment(threads),
            start_new_session=True,
            pass_fds=() if lock is None else (lock,),
            preexec_fn=functools.partial(child_setup, os.getpid()),
        )


def ending(code: int) -> str:
    """A child's exit code in words: ``rc 1``, ``killed by SIGKILL``."""
    if code >= 0:
        return f"rc {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    return f"killed by {name}"


@dataclass
class Child:
    """A running ``fit`` process of ``run``, holding the run folder's ``lock``."""

    run: Run
    command: list[str]
    process: subprocess.Popen
    start: float = field(default_factory=time.perf_counter)
    lock: RunLock | None = None

    def outcome(self, stopped: bool = False) -> Outcome:
        """How the finished child ended, from this attempt only (``stopped``: this process
        stopped it); writes ``done.json`` when it trained to the end; releases the folder."""
        try:
            return self.ended(stopped, time.perf_counter() - self.start)
        finally:
            release(self.lock)

    def ended(self, stopped: bool, seconds: float) -> Outcome:
        code, run = self.process.returncode, self.run
        if code == 0:
            try:
                write_done(run.directory, seconds, run.steps, self.command)
            except OSError as error:
                return Outcome(
                    run,
                    "failed",
                    f"trained, but its done.json cannot be written ({error}); it resumes "
                    "from its last.ckpt on the next call",
                    seconds,
                )
            return Outcome(run, "trained", f"trained in {seconds:.0f} s", seconds)
        said = interrupted_at(run.log)
        if said or stopped or -code in STOP_SIGNALS:
            saved = said or f"{ending(code)} before it wrote a checkpoint"
            return Outcome(run, "interrupted", f"interrupted: {saved}", seconds)
        oom = " (out of memory?)" if code == -signal.SIGKILL else ""
        return Outcome(run, "failed", f"failed ({ending(code)}{oom}); see {run.log}", seconds)


def claim_run(run: Run, refused: str) -> RunLock | None | Outcome:
    """Claim ``run``'s folder: its lock (None where the filesystem has no locks), or the
    :class:`Outcome` of a run finished earlier ("skipped"), owned by another process ("busy",
    ``<refused>: <owner>``) or whose folder cannot be claimed ("failed")."""
    if run.finished():
        return Outcome(run, "skipped", "done earlier, skipped")
    try:
        return claim_folder(run.directory)
    except RunLocked as busy:
        return Outcome(run, "busy", f"{refused}: {busy}")
    except OSError as error:
        return Outcome(run, "failed", f"cannot claim its folder ({error})")


def start(run: Run, threads: int) -> Child | Outcome:
    """Claim ``run``'s folder and start its child; or the :class:`Outcome` of a run finished
    earlier, owned by another process, or that cannot be started (its folder unwritable)."""
    lock = claim_run(run, "not started")
    if isinstance(lock, Outcome):
        return lock
    try:
        if run.finished():  # by the process that held it a moment ago
            release(lock)
            return Outcome(run, "skipped", "done earlier, skipped")
        set_aside(run)
        command = run.prepare()
        fd = None if lock is None else lock.fd
        return Child(run, command, spawn(command, run.log, threads, fd), lock=lock)
    except (OSError, ValueError) as error:  # a folder that cannot be written, a bad config
        release(lock)
        return Outcome(run, "failed", f"cannot be started ({error})")
    except BaseException:
        release(lock)
        raise


def release(lock: RunLock | None) -> None:
    if lock is not None:
        lock.release()


def set_aside(run: Run) -> None:
    """Move what an earlier attempt of ``run`` left without a ``last.ckpt`` aside, saying so."""
    aside = run.set_aside()
    if aside is not None:
        print(
            f"{run.name}: {run.directory} held an earlier attempt without "
            f"checkpoints/last.ckpt to resume from; moved it to {aside} and starting afresh",
            flush=True,
        )


def handle(signum: int, handler):
    """``signal.signal(signum, handler)`` in the main thread (the only one that may set it);
    returns the previous handler, or None (and sets nothing) elsewhere or for a None handler."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


def stop_on_signals() -> dict:
    """Make each of :data:`STOP_SIGNALS` raise KeyboardInterrupt here (SIGINT and SIGHUP only
    where not ignored: ``nohup``, or a background job); return the previous handlers."""
    previous = {}
    for signum in STOP_SIGNALS:
        if signum == signal.SIGTERM or signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = handle(signum, signal.default_int_handler)
    return previous


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
    A stop signal stops the children and raises :class:`Interrupted`; any other error stops
    them too before it goes on."""
    waiting, running, outcomes = list(runs), [], []

    def end(outcome: Outcome) -> None:
        outcomes.append(outcome)
        progress.ended_run(outcome)

    previous = stop_on_signals()
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                started = start(waiting.pop(0), threads)
                if isinstance(started, Outcome):
                    end(started)
                    continue
                running.append(started)
                progress.started(started.run)
            for child in [c for c in running if c.process.poll() is not None]:
                running.remove(child)
                end(child.outcome())
            time.sleep(poll if running else 0)
    except KeyboardInterrupt:
        stop(running)
        for child in running:
            end(child.outcome(stopped=True))
        raise Interrupted(outcomes) from None
    except BaseException:
        stop(running)
        raise
    finally:
        for signum, handler in previous.items():
            handle(signum, handler)
    return outcomes


def stop(children: list[Child], grace: float = SAVE_GRACE_SECONDS) -> None:
    """Send each child SIGTERM (in training it stops after its current step, and the probes'
    measurement of that step, and writes ``last.ckpt``; before, it ends at once) and wait for
    them, ``grace`` seconds at most; then, or at a second Ctrl+C, kill those still running
    (they resume from their previous ``last.ckpt``)."""
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
            child.process.send_signal(signal.SIGTERM)
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
