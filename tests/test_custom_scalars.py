"""TensorBoard's Custom Scalars layout: written once per run, merged over probes, naming only
tags the run logs, each exactly (anchored); compared curves in sibling runs of their own."""

import re
from pathlib import Path

from conftest import CONFIGS, run_cli, tiny_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

LAYOUT_TAG = "custom_scalars__config__"


def _events(log_dir: Path) -> tuple[list[layout_pb2.Layout], dict[str, set[str]]]:
    """The Custom Scalars layouts and the scalar tags in the event files under ``log_dir``, by
    run (the event file's folder relative to ``log_dir``: ``.`` for the run itself)."""
    layouts, scalars = [], {}
    for events in Path(log_dir).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        run = str(events.parent.relative_to(log_dir))
        scalars.setdefault(run, set()).update(accumulator.Tags()["scalars"])
        if LAYOUT_TAG in accumulator.Tags()["tensors"]:
            for event in accumulator.Tensors(LAYOUT_TAG):
                layout = layout_pb2.Layout()
                layout.ParseFromString(event.tensor_proto.string_val[0])
                layouts.append(layout)
    return layouts, scalars


def _charts(layout: layout_pb2.Layout) -> dict[str, dict[str, list[str]]]:
    return {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in layout.category
    }


def _curves(pattern: str, scalars: dict[str, set[str]]) -> dict[str, list[str]]:
    """The runs whose tags the chart pattern matches, as TensorBoard searches it."""
    found = {run: [t for t in tags if re.search(pattern, t)] for run, tags in scalars.items()}
    return {run: tags for run, tags in found.items() if tags}


def _check_exact(charts: dict, scalars: dict[str, set[str]]) -> None:
    """Every chart names one tag exactly: it matches one tag, in one or more runs."""
    for category in charts.values():
        for title, patterns in category.items():
            for pattern in patterns:
                assert pattern.startswith("^") and pattern.endswith("$"), (title, pattern)
                matched = {t for tags in _curves(pattern, scalars).values() for t in tags}
                assert len(matched) == 1, (title, pattern, matched)


def test_demo_layout_overlays_logged_tags(tmp_path, monkeypatch):
    """The demo's two probes and a second, tagged GDAlignment merge into one layout; every tag
    it names is a scalar of the run, and the GD comparison overlays model and GD losses."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(Path("logs"))]
        + ["--trainer.callbacks+=icl_lightning.callbacks.GDAlignment"]
        + ["--trainer.callbacks.tag=deep", "--trainer.callbacks.num_tasks=64"]
    )
    layouts, scalars = _events(cli.trainer.logger.log_dir)
    assert len(layouts) == 1, "one layout per run"
    charts = _charts(layouts[0])
    assert {"gd", "gd/deep", "context"} <= set(charts)
    _check_exact(charts, scalars)
    # the loss comparison: model, GD and GD++ each a sibling run (own colour, named)
    (loss,) = [p for t, (p,) in charts["gd"].items() if t.startswith("Fig. 2: loss of T vs")]
    assert {"gd/loss_model", "gd/loss_gd", "gd/loss_gd_pp"} <= set(_curves(loss, scalars))
    assert all("every 500 steps: set smoothing to 0" in t for t in charts["gd"])


def test_paper_b_layout_overlays_sgd_and_delta_w(tmp_path, monkeypatch):
    """Paper B's three probes: Theorem 2.2's two losses share a chart, and each Fig. 3 chart
    holds SGD and Delta W after the same number of examples; every named tag is logged."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        ["fit", "--config", str(CONFIGS / "contextual_block.yaml"), *tiny_args(Path("logs"))]
    )
    layouts, scalars = _events(cli.trainer.logger.log_dir)
    charts = _charts(layouts[0])
    _check_exact(charts, scalars)  # Fig. 3 "at i = 1" no longer also matches i = 10..19
    runs = [set(_curves(p, scalars)) for (p,) in charts["dw"].values()]
    assert {"dw/loss_context", "dw/loss_delta_w"} in runs
    fig3 = [set(_curves(p, scalars)) for t, (p,) in charts["ft"].items() if t.startswith("Fig. 3")]
    assert fig3 and all(
        len(curves) >= 2 and {r.replace("dw_", "sgd_") for r in curves if "/dw_" in r} <= curves
        for curves in fig3
    )


def test_a_series_over_the_context_length_keeps_three_curves(tmp_path, monkeypatch):
    """ContextLengthProbe's loss after n = 1..N points: the chart against the training step
    draws n = 1, the middle and N (the whole curve over n is the figure), each a sibling run."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(Path("logs"))])
    layouts, scalars = _events(cli.trainer.logger.log_dir)
    (chart,) = _charts(layouts[0])["context"].values()
    assert set(_curves(chart[0], scalars)) == {f"context/loss_n{n}" for n in (1, 11, 20)}
    assert {f"context/loss_n{n}" for n in range(1, 21)} <= scalars["."]  # all still logged
