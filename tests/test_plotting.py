"""The line figure's log axis: no minor ticks where they carry no labels, plain labels (no
mathtext), distinct labels within a decade."""

from matplotlib.backends.backend_agg import FigureCanvasAgg

from icl_lightning.plotting import line_figure


def drawn_axes(values: list[float]):
    figure = line_figure(range(len(values)), {"a": values}, "step", "loss", "title", logy=True)
    FigureCanvasAgg(figure).draw()
    return figure.axes[0]


def labels(axes) -> list[str]:
    return [t.get_text() for t in axes.yaxis.get_ticklabels(which="both") if t.get_text()]


def test_a_log_axis_over_decades_has_no_minor_ticks_but_labelled_decades():
    axes = drawn_axes([1.0, 0.1, 0.01, 0.001])
    assert len(axes.yaxis.get_minorticklocs()) == 0
    assert len(labels(axes)) >= 3
    assert not any("$" in label for label in labels(axes)), labels(axes)


def test_a_log_axis_within_a_decade_keeps_its_minor_ticks_and_labels():
    axes = drawn_axes([0.031, 0.033, 0.034])
    assert len(axes.yaxis.get_minorticklocs()) > 0
    shown = labels(axes)
    assert len(shown) >= 2 and len(set(shown)) == len(shown), shown
    assert not any("$" in label for label in shown), shown
