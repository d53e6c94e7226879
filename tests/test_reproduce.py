"""The reproduction script and its report: configs it derives, aggregation, the written report."""

import importlib.util
import json
import math
from functools import partial

import pytest
import yaml
from conftest import ROOT
from torch.utils.tensorboard import SummaryWriter

from icl_lightning.cli import ICLLightningCLI
from icl_lightning.report import Check, aggregate, read_scalars

spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)

RUNS = [
    (e, variant, quick)
    for e in reproduce.EXPERIMENTS
    for quick in (0, 1)
    for variant in e.variant_names(bool(quick))
]


@pytest.mark.parametrize("experiment,variant,quick", RUNS, ids=lambda v: getattr(v, "name", str(v)))
def test_every_derived_config_parses_with_its_changes(experiment, variant, quick, tmp_path, capsys):
    """Each run's config goes through the real CLI parser, and holds the experiment's changes."""
    config = reproduce.derived_config(experiment, variant, seed=2, quick=bool(quick))
    path = tmp_path / "reproduce.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        ICLLightningCLI(args=["fit", f"--config={path}", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed_everything"] == 2 and printed["data"]["init_args"]["seed"] == 2
    steps = experiment.quick_steps if quick else experiment.full_steps
    assert printed["trainer"]["max_steps"] == steps
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


def test_check_rows_give_ratio_and_verdict(tmp_path):
    write_run(tmp_path / "s0", {"m": [(5, 1.0)], "g": [(5, 2.0)]})
    write_run(tmp_path / "s1", {"m": [(5, 3.0)], "g": [(5, 2.0)]})
    runs = [read_scalars(tmp_path / "s0"), read_scalars(tmp_path / "s1")]
    row = Check("ratio", "m", "paper", lambda v: v < 1, "< 1", over="g").row(runs)
    assert row["value"] == 1.0 and row["std"] == 0.5 and row["step"] == 5
    assert row["verdict"] == "differs (needs < 1)"
    assert Check("m", "m", "p", lambda v: v >= 2, ">= 2").row(runs)["verdict"] == "reproduced"


def test_report_writes_tables_figures_and_results(tmp_path):
    """The report of two fake seeds of paper A's one-layer run: table rows, PNGs, JSON."""
    experiment = next(e for e in reproduce.EXPERIMENTS if e.name == "lsa_one_layer")
    for seed, cos in enumerate([0.9995, 0.9991]):
        tags = {"gd/model_cos": [(0, 0.5), (100, cos)], "gd/loss_ratio": [(0, 2.0), (100, 1.001)]}
        tags.update({t: [(0, 1.0), (100, 0.2)] for t in reproduce.LOSS_TAGS.values()})
        tags.update(
            {
                f"ood/loss_{w}_inputs_a{a:.2f}": [(100, a)]
                for w in ("model", "gd")
                for a in (0.5, 2.0)
            }
        )
        write_run(reproduce.run_dir(tmp_path / "logs", experiment, "default", seed), tags)
    out = tmp_path / "report"
    results = reproduce.report([experiment], 2, tmp_path / "logs", out, quick=True)
    rows = {r["label"]: r for r in results["lsa_one_layer"]["default"]}
    assert math.isclose(rows["model cos"]["value"], 0.9993, abs_tol=1e-6)
    assert rows["model cos"]["verdict"] == "reproduced" and rows["model cos"]["seeds"] == 2
    assert rows["preds diff"]["value"] is None  # not logged: the report says so
    text = (out / "report.md").read_text()
    assert "| model cos |" in text and "not logged (`gd/preds_diff`)" in text
    assert (out / "lsa_one_layer_default_fig2_loss.png").stat().st_size > 1000
    assert (out / "lsa_one_layer_default_ood_inputs.png").exists()
    assert not (out / "lsa_one_layer_default_ood_weights.png").exists()
    assert json.loads((out / "results.json").read_text()) == results


def test_report_has_each_variant_with_its_note_and_verdicts(tmp_path):
    """Token construction: the paper's settings (here no copy) and the shortened run (a copy)
    each get a heading, the note saying what sets them apart, and their own verdicts."""
    experiment = next(e for e in reproduce.EXPERIMENTS if e.name == "token_construction")
    for variant, mass in (("paper", 0.05), ("shortened", 0.6)):
        tags = {"copy/attention_mass": [(0, 0.0), (100, mass)], "copy/r2": [(100, 0.95)]}
        write_run(reproduce.run_dir(tmp_path / "logs", experiment, variant, 0), tags)
    out = tmp_path / "report"
    results = reproduce.report([experiment], 1, tmp_path / "logs", out, quick=False)
    verdicts = {v: results["token_construction"][v][0]["verdict"] for v in ("paper", "shortened")}
    assert verdicts["paper"].startswith("differs") and verdicts["shortened"] == "reproduced"
    text = (out / "report.md").read_text()
    paper, shortened = text.index("### paper"), text.index("### shortened")
    assert paper < text.index(experiment.notes["paper"]) < shortened
    assert shortened < text.index(experiment.notes["shortened"])


def test_bad_seeds_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--seeds", "0", "--report-only"])
    assert exit_info.value.code == 2
    assert "--seeds=0" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--max-steps", "0"], ["--max-steps", "10", "--quick"]])
def test_bad_max_steps_is_a_usage_error(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([*args, "--report-only"])
    assert exit_info.value.code == 2
    assert "--max-steps" in capsys.readouterr().err


def test_max_steps_caps_runs_and_a_larger_cap_resumes_them(tmp_path, monkeypatch):
    """``--max-steps`` sets each run's ``trainer.max_steps``; a run done to that cap is skipped,
    and a larger cap continues it from its ``last.ckpt`` (the training itself is stubbed)."""
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    deep = next(e for e in reproduce.EXPERIMENTS if e.name == "lsa_deep")
    directory = reproduce.run_dir(tmp_path, deep, "L2", 0)

    def planned_max_steps() -> int:
        config = yaml.safe_load((directory / "reproduce.yaml").read_text())
        return config["trainer"]["max_steps"]

    assert reproduce.train(deep, "L2", 0, False, tmp_path, max_steps=300).startswith("trained")
    assert planned_max_steps() == 300 and len(commands) == 1
    assert reproduce.train(deep, "L2", 0, False, tmp_path, max_steps=300) == "done earlier, skipped"
    (directory / "checkpoints").mkdir()
    (directory / "checkpoints" / "last.ckpt").write_bytes(b"")
    reproduce.train(deep, "L2", 0, False, tmp_path, max_steps=600)
    assert planned_max_steps() == 600 and len(commands) == 2
    assert commands[1][-1] == f"--ckpt_path={directory / 'checkpoints' / 'last.ckpt'}"
    assert reproduce.train(deep, "L2", 0, False, tmp_path) != "done earlier, skipped"
    assert planned_max_steps() == deep.full_steps


@pytest.mark.parametrize("quick", [False, True])
def test_quick_runs_only_the_quick_variants(quick, tmp_path, monkeypatch, capsys):
    """``--quick`` trains each experiment's ``quick_variants`` (paper B's block at N = 40, not also
    at 400; the token construction shortened, not at the paper's settings); full scale all."""
    trained = []
    monkeypatch.setattr(reproduce, "train", lambda e, v, s, *a, **k: trained.append(v) or "stub")
    monkeypatch.setattr(reproduce, "report", lambda *a, **k: {})
    names = ["token_construction", "contextual_block"]
    flags = ["--quick"] if quick else []
    reproduce.main([*flags, "--only", *names, "--seeds", "1", "--logs", str(tmp_path)])
    expected = ["shortened", "N100"] if quick else ["paper", "shortened", "N100", "N400"]
    assert trained == expected
    assert capsys.readouterr().out.startswith(f"{len(expected)} runs; estimated")


def test_time_estimate_counts_each_variant_at_its_own_cost():
    """Full scale: the token construction at the paper's settings costs its own seconds per
    1,000 steps; --quick: one measured quick run per quick variant and seed."""
    token = next(e for e in reproduce.EXPERIMENTS if e.name == "token_construction")
    thousands = token.full_steps / 1000
    per_run = {
        v: 10 + token.variant_seconds.get(v, token.seconds) * thousands for v in token.variants
    }
    assert reproduce.estimate_seconds([token], 2, quick=False) == 2 * sum(per_run.values())
    assert reproduce.estimate_seconds([token], 2, quick=True) == 2 * token.quick_seconds


@pytest.mark.slow
def test_quick_reproduction_end_to_end_and_resumable(tmp_path):
    """``--quick`` of paper A's one-layer experiment reproduces it, and a rerun skips it."""
    args = ["--quick", "--only", "lsa_one_layer", "--seeds", "1"]
    args += ["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "reports")]
    reproduce.main(args)
    results = json.loads((tmp_path / "reports" / "quick" / "results.json").read_text())
    rows = {r["label"]: r for r in results["lsa_one_layer"]["default"]}
    assert rows["model cos"]["value"] >= 0.99
    done = next((tmp_path / "logs").rglob("done.json"))
    stamp = done.stat().st_mtime
    reproduce.main(args)
    assert done.stat().st_mtime == stamp


def test_report_of_context_lengths_has_the_table_and_the_figure(tmp_path):
    """Two fake seeds of the context-length experiment: the N' table (mean ± std of the model
    and GD losses, their ratio and model cos at every N'), the checks and the loss-vs-N' PNG."""
    experiment = next(e for e in reproduce.EXPERIMENTS if e.name == "context_length")
    lengths = reproduce.CONTEXT_LENGTHS
    for seed in (0, 1):
        tags = {}
        for n in lengths:
            model, gd = 0.2 * (n / 10) ** 2 * (1 + 0.01 * seed), 2.0 / n
            tags[f"gd/N{n}/loss_model"] = [(0, 1.0), (600, model)]
            tags[f"gd/N{n}/loss_gd"] = [(0, 1.0), (600, gd)]
            tags[f"gd/N{n}/loss_ratio"] = [(600, model / gd)]
            tags[f"gd/N{n}/model_cos"] = [(600, 0.999 - 0.001 * seed)]
        write_run(reproduce.run_dir(tmp_path / "logs", experiment, "default", seed), tags)
    out = tmp_path / "report"
    results = reproduce.report([experiment], 2, tmp_path / "logs", out, quick=True)
    table = results["context_length"]["default/loss_vs_context"]
    assert list(table) == ["model loss", "GD loss", "model / GD", "model cos"]
    assert list(table["model loss"]) == [str(n) for n in lengths]
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
