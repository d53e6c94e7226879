"""What happened to each run, and a line per run as it ends with the time left over all runs."""

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from icl_lightning.reproduce.runs import Run


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``status`` is ``trained``, ``skipped`` (finished earlier),
    ``interrupted`` (stopped by a signal; it resumes from its ``last.ckpt``), ``busy`` (its
    folder is owned by another process; not started) or ``failed``; ``message`` says it for
    the user."""

    run: Run
    status: str
    message: str
    seconds: float = 0.0


class Progress:
    """Prints ``[k/n] <run>: <message>`` when a run ends, with how many run and wait and the
    time left: the estimates of the waiting runs plus what remains of the running ones' (each
    :meth:`Run.estimated_seconds`), times the ratio of measured to estimated time of the runs
    trained so far (1 before any), divided by the number of parallel jobs (no more than there
    are runs)."""

    def __init__(self, runs: list[Run], jobs: int, out: TextIO | None = None):
        self.total, self.jobs, self.out = len(runs), max(1, min(jobs, len(runs))), out or sys.stdout
        self.waiting = {run.name: run.estimated_seconds() for run in runs}
        self.running: dict[str, float] = {}  # run name -> start time
        self.ended = 0
        self.measured = self.estimated = 0.0

    def started(self, run: Run) -> None:
        self.running[run.name] = time.perf_counter()

    def seconds_left(self) -> float:
        """The time left, as described in the class docstring."""
        now = time.perf_counter()
        speed = self.measured / self.estimated if self.estimated else 1.0
        left = speed * sum(v for k, v in self.waiting.items() if k not in self.running)
        left += sum(max(0.0, self.waiting[k] * speed - (now - t)) for k, t in self.running.items())
        return left / self.jobs

    def ended_run(self, outcome: Outcome) -> None:
        """Count ``outcome`` and print its line."""
        name = outcome.run.name
        self.running.pop(name, None)
        estimate = self.waiting.pop(name, 0.0)
        if outcome.status == "trained":
            self.measured += outcome.seconds
            self.estimated += estimate
        self.ended += 1
        waiting = len(self.waiting) - len(self.running)
        state = f"{len(self.running)} running, {waiting} waiting"
        left = self.seconds_left()
        if left:
            state += f"; about {left / 60:.1f} min left"
        width = len(str(self.total))
        print(
            f"[{self.ended:{width}}/{self.total}] {name}: {outcome.message} ({state})",
            file=self.out,
            flush=True,
        )
