"""Runs as submitit jobs: one SLURM job (array task) per run, or submitit's local executor.

Needs the optional extra ``cluster`` (``pip install -e '.[cluster]'``). Each job runs its run's
``fit`` in a child process. When SLURM preempts the job or its time limit nears, submitit calls
:meth:`FitJob.checkpoint`: the child is asked to stop (SIGTERM: it stops after its current step
and writes ``last.ckpt``), and the same job is requeued; started again, it resumes from that
``last.ckpt``. The report is built from the same run folders.
"""

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from icl_lightning.reproduce.lock import claim_folder
from icl_lightning.reproduce.progress import Outcome, Progress
from icl_lightning.reproduce.runner import (
    Interrupted,
    claim_run,
    ending,
    release,
    set_aside,
    spawn,
)
from icl_lightning.reproduce.runs import Run, fit_command, interrupted_at, write_done
from icl_lightning.run_lock import RunLocked

#: how long the child may take to write its last.ckpt when the job is preempted
SAVE_GRACE_SECONDS = 60.0


class FitJob(submitit.helpers.Checkpointable):
    """``fit --config <directory>/reproduce.yaml`` (resuming from ``last.ckpt`` when there is
    one) with ``threads`` torch threads; ``done.json`` at the end. Returns the seconds it took.

    Raises:
        RuntimeError: the fit failed; the message names its ``fit.log``.
    """

    def __init__(self, directory: str, steps: int, threads: int):
        self.directory, self.steps, self.threads = directory, steps, threads
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _process=None)

    def command(self) -> list[str]:
        directory = Path(self.directory)
        return fit_command(directory / "reproduce.yaml", directory / "checkpoints" / "last.ckpt")

    def __call__(self) -> float:
        directory, command = Path(self.directory), self.command()
        try:
            lock = claim_folder(directory)
        except RunLocked as busy:
            raise RuntimeError(f"not started: {busy}") from None
        start = time.perf_counter()
        try:
            fd = None if lock is None else lock.fd
            self._process = spawn(command, directory / "fit.log", self.threads, fd)
            # poll, not wait(): a blocking wait holds the Popen's lock, and checkpoint() (run as
            # a signal handler in this thread) could then never see the child exit
            while (code := self._process.poll()) is None:
                time.sleep(0.5)
        finally:
            release(lock)
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({ending(code)}); see fit.log")
        write_done(directory, seconds, self.steps, command)
        return seconds

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Stop the running child (it writes ``last.ckpt``), then requeue this job: started
        again, :meth:`command` resumes from that checkpoint."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(SAVE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
        return submitit.helpers.DelayedSubmission(FitJob(self.directory, self.steps, self.threads))


@dataclass(frozen=True)
class ClusterOptions:
    """``--launcher slurm`` options: ``partition``, ``minutes`` (time limit of each job; a job
    that reaches it is requeued and resumes), ``gpus`` per run, ``account``, ``cpus`` per run."""

    partition: str | None = None
    minutes: int = 120
    gpus: int = 0
    account: str | None = None
    cpus: int = 1
    max_requeues: int = 20


def executor(cluster: str, folder: Path, options: ClusterOptions) -> submitit.AutoExecutor:
    """A submitit executor for ``cluster`` (``slurm`` or ``local``) writing its files under
    ``folder``."""
    requeues = {f"{c}_max_num_timeout": options.max_requeues for c in ("slurm", "local")}
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, **requeues)
    ex.update_parameters(
        timeout_min=options.minutes,
        gpus_per_node=options.gpus,
        cpus_per_task=options.cpus,
        name="icl-reproduce",
    )
    if cluster == "slurm":
        extra = {"slurm_partition": options.partition, "slurm_account": options.account}
        ex.update_parameters(**{k: v for k, v in extra.items() if v is not None})
    return ex


def run_submitit(
    runs: list[Run], ex: submitit.Executor, threads: int, progress: Progress, poll: float = 5.0
) -> list[Outcome]:
    """Submit one job per unfinished run (one job array under SLURM), ``threads`` torch
    threads each, and wait for them; return every run's :class:`Outcome`."""
    outcomes, pending = [], []
    for run in runs:
        outcome = prepare(run)
        if outcome is None:
            pending.append(run)
        else:
            outcomes.append(outcome)
            progress.ended_run(outcome)
    try:
        with ex.batch():
            jobs = [ex.submit(FitJob(str(run.directory), run.steps, threads)) for run in pending]
    except submitit.core.utils.FailedJobError as error:
        lines = str(error).strip().splitlines() or [repr(error)]
        raise SystemExit(
            f"submitting the {len(pending)} job(s) failed: {lines[-1]}\n(check --partition, "
            "--account, --time and --gpus-per-run; nothing was trained)"
        ) from None
    for run, job in zip(pending, jobs, strict=True):
        progress.started(run)
        print(f"submitted {run.name}: job {job.job_id}", flush=True)
    waiting = dict(zip(jobs, pending, strict=True))
    try:
        while waiting:
            for job in [j for j in waiting if j.done()]:
                outcomes.append(job_outcome(waiting.pop(job), job))
                progress.ended_run(outcomes[-1])
            time.sleep(poll if waiting else 0)
    except KeyboardInterrupt:
        ids = " ".join(job.job_id for job in waiting)
        note = (
            f"The jobs still queued or running ({ids}) go on; cancel them with `scancel {ids}`. "
            "Once they end, build the report with the same command and --report-only."
        )
        raise Interrupted(outcomes, note) from None
    return outcomes


def prepare(run: Run) -> Outcome | None:
    """Ready ``run``'s folder for its job (its earlier unresumable attempt moved aside, its
    config written) while holding its lock, which the job claims again when it starts; None,
    or the :class:`Outcome` of a run finished earlier, owned by another process or unwritable."""
    lock = claim_run(run, "not submitted")
    if isinstance(lock, Outcome):
        return lock
    try:
        set_aside(run)
        run.prepare()
    except (OSError, ValueError) as error:
        return Outcome(run, "failed", f"cannot be prepared ({error})")
    finally:
        release(lock)
    return None


def job_outcome(run: Run, job: submitit.Job) -> Outcome:
    """How ``job`` of ``run`` ended."""
    try:
        seconds = job.result()
    except Exception as error:  # submitit re-raises the job's error with its traceback
        said = interrupted_at(run.log)
        if said:
            return Outcome(run, "interrupted", f"interrupted: {said}")
        first = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        return Outcome(run, "failed", f"failed: {first}; see {run.log} and {job.paths.stderr}")
    return Outcome(run, "trained", f"trained in {seconds:.0f} s (job {job.job_id})", seconds)
