"""icl_lightning.benchmark (scripts/benchmark.py, icl-benchmark): usage errors, the probes' clock
and its extrapolation to the shipped cadence, and tiny end-to-end runs of every table."""

import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import CONFIGS, ROOT, run_script

from icl_lightning import benchmark
from icl_lightning.profiling import HookTimer

TINY = ["--data.init_args.batch_size=32", "--data.init_args.num_val_tasks=32"]


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--steps", "0"], "--steps 0"),
        (["--steps", "51", "--warmup", "50"], "--steps 51"),
        (["--repeats", "0"], "--repeats 0"),
        (["--probe-steps", "2"], "--probe-steps 2"),
        (["--threads", "0"], "--threads 0"),
        (["--config", "nowhere.yaml"], "--config nowhere.yaml"),
        (["--tables", "probes", "--configs", "nowhere.yaml"], "--configs nowhere.yaml"),
        (["--whole-run-limit", "-1"], "--whole-run-limit -1.0: expected seconds >= 0"),
        (["--model.model.num_layers", "4"], "unknown arguments ['4']"),
    ],
)
def test_an_impossible_option_is_a_usage_error_naming_it(capsys, argv, named):
    assert named in _usage_error(capsys, argv)


def test_the_jax_options_are_named_for_what_is_missing(capsys, tmp_path):
    (tmp_path / "bench_ref.py").write_text("")
    missing_python = _usage_error(capsys, ["--jax-ref", str(tmp_path)])
    assert "--jax-python is missing" in missing_python
    assert "--jax-ref is missing" in _usage_error(capsys, ["--jax-python", sys.executable])
    nowhere = str(tmp_path / "no-python")
    error = _usage_error(capsys, ["--jax-python", nowhere, "--jax-ref", str(tmp_path)])
    assert f"--jax-python {nowhere}: no such file" in error
    error = _usage_error(capsys, ["--jax-python", sys.executable, "--jax-ref", str(ROOT)])
    assert f"--jax-ref {ROOT}: expected a folder containing bench_ref.py" in error


@pytest.mark.parametrize("every, steps", [(3, 7), (3, 6), (0, 5)])
def test_the_extrapolation_counts_the_measurements_a_probe_makes(tmp_path, every, steps):
    """shipped_seconds with unit costs counts the measurements after the first exactly as the
    probe makes them (one at every multiple of every_n_steps, one at the last step unless it
    is a multiple); the HookTimer clocks every step and times only the probes' hooks."""
    extra = [*TINY, "--trainer.enable_progress_bar=false"]
    cli = benchmark.build(str(CONFIGS / "demo.yaml"), str(tmp_path), extra, steps)
    probes = benchmark.probes_of(cli)
    for probe in probes:
        probe.every_n_steps = every
    timer = benchmark.fit(cli, probes[:1])
    assert len(timer.step_starts) == steps
    assert {key for key, *_ in timer.spans} == {probes[0].state_key}
    unit = {"first": 0.0, "measurement": 1.0, "figures": 0.0, "once": 0.0, "per_step": 0.0}
    for probe in probes:
        assert len(probe.history) - 1 == benchmark.shipped_seconds(unit, every, steps)
    costs = benchmark.probe_costs(timer, probes[0], steps)
    hooks = {hook for _, hook, *_ in timer.spans}
    assert {"on_train_start", "on_train_batch_end", "on_train_end"} <= hooks
    assert costs["first"] == pytest.approx(timer.seconds(probes[0].state_key, "on_train_start"))
    assert all(value >= 0 for value in costs.values())
    key = probes[0].state_key
    step_hooks = sum(timer.seconds(key, hook) for hook in benchmark.STEP_HOOKS)
    assert costs["per_step"] * steps == pytest.approx(step_hooks)
    assert costs["once"] >= timer.seconds(key, "setup") + timer.seconds(key, "teardown") > 0
    max_steps = benchmark.shipped_max_steps(cli, str(CONFIGS / "demo.yaml"), extra)
    shipped = yaml.safe_load((CONFIGS / "demo.yaml").read_text())["trainer"]["max_steps"]
    assert max_steps == shipped != cli.trainer.max_steps == steps


def test_the_whole_run_times_its_probes_in_a_process_of_its_own():
    """The whole run as shipped (here 6 steps) in a fresh process: its wall time, and the
    seconds of each probe's hook calls in it (the probes only)."""
    row = benchmark.Row("demo", str(CONFIGS / "demo.yaml"), [*TINY, "--trainer.max_steps=6"])
    whole = benchmark.time_whole_run(row, None, threads=1)
    assert whole["steps"] == 6
    assert set(whole["probe_seconds"]) == {"GDAlignment", "ContextLengthProbe"}
    assert 0 < whole["probes_s"] == sum(whole["probe_seconds"].values()) < whole["wall_s"]
    assert whole["share"] == pytest.approx(whole["probes_s"] / whole["wall_s"])


def test_hook_timer_times_every_callback_without_a_list():
    timer = HookTimer()
    with timer.profile("[Callback]A{'tag': 'x.y'}.on_train_end"):
        pass
    timer.profile("run_training_batch")
    timer.profile("[LightningModule]M.training_step")
    assert [(key, hook) for key, hook, *_ in timer.spans] == [("A{'tag': 'x.y'}", "on_train_end")]
    assert len(timer.step_starts) == 1 and "on_train_end" in timer.summary()


def test_scaling_times_fit_and_each_probe_per_point(tmp_path, monkeypatch, capsys):
    option = "--data.init_args.num_context"
    axes = {"N": (option, [4, 8])}
    monkeypatch.setattr(benchmark, "SCALING", {"lsa": (str(CONFIGS / "demo.yaml"), [], axes)})
    out = tmp_path / "bench"
    benchmark.main(["--tables", "scaling", "--scaling-steps", "4", "--out", str(out), *TINY])
    rows = json.loads((out / "benchmark.json").read_text())["scaling"]
    assert [row["value"] for row in rows] == [4, 8]
    for row in rows:
        assert row["steps_per_s"] > 0
        assert set(row["probe_seconds"]) == {"GDAlignment", "ContextLengthProbe"}
    printed = capsys.readouterr().out
    assert "| N = 8 |" in printed and "Seed set to" not in printed


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    proc = run_script("benchmark.py", *args, cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_side_by_side_is_quiet_and_prints_its_table_last(tmp_path):
    (tmp_path / "demo.yaml").write_text((CONFIGS / "demo.yaml").read_text())
    args = ["--steps", "12", "--warmup", "2", "--probe-steps", "6", "--repeats", "2"]
    args += ["--threads", "1", "--config=demo.yaml", "--out", "bench", "--name", "tiny", *TINY]
    proc = _run(args, tmp_path)
    out = tmp_path / "bench"
    log = (out / "tiny.log").read_text()
    assert str(out / "tiny.log") in proc.stdout
    for chatter in ("Seed set to", "GPU available", "LightningCLI's args parameter"):
        assert chatter in log and chatter not in proc.stdout + proc.stderr
    rounds = [i for i, line in enumerate(proc.stdout.splitlines()) if line.startswith("round ")]
    table = proc.stdout.splitlines().index("## Side by side")
    assert len(rounds) == 2 and max(rounds) < table
    for line in ("| loop / bare |", "| fit / bare |", "| shipped / fit |", "| bare |"):
        assert line in proc.stdout
    report = json.loads((out / "tiny.json").read_text())
    runs = report["side-by-side"]["runs"]
    assert all(len(runs[name]) == 2 for name in ("bare", "loop", "fit", "shipped"))
    for fitted, shipped in zip(runs["fit"], runs["shipped"], strict=True):
        steps, seconds = shipped["max_steps"], shipped["shipped_s"]
        shipped_steps = yaml.safe_load((CONFIGS / "demo.yaml").read_text())["trainer"]["max_steps"]
        assert seconds > 0 and steps == shipped_steps
        expected = steps / (steps / fitted["steps_per_s"] + seconds)
        assert shipped["steps_per_s"] == pytest.approx(expected, rel=1e-12)
    assert report["meta"]["threads"] == 1
    assert (out / "tiny.md").read_text().startswith("# icl-benchmark")


def _fake_bench_ref(folder) -> None:
    """A stand-in for the official code's bench_ref.py: records its options, prints a RESULT."""
    folder.mkdir()
    (folder / "bench_ref.py").write_text(
        textwrap.dedent(
            """
            import json, pathlib, sys
            with open(pathlib.Path(__file__).with_name("calls.txt"), "a") as f:
                f.write(" ".join(sys.argv[1:]) + "\\n")
            print("compiling..."); print("RESULT " + json.dumps({"steps_per_s": 10.0}))
            """
        )
    )


@pytest.mark.slow
def test_deep_rows_and_the_probes_share_table(tmp_path):
    """The deep rows beside the (stand-in) official step of the same depth and recurrence, and
    a probes' share row per config, share = 1 - shipped / fit."""
    deep = (CONFIGS / "lsa_deep.yaml").read_text().replace("num_tasks: 10000", "num_tasks: 64")
    (tmp_path / "deep.yaml").write_text(deep.replace("num_tasks: 4096", "num_tasks: 64"))
    _fake_bench_ref(tmp_path / "ref")
    args = ["--tables", "deep", "probes", "--configs", "deep.yaml", "--deep-config=deep.yaml"]
    args += ["--steps", "8", "--warmup", "2", "--probe-steps", "6", "--repeats", "1"]
    args += ["--jax-python", sys.executable, "--jax-ref", "ref", "--jax-steps", "5", *TINY]
    proc = _run([*args, "--out", "bench", "--threads", "1"], tmp_path)
    calls = (tmp_path / "ref" / "calls.txt").read_text().splitlines()
    assert calls == [
        "5 train-only layers=2 deq=0",
        "5 train-only layers=4 deq=0",
        "5 train-only layers=4 deq=1",
    ]
    report = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert list(report["deep"]) == ["L = 2", "L = 4", "L = 4 recurrent"]
    assert all(row["jax"][0]["steps_per_s"] == 10.0 for row in report["deep"].values())
    (row,) = report["probes"].values()
    fitted, shipped = row["fit"][0]["steps_per_s"], row["shipped"][0]
    assert shipped["share"] == pytest.approx(1 - shipped["steps_per_s"] / fitted, rel=1e-9)
    assert set(row["probes"][0]["probes"]) == {"GDAlignment", "OODProbe"}
    assert "| L = 4 recurrent |" in proc.stdout and "| deep |" in proc.stdout


def test_flops_table_counts_the_per_layer_work_against_the_peak(tmp_path, monkeypatch):
    """The flops table: counted FLOPs per step of the per-layer formulation (the kernels hide
    theirs from the counter), a positive one-thread peak and share, and the official step only
    where it has the model (lsa_deep at L = 2 and the deep variants' own options)."""
    deep = (CONFIGS / "lsa_deep.yaml").read_text().replace("num_tasks: 10000", "num_tasks: 64")
    (tmp_path / "lsa_deep.yaml").write_text(deep.replace("num_tasks: 4096", "num_tasks: 64"))
    (tmp_path / "demo.yaml").write_text((CONFIGS / "demo.yaml").read_text())
    _fake_bench_ref(tmp_path / "ref")
    monkeypatch.setattr(benchmark, "matmul_peak", lambda: 50.0)
    real_variants = benchmark.deep_variants
    monkeypatch.setattr(benchmark, "deep_variants", lambda *a: real_variants(*a)[1:2])
    args = ["--tables", "flops", "--configs", "demo.yaml", "lsa_deep.yaml"]
    args += ["--deep-config=lsa_deep.yaml", "--steps", "4", "--warmup", "1", "--repeats", "1"]
    args += ["--jax-python", sys.executable, "--jax-ref", "ref", "--jax-steps", "5", *TINY]
    benchmark.main([*args, "--out", "bench"])
    calls = (tmp_path / "ref" / "calls.txt").read_text().splitlines()
    assert calls == ["5 train-only layers=2 deq=0", "5 train-only layers=4 deq=0"]
    report = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["flops"]
    assert list(report) == ["demo", "lsa_deep", "lsa_deep L = 4"]
    assert "jax" not in report["demo"] and report["lsa_deep"]["jax"][0]["steps_per_s"] == 10.0
    row = benchmark.Row("lsa_deep", "lsa_deep.yaml", TINY)
    flops = benchmark.step_flops(row)
    assert report["lsa_deep"]["flops"] == flops
    model, data, optimizer, clip, _ = benchmark._bare_parts(row)
    batch = data.train_batch(0)
    with benchmark.FlopCounterMode(display=False) as counter:  # the kernels: only the small ops
        benchmark._train_step(model, optimizer, clip, batch)
    assert counter.get_total_flops() < flops / 5
    assert report["lsa_deep L = 4"]["flops"] > 3 * flops
    table = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "| lsa_deep L = 4 |" in table and "| demo |" in table


def test_matmul_peak_is_timed_on_one_thread_and_leaves_the_threads_alone():
    threads = benchmark.torch.get_num_threads()
    assert benchmark.matmul_peak(n=256, repeats=2) > 0
    assert benchmark.torch.get_num_threads() == threads
