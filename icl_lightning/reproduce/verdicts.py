"""The rows of the report's tables: a final value against the paper's, and what it shows.

A :class:`Check` turns the seeds' last logged values into a row ``measured | paper | this run |
verdict``. The verdict depends on the run's scale: at the paper's step count (or more) it is
``reproduced`` or ``differs (needs <criterion>)``; a reduced run cannot reproduce a converged
claim, so its verdict is ``reduced run, not comparable`` (saying whether the value already meets
the criterion). :class:`LossFalls` is the check meant for a reduced run: the training loss fell.
"""

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

from icl_lightning.reproduce.scalars import Scalars, aggregate


@dataclass(frozen=True)
class Scale:
    """A run's step count against the paper's: ``steps`` of ``paper_steps``."""

    steps: int
    paper_steps: int

    @property
    def comparable(self) -> bool:
        """Whether the run is at the paper's scale (its step count or more)."""
        return self.steps >= self.paper_steps

    def verdict(self, passes: bool, criterion: str) -> str:
        """``reproduced`` / ``differs (needs c)`` at the paper's scale, else the reduced run's."""
        if self.comparable:
            return "reproduced" if passes else f"differs (needs {criterion})"
        met = "met" if passes else "not met"
        return (
            f"reduced run ({self.steps} of {self.paper_steps} steps), not comparable; "
            f"{criterion}: {met} here"
        )


_NUMBER = r"(\d+(?:\.\d*)?(?:e-?\d+)?)"
#: ``<op> <number>`` or ``within <low>-<high>``, then optionally a remark, e.g. ``"<= 0.1 (10x)"``
_CRITERION = re.compile(rf"(?:(<=|>=|<|>) {_NUMBER}|within {_NUMBER}-{_NUMBER})(?: \(.*\))?")
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def passes(criterion: str, value: float) -> bool:
    """Whether ``value`` meets ``criterion``: ``"< 1"``, ``">= 0.999"``, ``"within 0.8-1.25"``
    (both ends included), each optionally followed by a remark in parentheses.

    Raises:
        ValueError: for a criterion of another form.
    """
    match = _CRITERION.fullmatch(criterion)
    if match is None:
        raise ValueError(
            f"criterion {criterion!r}: expected '<op> <number>' (op one of < <= > >=) or "
            "'within <low>-<high>', optionally followed by a remark in parentheses"
        )
    op, bound, low, high = match.groups()
    if op is not None:
        return _COMPARE[op](value, float(bound))
    return float(low) <= value <= float(high)


@dataclass(frozen=True)
class Check:
    """One row of a report table: a final value against the paper's.

    Args:
        label: what is measured, e.g. ``"model cos (trained vs GD)"``.
        tag: the TensorBoard tag (its last logged value).
        paper: the paper's number or statement, as text.
        criterion: what "reproduced" needs, as :func:`passes` reads it, e.g. ``">= 0.999"``.
        over: another tag; the value is then the ratio ``tag / over`` per seed.

    Raises:
        ValueError: for a criterion :func:`passes` cannot read.
    """

    label: str
    tag: str
    paper: str
    criterion: str
    over: str | None = None

    def __post_init__(self) -> None:
        passes(self.criterion, 0.0)  # refuse an unreadable criterion now, not in the report

    def series(self, run: Scalars) -> dict[int, float] | None:
        """The run's values of this row over steps: ``tag``, or ``tag / over`` at the steps
        where both were logged (None if either is missing)."""
        if self.tag not in run or (self.over is not None and self.over not in run):
            return None
        if self.over is None:
            return run[self.tag]
        over = run[self.over]
        return {t: v / over[t] for t, v in run[self.tag].items() if t in over}

    def verdict(self, value: float, scale: Scale) -> str:
        """What ``value`` shows at ``scale`` (:meth:`Scale.verdict`)."""
        return scale.verdict(passes(self.criterion, value), self.criterion)

    def row(self, runs: Sequence[Scalars], scale: Scale | None = None) -> dict:
        """The row: value ``mean +- std (n seeds, step s)`` and the verdict at ``scale`` (the
        paper's when None)."""
        series = [s for s in (self.series(run) for run in runs) if s is not None]
        curve = aggregate([{self.tag: s} for s in series], self.tag)
        row = {"label": self.label, "tag": self.tag, "paper": self.paper, "value": None}
        if curve is None:
            return row
        mean, std = curve.final
        verdict = self.verdict(mean, scale or Scale(1, 1))
        step = curve.steps[-1]
        row.update(value=mean, std=std, seeds=curve.seeds, step=step, verdict=verdict)
        return row


@dataclass(frozen=True)
class LossFalls(Check):
    """The check a reduced run can pass: the last logged ``tag`` over its first logged value
    (per seed), below 0.9."""

    label: str = "training loss, last / first logged"
    tag: str = "train/loss"
    paper: str = "(reduced-scale check) training works: the loss falls"
    criterion: str = "< 0.9"

    def series(self, run: Scalars) -> dict[int, float] | None:
        values = run.get(self.tag)
        if not values:
            return None
        first = values[min(values)]
        return {t: v / first for t, v in values.items()}

    def verdict(self, value: float, scale: Scale) -> str:
        """``falls`` or ``does not fall (needs < 0.9)``, at every scale (it is the reduced
        run's own check, not a paper's claim)."""
        return (
            "falls" if passes(self.criterion, value) else f"does not fall (needs {self.criterion})"
        )


def format_value(value: float) -> str:
    """Four significant digits, scientific below 1e-3."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4g}"


def markdown_table(rows: Sequence[dict]) -> str:
    """``| measured | paper | this run (mean +- std, seeds, step) | verdict |`` for ``rows``."""
    lines = [
        "| measured | paper | this run: mean ± std (seeds, step) | verdict |",
        "|---|---|---|---|",
    ]
    for r in rows:
        r = {**r, "label": r["label"].replace("|", "\\|")}  # a | inside a cell ends it
        if r.get("value") is None:
            lines.append(f"| {r['label']} | {r['paper']} | not logged (`{r['tag']}`) | missing |")
            continue
        ours = f"{format_value(r['value'])} ± {format_value(r['std'])} ({r['seeds']}, {r['step']})"
        lines.append(f"| {r['label']} | {r['paper']} | {ours} | {r['verdict']} |")
    return "\n".join(lines)
