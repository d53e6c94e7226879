"""The catalogue of bad inputs: each is a usage error (exit 2) before any work, naming the option
or file and what was allowed, leaving no file behind and changing none.

Every case reads and writes only temporary folders (copies of the configs it uses), so a run
training in the same checkout at the same time (`make demo`) cannot change what it watches."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, run_cli, tiny_args

# copies of these shipped configs, in the prepared inputs (the fixture ``inputs``)
DEMO = "{inputs}/configs/demo.yaml"
BLOCK = "{inputs}/configs/contextual_block.yaml"


LINEAR_D3 = {"class_path": "icl_lightning.data.LinearRegression", "init_args": {"input_dim": 3}}


def _probe(class_name: str, **init_args) -> str:
    """``--trainer.callbacks`` holding one probe."""
    probe = {"class_path": f"icl_lightning.callbacks.{class_name}", "init_args": init_args}
    return f"--trainer.callbacks={json.dumps([probe])}"


# (id, config, extra arguments, what the message must say). "{inputs}" is the folder of the
# prepared files: good checkpoints of both model families, a truncated one, a text file, configs.
CASES = [
    # data
    ("num_context_0", DEMO, ["--data.init_args.num_context=0"], r"num_context.*v>0"),
    ("batch_size_0", DEMO, ["--data.init_args.batch_size=0"], r"batch_size.*v>0"),
    ("batch_size_negative", DEMO, ["--data.init_args.batch_size=-4"], r"batch_size.*v>0"),
    ("batch_size_text", DEMO, ["--data.init_args.batch_size=many"], r"batch_size.*PositiveInt"),
    ("num_val_tasks_0", DEMO, ["--data.init_args.num_val_tasks=0"], r"num_val_tasks.*v>0"),
    (
        "batches_per_epoch_0",
        DEMO,
        ["--data.init_args.batches_per_epoch=0"],
        r"batches_per_epoch.*v>0",
    ),
    ("seed_negative", DEMO, ["--data.init_args.seed=-1"], r"seed.*v>=0"),
    ("input_dim_0", DEMO, ["--data.init_args.task.init_args.input_dim=0"], r"input_dim.*v>0"),
    (
        "noise_std_negative",
        DEMO,
        ["--data.init_args.task.init_args.noise_std=-0.1"],
        r"noise_std.*v>=0",
    ),
    ("task_unknown", DEMO, ["--data.init_args.task=icl_lightning.data.NoSuchTask"], r"NoSuchTask"),
    ("data_option_unknown", DEMO, ["--data.init_args.not_an_option=3"], r"not_an_option"),
    ("data_class_unknown", DEMO, ["--data=icl_lightning.data.NoSuchData"], r"NoSuchData"),
    (
        "batch_size_beyond_memory",
        DEMO,
        ["--data.init_args.batch_size=100000000000"],
        r"batch_size=100000000000 needs .* GiB .* free .* expected a smaller value",
    ),
    (
        "val_tasks_beyond_memory",
        DEMO,
        ["--data.init_args.num_val_tasks=100000000000"],
        r"num_val_tasks=100000000000 needs .* GiB",
    ),
    # model
    ("num_layers_0", DEMO, ["--model.init_args.model.init_args.num_layers=0"], r"num_layers.*>= 1"),
    ("model_class_unknown", DEMO, ["--model=icl_lightning.modules.NoSuchModule"], r"NoSuchModule"),
    (
        "network_class_unknown",
        DEMO,
        ["--model.init_args.model=icl_lightning.models.NoSuchNet"],
        r"NoSuchNet",
    ),
    ("model_option_unknown", DEMO, ["--model.init_args.model.init_args.widht=3"], r"widht"),
    (
        "linked_input_dim_set",
        DEMO,
        ["--model.init_args.model.init_args.input_dim=3"],
        r"input_dim=3 is set from the data.*expected it unset",
    ),
    (
        "block_heads_0",
        BLOCK,
        ["--model.init_args.model.init_args.num_heads=0"],
        r"num_heads=0 is invalid: expected an integer >= 1",
    ),
    # probes
    (
        "context_every_negative",
        DEMO,
        [_probe("ContextLengthProbe", every_n_steps=-1)],
        r"every_n_steps.*v>=0",
    ),
    ("gd_num_tasks_0", DEMO, [_probe("GDAlignment", num_tasks=0)], r"num_tasks.*v>0"),
    ("gd_tuning_tasks_1", DEMO, [_probe("GDAlignment", tuning_tasks=1)], r"tuning_tasks.*>= 2"),
    ("gd_dtype_float16", DEMO, [_probe("GDAlignment", dtype="float16")], r"dtype.*float32"),
    ("ood_alpha_negative", DEMO, [_probe("OODProbe", alphas=[-1.0])], r"alphas.*v>0"),
    ("ood_on_block", BLOCK, [_probe("OODProbe")], r"OODProbe.*ContextualBlock.*num_steps"),
    ("gd_on_block", BLOCK, [_probe("GDAlignment")], r"GDAlignment.*ContextualBlock.*num_steps"),
    ("dw_on_lsa", DEMO, [_probe("DeltaWEquivalence")], r"DeltaWEquivalence.*LSA.*ContextualBlock"),
    (
        "dw_convergence_on_lsa",
        DEMO,
        [_probe("DeltaWConvergence")],
        r"DeltaWConvergence.*LSA.*ContextualBlock",
    ),
    (
        "finetune_on_lsa",
        DEMO,
        [_probe("FinetuneComparison")],
        r"FinetuneComparison.*LSA.*ContextualBlock",
    ),
    ("finetune_lr_0", BLOCK, [_probe("FinetuneComparison", lr=0.0)], r"lr.*v>0"),
    ("copy_score_on_lsa", DEMO, [_probe("CopyScore")], r"CopyScore.*first_layer"),
    ("deep_features_on_lsa", DEMO, [_probe("DeepFeatureGD")], r"DeepFeatureGD.*features"),
    (
        "probe_task_other_dim",
        DEMO,
        [_probe("ContextLengthProbe", task=LINEAR_D3)],
        r"task.input_dim=3.*data's input_dim, 5",
    ),
    (
        "probe_tasks_beyond_memory",
        DEMO,
        [_probe("GDAlignment", num_tasks=10**11)],
        r"GDAlignment.num_tasks=100000000000 needs .* GiB",
    ),
    ("probe_class_unknown", DEMO, [_probe("NoSuchProbe")], r"NoSuchProbe"),
    (
        "probe_size_current_without_curriculum",
        DEMO,
        [_probe("ContextLengthProbe", size="current")],
        r"ContextLengthProbe.size='current' is invalid: expected 'full' unless .*curriculum",
    ),
    (
        "probe_size_current_with_num_context",
        DEMO,
        [_probe("ContextLengthProbe", size="current", num_context=5)],
        r"num_context=5 is invalid: expected None with size='current'",
    ),
    ("probe_tag_with_slash", DEMO, [_probe("GDAlignment", tag="a/b")], r"tag='a/b' is invalid"),
    (
        "probe_twice_same_tag",
        DEMO,
        [
            "--trainer.callbacks="
            + json.dumps([{"class_path": "icl_lightning.callbacks.GDAlignment"}] * 2)
        ],
        r"trainer.callbacks: Found more than one stateful callback of type `GDAlignment`.*`tag`",
    ),
    (
        "finetune_block_past_K",
        BLOCK,
        [_probe("FinetuneComparison", block=2)],
        r"block=2 is invalid: expected an integer in 1\.\.1",
    ),
    # trainer, optimizer and checkpoint flags
    ("precision_16_true", DEMO, ["--trainer.precision=16-true"], r"precision=16-true.*Expected"),
    ("precision_unknown", DEMO, ["--trainer.precision=12"], r"precision.*12"),
    ("barebones", DEMO, ["--trainer.barebones=true"], r"barebones=true.*icl-benchmark"),
    (
        "fused_optimizer_clipped_in_mixed_precision",
        BLOCK,
        ["--trainer.gradient_clip_val=1", "--trainer.precision=bf16-mixed"],
        r"gradient_clip_val=1.*precision=bf16-mixed.*fused=false",
    ),
    ("max_steps_text", DEMO, ["--trainer.max_steps=lots"], r"max_steps.*lots"),
    ("max_steps_negative", DEMO, ["--trainer.max_steps=-2"], r"max_steps.*-1.*-2"),
    ("max_epochs_negative", DEMO, ["--trainer.max_epochs=-5"], r"max_epochs.*-1.*-5"),
    ("accelerator_unknown", DEMO, ["--trainer.accelerator=abacus"], r"accelerator.*abacus"),
    ("devices_0", DEMO, ["--trainer.devices=0"], r"devices='0'.*not a valid"),
    ("num_nodes_0", DEMO, ["--trainer.num_nodes=0"], r"num_nodes.*positive integer"),
    ("strategy_unknown", DEMO, ["--trainer.strategy=ddp_nope"], r"strategy='ddp_nope'.*choices"),
    (
        "clip_algorithm_unknown",
        DEMO,
        ["--trainer.gradient_clip_algorithm=sideways"],
        r"gradient_clip_algorithm.*sideways.*norm",
    ),
    (
        "limit_val_negative",
        DEMO,
        ["--trainer.limit_val_batches=-1"],
        r"limit_val_batches.*0.0, 1.0",
    ),
    (
        "val_interval_too_long",
        DEMO,
        ["--trainer.val_check_interval=100"],
        r"val_check_interval=100.*batches_per_epoch=3",
    ),
    (
        "val_every_0_epochs",
        DEMO,
        ["--trainer.check_val_every_n_epoch=0"],
        r"check_val_every_n_epoch=0.*>= 1",
    ),
    ("trainer_flag_unknown", DEMO, ["--trainer.max_stepz=3"], r"max_stepz"),
    ("lr_negative", DEMO, ["--optimizer.init_args.lr=-1"], r"--optimizer.*learning rate: -1"),
    ("optimizer_unknown", DEMO, ["--optimizer=torch.optim.NoSuchOpt"], r"NoSuchOpt"),
    (
        "checkpoint_every_negative",
        DEMO,
        ["--checkpoint.every_n_train_steps=-1"],
        r"every_n_train_steps=-1.*>= 0",
    ),
    ("checkpoint_top_k_negative", DEMO, ["--checkpoint.save_top_k=-2"], r"save_top_k=-2.*>= -1"),
    # output folders (sysfs: no file can be created there, even by root)
    (
        "save_dir_read_only",
        DEMO,
        ["--trainer.logger.init_args.save_dir=/sys/icl_logs"],
        r"--trainer.logger.init_args.save_dir=/sys/icl_logs cannot be written: /sys is read-only",
    ),
    (
        "default_root_dir_read_only",
        DEMO,
        ["--trainer.logger=false", "--trainer.default_root_dir=/sys/icl_logs"],
        r"--trainer.default_root_dir=/sys/icl_logs cannot be written",
    ),
    # checkpoint files
    ("ckpt_missing", DEMO, ["--ckpt_path={inputs}/nope.ckpt"], r"nope.ckpt: no such file"),
    ("ckpt_directory", DEMO, ["--ckpt_path={inputs}"], r"no such file; expected a .ckpt"),
    (
        "ckpt_truncated",
        DEMO,
        ["--ckpt_path={inputs}/truncated.ckpt"],
        r"truncated.ckpt is not a complete checkpoint",
    ),
    (
        "ckpt_text",
        DEMO,
        ["--ckpt_path={inputs}/notes.ckpt"],
        r"notes.ckpt is not a complete checkpoint",
    ),
    (
        "ckpt_other_class",
        DEMO,
        ["--ckpt_path={inputs}/block.ckpt"],
        r"block.ckpt (holds a \S*Contextual\S*, but the model is a \S*LSA|was trained with "
        r"other model/data options .*model.class_path: '\S*ContextualBlock' -> '\S*LSA')",
    ),
    (
        "ckpt_other_shape",
        DEMO,
        ["--ckpt_path={inputs}/lsa.ckpt", "--data.init_args.task.init_args.input_dim=3"],
        r"lsa.ckpt (holds a \S*LSA\S* of another shape|was trained with other model/data "
        r"options .*input_dim: 5 -> 3)",
    ),
    (
        "validate_ckpt_truncated",
        DEMO,
        ["--ckpt_path={inputs}/truncated.ckpt"],
        r"truncated.ckpt is not a complete",
        "validate",
    ),
    # config files
    ("config_missing", None, ["--config={inputs}/nope.yaml"], r"nope.yaml"),
    ("config_unknown_key", None, ["--config={inputs}/unknown_key.yaml"], r"max_stepz"),
    ("config_not_yaml", None, ["--config={inputs}/broken.yaml"], r"broken.yaml is not valid YAML"),
]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Good checkpoints of an LSA and a contextual block, damaged files and configs (copies of
    the shipped configs the cases use, under ``configs/``)."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "configs").mkdir()
    for name in ("demo.yaml", "contextual_block.yaml"):
        shutil.copy(CONFIGS / name, folder / "configs" / name)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        for name, config in [("lsa", DEMO), ("block", BLOCK)]:
            save = folder / f"run_{name}"
            config = config.format(inputs=folder)
            run_cli(["fit", f"--config={config}", *tiny_args(save, 1), "--trainer.callbacks=[]"])
            shutil.copy(next(save.rglob("last.ckpt")), folder / f"{name}.ckpt")
            shutil.rmtree(save)
    (folder / "truncated.ckpt").write_bytes((folder / "lsa.ckpt").read_bytes()[:2000])
    (folder / "notes.ckpt").write_text("not a checkpoint\n")
    config = yaml.safe_load((folder / "configs" / "demo.yaml").read_text())
    config["trainer"]["max_stepz"] = 3
    (folder / "unknown_key.yaml").write_text(yaml.safe_dump(config))
    (folder / "broken.yaml").write_text("trainer: [max_steps: 3\n")
    return folder


def _case(case: tuple) -> tuple:
    """``(config, extra, message, subcommand)``, the subcommand ``fit`` unless given."""
    return (*case[1:4], case[4] if len(case) > 4 else "fit")


@pytest.mark.parametrize(
    ("config", "extra", "message", "subcommand"),
    [_case(c) for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input_is_a_usage_error_naming_it(
    tmp_path, monkeypatch, capsys, inputs, config, extra, message, subcommand
):
    monkeypatch.chdir(tmp_path)
    before = _digest(inputs)
    args = [subcommand, *([f"--config={config}", *tiny_args(tmp_path / "logs")] if config else [])]
    args = [a.replace("{inputs}", str(inputs)) for a in [*args, *extra]]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    err = capsys.readouterr().err
    error = err[err.find("error:") :].replace("\n", " ")
    assert exit_info.value.code == 2, error
    assert re.search(message, error), error
    assert not list(tmp_path.rglob("*")), "stray files"
    assert _digest(inputs) == before, "a file changed"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
