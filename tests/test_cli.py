"""End-to-end behaviour of the ``icl-lightning`` command."""

import gc
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, image_tags, read_scalars, run_cli, tiny_args

from icl_lightning import cli
from icl_lightning.cli import summary_lines

DEMO = str(CONFIGS / "demo.yaml")


def test_fit_writes_events_checkpoint_config_and_summary(tmp_path, capsys):
    cli = run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path)])
    (run_dir,) = (tmp_path / "demo").iterdir()
    scalars = read_scalars(run_dir)
    assert {"train/loss", "val/loss", "val/zero_loss", "context/loss_n1"} <= set(scalars)
    assert "context/loss_vs_n" in image_tags(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 6
    assert cli.model.model.input_dim == 5  # linked from data.task.input_dim
    out = capsys.readouterr().out
    assert f"TensorBoard logs: {run_dir}" in out
    assert "context/loss_n20" in out


def test_summary_folds_per_token_series_into_one_line():
    metrics = {f"ft/sgd_loss_i{k}": 1.0 / k for k in range(1, 401)}
    metrics |= {"ft/loss_i0": 2.0, "train/loss": 0.5}
    lines = summary_lines(metrics)
    assert len(lines) == 3
    assert "ft/sgd_loss_i<k>" in lines[1] and lines[1].endswith("k = 1..400: 1 -> 0.0025")
    assert lines[0].split() == ["ft/loss_i0", "2"]  # a single value stays a scalar
    assert lines[2].split() == ["train/loss", "0.5"]


def test_validate_and_resume_from_checkpoint(tmp_path):
    run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path)])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    cli = run_cli(["validate", f"--config={DEMO}", *tiny_args(tmp_path), f"--ckpt_path={ckpt}"])
    assert "val/loss" in cli.trainer.callback_metrics
    cli = run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path, steps=9), f"--ckpt_path={ckpt}"])
    assert cli.trainer.global_step == 9


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_prints_and_parses(config: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "class_path" in printed["model"]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("fit", "validate", "test"))


BAD_OPTIONS = [
    (["--data.init_args.num_context=0"], "num_context"),
    (["--data.init_args.task.init_args.input_dim=0"], "input_dim"),
    (["--data.init_args.task.init_args.noise_std=-0.1"], "noise_std"),
    (["--data.init_args.batch_size=-4"], "batch_size"),
    (["--model.class_path=icl_lightning.modules.NoSuchModule"], "NoSuchModule"),
    (["--model.model.num_layers=0"], "num_layers"),
    (["--data.init_args.not_an_option=3"], "not_an_option"),
]


@pytest.mark.parametrize(("args", "named"), BAD_OPTIONS, ids=[n for _, n in BAD_OPTIONS])
def test_bad_option_fails_before_training_naming_it(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path), *args])
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err
    assert not list(tmp_path.rglob("events.out.tfevents.*"))  # nothing trained


def test_unknown_key_in_config_file_is_rejected(tmp_path, capsys):
    config = yaml.safe_load(Path(DEMO).read_text())
    config["trainer"]["max_stepz"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        run_cli(["fit", f"--config={bad}"])
    assert "max_stepz" in capsys.readouterr().err


def test_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", f"--config={tmp_path / 'nope.yaml'}"])
    assert "nope.yaml" in capsys.readouterr().err


def test_main_runs_with_the_imported_heap_frozen_and_thaws_it(monkeypatch):
    """icl-lightning's run goes with the objects alive before it (the imports) hidden from the
    garbage collector, shown to it again afterwards, also when the run fails."""
    before, seen = gc.get_freeze_count(), []

    def fails_after_recording(args):
        seen.append(gc.get_freeze_count())
        raise ValueError("bad run")

    monkeypatch.setattr(cli, "ICLLightningCLI", fails_after_recording)
    with pytest.raises(ValueError, match="bad run"):
        cli.main(["fit", f"--config={DEMO}"])
    assert seen[0] > before + 100_000  # torch, Lightning and the rest of the imports
    assert gc.get_freeze_count() == before
