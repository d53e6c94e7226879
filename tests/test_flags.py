"""Standard Lightning flags through the ``icl-lightning`` command: each works or is refused."""

import os
import re
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, read_scalars, run_cli, tiny_args
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

DEMO = str(CONFIGS / "demo.yaml")


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def test_progress_bar_off_trains_and_bar_on_counts_steps(tmp_path, capsys):
    run_cli(
        ["fit", f"--config={DEMO}", *tiny_args(tmp_path), "--trainer.enable_progress_bar=false"]
    )
    bar = re.compile(r"Epoch 1 \| step 6/6")  # the second epoch's bar, labelled at its end
    assert not bar.search(capsys.readouterr().out)
    run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path), "--progress_bar.plain=false"])
    out = capsys.readouterr().out
    assert bar.search(out) and "/-" not in out  # not Lightning's "Epoch 1/-2"


@pytest.mark.parametrize("precision", ["64-true", "32-true", "bf16-true", "16-mixed", "bf16-mixed"])
def test_precision_trains(tmp_path, precision):
    cli = run_cli(
        ["fit", f"--config={DEMO}", *tiny_args(tmp_path), f"--trainer.precision={precision}"]
    )
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    wanted = {"64-true": torch.float64, "bf16-true": torch.bfloat16}.get(precision, torch.float32)
    assert next(cli.model.parameters()).dtype == wanted


def test_without_logger_files_go_to_a_new_run_directory_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", f"--config={DEMO}", *tiny_args(tmp_path), "--trainer.logger=false"]
    run_cli(args)
    first = _files(tmp_path)
    saved = {p: (tmp_path / p).read_bytes() for p in first}
    run_cli(args)
    runs = Path("logs/unlogged")
    assert first == {runs / "version_0" / "config.yaml", runs / "version_0/checkpoints/last.ckpt"}
    assert _files(tmp_path) == first | {
        runs / "version_1" / p.relative_to(runs / "version_0") for p in first
    }
    assert all((tmp_path / p).read_bytes() == data for p, data in saved.items())  # untouched


def test_fast_dev_run_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path), "--trainer.fast_dev_run=true"])
    assert _files(tmp_path) == set()


def test_max_epochs_accumulation_and_val_check_interval(tmp_path):
    args = ["fit", f"--config={DEMO}", *tiny_args(tmp_path), "--trainer.max_steps=-1"]
    cli = run_cli([*args, "--trainer.max_epochs=2"])
    assert cli.trainer.global_step == 2 * 3  # 3 batches per epoch
    cli = run_cli([*args, "--trainer.max_epochs=2", "--trainer.accumulate_grad_batches=3"])
    assert cli.trainer.global_step == 2
    interval = ["--trainer.max_epochs=1", "--trainer.val_check_interval=1"]
    cli = run_cli([*args, *interval])
    validated = read_scalars(Path(cli.trainer.logger.log_dir))["val/loss"]
    assert len(validated) == 3  # after each of the epoch's 3 steps


def test_log_every_n_steps_zero_trains_without_a_training_curve(tmp_path):
    """``--trainer.log_every_n_steps=0`` (Lightning: no training logs) trains, writes no
    ``train/loss`` and still writes the validation curve; so does the prefix module."""
    for config in (DEMO, str(CONFIGS / "garg_tiny.yaml")):
        args = ["fit", f"--config={config}", *tiny_args(tmp_path), "--trainer.callbacks=[]"]
        if "garg" in config:
            args += ["--data.init_args.num_context=5", "--data.init_args.curriculum=null"]
        cli = run_cli([*args, "--trainer.log_every_n_steps=0"])
        assert cli.trainer.global_step == 6
        scalars = read_scalars(Path(cli.trainer.logger.log_dir))
        assert "train/loss" not in scalars and len(scalars["val/loss"]) == 2


def test_hparams_tab_holds_the_key_options_and_final_metrics_without_copies(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    cli = run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path)])
    run = Path(cli.trainer.logger.log_dir)
    scalars = read_scalars(run)
    assert not [tag for tag in scalars if tag.startswith("hp")]  # no copies of the curves
    entries = [
        plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for path in run.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
        if value.metadata.plugin_data.plugin_name == "hparams"
    ]
    experiment = next(e.experiment for e in entries if e.HasField("experiment"))
    # TensorBoard lists the options sorted by name and ticks the first five: ours, in order
    shown = [info.display_name for info in sorted(experiment.hparam_infos, key=lambda i: i.name)]
    assert shown == ["task", "d", "N", "L", "lr", "seed", "heads", "model"]
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert {"val/loss", "gd/loss_ratio"} <= metrics <= set(scalars)  # the curves' own tags
    assert not [tag for tag in metrics if tag.startswith(("train/", "context/loss_n"))]
    start = next(e.session_start_info for e in entries if e.HasField("session_start_info"))
    values = {key.split(".", 1)[1]: value for key, value in start.hparams.items()}
    assert values["d"].number_value == 5 and values["N"].number_value == 20
    assert values["task"].string_value == "LinearRegression" and len(values) == 8
    assert os.path.getsize(run / "hparams.yaml") > 0


def test_default_profiler_costs_nothing_and_a_chosen_one_is_used(tmp_path):
    """No ``--trainer.profiler``: the CLI's NoProfiler (Lightning's no-op, without a context
    manager per hook call); ``--trainer.profiler=simple``: Lightning's SimpleProfiler."""
    from lightning.pytorch.profilers import SimpleProfiler

    from icl_lightning.profiling import NoProfiler

    cli = run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path)])
    assert type(cli.trainer.profiler) is NoProfiler
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    cli = run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path), "--trainer.profiler=simple"])
    assert isinstance(cli.trainer.profiler, SimpleProfiler)
    assert cli.trainer.profiler.recorded_durations  # it timed the hooks


def test_a_precision_whose_package_is_missing_is_a_usage_error(tmp_path, capsys):
    args = [
        "fit",
        f"--config={DEMO}",
        *tiny_args(tmp_path),
        "--trainer.precision=transformer-engine",
    ]
    with pytest.raises(SystemExit) as stopped:
        run_cli(args)
    assert stopped.value.code == 2
    assert "transformer_engine" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_checkpointing_off_trains_and_writes_no_checkpoint(tmp_path, monkeypatch, caplog):
    """``--trainer.enable_checkpointing=false``: the CLI leaves out its ``last.ckpt`` writer
    (Lightning refuses a ModelCheckpoint then), trains, and says that Ctrl+C saves nothing."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    args = ["fit", f"--config={DEMO}", *tiny_args(Path("logs")), "--trainer.callbacks=[]"]
    cli = run_cli([*args, "--trainer.enable_checkpointing=false"])
    assert cli.trainer.global_step == 6 and cli.trainer.checkpoint_callback is None
    assert not list(tmp_path.rglob("*.ckpt"))
    assert "checkpointing is off: nothing is saved" in caplog.text
