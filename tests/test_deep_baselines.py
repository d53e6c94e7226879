"""scripts/deep_baselines.py end to end: a tiny lsa_deep run validated against GD, GD++ and the
official code's GD++ sizes; its table, JSON and figure, and usage errors naming the option."""

import json
import math
import subprocess
import sys

from conftest import CONFIGS, ROOT, run_cli, tiny_args

SCRIPT = ROOT / "scripts" / "deep_baselines.py"


def deep_baselines(*args, cwd):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_finished_run_is_measured_against_every_baseline(tmp_path):
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
    proc = deep_baselines(
        "--runs", "runs", "--num-tasks", 64, "--out", "deep.json", "--figure", "deep.png",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    numbers = json.loads((tmp_path / "deep.json").read_text())
    per_layer, shared = (numbers["L2"]["seed0"][kind] for kind in ("per_layer", "shared"))
    assert per_layer["trained loss"] == shared["trained loss"] > 0  # one model, one prompt set
    for name in ("trained / GD", "trained / GD++", "trained / official GD++"):
        assert math.isfinite(per_layer[name]) and per_layer[name] > 0, name
    # the converged per-step GD++ is never worse than the shared pair on its held-out prompts
    assert per_layer["GD++ held-out loss"] <= shared["GD++ held-out loss"]
    assert "| L2 | 1 |" in proc.stdout and (tmp_path / "deep.png").stat().st_size > 0
    again = deep_baselines("--from-json", "deep.json", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == proc.stdout


def test_usage_errors_name_the_option(tmp_path):
    neither = deep_baselines(cwd=tmp_path)
    assert neither.returncode == 2 and "--runs" in neither.stderr
    empty = deep_baselines("--runs", tmp_path, cwd=tmp_path)
    assert empty.returncode == 2 and "--runs" in empty.stderr and "last.ckpt" in empty.stderr
    missing = deep_baselines("--from-json", "nothing.json", cwd=tmp_path)
    assert missing.returncode == 2 and "--from-json nothing.json" in missing.stderr
