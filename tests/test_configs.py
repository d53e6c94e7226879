"""The shipped configs: each parses, a variant is its base plus its own keys, and the CLI fills in
what the configs leave out (the run's name, paper A's AdamW)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, run_cli

from icl_lightning.cli import ICLLightningCLI
from icl_lightning.modules.base import ICLRegressionModule

SHIPPED = sorted(CONFIGS.glob("*.yaml"))
VARIANTS = [p for p in SHIPPED if "config" in yaml.safe_load(p.read_text())]


def resolved(config: Path, capsys, *extra: str) -> dict:
    """``icl-lightning fit --config <config> --print_config``, read back as a dict."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={config}", *extra, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def leaves(tree: dict, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for every leaf of nested dicts (lists are leaves)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_names_its_run_after_its_file(config, capsys):
    options = resolved(config, capsys)
    assert options["trainer"]["logger"]["init_args"]["name"] == config.stem
    assert options["model"]["init_args"]["model"]["class_path"].startswith("icl_lightning.models.")
    if "optimizer" not in yaml.safe_load(config.read_text()):  # else the config's own
        assert options["optimizer"]["class_path"] == "torch.optim.AdamW"
        assert options["optimizer"]["init_args"]["betas"] == [0.9, 0.98]


def test_the_shipped_configs_include_variants():
    kinds = ["diagonal", "gru", "lstm", "rnn", "selective", "skip"]
    assert [p.stem for p in VARIANTS] == [f"contextual_block_{kind}" for kind in kinds]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.stem)
def test_a_variant_resolves_to_its_base_plus_its_own_keys(variant, capsys):
    """Every resolved value of the variant is its base's, except those its dotted keys set
    (written with ``init_args`` as in the resolved config) and the run's name."""
    own = yaml.safe_load(variant.read_text())
    base = variant.parent / own.pop("config")
    expected = leaves(resolved(base, capsys))
    assert set(own) <= set(expected), "a variant key that its base does not have"
    changes = {key: value for key, value in own.items() if expected[key] != value}
    assert changes == own, "a variant key that repeats its base's value"
    expected.update(own)
    expected["trainer.logger.init_args.name"] = variant.stem
    assert leaves(resolved(variant, capsys)) == expected


def test_run_name_include_and_explicit_name_from_a_working_directory(tmp_path, monkeypatch):
    """Relative paths from the working directory: the variant finds its base next to itself,
    the run goes to logs/<config's file name>/, and an explicit name wins."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    tiny = ["--trainer.max_steps=2", "--trainer.callbacks=[]", "--data.init_args.batch_size=8"]
    tiny += ["--data.init_args.num_val_tasks=8", "--trainer.enable_model_summary=false"]
    run_cli(["fit", "--config", "configs/contextual_block_skip.yaml", *tiny])
    run = Path("logs/contextual_block_skip/version_0")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["model"]["init_args"]["mlp_skip"] is True
    assert saved["model"]["init_args"]["model"]["init_args"]["num_heads"] == 4  # the base's
    run_cli(
        [
            "fit",
            "--trainer.logger.init_args.name=mine",
            "--config=configs/contextual_block_skip.yaml",
            *tiny,
        ]
    )
    assert sorted(p.name for p in Path("logs").iterdir()) == ["contextual_block_skip", "mine"]


def test_default_optimizer_is_the_modules_own_and_one_option_changes_one_value(tmp_path):
    """The CLI's default optimizer (the configs leave it out) is the module's own
    configure_optimizers AdamW, hyperparameter for hyperparameter; ``--optimizer.init_args.lr``
    changes the lr alone."""

    def optimizers(*extra: str) -> tuple[dict, dict]:
        args = ["--config", str(CONFIGS / "demo.yaml"), "--trainer.logger=false", *extra]
        cli = ICLLightningCLI(args=[*args, f"--trainer.default_root_dir={tmp_path}"], run=False)
        ours = cli.model.configure_optimizers()  # the CLI's, patched in
        modules = ICLRegressionModule.configure_optimizers(cli.model)
        assert type(ours) is type(modules) is torch.optim.AdamW
        return ours.defaults, modules.defaults

    ours, modules = optimizers()
    assert ours == modules
    ours, modules = optimizers("--optimizer.init_args.lr=5e-4")
    assert ours == {**modules, "lr": 5e-4}


def test_adam_left_to_choose_runs_fused_on_the_cpu_and_updates_as_the_loop_does(tmp_path):
    """The CLI's AdamW on CPU parameters runs torch's fused kernel unless the options choose
    ``fused`` or ``foreach``; its update equals the per-parameter loop's (float32 rounding)."""

    def optimizer(*extra: str) -> torch.optim.Optimizer:
        args = ["--config", str(CONFIGS / "lsa_deep.yaml"), "--trainer.logger=false", *extra]
        cli = ICLLightningCLI(args=[*args, f"--trainer.default_root_dir={tmp_path}"], run=False)
        return cli.model.configure_optimizers()

    fused = optimizer()
    assert [group["fused"] for group in fused.param_groups] == [True]
    for chosen in ("--optimizer.init_args.foreach=false", "--optimizer.init_args.fused=false"):
        assert not optimizer(chosen).param_groups[0]["fused"]
    sgd = optimizer("--optimizer=torch.optim.SGD", "--optimizer.init_args.lr=0.1")
    assert "fused" not in sgd.param_groups[0] or not sgd.param_groups[0]["fused"]
    looped = optimizer("--optimizer.init_args.foreach=false")
    for opt in (fused, looped):
        torch.manual_seed(0)
        params = [p for group in opt.param_groups for p in group["params"]]
        for p in params:
            p.data.copy_(torch.randn_like(p))
        for _ in range(3):
            for p in params:
                p.grad = torch.sin(p.detach() * 3)
            opt.step()
    for a, b in zip(fused.param_groups[0]["params"], looped.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_console_script_names_the_run_without_lightnings_two_arguments_warning(tmp_path):
    """``python -m icl_lightning`` reads its options from ``sys.argv``: the run's name is added
    there, so LightningCLI is not handed a second argument list (it would warn about both)."""
    shutil.copy(CONFIGS / "lsa_deep.yaml", tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "icl_lightning", "fit", "--config", "lsa_deep.yaml"]
    proc = subprocess.run(
        [*command, "--print_config"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load(proc.stdout)["trainer"]["logger"]["init_args"]["name"] == "lsa_deep"
    assert "args parameter" not in proc.stderr
