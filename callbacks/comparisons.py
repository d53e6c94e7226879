"""A probe's compared curves as sibling TensorBoard runs, and its Custom Scalars charts.

TensorBoard draws every curve of one run in one colour, so a chart overlaying the trained model's
loss and GD's loss inside one run needs a hover to tell them apart. Written instead as sibling
runs (``<run>/gd/loss_model``, ``<run>/gd/loss_gd``) under one common tag
(``gd/compare/loss_of_T_vs_GD_and_GDpp``), each curve gets its own colour, and the run list
and tooltips name it: the legend.
"""

import re
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

#: a tag of a per-index series: ``context/loss_n7``, ``ft/sgd_loss_i3`` (the index: group 1)
INDEXED = re.compile(r".*_[ni](\d+)")


def thinned(tags: list[str]) -> list[str]:
    """``tags``, except that a series over an index (``loss_n1`` .. ``loss_n20``: the loss after
    n context points) keeps its first, middle and last index: twenty curves against the
    training step are unreadable, and the whole curve over the index is the probe's figure."""
    matches = [INDEXED.fullmatch(tag) for tag in tags]
    if len(tags) <= 3 or not all(matches):
        return tags
    ordered = [m[0] for m in sorted(matches, key=lambda m: int(m[1]))]
    return [ordered[0], ordered[len(ordered) // 2], ordered[-1]]


def comparison_tag(prefix: str, title: str) -> str:
    """The common tag of a chart's curves: ``<prefix>compare/<title as a tag>``, e.g.
    ``gd/compare/Fig_2_loss_of_T_vs_GD_and_GDpp`` for the chart "Fig. 2: loss of T vs GD and
    GD++" of the ``gd/`` namespace."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", title.replace("++", "pp")).strip("_")
    return f"{prefix}compare/{name}"


def anchored(tag: str) -> str:
    """A Custom Scalars pattern that matches ``tag`` only (TensorBoard searches its chart tags
    as unanchored regular expressions: ``ft/sgd_loss_i1`` would also match ``..._i10``)."""
    return f"^{re.escape(tag)}$"


def chart_title(title: str, every_n_steps: int) -> str:
    """``title`` with the probe's cadence, so that nobody reads a trend into TensorBoard's
    smoothing of a few points: "... (every 250 steps: set smoothing to 0)"."""
    if every_n_steps <= 0:
        return f"{title} (start and end only: set smoothing to 0)"
    return f"{title} (every {every_n_steps} steps: set smoothing to 0)"


def layout_charts(prefix: str, charts: dict[str, list[str]], every_n_steps: int) -> dict:
    """Custom Scalars charts ``{title: ["Multiline", [pattern]]}``: a chart of two or more
    curves names their common sibling-run tag (:func:`comparison_tag`), a chart of one curve
    names that curve; every pattern anchored, every title with the cadence."""
    return {
        chart_title(title, every_n_steps): [
            "Multiline",
            [anchored(comparison_tag(prefix, title) if len(tags) > 1 else tags[0])],
        ]
        for title, tags in charts.items()
    }


class ComparisonRuns:
    """Sibling runs of one TensorBoard run folder, one per compared curve.

    Args:
        log_dir: the run's folder (``logs/demo/version_0``); curve ``gd/loss_gd`` is written
            to the run ``<log_dir>/gd/loss_gd``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writers: dict[str, SummaryWriter] = {}

    def write(self, prefix: str, charts: dict[str, list[str]], scalars: dict, step: int) -> None:
        """Each curve (``scalars[tag]``) of each chart with two or more curves, at ``step``,
        under the chart's :func:`comparison_tag` in the curve's own sibling run."""
        for title, tags in charts.items():
            if len(tags) < 2:
                continue
            common = comparison_tag(prefix, title)
            for tag in tags:
                if tag in scalars:
                    self._writer(tag).add_scalar(common, float(scalars[tag]), step)
        for writer in self._writers.values():
            writer.flush()

    def _writer(self, tag: str) -> SummaryWriter:
        if tag not in self._writers:
            self._writers[tag] = SummaryWriter(log_dir=str(self.log_dir / tag))
        return self._writers[tag]

    def close(self) -> None:
        """Close every sibling run's event file."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
