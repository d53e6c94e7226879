"""The curriculum (Garg et al. 2022): its schedule, the prompts it draws, errors, resume."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, read_scalars, run_cli, tiny_args

from icl_lightning.callbacks import ContextLengthProbe
from icl_lightning.data import ICLDataModule, LinearRegression, ReLUNetwork, seeded_generator
from icl_lightning.data.curriculum import Curriculum, Schedule
from icl_lightning.theory.step_sizes import StepSizes

DEMO = CONFIGS / "demo.yaml"


def garg_sizes(start, end, increment, interval, num_steps):
    """Garg et al.'s stateful update, step by step: after each step the count goes up by one, and
    every ``interval`` counts the size grows by ``increment``, capped at ``end``."""
    size, sizes = start, []
    for count in range(1, num_steps + 1):
        sizes.append(size)
        if count % interval == 0:
            size = min(size + increment, end)
    return sizes


@pytest.mark.parametrize(
    "start,end,increment,interval", [(5, 20, 1, 7), (11, 41, 2, 3), (4, 4, 1, 5)]
)
def test_schedule_matches_the_stateful_update(start, end, increment, interval):
    schedule = Schedule(start, end, increment, interval)
    expected = garg_sizes(start, end, increment, interval, 200)
    assert [schedule.at(t) for t in range(200)] == expected


@pytest.mark.parametrize("task", [LinearRegression(input_dim=6), ReLUNetwork(input_dim=6)])
def test_subspace_prompts_use_only_the_active_coordinates(task):
    """Inputs beyond the active dimension are 0, and the targets are a function of the active
    coordinates alone: for linear tasks, least squares on the context predicts the query."""
    generator = seeded_generator("cpu", 0)
    batch = task.sample_in_subspace(32, 12, 3, generator, dtype=torch.float64)
    assert batch.context_x.shape == (32, 12, 6) and batch.query_x.shape == (32, 6)
    assert batch.context_x[..., 3:].abs().max() == 0 and batch.query_x[:, 3:].abs().max() == 0
    assert batch.context_x[..., :3].abs().min() > 0
    if isinstance(task, LinearRegression):
        w = torch.linalg.lstsq(batch.context_x[..., :3], batch.context_y[..., None]).solution
        pred = (batch.query_x[:, None, :3] @ w).reshape(-1)
        torch.testing.assert_close(pred, batch.query_y, rtol=0, atol=1e-10)


def test_training_prompts_grow_and_evaluation_stays_full_size():
    curriculum = Curriculum(dims=Schedule(2, 6, 2, 10), points=Schedule(3, 9, 3, 10))
    task = LinearRegression(input_dim=6)
    dm = ICLDataModule(task, batch_size=8, num_context=9, num_val_tasks=8, curriculum=curriculum)
    for step, (d, n) in [(0, (2, 3)), (9, (2, 3)), (10, (4, 6)), (25, (6, 9)), (1000, (6, 9))]:
        batch = dm.train_batch(step)
        assert batch.num_context == n and batch.input_dim == 6
        assert torch.count_nonzero(batch.context_x[..., d:]) == 0
        assert batch.context_x[..., d - 1].abs().min() > 0
    assert dm.eval_set(1, "cpu").num_context == 9
    assert dm.eval_set(1, "cpu").context_x[..., -1].abs().min() > 0


@pytest.mark.parametrize(
    "curriculum,named",
    [
        (Curriculum(dims=Schedule(2, 7)), "curriculum.dims.end=7"),
        (
            Curriculum(points=Schedule(8, 6)),
            r"curriculum.points.end=6 .* \[curriculum.points.start=8, 10\]",
        ),
        (Curriculum(points=Schedule(0, 10)), "curriculum.points.start=0"),
        (Curriculum(points=Schedule(12, 20)), r"curriculum.points.start=12 .* \[1, 10\]"),
        (Curriculum(points=Schedule(end=8)), r"curriculum.points.start=None .* \[1, 10\]"),
        (Curriculum(dims=Schedule(2, 6, 0)), "curriculum.dims.increment=0"),
        (Curriculum(dims=Schedule(2, 6, 1, 0)), "curriculum.dims.interval=0"),
    ],
)
def test_impossible_curriculum_is_a_clear_error(curriculum, named):
    with pytest.raises(ValueError, match=named):
        ICLDataModule(LinearRegression(input_dim=6), num_context=10, curriculum=curriculum)


def test_cli_rejects_a_curriculum_past_input_dim(tmp_path, capsys):
    curriculum = "{dims: {start: 2, end: 9, increment: 1, interval: 5}}"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            [
                "fit",
                f"--config={DEMO}",
                *tiny_args(tmp_path),
                f"--data.init_args.curriculum={curriculum}",
            ]
        )
    assert exit_info.value.code == 2
    assert "curriculum.dims.end=9" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def error_line(err: str) -> str:
    """The CLI's ``error: ...`` line (the first after the usage text)."""
    return next(line for line in err.splitlines() if line.startswith("error:"))


@pytest.mark.parametrize(
    "base,points,named",
    [
        (  # N = 40, and the base's curriculum
            "lsa_curriculum.yaml",
            "{start: 50, end: 40}",
            "curriculum.points.start=50 is invalid: expected an integer in [1, 40]",
        ),
        (  # N = 20, no curriculum in the base
            "demo.yaml",
            "{end: 10}",
            "curriculum.points.start=None is invalid: expected an integer in [1, 20]",
        ),
    ],
    ids=["start_beyond_num_context", "start_missing"],
)
def test_cli_names_the_curriculum_field_given_wrong_first(
    base, points, named, tmp_path, monkeypatch, capsys
):
    """A start beyond N is the start's fault (not the end's); a missing start is named on the
    error's first line, not inside jsonargparse's nested text."""
    shutil.copy(CONFIGS / base, tmp_path)
    (tmp_path / "wrong.yaml").write_text(f"data:\n  curriculum:\n    points: {points}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={base}", "--config=wrong.yaml", "--trainer.max_steps=1"])
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {named} (the data's full size, num_context)"), line
    assert not Path("logs").exists()


def test_cli_schedule_without_end_grows_to_the_full_size(tmp_path, monkeypatch):
    """``end`` left out: the schedule ends at the data's full size (N = 20 here)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grow.yaml").write_text(
        "data:\n  curriculum:\n    points: {start: 5, increment: 5, interval: 2}\n"
    )
    run_cli(["fit", f"--config={DEMO}", "--config=grow.yaml", *tiny_args(Path("logs"), steps=12)])
    sizes = read_scalars(Path("logs"))["curriculum/points"]
    assert sizes == {0: 5, 2: 10, 4: 15, 6: 20}


def test_resumed_curriculum_run_matches_an_uninterrupted_one(tmp_path):
    """The sizes are a function of the step: 12 steps straight == 6 steps + resume to 12, and
    the curriculum's stages are logged once each."""
    curriculum = (
        "{dims: {start: 2, end: 5, increment: 1, interval: 4},"
        " points: {start: 5, end: 20, increment: 5, interval: 3}}"
    )
    extra = [f"--data.init_args.curriculum={curriculum}", "--trainer.callbacks=[]"]
    straight = run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path / "a", steps=12), *extra])
    run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path / "b", steps=6), *extra])
    ckpt = next((tmp_path / "b").rglob("last.ckpt"))
    resumed = run_cli(
        [
            "fit",
            f"--config={DEMO}",
            *tiny_args(tmp_path / "b", steps=12),
            *extra,
            f"--ckpt_path={ckpt}",
        ]
    )
    resumed_state = resumed.model.state_dict()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed_state[name]), name
    scalars = read_scalars(tmp_path / "a")
    stages = [0, 3, 4, 6, 8, 9]  # where either size changes: dims every 4, points every 3 steps
    assert scalars["curriculum/dims"] == {t: min(2 + t // 4, 5) for t in stages}
    assert scalars["curriculum/points"] == {t: min(5 + 5 * (t // 3), 20) for t in stages}


def probes_at_both_sizes(tmp_path, size_current: str = "current") -> str:
    """GDAlignment at the full size (tags ``gd/``) and at the curriculum's (``gd/current/``)."""
    path = tmp_path / "probes.yaml"
    probe = "every_n_steps: 2, num_tasks: 128, tuning_tasks: 512"
    path.write_text(
        "trainer:\n  callbacks:\n"
        f"    - class_path: icl_lightning.callbacks.GDAlignment\n      init_args: {{{probe}}}\n"
        "    - class_path: icl_lightning.callbacks.GDAlignment\n"
        f"      init_args: {{{probe}, size: {size_current}, tag: current}}\n"
    )
    return f"--config={path}"


CURRICULUM = (
    "--data.init_args.curriculum={dims: {start: 2, end: 5, increment: 1, interval: 4},"
    " points: {start: 5, end: 20, increment: 5, interval: 3}}"
)


def test_size_current_probes_measure_at_the_curriculums_size(tmp_path):
    """A probe with size=current evaluates prompts of the curriculum's (dims, points) at each
    measurement's step, with GD tuned for that size; it logs the size measured, differs from
    the full-size probe while the curriculum is below the full size and equals it after."""
    cli = run_cli(
        [
            "fit",
            f"--config={DEMO}",
            *tiny_args(tmp_path, steps=12),
            probes_at_both_sizes(tmp_path),
            CURRICULUM,
        ]
    )
    full, current = [p for p in cli.trainer.callbacks if type(p).__name__ == "GDAlignment"]
    scalars = read_scalars(tmp_path)
    steps = [0, 2, 4, 6, 8, 10, 12]
    sizes = {t: (min(2 + t // 4, 5), min(5 + 5 * (t // 3), 20)) for t in steps}
    assert scalars["gd/current/dims"] == {t: d for t, (d, n) in sizes.items()}
    assert scalars["gd/current/points"] == {t: n for t, (d, n) in sizes.items()}
    assert "gd/dims" not in scalars  # the full-size probe logs no size
    for step, (d, n) in sizes.items():
        ours, theirs = current.history[step], full.history[step]
        if (d, n) == (5, 20):  # the full size: the same prompts, the same GD
            assert ours["loss_model"] == theirs["loss_model"] and ours["eta"] == theirs["eta"]
        else:
            assert ours["loss_model"] != theirs["loss_model"], step
            assert ours["loss_gd"] != theirs["loss_gd"] and ours["eta"] != theirs["eta"], step
        assert scalars["gd/current/loss_model"][step] == pytest.approx(ours["loss_model"])
    # one evaluation set per size measured, on the one device
    assert {key[1:] for key in current._evaluation_sets} == set(sizes.values())
    # GD tuned at the size measured: the optimal one-step eta on the step-0 prompts' size
    step_sizes = StepSizes(512, 0)
    assert current.history[0]["eta"] == step_sizes.tune(LinearRegression(5), 5, 1, "cpu", 2).eta


def test_size_current_without_a_curriculum_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={DEMO}", *tiny_args(tmp_path), probes_at_both_sizes(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "GDAlignment.size='current' is invalid" in err and "curriculum" in err
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_size_option_is_in_help_and_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            ["fit", f"--config={DEMO}", "--trainer.callbacks.help=icl_lightning.callbacks.OODProbe"]
        )
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.callbacks.size" in out and "'current'" in out
    with pytest.raises(ValueError, match="num_context=10 is invalid"):
        ContextLengthProbe(size="current", num_context=10)
    with pytest.raises(ValueError, match="tag='a/b' is invalid"):
        ContextLengthProbe(tag="a/b")


def test_size_current_probes_resume_exactly(tmp_path):
    """The size measured, its evaluation set and GD's step sizes are functions of the step: a
    run stopped at step 6 and resumed logs what an uninterrupted run logs at steps 6..12."""

    def fit(directory, steps, *extra):
        directory.mkdir(exist_ok=True)
        args = [f"--config={DEMO}", *tiny_args(directory, steps), probes_at_both_sizes(directory)]
        run_cli(["fit", *args, CURRICULUM, *extra])
        return read_scalars(directory)

    straight = fit(tmp_path / "a", 12)
    fit(tmp_path / "b", 6)
    resumed = fit(tmp_path / "b", 12, f"--ckpt_path={next((tmp_path / 'b').rglob('last.ckpt'))}")
    tags = [t for t in straight if t.startswith("gd/current/")]
    assert {"gd/current/dims", "gd/current/points", "gd/current/eta"} <= set(tags)
    for tag in tags:
        assert {t: v for t, v in resumed[tag].items() if t >= 6} == {
            t: v for t, v in straight[tag].items() if t >= 6
        }, tag
