"""The report's figures, one class per kind: curves over training steps, over the context index
i, over the context length N', over the shift alpha, and one tag across an experiment's
variants. Each draws the mean over seeds with a shaded +-1 std band, under a human title
("Paper A, Fig. 2: ..."), and says in :attr:`caption` what the reader must know to read it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from icl_lightning.reproduce.scalars import Curve, Scalars, aggregate, final_curve, final_values
from icl_lightning.reproduce.verdicts import format_value


def draw_bands(axes: Axes, curves: Mapping[str, Curve]) -> None:
    """Mean lines with shaded +-1 std bands over the curves' x values (``Curve.steps``)."""
    for label, curve in curves.items():
        mean, std = torch.tensor(curve.mean), torch.tensor(curve.std)
        axes.plot(curve.steps, mean, marker="o", markersize=2.5, label=f"{label} (n={curve.seeds})")
        axes.fill_between(curve.steps, mean - std, mean + std, alpha=0.25)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def band_figure(
    curves: Mapping[str, Curve],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    marks: Sequence[float] = (),
    logx: bool = False,
) -> Figure:
    """One axes of :func:`draw_bands`, with a dashed vertical line at each of ``marks`` (e.g.
    where a curriculum stage starts)."""
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axes = figure.add_subplot()
    draw_bands(axes, curves)
    for mark in marks:
        axes.axvline(mark, color="grey", linestyle="--", linewidth=0.8)
    axes.set(xlabel=xlabel, ylabel=ylabel, xscale="log" if logx else "linear")
    axes.set_yscale("log" if logy else "linear")
    axes.set_title(title, fontsize=9)
    return figure


def _present(curves: Mapping[str, Curve | None]) -> dict[str, Curve]:
    return {label: curve for label, curve in curves.items() if curve is not None}


@dataclass(frozen=True)
class ReportFigure:
    """A figure of one variant's seeds: ``file`` names its PNG, ``title`` is shown above it;
    the y axis is ``ylabel``, logarithmic when ``logy``."""

    file: str
    title: str
    ylabel: str = field(default="loss", kw_only=True)
    logy: bool = field(default=True, kw_only=True)
    #: whether it is drawn once over all variants (:meth:`draw_variants`) instead of per variant
    across_variants = False

    @property
    def caption(self) -> str:
        """What the reader must know to read the figure (empty when the title says it all)."""
        return ""

    def curves(self, runs: Sequence[Scalars]) -> tuple[dict[str, Curve], str]:
        """The curves to draw, and the x axis' label."""
        raise NotImplementedError

    def table(self, runs: Sequence[Scalars]) -> tuple[str, dict] | None:
        """The markdown table that goes with the figure and its values (None: no table)."""
        return None

    def table_variants(self, runs: Mapping[str, Sequence[Scalars]]) -> tuple[str, dict] | None:
        """For a figure drawn across variants, the markdown table over them that goes with it
        and its values (None: no table)."""
        return None

    def draw(self, runs: Sequence[Scalars], title: str) -> Figure | None:
        """The figure of ``runs`` (None when no run logged its tags)."""
        curves, xlabel = self.curves(runs)
        if not curves:
            return None
        return band_figure(curves, xlabel, self.ylabel, title, self.logy)


@dataclass(frozen=True)
class StepFigure(ReportFigure):
    """Tags over training steps: ``tags`` maps a legend label to a tag."""

    tags: Mapping[str, str]

    def curves(self, runs: Sequence[Scalars]) -> tuple[dict[str, Curve], str]:
        return _present({label: aggregate(runs, tag) for label, tag in self.tags.items()}), "step"


@dataclass(frozen=True)
class InterpolationFigure(StepFigure):
    """Paper A's Figure 2 loss panel: left, ``tags`` (trained model and GD) over the whole run;
    right, on its own axis, the same with the model halfway between them (``interpolation``)
    from the first measurement after which ``defined_by`` (the model's cosine to GD) stays >=
    ``threshold``: before that the trained layer's diagonal, by which the interpolation
    normalises, is near zero."""

    interpolation: str = field(default="gd/loss_interp", kw_only=True)
    defined_by: str = field(default="gd/model_cos", kw_only=True)
    threshold: float = field(default=0.9, kw_only=True)

    @property
    def caption(self) -> str:
        return (
            "Right, on its own axis: the same with the layer halfway between the trained one and "
            f"the GD construction, from the step where model cos stays >= {self.threshold} "
            "(before, the trained diagonal it normalises by is near zero and its loss is not "
            "meaningful)."
        )

    def start(self, runs: Sequence[Scalars]) -> int:
        """The first step from which the mean of ``defined_by`` stays >= ``threshold`` (0 when it
        was not logged or never gets there)."""
        cos = aggregate(runs, self.defined_by)
        if cos is None:
            return 0
        below = [s for s, m in zip(cos.steps, cos.mean, strict=True) if m < self.threshold]
        after = [s for s in cos.steps if not below or s > below[-1]]
        return after[0] if after else 0

    def draw(self, runs: Sequence[Scalars], title: str) -> Figure | None:
        curves, _ = self.curves(runs)
        interpolation = aggregate(runs, self.interpolation)
        if not curves:
            return None
        figure = Figure(figsize=(8.5, 3.8), layout="constrained")
        left, right = figure.subplots(1, 2)
        yscale = "log" if self.logy else "linear"
        draw_bands(left, curves)
        left.set(xlabel="step", ylabel=self.ylabel, yscale=yscale, title="the whole run")
        if interpolation is not None:
            start = self.start(runs)
            curves = {**curves, "interpolation": interpolation}
            draw_bands(right, {label: curve.since(start) for label, curve in curves.items()})
            right.set(xlabel="step", ylabel=self.ylabel, yscale=yscale, title=f"from step {start}")
        figure.suptitle(title, fontsize=9)
        return figure


@dataclass(frozen=True)
class PerIndexFigure(ReportFigure):
    """The last value of tags ``<prefix><i>`` over the context index i: ``prefixes`` maps a
    legend label to a prefix."""

    prefixes: Mapping[str, str]

    def curves(self, runs: Sequence[Scalars]) -> tuple[dict[str, Curve], str]:
        curves = {label: final_values(runs, prefix, int) for label, prefix in self.prefixes.items()}
        return _present(curves), "context index i"


@dataclass(frozen=True)
class ShiftFigure(ReportFigure):
    """OODProbe's last losses of the model and of GD over the shift alpha of ``shift``."""

    shift: str
    namespace: str = field(default="ood", kw_only=True)

    def curves(self, runs: Sequence[Scalars]) -> tuple[dict[str, Curve], str]:
        prefix = f"{self.namespace}/loss_{{}}_{self.shift}_a"
        curves = {who: final_values(runs, prefix.format(who)) for who in ("model", "gd")}
        return _present(curves), "alpha"


#: the columns of :meth:`LengthFigure.table`: heading -> tag name under ``gd/N<N'>/``
LENGTH_COLUMNS = {
    "model loss": "loss_model",
    "GD loss": "loss_gd",
    "model / GD": "loss_ratio",
    "model cos": "model_cos",
}


@dataclass(frozen=True)
class LengthFigure(ReportFigure):
    """The last losses of the model and of GD over the context length N' (tags
    ``<tag with N'>loss_model`` and ``loss_gd``), on log axes with N' as ticks and a dashed
    line at the training length ``trained_at``; also a table (:meth:`table`)."""

    lengths: tuple[int, ...]
    trained_at: int
    tag: str = field(default="gd/N{}/", kw_only=True)

    def _curve(self, runs: Sequence[Scalars], name: str) -> Curve | None:
        return final_curve(runs, {n: self.tag.format(n) + name for n in self.lengths})

    def curves(self, runs: Sequence[Scalars]) -> tuple[dict[str, Curve], str]:
        curves = {"trained": self._curve(runs, "loss_model"), "GD": self._curve(runs, "loss_gd")}
        xlabel = f"context length N' (dashed: N = {self.trained_at} of training)"
        return _present(curves), xlabel

    def draw(self, runs: Sequence[Scalars], title: str) -> Figure | None:
        curves, xlabel = self.curves(runs)
        if not curves:
            return None
        marks = [self.trained_at]
        figure = band_figure(curves, xlabel, self.ylabel, title, self.logy, marks, logx=True)
        figure.axes[0].set_xticks(self.lengths, [str(n) for n in self.lengths])
        figure.axes[0].set_xticks([], minor=True)
        return figure

    def table(self, runs: Sequence[Scalars]) -> tuple[str, dict]:
        """For every N', the last value (mean ± std over seeds) of each of
        :data:`LENGTH_COLUMNS`; returns its markdown and ``{column: {str(N'): {"mean", "std"}}}``
        (a column no run logged is left out)."""
        values = {}
        for column, name in LENGTH_COLUMNS.items():
            curve = self._curve(runs, name)
            if curve is not None:
                values[column] = {
                    str(n): {"mean": m, "std": sd}
                    for n, m, sd in zip(curve.steps, curve.mean, curve.std, strict=True)
                }
        if not values:
            return f"(no `{self.tag.format('<N>')}*` logged)", {}
        lines = [
            f"| N' (x N = {self.trained_at}) | " + " | ".join(values) + " |",
            "|---" * (len(values) + 1) + "|",
        ]
        for n in self.lengths:
            cells = [
                f"{format_value(v[str(n)]['mean'])} ± {format_value(v[str(n)]['std'])}"
                for v in values.values()
            ]
            lines.append(f"| {n} ({n / self.trained_at:g}x) | " + " | ".join(cells) + " |")
        note = "\n\nMean ± std over the seeds of the last measurement; GD tuned for each N'.\n"
        return "\n".join(lines) + note, values


@dataclass(frozen=True)
class VariantsFigure(ReportFigure):
    """One ``tag`` over steps for every variant of the experiment, with a dashed line at each
    step (after 0) where ``marks`` was logged (e.g. a curriculum stage starting)."""

    tag: str
    marks: str
    across_variants = True

    def draw_variants(self, runs: Mapping[str, Sequence[Scalars]], title: str) -> Figure | None:
        """The figure of ``runs`` (variant -> its seeds' scalars); None when none logged it."""
        curves = _present({variant: aggregate(r, self.tag) for variant, r in runs.items()})
        if not curves:
            return None
        marks = {t for r in runs.values() for s in r for t in s.get(self.marks, {}) if t > 0}
        return band_figure(curves, "step", self.ylabel, title, self.logy, sorted(marks))
