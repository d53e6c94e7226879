"""scripts/deep_baselines.py end to end: baselines and a tiny lsa_deep run scored on a test set
with robust statistics; the table rebuilt from JSON; the clipped GD++; usage errors."""

import importlib.util
import json
import math

import torch
from conftest import CONFIGS, ROOT, run_cli, run_script, tiny_args
from test_theory_gd import tasks

SCRIPT = ROOT / "scripts" / "deep_baselines.py"
STATS = {"count", "mean", "mean_low", "mean_high", "median", "q999", "above_1"}


def deep_baselines(*args, cwd):
    return run_script("deep_baselines.py", *args, cwd=cwd)


def train_tiny_run(tmp_path) -> None:
    """A 3-step lsa_deep run (L = 2, no probes) in ``runs/L2/seed0`` below ``tmp_path``."""
    run_cli(
        [
            "fit",
            f"--config={CONFIGS / 'lsa_deep.yaml'}",
            *tiny_args(tmp_path / "runs", steps=3),
            "--trainer.logger.init_args.name=L2",
            "--trainer.logger.init_args.version=seed0",
            "--trainer.callbacks=[]",
        ]
    )


def test_a_finished_run_and_the_baselines_on_the_test_set(tmp_path):
    train_tiny_run(tmp_path)
    proc = deep_baselines(
        "--runs", "runs", "--test-tasks", 3000, "--tuning-tasks", 300, "--out", "deep.json",
        "--figure", "deep.png", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "args parameter" not in proc.stderr  # no LightningCLI warning about sys.argv
    numbers = json.loads((tmp_path / "deep.json").read_text())
    assert numbers["test_set"] == {"count": 3000, "key": [0, 3]}
    assert numbers["tuning_set"]["key"] != numbers["selection_set"]["key"] != [0, 3]
    rows = numbers["baselines"]["2"]
    assert {"GD", "GD++ (ours, per step)", "GD++ (official code's sizes)"} <= set(rows)
    for row in rows.values():
        assert STATS <= set(row) and row["count"] == 3000
        assert row["mean_low"] <= row["mean"] <= row["mean_high"] and math.isfinite(row["mean"])
    ours = rows["GD++ (ours, per step)"]
    assert ours["mean"] < rows["GD"]["mean"] and ours["support"] > 5 and ours["contraction"] >= 1
    trained = numbers["trained"]["L2"]["seed0"]
    assert STATS <= set(trained["summary"]) and trained["layers"] == 2 and trained["clip"] == 0
    assert set(trained["versus"]) == set(rows)
    assert set(trained["versus"].values()) <= {"tie", "lower", "higher"}
    assert trained["versus"]["GD"] == "higher"  # 3 steps of training: not yet GD
    assert "| 2 | GD | " in proc.stdout and "| L2 | 1 |" in proc.stdout
    assert (tmp_path / "deep.png").stat().st_size > 0
    again = deep_baselines("--from-json", "deep.json", "--out", "merged.json", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == proc.stdout
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged == numbers  # the prompt sets' record comes along
    other = dict(numbers, test_set={"count": 10, "key": [1, 3]})
    (tmp_path / "other.json").write_text(json.dumps(other))
    mixed = deep_baselines("--from-json", "deep.json", "other.json", cwd=tmp_path)
    assert mixed.returncode == 2 and "other.json" in mixed.stderr and "test_set" in mixed.stderr


def test_a_run_short_of_its_max_steps_is_named_and_not_scored(tmp_path):
    """A run still training (its last.ckpt before max_steps) is not scored: the script says so,
    and with no finished run it is a usage error naming --runs."""
    train_tiny_run(tmp_path)
    config = tmp_path / "runs" / "L2" / "seed0" / "config.yaml"
    config.write_text(config.read_text().replace("max_steps: 3", "max_steps: 50000"))
    proc = deep_baselines("--runs", "runs", "--test-tasks", 100, cwd=tmp_path)
    assert proc.returncode == 2 and "--runs" in proc.stderr
    assert "seed0 is at step 3 of 50000" in proc.stderr


def test_gd_plus_plus_with_a_clip_is_its_lsa_construction_clamped():
    spec = importlib.util.spec_from_file_location("deep_baselines", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    prompts = tasks(num=500, N=10, d=10)
    spectral = script.spectral_forms(prompts)
    etas, gammas = [4.9, 25.6, 228.9], [0.278, 2.488, 0.0]
    plain = script.gd_plus_plus_losses(prompts, spectral, etas, gammas, 3, 0.0)
    huge = script.gd_plus_plus_losses(prompts, spectral, etas, gammas, 3, 1e12)
    torch.testing.assert_close(huge, plain, rtol=1e-8, atol=1e-12)  # an inactive clip
    clipped = script.gd_plus_plus_losses(prompts, spectral, etas, gammas, 3, 0.05)
    assert (clipped <= 0.5 * (prompts[3].abs() + 0.05) ** 2 + 1e-12).all()
    assert not torch.allclose(clipped, plain)


def test_usage_errors_name_the_option(tmp_path):
    neither = deep_baselines(cwd=tmp_path)
    assert neither.returncode == 2 and "--runs" in neither.stderr
    empty = deep_baselines("--runs", tmp_path, cwd=tmp_path)
    assert empty.returncode == 2 and "--runs" in empty.stderr and "last.ckpt" in empty.stderr
    missing = deep_baselines("--from-json", "nothing.json", cwd=tmp_path)
    assert missing.returncode == 2 and "--from-json nothing.json" in missing.stderr
