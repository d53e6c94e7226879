"""Progress off a terminal: plain lines during training, and a TensorBoard command that runs."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import CONFIGS, run_cli, tiny_args

from icl_lightning.cli import tensorboard_command
from icl_lightning.progress_lines import LineProgressBar

DEMO = str(CONFIGS / "demo.yaml")
LINE = re.compile(r"^step (\d+)/(\d+) \(\d+%\).*steps/s  elapsed \S+  left \S+$", re.M)


def test_off_a_terminal_training_prints_plain_progress_lines(tmp_path, capsys):
    # capsys' stdout is not a terminal: the CLI swaps the rich bar for plain lines
    run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path, steps=6)])
    out = capsys.readouterr().out
    lines = LINE.findall(out)
    assert lines[0] == ("1", "6") and lines[-1] == ("6", "6"), out  # the first and the last step
    assert "train/loss" in out.split("step 6/6")[1].splitlines()[0]
    assert "Epoch" not in out  # no rich frame


def test_line_interval_spaces_the_lines(tmp_path, capsys):
    args = ["fit", f"--config={DEMO}", *tiny_args(tmp_path, steps=40)]
    run_cli([*args, "--progress_bar.line_interval=3600"])
    assert len(LINE.findall(capsys.readouterr().out)) == 2  # first and last step only


def test_line_interval_must_be_positive():
    try:
        LineProgressBar(interval=0)
    except ValueError as error:
        assert "line_interval=0" in str(error)
    else:
        raise AssertionError("interval 0 was accepted")


def test_printed_tensorboard_command_runs_without_an_active_venv(tmp_path):
    command = shlex.split(tensorboard_command(str(tmp_path)))
    assert Path(command[0]).is_absolute() or (Path.cwd() / command[0]).is_file()
    assert Path(command[0]).name in ("tensorboard", Path(sys.executable).name)
    # `--version_tb` prints the version and exits: the program named is runnable as printed
    done = subprocess.run([*command[:-2], "--version_tb"], capture_output=True, text=True)
    assert done.returncode == 0 and re.search(r"\d+\.\d+", done.stdout + done.stderr)
