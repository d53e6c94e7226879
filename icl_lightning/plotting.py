"""Matplotlib figures the probes send to TensorBoard (built without pyplot, so no GUI backend)."""

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure


def line_figure(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Figure:
    """One axes with a labelled line per entry of ``curves`` (all sharing ``x``)."""
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for label, y in curves.items():
        axes.plot(list(x), [float(v) for v in y], marker="o", markersize=3, label=label)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend()
    return figure
