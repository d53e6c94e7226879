"""TensorBoard's Custom Scalars layout: written once per run, merged over probes, and naming
only tags the run logs."""

from pathlib import Path

from conftest import CONFIGS, run_cli, tiny_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

LAYOUT_TAG = "custom_scalars__config__"


def _events(log_dir: Path) -> tuple[list[layout_pb2.Layout], set[str]]:
    """The Custom Scalars layouts and the scalar tags in the event files under ``log_dir``."""
    layouts, scalars = [], set()
    for events in Path(log_dir).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        scalars.update(accumulator.Tags()["scalars"])
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
    named = {tag for category in charts.values() for tags in category.values() for tag in tags}
    assert named and named <= scalars
    overlaid = [tags for tags in charts["gd"].values() if len(tags) > 1]
    assert any({"gd/loss_model", "gd/loss_gd"} <= set(tags) for tags in overlaid)


def test_paper_b_layout_overlays_sgd_and_delta_w(tmp_path, monkeypatch):
    """Paper B's three probes: Theorem 2.2's two losses share a chart, and each Fig. 3 chart
    holds SGD and Delta W after the same number of examples; every named tag is logged."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        ["fit", "--config", str(CONFIGS / "contextual_block.yaml"), *tiny_args(Path("logs"))]
    )
    layouts, scalars = _events(cli.trainer.logger.log_dir)
    charts = _charts(layouts[0])
    named = {tag for category in charts.values() for tags in category.values() for tag in tags}
    assert named <= scalars
    assert any({"dw/loss_context", "dw/loss_delta_w"} <= set(t) for t in charts["dw"].values())
    fig3 = [tags for title, tags in charts["ft"].items() if title.startswith("Fig. 3")]
    assert fig3 and all(
        {tag.replace("dw_", "sgd_") for tag in tags if "/dw_" in tag} <= set(tags) for tags in fig3
    )
