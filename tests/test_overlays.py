"""Config overlays (``config: <base>`` in a config): the rest of the file changes the base key by
key, exactly as the same options on the command line after ``--config <base>`` would; a broken
base or a ``config:`` that is not a path is a usage error naming the file; the reproduction runner
reads an overlay experiment through the CLI's own parser. Every path here is relative to the
test's temporary working directory (conftest)."""

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, run_cli

from icl_lightning.reproduce import cli as reproduce_cli
from icl_lightning.reproduce.experiments import Experiment
from icl_lightning.reproduce.runs import Run

OOD = {"class_path": "icl_lightning.callbacks.OODProbe", "init_args": {"every_n_steps": 7}}


def write(path: str, text: str) -> Path:
    """``text`` in ``path`` (relative to the working directory), next to copies of the shipped
    configs it may name (demo.yaml, lsa_deep.yaml, contextual_block*.yaml)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for name in ("demo", "lsa_deep", "contextual_block", "contextual_block_skip"):
        shutil.copy(CONFIGS / f"{name}.yaml", Path(path).parent)
    Path(path).write_text(text)
    return Path(path)


def printed(capsys, *args: str) -> dict:
    """``icl-lightning fit <args> --print_config`` as a dict, without the run's name (the first
    config's file name)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    options = yaml.safe_load(capsys.readouterr().out)
    del options["trainer"]["logger"]["init_args"]["name"]
    return options


def usage_error(capsys, *args: str) -> str:
    """The message of ``icl-lightning fit <args>``, which must stop with a usage error (exit 2)
    before writing anything."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *args])
    assert exit_info.value.code == 2
    assert not Path("logs").exists()
    error = capsys.readouterr().err.strip()
    return error[error.rindex("error: ") + len("error: ") :]


# ------------------------------------------------------------------- merging, as the CLI does
OVERLAYS = {
    # was: callbacks null, gradient_clip_val null (the whole trainer section replaced)
    "nested_trainer": (
        "config: demo.yaml\ntrainer:\n  max_steps: 10\n",
        ["--config=demo.yaml", "--trainer.max_steps=10"],
    ),
    # was: task null (d = 10 lost), batches_per_epoch back to the default
    "nested_data": (
        "config: lsa_deep.yaml\ndata:\n  batch_size: 32\n",
        ["--config=lsa_deep.yaml", "--data.batch_size=32"],
    ),
    # was: the base's two probes replaced by the one appended
    "plus_key_appends": (
        f"config: demo.yaml\ntrainer.callbacks+:\n  - {OOD}\n",
        [
            "--config=demo.yaml",
            f"--trainer.callbacks+={OOD['class_path']}",
            "--trainer.callbacks.every_n_steps=7",
        ],
    ),
    "nested_plus_key_appends": (
        f"config: demo.yaml\ntrainer:\n  callbacks+: [{OOD}]\n  max_steps: 3\n",
        [
            "--config=demo.yaml",
            f"--trainer.callbacks+={OOD}",
            "--trainer.max_steps=3",
        ],
    ),
    # a key written before `config:` changes the base too (jsonargparse let the base win)
    "key_before_config": (
        "trainer:\n  max_steps: 10\nconfig: demo.yaml\n",
        ["--config=demo.yaml", "--trainer.max_steps=10"],
    ),
    "nested_network_options": (
        "config: lsa_deep.yaml\nmodel:\n  model:\n    init_args:\n      num_layers: 3\n",
        ["--config=lsa_deep.yaml", "--model.model.init_args.num_layers=3"],
    ),
    # read by jsonargparse's YAML loader, as the command line is: 5e-4 is a number
    "exponent_and_null": (
        "config: demo.yaml\noptimizer.init_args.lr: 5e-4\ntrainer:\n  callbacks: null\n",
        ["--config=demo.yaml", "--optimizer.init_args.lr=5e-4", "--trainer.callbacks=null"],
    ),
    # another class: its options start afresh, as on the command line
    "another_class_path": (
        "config: demo.yaml\nmodel:\n  model:\n    class_path: icl_lightning.models.ContextualBlock"
        "\n    init_args:\n      num_heads: 2\n",
        [
            "--config=demo.yaml",
            "--model.model=icl_lightning.models.ContextualBlock",
            "--model.model.num_heads=2",
        ],
    ),
}


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_overlay_is_its_base_plus_the_same_options_on_the_command_line(name, capsys):
    text, command_line = OVERLAYS[name]
    write("overlay.yaml", text)
    assert printed(capsys, "--config=overlay.yaml") == printed(capsys, *command_line)


def test_a_nested_section_keeps_the_bases_probes_clipping_and_task(capsys):
    write("overlay.yaml", "config: demo.yaml\ntrainer:\n  max_steps: 10\ndata:\n  batch_size: 32\n")
    options = printed(capsys, "--config=overlay.yaml")
    trainer, data = options["trainer"], options["data"]["init_args"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in trainer["callbacks"]] == [
        "GDAlignment",
        "ContextLengthProbe",
    ]
    assert (trainer["max_steps"], trainer["gradient_clip_val"]) == (10, 0.001)
    assert (data["batch_size"], data["task"]["init_args"]["input_dim"]) == (32, 5)


def test_a_chain_of_overlays_in_other_folders_resolves_each_base_beside_its_file(capsys):
    write("a/mid.yaml", "config: demo.yaml\ntrainer:\n  max_steps: 20\n")
    write("a/b/top.yaml", "config: ../mid.yaml\ndata:\n  batch_size: 16\n")
    expected = ["--config=a/demo.yaml", "--trainer.max_steps=20", "--data.batch_size=16"]
    assert printed(capsys, "--config=a/b/top.yaml") == printed(capsys, *expected)


def test_an_overlay_with_nested_sections_trains_with_the_bases_probes(capsys):
    """End to end: the run's saved config.yaml and its trainer hold the base's probes, and the
    overlay's nested changes (paper B's block with its skip connection, via its own overlay)."""
    overlay = "config: contextual_block_skip.yaml\ntrainer:\n  max_steps: 2\n"
    overlay += "  enable_model_summary: false\n"
    overlay += "data:\n  batch_size: 8\n  num_val_tasks: 16\n  batches_per_epoch: 2\n"
    write("overlay.yaml", overlay)
    cli = run_cli(["fit", "--config=overlay.yaml"])
    assert cli.trainer.global_step == 2
    probes = [type(c).__name__ for c in cli.trainer.callbacks]
    assert {"DeltaWEquivalence", "DeltaWConvergence", "FinetuneComparison"} <= set(probes)
    saved = yaml.safe_load(Path("logs/overlay/version_0/config.yaml").read_text())
    assert len(saved["trainer"]["callbacks"]) == 3
    assert saved["model"]["init_args"]["model"]["init_args"]["mlp_skip"] is True
    assert saved["data"]["init_args"]["task"]["init_args"]["input_dim"] == 4
    assert saved["data"]["init_args"]["batch_size"] == 8


# -------------------------------------------------------------------------- usage errors
BROKEN_BASES = {
    "missing": (None, "File does not exist"),
    "not_yaml": ("trainer: [unclosed\n", "is not valid YAML"),
    "empty": ("", "holds nothing: expected a YAML mapping of options"),
    "unknown_key": ("trainer:\n  max_stepz: 3\n", "does not accept option 'max_stepz'"),
    "bad_value": ("trainer:\n  max_steps: many\n", 'Parser key "trainer.max_steps"'),
    "a_folder": ("folder", "Path is not a file"),
    "itself_an_overlay_of_a_missing_file": ("config: gone.yaml\n", "gone.yaml"),
}


@pytest.mark.parametrize("case", BROKEN_BASES)
def test_a_broken_base_is_a_usage_error_naming_it(case, capsys):
    content, problem = BROKEN_BASES[case]
    if content == "folder":
        Path("base.yaml").mkdir()
    elif content is not None:
        Path("base.yaml").write_text(content)
    write("overlay.yaml", "config: base.yaml\ntrainer.max_steps: 3\n")
    message = usage_error(capsys, "--config=overlay.yaml")
    base = Path("base.yaml").absolute()
    assert f"{Path('overlay.yaml').absolute()}: its base `config: base.yaml` ({base})" in message
    assert problem in message


@pytest.mark.parametrize("value", ["3", "{trainer: {max_steps: 3}}", "[demo.yaml]", "null", "''"])
def test_a_config_key_that_is_not_a_path_is_a_usage_error(value, capsys):
    write("overlay.yaml", f"config: {value}\ntrainer.max_steps: 3\n")
    message = usage_error(capsys, "--config=overlay.yaml")
    assert f"{Path('overlay.yaml').absolute()}: `config: " in message
    assert "is not a path: expected the file name of a base config" in message


def test_an_overlays_own_bad_key_and_a_loop_are_usage_errors_naming_the_file(capsys):
    write("overlay.yaml", "config: demo.yaml\ntrainer:\n  max_stepz: 3\n")
    message = usage_error(capsys, "--config=overlay.yaml")
    unknown = "Group 'trainer' does not accept option 'max_stepz'"
    assert message.endswith(f"{Path('overlay.yaml').absolute()}: {unknown}")
    write("loop.yaml", "config: loop.yaml\n")
    assert "Config file loop detected" in usage_error(capsys, "--config=loop.yaml")


# ------------------------------------------------------------------ the reproduction runner
def overlay_experiment(config: Path, **changes) -> Experiment:
    """A one-variant experiment of ``config`` with ``changes`` (2 quick steps)."""
    return Experiment(
        "overlay", "an overlay", str(config), 10, 2, 1, 1, changes=changes or {}, quick={}
    )


def test_the_runner_reads_an_overlay_experiment_and_applies_its_changes_to_the_merged_config():
    """Was: KeyError 'trainer' (the runner read the overlay's YAML, which has no trainer)."""
    config = write("configs/skip.yaml", (CONFIGS / "contextual_block_skip.yaml").read_text())
    changes = {
        "data.init_args.batch_size": 8,
        "model.model.init_args.num_heads": 2,
        "callbacks.DeltaWEquivalence.every_n_steps": 5,
    }
    run = Run(overlay_experiment(config.absolute(), **changes), "default", 3, True, Path("logs"))
    built = run.config()
    network = built["model"]["init_args"]["model"]["init_args"]
    assert network["mlp_skip"] is True and network["num_heads"] == 2  # overlay's, change
    assert network["mlp_width"] == 64  # the base's
    probes = {
        c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in built["trainer"]["callbacks"]
    }
    assert list(probes) == ["DeltaWEquivalence", "DeltaWConvergence", "FinetuneComparison"]
    assert probes["DeltaWEquivalence"]["every_n_steps"] == 5
    assert probes["DeltaWConvergence"]["every_n_steps"] == 1000
    assert built["data"]["init_args"]["batch_size"] == 8 and built["seed_everything"] == 3
    assert "config" not in built


@pytest.mark.parametrize("base", ["relative", "absolute"])
def test_a_runs_config_parses_in_its_folder_with_the_bases_probes(base, capsys):
    """Was: a relative base was looked for in the run folder (the run failed); an absolute base
    trained with the base's probes dropped and reported "trained"."""
    name = "demo.yaml" if base == "relative" else str(Path("configs/demo.yaml").absolute())
    config = write("configs/overlay.yaml", f"config: {name}\ntrainer.max_steps: 10\n")
    run = Run(overlay_experiment(config.absolute()), "default", 0, True, Path("logs").absolute())
    command = run.prepare()
    assert command[-1] == f"--config={run.directory / 'reproduce.yaml'}"
    options = printed(capsys, command[-1])
    assert [c["class_path"].rsplit(".", 1)[1] for c in options["trainer"]["callbacks"]] == [
        "GDAlignment",
        "ContextLengthProbe",
    ]
    assert options["trainer"]["gradient_clip_val"] == 0.001 and options["trainer"]["max_steps"] == 2


def test_an_experiment_whose_config_fails_names_the_run_and_the_file():
    config = write("configs/overlay.yaml", "config: gone.yaml\n").absolute()
    run = Run(overlay_experiment(config), "default", 0, True, Path("logs"))
    with pytest.raises(ValueError, match=r"overlay/default seed 0: its config cannot be built: "):
        run.config()
    demo = overlay_experiment(config.parent / "demo.yaml", **{"callbacks.OODProbe.x": 1})
    run = Run(demo, "default", 0, True, Path("logs"))
    with pytest.raises(ValueError, match="callbacks.OODProbe.x: no callback OODProbe"):
        run.config()
    typo = overlay_experiment(config.parent / "demo.yaml", **{"data.init_args.batchsize": 8})
    with pytest.raises(ValueError, match="Option 'batchsize' is not accepted"):  # was: written
        Run(typo, "default", 0, True, Path("logs")).config()


@pytest.mark.slow
def test_the_runner_trains_an_overlay_experiment_end_to_end(capsys):
    """``icl-reproduce`` on an overlay experiment whose base is relative: the child trains with
    the base's probes and the experiment's changes."""
    overlay = "config: contextual_block_skip.yaml\ntrainer:\n  enable_model_summary: false\n"
    config = write("configs/overlay.yaml", overlay).absolute()
    tiny = {"data.init_args.batch_size": 8, "data.init_args.num_val_tasks": 16}
    experiment = overlay_experiment(config, **tiny, **{"callbacks.DeltaWEquivalence.num_tasks": 8})
    reproduce_cli.main(["--quick", "--logs", "logs", "--out", "out", "--seeds", "1"], [experiment])
    assert "overlay/default seed 0: trained" in capsys.readouterr().out
    saved = yaml.safe_load(Path("logs/quick/overlay/default/seed0/config.yaml").read_text())
    probes = {
        c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in saved["trainer"]["callbacks"]
    }
    assert list(probes) == ["DeltaWEquivalence", "DeltaWConvergence", "FinetuneComparison"]
    assert probes["DeltaWEquivalence"]["num_tasks"] == 8
    assert saved["model"]["init_args"]["model"]["init_args"]["mlp_skip"] is True


def test_a_key_given_twice_is_a_usage_error_naming_the_file_and_lines(capsys):
    """Was: YAML kept the second ``trainer:`` section and dropped the first without a word."""
    write("twice.yaml", "trainer:\n  max_steps: 3\nseed_everything: 1\ntrainer:\n  max_epochs: 2\n")
    message = usage_error(capsys, "--config=twice.yaml")
    assert message.startswith(
        f"{Path('twice.yaml').absolute()} gives trainer (lines 1 and 4) twice"
    )
    write("overlay.yaml", "config: demo.yaml\ndata:\n  batch_size: 8\n  batch_size: 16\n")
    assert "gives data.batch_size (lines 3 and 4) twice" in usage_error(
        capsys, "--config=overlay.yaml"
    )
