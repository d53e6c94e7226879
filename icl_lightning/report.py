"""Reproduction reports: TensorBoard scalars of several seeds -> mean +- std tables and figures.

A run is one TensorBoard directory. :func:`read_scalars` reads its scalars, :func:`aggregate`
takes the mean and standard deviation over seeds at every step all seeds share, and
:func:`band_figure` draws mean curves with a shaded +-1 std band. :class:`Check` compares a
final value with the paper's and gives the verdict column of ``report.md``.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
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


def band_figure(
    curves: Mapping[str, Curve],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    marks: Sequence[float] = (),
    logx: bool = False,
) -> Figure:
    """Mean lines with shaded +-1 std bands over the curves' x values (``Curve.steps``), and a
    dashed vertical line at each of ``marks`` (e.g. where a curriculum stage starts)."""
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for label, curve in curves.items():
        mean, std = torch.tensor(curve.mean), torch.tensor(curve.std)
        axes.plot(curve.steps, mean, marker="o", markersize=2.5, label=f"{label} (n={curve.seeds})")
        axes.fill_between(curve.steps, mean - std, mean + std, alpha=0.25)
    for mark in marks:
        axes.axvline(mark, color="grey", linestyle="--", linewidth=0.8)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        axes.set_yscale("log")
    if logx:
        axes.set_xscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure


@dataclass
class Check:
    """One row of a report table: a final value against the paper's.

    Args:
        label: what is measured, e.g. ``"model cos (trained vs GD)"``.
        tag: the TensorBoard tag (its last logged value).
        paper: the paper's number or statement, as text.
        passes: ``value -> bool``, the criterion for "reproduced".
        criterion: the criterion as text, e.g. ``">= 0.999"``.
        over: another tag; the value is then the ratio ``tag / over`` per seed.
    """

    label: str
    tag: str
    paper: str
    passes: Callable[[float], bool]
    criterion: str
    over: str | None = None

    def row(self, runs: Sequence[Scalars]) -> dict:
        """The row: value ``mean +- std (n seeds, step s)`` and the verdict."""
        if self.over is not None:
            runs = [_ratio(run, self.tag, self.over) for run in runs]
        curve = aggregate(runs, self.tag)
        if curve is None:
            return {"label": self.label, "tag": self.tag, "paper": self.paper, "value": None}
        mean, std = curve.final
        verdict = "reproduced" if self.passes(mean) else f"differs (needs {self.criterion})"
        return {
            "label": self.label,
            "tag": self.tag,
            "paper": self.paper,
            "value": mean,
            "std": std,
            "seeds": curve.seeds,
            "step": curve.steps[-1],
            "verdict": verdict,
        }


def _ratio(run: Scalars, tag: str, over: str) -> Scalars:
    """``{tag: tag / over}`` at the steps both were logged (empty if either is missing)."""
    if tag not in run or over not in run:
        return {}
    return {tag: {t: v / run[over][t] for t, v in run[tag].items() if t in run[over]}}


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
