"""TensorBoard scalars of several seeds -> mean +- std curves.

A run is one TensorBoard directory. :func:`read_scalars` reads its scalars, :func:`aggregate`
takes the mean and standard deviation over seeds at every step all seeds share, and
:func:`final_values` / :func:`final_curve` turn the last values of a family of tags into one
curve over their index (context index i, context length N', shift alpha).
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

Scalars = dict[str, dict[int, float]]  # tag -> {step: value}


def read_scalars(run_dir: Path) -> Scalars:
    """Every scalar in the event files under ``run_dir``: ``tag -> {step: value}`` (a later
    file's value wins at a step both hold, as TensorBoard shows a resumed run)."""
    scalars: Scalars = {}
    for events in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                scalars.setdefault(tag, {})[event.step] = event.value
    return scalars


@dataclass
class Curve:
    """Mean and standard deviation (over seeds) of one tag at the steps all seeds logged."""

    steps: list[int]
    mean: list[float]
    std: list[float]
    seeds: int

    @property
    def final(self) -> tuple[float, float]:
        """``(mean, std)`` at the last step."""
        return self.mean[-1], self.std[-1]

    def since(self, step: int) -> "Curve":
        """The part of the curve at steps ``>= step``."""
        keep = [k for k, s in enumerate(self.steps) if s >= step]
        steps, mean, std = ([v[k] for k in keep] for v in (self.steps, self.mean, self.std))
        return Curve(steps, mean, std, self.seeds)


def aggregate(runs: Sequence[Scalars], tag: str) -> Curve | None:
    """:class:`Curve` of ``tag`` over ``runs`` (population std, 0 for one seed); ``None`` if
    no run logged it or the runs share no step."""
    series = [run[tag] for run in runs if tag in run]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    values = torch.tensor([[s[t] for t in steps] for s in series], dtype=torch.float64)
    std = values.std(0, correction=0)
    return Curve(steps, values.mean(0).tolist(), std.tolist(), len(series))


def final_values(runs: Sequence[Scalars], prefix: str, parse: Callable = float) -> Curve | None:
    """The last value (mean +- std over seeds) of every tag ``<prefix><x>``, as one curve over
    ``x = parse(suffix)``, e.g. ``ft/dw_loss_i<i>`` over i; ``None`` if no run logged any such
    tag or a run misses one."""
    tags = {parse(t[len(prefix) :]): t for r in runs for t in r if t.startswith(prefix)}
    return final_curve(runs, tags)


def final_curve(runs: Sequence[Scalars], tags: Mapping[float, str]) -> Curve | None:
    """The last value (mean +- std over seeds) of ``tags[x]`` for every x, as one curve over x,
    e.g. ``{5: "gd/N5/loss_model", 10: "gd/N10/loss_model"}``; ``None`` if ``tags`` is empty,
    or no run logged one of them."""
    curves = [aggregate(runs, tags[x]) for x in sorted(tags)]
    if not curves or not all(curves):
        return None
    means, stds = zip(*(c.final for c in curves), strict=True)
    return Curve(sorted(tags), list(means), list(stds), curves[0].seeds)
