"""Every probe of every config gives the same numbers with 1 and 2 processes (DDP, gloo, CPU).

For configs that together use every probe (see ``_probe_configs``), through the real CLI in
fresh processes:

1. ``fit`` on 1 process for 6 steps: the probes measure at step 0 and step 6;
2. ``fit`` on 2 processes (DDP): the step-0 measurement (same initial weights) must agree;
3. ``validate`` on 2 processes from the 1-process checkpoint: the probes measure the step-6
   weights, which must agree with the 1-process run's step-6 numbers.

Each probe's evaluation set is set to 101 tasks, which 2 ranks cannot split evenly. A probe that
forgot to all-reduce would report rank 0's half and fail here.
"""

from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, image_tags, read_scalars, run_cli_subprocess, tiny_args

NUM_TASKS = 101  # odd: uneven shares on 2 ranks


def _probe_configs() -> list[Path]:
    """Configs that together use every probe of the project: each config is kept only if it
    brings a probe (with its model family) that no config before it covers."""
    covered, chosen = set(), []
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if "config" in cfg:  # a variant of a base config: the base's probes and model
            continue
        callbacks = cfg.get("trainer", {}).get("callbacks") or []
        module = cfg["model"]  # the default module's options, or a class_path / init_args
        model = (module.get("init_args") or module)["model"]["class_path"]
        probes = {(c["class_path"], model) for c in callbacks if ".callbacks." in c["class_path"]}
        if probes - covered:
            covered |= probes
            chosen.append(path)
    return chosen


def _shrunk_config(config: Path, tmp_path: Path) -> Path:
    """The config with small, uneven probe evaluation sets and a TensorBoard logger."""
    cfg = yaml.safe_load(config.read_text())
    for callback in cfg["trainer"]["callbacks"]:
        if "icl_lightning.callbacks" in callback["class_path"]:
            init_args = callback.setdefault("init_args", {})
            init_args.update(num_tasks=NUM_TASKS, batch_size=32, every_n_steps=0)
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path), "name": "run"},
    }
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg))
    return path


NOT_PROBES = ("train/", "val/", "test/", "epoch", "hp_metric", "hp/")


def _probe_scalars(run_dir: Path, step: int | None = None) -> dict[str, float]:
    """The probes' scalars at ``step`` (default: each tag's last step)."""
    scalars = read_scalars(run_dir)
    at = {t: v.get(max(v) if step is None else step) for t, v in scalars.items()}
    return {t: v for t, v in at.items() if v is not None and not t.startswith(NOT_PROBES)}


def _assert_same(one: dict, two: dict, what: str) -> None:
    assert one, f"no probe scalars logged ({what})"
    assert set(one) == set(two), f"{what}: different tags {set(one) ^ set(two)}"
    for tag in one:
        assert two[tag] == pytest.approx(one[tag], rel=2e-4, abs=1e-6), f"{what}: {tag}"


@pytest.mark.parametrize("config", _probe_configs(), ids=lambda p: p.stem)
def test_probes_agree_on_one_and_two_processes(config, tmp_path):
    shrunk = _shrunk_config(config, tmp_path)
    base = ["--config", str(shrunk), *tiny_args(tmp_path)]
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    run_cli_subprocess(["fit", *base, "--trainer.logger.init_args.version=one"], tmp_path)
    run_cli_subprocess(["fit", *base, *ddp, "--trainer.logger.init_args.version=two"], tmp_path)
    ckpt = tmp_path / "run" / "one" / "checkpoints" / "last.ckpt"
    validate = ["validate", *base, *ddp, f"--ckpt_path={ckpt}"]
    run_cli_subprocess([*validate, "--trainer.logger.init_args.version=val2"], tmp_path)

    one, two, val2 = (tmp_path / "run" / v for v in ("one", "two", "val2"))
    _assert_same(_probe_scalars(one, 0), _probe_scalars(two, 0), "step 0, fit on 2 processes")
    # validate restores the weights of step 6 (its own global step counts from 0)
    _assert_same(_probe_scalars(one, 6), _probe_scalars(val2), "step 6, validate on 2")
    last_val = [read_scalars(run)["val/loss"] for run in (one, val2)]
    assert last_val[1][max(last_val[1])] == pytest.approx(last_val[0][max(last_val[0])], rel=1e-5)
    # figures come from global rank zero only: one event file per run, holding them
    for run in (two, val2):
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert image_tags(one) == image_tags(val2)
