"""The reproduction and its report: configs it derives, aggregation, verdicts, the written report,
the command line's options (training stubbed where the training itself is not the point)."""

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_script
from torch.utils.tensorboard import SummaryWriter

from icl_lightning.cli import ICLLightningCLI
from icl_lightning.reproduce import cli, runner
from icl_lightning.reproduce.experiments import CONTEXT_LENGTHS, EXPERIMENTS
from icl_lightning.reproduce.figures import InterpolationFigure
from icl_lightning.reproduce.report import write_report
from icl_lightning.reproduce.runs import Run
from icl_lightning.reproduce.scalars import aggregate, read_scalars
from icl_lightning.reproduce.verdicts import Check, LossFalls, Scale, passes

BY_NAME = {e.name: e for e in EXPERIMENTS}
RUNS = [
    (e, variant, quick)
    for e in EXPERIMENTS
    for quick in (0, 1)
    for variant in e.variant_names(bool(quick))
]


@pytest.mark.parametrize("experiment,variant,quick", RUNS, ids=lambda v: getattr(v, "name", str(v)))
def test_every_derived_config_parses_with_its_changes(experiment, variant, quick, tmp_path, capsys):
    """Each run's config goes through the real CLI parser, and holds the experiment's changes."""
    run = Run(experiment, variant, 2, bool(quick), tmp_path / "logs")
    path = tmp_path / "reproduce.yaml"
    path.write_text(yaml.safe_dump(run.config()))
    with pytest.raises(SystemExit) as exit_info:
        ICLLightningCLI(args=["fit", f"--config={path}", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed_everything"] == 2 and printed["data"]["init_args"]["seed"] == 2
    steps = experiment.quick_steps if quick else experiment.full_steps
    assert printed["trainer"]["max_steps"] == steps
    logger = printed["trainer"]["logger"]["init_args"]
    assert Path(logger["save_dir"]) / logger["name"] / logger["version"] == run.directory
    for key, value in experiment.variants[variant].items():
        node = printed
        for part in key.split("."):  # the printed config spells out every init_args
            node = node[part] if part in node else node["init_args"][part]
        assert node == value, key


def write_run(directory, values: dict[str, list[tuple[int, float]]]) -> None:
    writer = SummaryWriter(str(directory))
    for tag, points in values.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_aggregate_is_mean_and_std_over_seeds_at_shared_steps(tmp_path):
    write_run(tmp_path / "s0", {"a": [(0, 1.0), (10, 2.0), (20, 4.0)]})
    write_run(tmp_path / "s1", {"a": [(0, 3.0), (10, 6.0)]})
    runs = [read_scalars(tmp_path / "s0"), read_scalars(tmp_path / "s1")]
    curve = aggregate(runs, "a")
    assert curve.steps == [0, 10] and curve.seeds == 2
    assert curve.mean == [2.0, 4.0] and curve.std == [1.0, 2.0]
    assert aggregate(runs, "missing") is None


def test_check_rows_give_ratio_and_a_verdict_only_at_the_papers_scale(tmp_path):
    """At the paper's step count the verdict is reproduced / differs; below it a reduced run is
    not comparable (saying whether the criterion is met there); LossFalls judges the loss."""
    write_run(tmp_path / "s0", {"m": [(5, 1.0)], "g": [(5, 2.0)], "train/loss": [(1, 4.0)]})
    write_run(tmp_path / "s1", {"m": [(5, 3.0)], "g": [(5, 2.0)], "train/loss": [(1, 2.0)]})
    write_run(tmp_path / "s0", {"train/loss": [(9, 1.0)]})
    write_run(tmp_path / "s1", {"train/loss": [(9, 1.0)]})
    runs = [read_scalars(tmp_path / "s0"), read_scalars(tmp_path / "s1")]
    ratio = Check("ratio", "m", "paper", "< 1", over="g")
    row = ratio.row(runs, Scale(5000, 5000))
    assert row["value"] == 1.0 and row["std"] == 0.5 and row["step"] == 5
    assert row["verdict"] == "differs (needs < 1)"
    at_least = Check("m", "m", "p", ">= 2")
    assert at_least.row(runs, Scale(6000, 5000))["verdict"] == "reproduced"
    reduced = at_least.row(runs, Scale(200, 50000))["verdict"]
    assert reduced == "reduced run (200 of 50000 steps), not comparable; >= 2: met here"
    assert "not met here" in ratio.row(runs, Scale(200, 50000))["verdict"]
    falls = LossFalls().row(runs, Scale(200, 50000))
    assert falls["value"] == pytest.approx(0.375) and falls["verdict"] == "falls"


@pytest.mark.parametrize(
    "criterion,value,expected",
    [("< 1", 0.99, True), ("< 1", 1.0, False), ("<= 1e-5", 1e-5, True), (">= 0.999", 0.9989, False)]
    + [("within 0.8-1.25", 1.25, True), ("within 0.8-1.25", 0.79, False)]
    + [("<= 0.1 (10x fall)", 0.1, True), ("> 2", 2.5, True)],
)
def test_criteria_are_read_from_their_text(criterion, value, expected):
    assert passes(criterion, value) is expected


@pytest.mark.parametrize("criterion", ["~ 1", "< one", "within 1", "<1", ""])
def test_an_unreadable_criterion_is_refused_when_the_check_is_made(criterion):
    with pytest.raises(ValueError, match=f"criterion {criterion!r}: expected"):
        Check("x", "t", "paper", criterion)


def one_layer_run(cos: float, interp_at_250: float) -> dict:
    """Fake scalars of paper A's one-layer run: cos to GD rising to ``cos``, the interpolation
    huge while the trained diagonal is near zero (step 250)."""
    tags = {
        "gd/model_cos": [(0, 0.5), (250, 0.6), (500, 0.95), (1000, cos)],
        "gd/loss_ratio": [(0, 2.0), (1000, 1.001)],
        "gd/loss_model": [(0, 1.0), (250, 0.8), (500, 0.4), (1000, 0.2)],
        "gd/loss_gd": [(0, 0.2), (250, 0.2), (500, 0.2), (1000, 0.2)],
        "gd/loss_interp": [(0, 5.0), (250, interp_at_250), (500, 0.3), (1000, 0.2)],
        "train/loss": [(49, 1.0), (999, 0.3)],
    }
    tags.update(
        {f"ood/loss_{w}_inputs_a{a:.2f}": [(1000, a)] for w in ("model", "gd") for a in (0.5, 2.0)}
    )
    return tags


def test_report_writes_tables_figures_and_results(tmp_path):
    """The report of two fake seeds of paper A's one-layer run (quick: reduced, so its verdicts
    say so and it checks the falling loss): table rows, PNGs with human titles, JSON."""
    experiment = BY_NAME["lsa_one_layer"]
    for seed, cos in enumerate([0.9995, 0.9991]):
        write_run(
            Run(experiment, "default", seed, True, tmp_path / "logs").directory,
            one_layer_run(cos, 1e3),
        )
    out = tmp_path / "report"
    results = write_report([experiment], 2, tmp_path / "logs", out, quick=True)
    rows = {r["label"]: r for r in results["lsa_one_layer"]["default"]}
    assert math.isclose(rows["model cos"]["value"], 0.9993, abs_tol=1e-6)
    assert rows["model cos"]["verdict"].startswith(
        "reduced run (1000 of 5000 steps), not comparable"
    )
    assert rows["model cos"]["seeds"] == 2
    assert rows["training loss, last / first logged"]["verdict"] == "falls"
    assert rows["preds diff"]["value"] is None  # not logged: the report says so
    text = (out / "report.md").read_text()
    assert "| model cos |" in text and "not logged (`gd/preds_diff`)" in text
    assert "![Paper A, Fig. 2: one LSA layer against one GD step: loss" in text
    assert "its own axis" in text
    assert "lsa_one_layer: fig2_loss" not in text
    assert (out / "lsa_one_layer_default_fig2_loss.png").stat().st_size > 1000
    assert (out / "lsa_one_layer_default_ood_inputs.png").exists()
    assert not (out / "lsa_one_layer_default_ood_weights.png").exists()
    assert json.loads((out / "results.json").read_text()) == results


def test_figure_2_draws_the_interpolation_from_where_it_is_defined(tmp_path):
    """The interpolation starts after the last measurement where model cos is below 0.9 (there
    the trained diagonal it divides by is near zero), on its own axis."""
    write_run(tmp_path / "s0", one_layer_run(0.9995, 1e3))
    runs = [read_scalars(tmp_path / "s0")]
    figure = next(f for f in BY_NAME["lsa_one_layer"].figures if isinstance(f, InterpolationFigure))
    assert figure.start(runs) == 500
    drawn = figure.draw(runs, figure.title)
    left, right = drawn.axes
    assert [line.get_label().split(" (")[0] for line in left.get_lines()] == ["trained LSA", "GD"]
    lines = {line.get_label().split(" (")[0]: line for line in right.get_lines()}
    assert list(lines) == ["trained LSA", "GD", "interpolation"]
    interpolation = lines["interpolation"]
    assert list(interpolation.get_xdata()) == [500, 1000] and max(interpolation.get_ydata()) < 1
    assert drawn._suptitle.get_text().startswith("Paper A, Fig. 2:")


def test_report_has_each_variant_with_its_note_and_verdicts(tmp_path):
    """Token construction at the paper's scale: the paper's settings (here no copy) and the
    shortened run (a copy) each get a heading, the note saying what sets them apart, and their
    own verdicts."""
    experiment = BY_NAME["token_construction"]
    for variant, mass in (("paper", 0.05), ("shortened", 0.6)):
        tags = {"copy/attention_mass": [(0, 0.0), (100, mass)], "copy/r2": [(100, 0.95)]}
        write_run(Run(experiment, variant, 0, False, tmp_path / "logs").directory, tags)
    out = tmp_path / "report"
    results = write_report([experiment], 1, tmp_path / "logs", out, quick=False)
    verdicts = {v: results["token_construction"][v][0]["verdict"] for v in ("paper", "shortened")}
    assert verdicts["paper"].startswith("differs") and verdicts["shortened"] == "reproduced"
    text = (out / "report.md").read_text()
    paper, shortened = text.index("### paper"), text.index("### shortened")
    assert paper < text.index(experiment.notes["paper"]) < shortened
    assert shortened < text.index(experiment.notes["shortened"])


@pytest.mark.parametrize(
    "args,option",
    [
        (["--seeds", "0"], "--seeds=0"),
        (["--max-steps", "0"], "--max-steps"),
        (["--max-steps", "10", "--quick"], "--max-steps"),
        (["--jobs", "0"], "--jobs=0"),
        (["--threads", "0"], "--threads=0"),
    ],
)
def test_bad_options_are_usage_errors(args, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--report-only"])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_only_on_a_missing_or_empty_logs_refuses_and_keeps_the_report(
    make, tmp_path, capsys
):
    """``--report-only`` with nothing to report on is a usage error naming --logs; an existing
    report stays as it was."""
    logs, out = tmp_path / "logs", tmp_path / "reports"
    if make == "empty":
        (logs / "quick").mkdir(parents=True)
    (out / "quick").mkdir(parents=True)
    (out / "quick" / "report.md").write_text("a good report")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--quick", "--report-only", "--logs", str(logs), "--out", str(out)])
    assert exit_info.value.code == 2
    assert f"--logs={logs}" in capsys.readouterr().err
    assert (out / "quick" / "report.md").read_text() == "a good report"


class FakeProcess:
    """A finished ``fit`` child (exit code ``returncode``), for runs whose training is stubbed."""

    def __init__(self, command, returncode=0, **kwargs):
        self.command, self.returncode, self.kwargs = command, returncode, kwargs

    def poll(self):
        return self.returncode


def stub_children(monkeypatch) -> list[FakeProcess]:
    started = []

    def popen(command, **kwargs):
        started.append(FakeProcess(command, **kwargs))
        return started[-1]

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    return started


def test_max_steps_caps_runs_and_a_larger_cap_resumes_them(tmp_path, monkeypatch, capsys):
    """``--max-steps`` sets each run's ``trainer.max_steps``; a run done to that cap is skipped,
    and a larger cap continues it from its ``last.ckpt``, named by its absolute path."""
    started = stub_children(monkeypatch)
    monkeypatch.setattr(cli, "write_report", lambda *a, **k: {})
    run = Run(BY_NAME["lsa_deep"], "L2", 0, False, (tmp_path / "logs" / "full"), 300)

    def reproduce(*args: str) -> None:
        cli.main(["--only", "lsa_deep", "--seeds", "1", "--logs", str(tmp_path / "logs"), *args])

    def planned_max_steps() -> int:
        config = yaml.safe_load((run.directory / "reproduce.yaml").read_text())
        return config["trainer"]["max_steps"]

    reproduce("--max-steps", "300")
    assert planned_max_steps() == 300 and len(started) == 5  # L2-L5 and L4_recurrent
    # no checkpoint yet: a fresh start, never --overwrite (an earlier attempt is moved aside)
    assert started[0].command[-1].startswith("--config=")
    assert json.loads((run.directory / "done.json").read_text())["steps"] == 300
    reproduce("--max-steps", "300")
    assert len(started) == 5 and capsys.readouterr().out.count("done earlier, skipped") == 5
    run.checkpoint.parent.mkdir()
    run.checkpoint.write_bytes(b"")
    reproduce("--max-steps", "600")
    assert planned_max_steps() == 600 and len(started) == 10
    assert started[5].command[-1] == f"--ckpt_path={run.checkpoint}"
    assert run.checkpoint.is_absolute()


def test_a_truncated_done_json_is_an_unfinished_run_with_a_warning(tmp_path):
    run = Run(BY_NAME["lsa_deep"], "L2", 0, False, tmp_path, 300)
    run.directory.mkdir(parents=True)
    (run.directory / "done.json").write_text('{"seconds": 12.5, "ste')
    with pytest.warns(UserWarning, match=str(run.directory / "done.json")):
        assert not run.finished()
    (run.directory / "done.json").write_text('{"seconds": 12.5, "steps": 300}')
    assert run.finished()


@pytest.mark.parametrize("quick", [False, True])
def test_quick_runs_only_the_quick_variants(quick, tmp_path, monkeypatch, capsys):
    """``--quick`` trains each experiment's ``quick_variants`` (paper B's block at N = 40, not also
    at 400; the token construction shortened, not at the paper's settings); full scale all."""
    trained = []
    monkeypatch.setattr(
        cli, "run_local", lambda runs, *a: trained.extend(r.variant for r in runs) or []
    )
    monkeypatch.setattr(cli, "write_report", lambda *a, **k: {})
    names = ["token_construction", "contextual_block"]
    flags = ["--quick"] if quick else []
    cli.main([*flags, "--only", *names, "--seeds", "1", "--logs", str(tmp_path)])
    expected = ["shortened", "N100"] if quick else ["paper", "shortened", "N100", "N400"]
    assert trained == expected
    assert capsys.readouterr().out.startswith(f"{len(expected)} runs; estimated")


def test_time_estimate_counts_each_variant_at_its_own_cost():
    """Full scale: the token construction at the paper's settings costs its own seconds per
    1,000 steps; --quick: one measured quick run per quick variant."""
    token = BY_NAME["token_construction"]
    thousands = token.full_steps / 1000
    for variant in token.variants:
        per_1000 = token.variant_seconds.get(variant, token.seconds)
        run = Run(token, variant, 0, False, Path("logs"))
        assert run.estimated_seconds() == 10 + per_1000 * thousands
    assert Run(token, "shortened", 0, True, Path("logs")).estimated_seconds() == token.quick_seconds
    assert token.variant_seconds["paper"] != token.seconds


def test_time_estimate_of_a_resumed_run_counts_only_its_steps_left(tmp_path):
    """A run whose last.ckpt holds step k costs its seconds per 1,000 steps for the steps left;
    an unreadable last.ckpt counts as step 0 (the run starts again)."""
    deep = BY_NAME["lsa_deep"]
    run = Run(deep, "L2", 0, False, tmp_path)
    per_1000 = deep.variant_seconds["L2"]
    assert run.estimated_seconds() == 10 + per_1000 * deep.full_steps / 1000
    run.checkpoint.parent.mkdir(parents=True)
    torch.save({"global_step": 40_000}, run.checkpoint)
    assert run.steps_done() == 40_000
    assert run.estimated_seconds() == 10 + per_1000 * (deep.full_steps - 40_000) / 1000
    run.checkpoint.write_bytes(b"cut off by a full disk")
    assert run.steps_done() == 0


@pytest.mark.slow
def test_quick_reproduction_end_to_end_and_resumable(tmp_path):
    """``--quick`` of paper A's one-layer experiment nears GD's direction; a rerun skips it."""
    args = ["--quick", "--only", "lsa_one_layer", "--seeds", "1"]
    args += ["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "reports")]
    cli.main(args)
    results = json.loads((tmp_path / "reports" / "quick" / "results.json").read_text())
    rows = {r["label"]: r for r in results["lsa_one_layer"]["default"]}
    assert rows["model cos"]["value"] >= 0.99
    done = next((tmp_path / "logs").rglob("done.json"))
    stamp = done.stat().st_mtime
    cli.main(args)
    assert done.stat().st_mtime == stamp


def test_scripts_reproduce_is_a_door_to_the_package(tmp_path):
    """``python scripts/reproduce.py`` runs the package's command line (here its usage error)."""
    proc = run_script("reproduce.py", "--report-only", "--logs", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and f"--logs={tmp_path}" in proc.stderr


def test_report_of_context_lengths_has_the_table_and_the_figure(tmp_path):
    """Two fake seeds of the context-length experiment: the N' table (mean ± std of the model
    and GD losses, their ratio and model cos at every N'), the checks and the loss-vs-N' PNG."""
    experiment = BY_NAME["context_length"]
    for seed in (0, 1):
        tags = {}
        for n in CONTEXT_LENGTHS:
            model, gd = 0.2 * (n / 10) ** 2 * (1 + 0.01 * seed), 2.0 / n
            tags[f"gd/N{n}/loss_model"] = [(0, 1.0), (600, model)]
            tags[f"gd/N{n}/loss_gd"] = [(0, 1.0), (600, gd)]
            tags[f"gd/N{n}/loss_ratio"] = [(600, model / gd)]
            tags[f"gd/N{n}/model_cos"] = [(600, 0.999 - 0.001 * seed)]
        write_run(Run(experiment, "default", seed, False, tmp_path / "logs").directory, tags)
    out = tmp_path / "report"
    results = write_report([experiment], 2, tmp_path / "logs", out, quick=False, max_steps=5000)
    table = results["context_length"]["default/loss_vs_context"]
    assert list(table) == ["model loss", "GD loss", "model / GD", "model cos"]
    assert list(table["model loss"]) == [str(n) for n in CONTEXT_LENGTHS]
    close = partial(math.isclose, rel_tol=1e-5)  # TensorBoard keeps float32
    assert close(table["model loss"]["40"]["mean"], 3.216)
    assert close(table["model loss"]["40"]["std"], 0.016)
    assert close(table["GD loss"]["5"]["mean"], 0.4) and table["GD loss"]["5"]["std"] == 0
    assert close(table["model cos"]["20"]["mean"], 0.9985)
    rows = {r["label"]: r for r in results["context_length"]["default"]}
    assert rows["loss trained / GD at N' = N = 10"]["verdict"] == "reproduced"
    text = (out / "report.md").read_text()
    assert "| N' (x N = 10) | model loss | GD loss | model / GD | model cos |" in text
    assert "| 40 (4x) | 3.216 ± 0.016 | 0.05 ± 0 | " in text
    figure = out / "context_length_default_loss_vs_context.png"
    assert figure.stat().st_size > 1000 and f"]({figure.name})" in text
    assert json.loads((out / "results.json").read_text()) == results
