"""scripts/tensorboard_screenshots.py: says so plainly without a browser, and captures PNGs with
one (slow: starts TensorBoard and Chromium)."""

import subprocess
import sys

import pytest
from conftest import CONFIGS, ROOT, run_cli, tiny_args

SCRIPT = ROOT / "scripts" / "tensorboard_screenshots.py"


def test_without_a_browser_it_says_so_and_writes_nothing(tmp_path):
    out = tmp_path / "shots"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--logdir", str(tmp_path), "--name", "x", "--out", str(out)],
        env={"PATH": str(tmp_path)},  # no chromium there
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "No headless browser found" in done.stdout and "apt-get install chromium" in done.stdout
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    subprocess.run(["which", "chromium"], capture_output=True).returncode != 0,
    reason="no chromium on PATH",
)
def test_with_chromium_each_tab_is_a_png(tmp_path):
    run_cli(["fit", f"--config={CONFIGS / 'contextual_block.yaml'}", *tiny_args(tmp_path)])
    out = tmp_path / "shots"
    command = [sys.executable, str(SCRIPT), "--logdir", str(tmp_path), "--name", "block"]
    subprocess.run([*command, "--out", str(out), "--tabs", "hparams"], check=True, timeout=300)
    png = (out / "block_hparams.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
