"""GDAlignment and OODProbe: exact on the GD construction, against finite differences, a CLI
run, their options, and 1 vs 2 DDP processes."""

import inspect
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import run_cli
from references import finite_difference_sensitivities, naive_gd_plus_plus, naive_gd_predict

from icl_lightning.callbacks import GDAlignment, GDBaselineProbe, OODProbe, Probe
from icl_lightning.cli import ICLLightningCLI
from icl_lightning.data import ICLDataModule, LinearRegression, seeded_generator
from icl_lightning.models import LSA
from icl_lightning.modules import ICLRegressionModule
from icl_lightning.theory import StepSizes, gd_lsa_layer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
D, N = 5, 10


class Float64Data(ICLDataModule):
    """Validation prompts in float64, so that a float64 module can be validated."""

    def eval_set(self, stage, device):
        return super().eval_set(stage, device).to(torch.float64)


def datamodule() -> ICLDataModule:
    return Float64Data(LinearRegression(D), batch_size=64, num_context=N, num_val_tasks=64)


def probes(**kw) -> list:
    common = dict(num_tasks=301, batch_size=128, dtype="float64", tuning_tasks=300, **kw)
    return [GDAlignment(**common), OODProbe(alphas=[0.5, 1.0, 2.0], **common)]


class DumpResults(L.Callback):
    """Writes every probe's ``last_results`` (all-reduced, on every rank) to rank<r>.json."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_validation_end(self, trainer, pl_module) -> None:
        probes = [c for c in trainer.callbacks if isinstance(c, Probe)]
        results = {k: v for probe in probes for k, v in probe.last_results.items()}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(results))


def validate(module, callbacks, folder: Path, **trainer_args) -> list[dict[str, float]]:
    """Validate with the probes; their results as written by each rank."""
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, DumpResults(folder)],
        **trainer_args,
    )
    trainer.validate(module, datamodule=datamodule(), verbose=False)
    return [json.loads(f.read_text()) for f in sorted(folder.glob("rank*.json"))]


@pytest.mark.parametrize("num_layers", [1, 3])
def test_probes_find_no_gap_when_the_model_is_the_gd_construction(num_layers, tmp_path):
    torch.manual_seed(0)
    module = ICLRegressionModule(LSA(D, num_layers=num_layers, recurrent=True)).double()
    callbacks = probes()
    eta = StepSizes(300, 0).tune(LinearRegression(D), N, num_layers, "cpu").eta
    module.model.load_state_dict({f"layers.0.{k}": v for k, v in gd_lsa_layer(D, N, eta).items()})
    (m,) = validate(module, callbacks, tmp_path)
    assert m["gd/eta"] == pytest.approx(eta, rel=1e-12)
    for name in ("gd/loss_gd", "gd/loss_interp"):
        assert m[name] == pytest.approx(m["gd/loss_model"], rel=1e-10)
    assert m["gd/model_cos"] == pytest.approx(1.0, abs=1e-10)
    assert m["gd/preds_diff"] < 1e-10 and m["gd/model_diff"] < 1e-10
    assert m["gd/loss_gd_pp"] <= m["gd/loss_gd"] + 1e-12  # GD++ includes gamma = 0
    for shift in ("inputs", "weights"):
        for a in ("0.50", "1.00", "2.00"):
            model, gd = m[f"ood/loss_model_{shift}_a{a}"], m[f"ood/loss_gd_{shift}_a{a}"]
            assert model == pytest.approx(gd, rel=1e-10)
    assert m["ood/loss_gd_inputs_a1.00"] == pytest.approx(m["ood/loss_gd_weights_a1.00"])


def test_untrained_model_is_far_from_gd(tmp_path):
    torch.manual_seed(0)
    (m,) = validate(ICLRegressionModule(LSA(D, num_layers=2)).double(), probes(), tmp_path)
    assert m["gd/loss_ratio"] > 1.5 and m["gd/model_cos"] < 0.5
    assert "gd/loss_interp" not in m  # two distinct layers: no interpolation
    assert m["gd/loss_gd_pp"] < m["gd/loss_gd"]  # GD++ beats GD at two steps


def test_alignment_metrics_match_finite_difference_sensitivities():
    """Paper A's metrics from scratch: GD and GD++ as loops, every sensitivity dT/dx_q and
    dG/dx_q by central differences, on a random model that is not linear in x_q (softmax)."""
    torch.manual_seed(3)
    model = LSA(D, num_layers=2, softmax=[True, False], init_scale=1.0).double()
    batch = LinearRegression(D).sample(24, N, seeded_generator("cpu", 5), torch.float64)
    inputs = (batch.context_x, batch.context_y, batch.query_x)
    probe = GDAlignment()
    probe.learner_steps = 2
    sizes = probe.step_sizes
    sizes.eta, sizes.eta_pp, sizes.gamma_pp = 1.3, 0.9, 0.05
    with torch.no_grad():
        m = probe.finalize(probe.compute(model, batch), len(batch))
    learners = {
        "": lambda cx, cy, qx: naive_gd_predict(cx, cy, qx, 1.3, 2),
        "_pp": lambda cx, cy, qx: naive_gd_plus_plus(cx, cy, qx, 0.9, 0.05, 2),
    }
    pred_T = model(*inputs).detach()
    sens_T = finite_difference_sensitivities(lambda *a: model(*a).detach(), *inputs)
    for suffix, learner in learners.items():
        pred_G, sens_G = learner(*inputs), finite_difference_sensitivities(learner, *inputs)
        cos = [float(a @ b / (a.norm() * b.norm())) for a, b in zip(sens_T, sens_G, strict=True)]
        assert m[f"preds_diff{suffix}"] == pytest.approx(float((pred_T - pred_G).abs().mean()))
        assert m[f"model_cos{suffix}"] == pytest.approx(sum(cos) / len(cos), rel=1e-7)
        diff = (sens_T - sens_G).norm(dim=-1).mean()
        assert m[f"model_diff{suffix}"] == pytest.approx(float(diff), rel=1e-7)
        gd_loss = 0.5 * ((batch.query_y - pred_G) ** 2).mean()
        assert m[f"loss_gd{suffix}"] == pytest.approx(float(gd_loss), rel=1e-12)
    assert abs(float(m["model_cos"])) < 0.9 and m["model_diff"] > 0.1  # T is far from GD


@pytest.mark.parametrize("probe", [GDAlignment, OODProbe])
def test_help_and_print_config_list_every_inherited_option(probe, capsys):
    """The probes take the base classes' options through ``**kwargs``; the CLI still lists
    every one of them, typed, in ``--help`` and in ``--print_config``."""
    options = {
        name
        for cls in (Probe, GDBaselineProbe, probe)
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind is not p.VAR_KEYWORD
    }
    assert {"every_n_steps", "num_tasks", "num_steps", "tuning_tasks"} <= options
    config = f"--config={CONFIGS / 'lsa_linear.yaml'}"
    with pytest.raises(SystemExit):
        run_cli(["fit", config, f"--trainer.callbacks.help={probe.__name__}"])
    out = capsys.readouterr().out
    assert all(f"--trainer.callbacks.{name} " in out for name in options)
    with pytest.raises(SystemExit):
        run_cli(["fit", config, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    (entry,) = [c for c in printed if c["class_path"].endswith(probe.__name__)]
    assert set(entry["init_args"]) == options


def test_lsa_linear_config_runs_with_both_probes(tmp_path):
    config = yaml.safe_load((CONFIGS / "lsa_linear.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:  # smaller evaluation sets, same probes
        callback["init_args"].update(num_tasks=256, tuning_tasks=256)
    (tmp_path / "lsa_linear.yaml").write_text(yaml.safe_dump(config))
    cli = ICLLightningCLI(
        args=[
            "fit",
            f"--config={tmp_path / 'lsa_linear.yaml'}",
            "--trainer.max_steps=3",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--data.init_args.batch_size=64",
            "--data.init_args.num_val_tasks=64",
        ]
    )
    callbacks = cli.trainer.callbacks
    gd, ood = (next(c for c in callbacks if isinstance(c, t)) for t in (GDAlignment, OODProbe))
    assert gd.last_step == ood.last_step == 3
    assert {"gd/loss_ratio", "gd/model_cos_pp", "gd/loss_interp"} <= set(gd.last_results)
    assert len(ood.last_results) == 4 * 7
    assert all(math.isfinite(v) for v in [*gd.last_results.values(), *ood.last_results.values()])
    assert sorted(gd.history) == sorted(ood.history) == [0, 3]
    assert list((tmp_path / "lsa_linear").glob("version_0/events.out.tfevents*"))


def test_probes_give_the_same_numbers_on_two_processes(tmp_path):
    torch.manual_seed(1)
    module = ICLRegressionModule(LSA(D, num_layers=2, recurrent=True)).double()
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()
    (one,) = validate(module, probes(), tmp_path / "1", devices=1)
    two = validate(module, probes(), tmp_path / "2", devices=2, strategy="ddp_spawn")
    # per-layer GD++ (L = 2): eta_pp_l1, eta_pp_l2, gamma_pp_l1, gamma_pp_l2 for eta_pp, gamma_pp,
    # GD++'s tuning and selection losses and its contraction factor on the support
    assert len(two) == 2 and len(one) == 14 + 2 * 2 * 3 + 2 + 3
    for rank in two:  # every rank holds the numbers of the one-process run
        assert rank.keys() == one.keys()
        for name in one:
            assert rank[name] == pytest.approx(one[name], rel=1e-12, abs=1e-14), name


@pytest.mark.parametrize("probe", [GDAlignment, OODProbe])
def test_probes_without_a_task_give_the_base_probes_clear_error(probe):
    trainer = SimpleNamespace(global_rank=0, world_size=1, datamodule=object())
    module = ICLRegressionModule(LSA(D))
    with pytest.raises(ValueError, match=f"{probe.__name__}.task/num_context"):
        probe(num_tasks=4).measure(trainer, module)


@pytest.mark.parametrize(
    "probe, option, value",
    [(OODProbe, "alphas", []), (OODProbe, "alphas", [1.0, -2.0]), (GDAlignment, "num_steps", 0)],
)
def test_bad_options_name_themselves(probe, option, value):
    with pytest.raises(ValueError, match=option):
        probe(**{option: value})


def test_tuned_step_sizes_travel_in_the_probe_state_and_are_not_tuned_again(monkeypatch):
    """The GD/GD++ sizes depend only on the tuning prompts: a probe restored from another's
    state_dict has them for the same options (no search: the tuners would raise) and tunes
    again when an option differs."""
    import icl_lightning.theory.step_sizes as step_sizes

    task = LinearRegression(D)
    tuned = GDAlignment(tuning_tasks=300)
    tuned.step_sizes.tune(task, N, 2, "cpu")
    buffer = io.BytesIO()
    torch.save(tuned.state_dict(), buffer)  # as in a checkpoint, read back weights-only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    def no_search(*args, **kwargs):
        raise AssertionError("tuned again")

    for name in ("optimal_eta", "per_layer_eta_gamma_fit", "shared_eta_gamma_fit"):
        monkeypatch.setattr(step_sizes, name, no_search)
    restored = GDAlignment(tuning_tasks=300)
    restored.load_state_dict(state)
    sizes = restored.step_sizes.tune(task, N, 2, "cpu")
    assert (sizes.eta, sizes.eta_pp, sizes.gamma_pp) == (
        tuned.step_sizes.eta,
        tuned.step_sizes.eta_pp,
        tuned.step_sizes.gamma_pp,
    )
    assert sizes.plus_plus_fit == tuned.step_sizes.plus_plus_fit
    assert len(sizes.eta_pp) == 2 and sizes.eta > 0
    other = GDAlignment(tuning_tasks=301)
    other.load_state_dict(state)
    with pytest.raises(AssertionError, match="tuned again"):
        other.step_sizes.tune(task, N, 2, "cpu")
