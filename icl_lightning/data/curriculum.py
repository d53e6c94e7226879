"""Garg et al. (2022)'s training curriculum: the input dimension and the context length grow.

A schedule's value at optimizer step ``t`` is ``min(start + increment * (t // interval), end)``:
it starts at ``start`` and grows by ``increment`` every ``interval`` steps until it reaches
``end`` (by default the data's full size). The curriculum is a pure function of the global step,
so a resumed run and every DDP rank see the same sizes as an uninterrupted single-process run.
"""

from dataclasses import dataclass, replace

from icl_lightning.checks import require


@dataclass
class Schedule:
    """One growing size: ``min(start + increment * (step // interval), end)``.

    Args:
        start: the size at step 0 (required).
        end: the final size, at most the data's full size (default: the full size).
        increment: growth per stage.
        interval: steps per stage.
    """

    start: int | None = None  # required: None (left out) is refused by checked(), naming it
    end: int | None = None
    increment: int = 1
    interval: int = 1000

    def checked(self, option: str, full_size: int, full_name: str) -> "Schedule":
        """This schedule with ``end`` set (``full_size`` when left out); ``ValueError`` naming
        ``option.<field>`` unless ``1 <= start <= end <= full_size`` and ``increment, interval
        >= 1``. ``start`` is checked first: a start beyond the full size is the start's fault."""
        full = f"{full_size}] (the data's full size, {full_name})"
        start_ok = self.start is not None and 1 <= self.start <= full_size
        require(start_ok, f"{option}.start", self.start, f"an integer in [1, {full}")
        end = full_size if self.end is None else self.end
        require(
            self.start <= end <= full_size,
            f"{option}.end",
            end,
            f"an integer in [{option}.start={self.start}, {full}",
        )
        require(self.increment >= 1, f"{option}.increment", self.increment, "an integer >= 1")
        require(self.interval >= 1, f"{option}.interval", self.interval, "an integer >= 1")
        return replace(self, end=end)

    def at(self, step: int) -> int:
        """The size at optimizer step ``step`` (of a :meth:`checked` schedule)."""
        return min(self.start + self.increment * (step // self.interval), self.end)


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

    def checked(self, input_dim: int, num_context: int) -> "Curriculum":
        """This curriculum with each schedule's ``end`` set (:meth:`Schedule.checked`);
        ``ValueError`` naming the option if a schedule does not fit the data's size."""
        dims, points = self.dims, self.points
        return Curriculum(
            dims.checked("curriculum.dims", input_dim, "input_dim") if dims else None,
            points.checked("curriculum.points", num_context, "num_context") if points else None,
        )

    def size(self, step: int, input_dim: int, num_context: int) -> tuple[int, int]:
        """``(active input dimension, context length)`` at optimizer step ``step``."""
        d = self.dims.at(step) if self.dims is not None else input_dim
        n = self.points.at(step) if self.points is not None else num_context
        return d, n
