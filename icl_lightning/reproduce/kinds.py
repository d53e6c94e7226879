"""Paper B's block with every kind of contextual layer (issue 31): the variants of the
``contextual_kinds`` experiment, its measured verdicts and its one table over the kinds.

A kind is paper B's set-up (d = 2, batch 64, MLP width 128) with the contextual layer that its
overlay ``configs/contextual_block_<kind>.yaml`` names; softmax and linear attention are
``contextual_block.yaml`` with 8 heads of 4 (paper B's public replication). :class:`KindsTable`
gives, per kind and N, the mean ± std over seeds of the last logged

- ``val/loss``;
- the equivalence error ``max |T_W(C, x) - T_{W + dW}(x)|``, absolute and over the output's
  rms (Theorem 2.2; float32: exact when the relative one is <= 1e-5, as linear attention's
  outputs grow with N);
- the fall of the per-token updates ``||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||`` (Proposition 3.1;
  paper B's Fig. 2 sees it shrink for attention: whether it does for a layer that forgets is
  open, so the verdict says what was measured, not pass or fail);
- the test losses before any example, and after N examples of SGD on W and of ``W + dW_N``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from icl_lightning.models.contextual_layers import KINDS as LAYER_KINDS
from icl_lightning.reproduce.figures import ReportFigure, band_figure
from icl_lightning.reproduce.scalars import Curve, Scalars, aggregate, final_values
from icl_lightning.reproduce.verdicts import Check, Scale, format_value, passes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LAYER = "model.model.init_args."
#: paper B's public replication: 8 heads of 4
ATTENTION = {f"{LAYER}num_heads": 8, f"{LAYER}key_size": 4}
#: the fall of the updates called a fall: 10x, as ``contextual_block``'s check
FALL = "<= 0.1 (10x fall)"
#: Theorem 2.2 exact in float32: the largest difference over the output's rms
EXACT = "<= 1e-5"


def kind_options() -> dict[str, dict]:
    """Every kind's changes to ``contextual_block.yaml``: ``softmax`` and ``linear`` attention
    (8 heads of 4), then each recurrent or state-space kind of the models' ``KINDS`` that has an
    overlay ``configs/contextual_block_<kind>.yaml``, with that overlay's own options."""
    kinds = {"softmax": ATTENTION, "linear": {**ATTENTION, f"{LAYER}attention": "linear"}}
    for kind in LAYER_KINDS:
        overlay = CONFIGS / f"contextual_block_{kind}.yaml"
        if kind != "attention" and overlay.exists():
            options = yaml.safe_load(overlay.read_text())
            kinds[kind] = {k: v for k, v in options.items() if k != "config"}
    return kinds


def kind_variants(Ns: Sequence[int]) -> dict[str, dict]:
    """``<kind>_N<N>``: every kind of :func:`kind_options` at every context length N."""
    return {
        f"{kind}_N{N}": {**options, "data.init_args.num_context": N}
        for N in Ns
        for kind, options in kind_options().items()
    }


def fall_verdict(ratio: float) -> str:
    """``updates fall (k x)`` when ``||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||`` meets
    :data:`FALL`, else ``updates do not fall 10x (k x)``: a measurement at every scale."""
    factor = f"{1 / ratio:.3g}x" if ratio > 0 else "to 0"
    return f"updates fall ({factor})" if passes(FALL, ratio) else f"do not fall 10x ({factor})"


def finetune_verdict(before: float, sgd: float, delta_w: float) -> str:
    """Whether SGD on W and ``W + dW_N`` each lower the test loss, and which ends lower (by
    more than 3x) or ``alike``."""
    lowered = [name for name, loss in (("SGD", sgd), ("dW", delta_w)) if loss < before]
    lowers = (
        "both lower the loss"
        if len(lowered) == 2
        else f"only {lowered[0]} lowers the loss"
        if lowered
        else "neither lowers the loss"
    )
    which = "dW lower" if delta_w < sgd / 3 else "SGD lower" if sgd < delta_w / 3 else "alike"
    return f"{lowers}, {which}"


@dataclass(frozen=True)
class UpdatesFall(Check):
    """The fall of the per-token updates as a measurement (:func:`fall_verdict`), at every
    scale."""

    label: str = "||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||"
    tag: str = "dw/update_ratio"
    paper: str = "Dherin et al. 2025, Fig. 2 (attention): shrink; other kinds: open"
    criterion: str = FALL

    def verdict(self, value: float, scale: Scale) -> str:
        return fall_verdict(value)


def last_index(runs: Sequence[Scalars], prefix: str) -> int | None:
    """The largest i of the tags ``<prefix><i>`` the runs logged (the context length N)."""
    found = [int(t[len(prefix) :]) for r in runs for t in r if t.startswith(prefix)]
    return max(found, default=None)


def final(runs: Sequence[Scalars], tag: str) -> dict[str, float] | None:
    """``{"mean", "std"}`` over seeds of ``tag``'s last value (None when not logged)."""
    curve = aggregate(runs, tag)
    return None if curve is None else dict(zip(("mean", "std"), curve.final, strict=True))


def kind_row(runs: Sequence[Scalars]) -> dict | None:
    """The table's values of one variant's seeds: ``{column: {"mean", "std"}}``, N, the seeds
    and the verdicts; None when a column's tag was not logged."""
    N = last_index(runs, "ft/sgd_loss_i")
    if N is None:
        return None
    tags = {
        "val/loss": "val/loss",
        "equivalence error": "dw/max_abs_diff",
        "relative equivalence error": "dw/max_rel_diff",
        "update fall": "dw/update_ratio",
        "loss before": "ft/loss_i0",
        "SGD on W": f"ft/sgd_loss_i{N}",
        "W + dW_N": f"ft/dw_loss_i{N}",
    }
    values = {column: final(runs, tag) for column, tag in tags.items()}
    if None in values.values():
        return None
    means = {column: value["mean"] for column, value in values.items()}
    exact = "exact" if passes(EXACT, means["relative equivalence error"]) else "NOT exact"
    verdicts = [
        f"Thm 2.2 {exact}",
        fall_verdict(means["update fall"]),
        finetune_verdict(means["loss before"], means["SGD on W"], means["W + dW_N"]),
    ]
    return {"N": N, "seeds": len(runs), "values": values, "verdicts": "; ".join(verdicts)}


def cell(value: dict[str, float]) -> str:
    return f"{format_value(value['mean'])} ± {format_value(value['std'])}"


@dataclass(frozen=True)
class KindsTable(ReportFigure):
    """One table over the variants ``<kind>_N<N>`` (:func:`kind_row`), and a figure of the
    per-token updates ``||dW_{i+1} - dW_i||`` over i, each divided by its first, for every kind
    at the largest N."""

    across_variants = True
    tag: str = "dw/update_i"

    def table_variants(self, runs: Mapping[str, Sequence[Scalars]]) -> tuple[str, dict] | None:
        rows = {variant: kind_row(r) for variant, r in runs.items()}
        rows = {variant: row for variant, row in rows.items() if row is not None}
        if not rows:
            return None
        lines = [
            "| kind | N | seeds | val/loss | max equivalence error, abs / over rms (float32) | "
            "‖ΔW_N − ΔW_N−1‖ / ‖ΔW_2 − ΔW_1‖ | test loss before → after N examples: "
            "SGD on W / W + ΔW_N | verdicts |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for variant, row in rows.items():
            v = row["values"]
            losses = f"{cell(v['loss before'])} → {cell(v['SGD on W'])} / {cell(v['W + dW_N'])}"
            lines.append(
                f"| {variant.rpartition('_N')[0]} | {row['N']} | {row['seeds']} | "
                f"{cell(v['val/loss'])} | {cell(v['equivalence error'])} / "
                f"{cell(v['relative equivalence error'])} | "
                f"{cell(v['update fall'])} | {losses} | {row['verdicts']} |"
            )
        note = (
            "\n\nMean ± std over the seeds of the last measurement. The updates 'fall' when the "
            "last is at most a tenth of the first; 'dW lower' / 'SGD lower': by more than 3x.\n"
        )
        return "\n".join(lines) + note, rows

    def draw_variants(self, runs: Mapping[str, Sequence[Scalars]], title: str) -> Figure | None:
        """``tag`` over i, divided by its first value, for the variants at the largest N."""
        curves: dict[str, Curve] = {}
        for variant, seeds in runs.items():
            curve = final_values(seeds, self.tag, int)
            if curve is not None and curve.mean[0] > 0:
                first = curve.mean[0]
                mean, std = ([x / first for x in v] for v in (curve.mean, curve.std))
                curves[variant] = Curve(curve.steps, mean, std, curve.seeds)
        if not curves:
            return None
        longest = max(len(c.steps) for c in curves.values())
        curves = {v: c for v, c in curves.items() if len(c.steps) == longest}
        return band_figure(curves, "context index i", self.ylabel, title, self.logy)
