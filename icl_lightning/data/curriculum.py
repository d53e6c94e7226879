"""Garg et al. (2022)'s training curriculum: the input dimension and the context length grow.

A schedule's value at optimizer step ``t`` is ``min(start + increment * (t // interval), end)``:
it starts at ``start`` and grows by ``increment`` every ``interval`` steps until it reaches
``end``. The curriculum is a pure function of the global step, so a resumed run and every DDP
rank see the same sizes as an uninterrupted single-process run.
"""

from dataclasses import dataclass

from icl_lightning.checks import require


@dataclass
class Schedule:
    """One growing size: ``min(start + increment * (step // interval), end)``.

    Args:
        start: the size at step 0.
        end: the final size (at most the data's full size).
        increment: growth per stage.
        interval: steps per stage.
    """

    start: int
    end: int
    increment: int = 1
    interval: int = 1000

    def check(self, option: str, full_size: int) -> None:
        """Raise ``ValueError`` naming ``option.<field>`` unless ``1 <= start <= end <= full_size``
        and ``increment, interval >= 1``."""
        require(self.start >= 1, f"{option}.start", self.start, "an integer >= 1")
        require(
            self.start <= self.end <= full_size,
            f"{option}.end",
            self.end,
            f"an integer in [{option}.start={self.start}, {full_size}] (the data's full size)",
        )
        require(self.increment >= 1, f"{option}.increment", self.increment, "an integer >= 1")
        require(self.interval >= 1, f"{option}.interval", self.interval, "an integer >= 1")

    def at(self, step: int) -> int:
        """The size at optimizer step ``step``."""
        return min(self.start + self.increment * (step // self.interval), self.end)

    def stage_starts(self, max_steps: int) -> list[int]:
        """The steps in ``[0, max_steps)`` where the size changes (0 included)."""
        starts = [0]
        step = self.interval
        while step < max_steps and self.at(step - 1) < self.end:
            starts.append(step)
            step += self.interval
        return starts


@dataclass
class Curriculum:
    """Garg et al.'s curriculum over the input dimension (``dims``) and context length (``points``).

    While ``dims`` is below the task's ``input_dim`` d, the tasks are drawn in the first ``dims``
    coordinates and the remaining inputs are 0; while ``points`` is below ``num_context`` N, the
    prompts hold only ``points`` context points. Either schedule may be left out (full size).

    Example (YAML, under ``data.init_args``)::

        curriculum:
          dims: {start: 5, end: 20, increment: 1, interval: 2000}
          points: {start: 11, end: 41, increment: 2, interval: 2000}
    """

    dims: Schedule | None = None
    points: Schedule | None = None

    def check(self, input_dim: int, num_context: int) -> None:
        """Raise ``ValueError`` naming the option if a schedule ends above the data's size."""
        if self.dims is not None:
            self.dims.check("curriculum.dims", input_dim)
        if self.points is not None:
            self.points.check("curriculum.points", num_context)

    def size(self, step: int, input_dim: int, num_context: int) -> tuple[int, int]:
        """``(active input dimension, context length)`` at optimizer step ``step``."""
        d = self.dims.at(step) if self.dims is not None else input_dim
        n = self.points.at(step) if self.points is not None else num_context
        return d, n

    def stage_starts(self, max_steps: int) -> list[int]:
        """The steps in ``[0, max_steps)`` where either size changes (0 included)."""
        steps = {0}
        for schedule in (self.dims, self.points):
            if schedule is not None:
                steps.update(schedule.stage_starts(max_steps))
        return sorted(steps)
