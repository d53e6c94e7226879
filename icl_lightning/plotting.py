"""Matplotlib figures the probes send to TensorBoard (built without pyplot, so no GUI backend)."""

from collections.abc import Mapping, Sequence

import numpy
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogFormatter, NullLocator


def line_figure(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Figure:
    """One axes with a labelled line per entry of ``curves`` (all sharing ``x``).

    Drawing is most of what a probe's figures cost, so the figure avoids the slow parts of
    matplotlib: fixed margins rather than a layout engine (constrained layout lays the figure
    out twice), a title at a fixed height (not placed around the tick labels), on a log axis
    plain tick labels (``1e-05``, ``0.032``; not mathtext: its parser alone took 0.25 s to set
    up in each process) and no minor ticks when it spans a decade or more (there they carry no
    labels, and building them took half the drawing time).
    """
    figure = Figure(figsize=(5, 3.5))
    figure.subplots_adjust(left=0.16, right=0.97, bottom=0.14, top=0.91)
    axes = figure.add_subplot()
    for label, y in curves.items():
        axes.plot(list(x), [float(v) for v in y], marker="o", markersize=3, label=label)
    axes.set(xlabel=xlabel, ylabel=ylabel)
    axes.set_title(title, y=1.0)
    if logy:
        axes.set_yscale("log")
        values = [float(v) for y in curves.values() for v in y if 0 < float(v) < float("inf")]
        if values and max(values) >= 10 * min(values):
            axes.yaxis.set_major_formatter(LogFormatter())
            axes.yaxis.set_minor_locator(NullLocator())
        else:  # within a decade the labelled ticks are minor ones
            axes.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            axes.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend()
    return figure


def weights_figure(
    products: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    columns: tuple[str, str] = ("trained", "construction"),
    title: str = "",
) -> Figure:
    """Heatmaps of matrices side by side: a row per entry of ``products`` (``name -> (A, B)``),
    ``A`` under ``columns[0]`` and ``B`` under ``columns[1]``, both on one colour scale per row,
    symmetric about 0 (``vmax = max(|A|, |B|)``), so equal entries look equal."""
    figure = Figure(figsize=(6, 2.9 * len(products) + 0.4))
    figure.subplots_adjust(left=0.08, right=0.9, bottom=0.06, top=0.9, hspace=0.35, wspace=0.15)
    grid = figure.subplots(len(products), 2, squeeze=False)
    for row, (name, pair) in zip(grid, products.items(), strict=True):
        mats = [
            numpy.asarray(m.detach().cpu().double() if hasattr(m, "detach") else m) for m in pair
        ]
        vmax = max(float(numpy.abs(m).max()) for m in mats) or 1.0
        for axes, matrix, column in zip(row, mats, columns, strict=True):
            image = axes.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            axes.set_title(f"{name}: {column}", fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
        figure.colorbar(image, ax=list(row), fraction=0.05, pad=0.03)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
