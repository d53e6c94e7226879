"""scripts/benchmark.py end to end on a tiny run: it builds every loop and prints the ratios."""

import json
import subprocess
import sys

from conftest import CONFIGS, ROOT


def test_side_by_side_prints_ratios_and_writes_its_report(tmp_path):
    tiny = ["--data.init_args.batch_size=32", "--data.init_args.num_val_tasks=32"]
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--steps", "12"]
    command += ["--warmup", "2", "--repeats", "1", "--threads", "1", "--name", "tiny"]
    command += [f"--config={CONFIGS / 'demo.yaml'}", *tiny]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("loop / bare", "fit / bare", "fit+probes / fit", "bare ", "loop ", "fit+probes "):
        assert line in proc.stdout
    report = json.loads((tmp_path / "reports" / "speed" / "benchmark_tiny.json").read_text())
    assert all(len(report["runs"][name]) == 1 for name in ("bare", "loop", "fit", "fit+probes"))
    assert report["meta"]["threads"] == 1
    assert (tmp_path / "reports" / "speed" / "benchmark_tiny.md").read_text().startswith("#")
