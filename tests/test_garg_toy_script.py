"""scripts/garg_toy.py on fake finished runs: the seeds' mean curves and the verdicts' numbers
from each learner's TensorBoard run, unfinished runs left out, usage errors that write nothing."""

import json

from conftest import run_script
from torch.utils.tensorboard import SummaryWriter

D, N = 5, 10  # the linear set-up


def fake_run(runs, seed: int, curves: dict[str, list[float]], finished: bool = True) -> None:
    """``runs/linear/seed<seed>`` with BaselineCurves' layout: one TensorBoard run per learner
    under ``seed<seed>_curves/baselines/step_<step>/<learner>`` (tag ``baselines/loss_vs_k``)."""
    run = runs / "linear" / f"seed{seed}"
    run.mkdir(parents=True)
    for step in (0, 5001):
        for learner, curve in curves.items():
            folder = runs / "linear" / f"seed{seed}_curves" / "baselines" / f"step_{step:07d}"
            with SummaryWriter(str(folder / learner)) as writer:
                for k, value in enumerate(curve):
                    writer.add_scalar("baselines/loss_vs_k", value * (step > 0 or 9), k)
    if finished:
        (run / "done.json").write_text(json.dumps({"seconds": 1.0, "steps": 5001}))


def garg_toy(*args, cwd):
    return run_script("garg_toy.py", *args, cwd=cwd, timeout=300)


def test_summary_of_finished_runs(tmp_path):
    ks = range(N + 1)
    least_squares = [max(0.0, 1 - k / D) for k in ks]
    nn_3 = [1.0 for _ in ks]
    models = [[0.5 + 0.01 * k for k in ks], [0.3 + 0.01 * k for k in ks], [9.0 for _ in ks]]
    for seed, model in enumerate(models):
        learners = {"model": model, "least_squares": least_squares, "nn_3": nn_3}
        fake_run(tmp_path / "runs", seed, learners, finished=seed < 2)

    proc = garg_toy("--runs", "runs", "--docs", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "data" / "garg_toy.json").read_text())["linear"]
    assert report["seeds"] == 2 and report["steps"] == [5001, 5001]  # seed 2 is unfinished
    mean_model = [0.4 + 0.01 * k for k in ks]  # the last measurement, not step 0's
    assert max(abs(a - b) for a, b in zip(report["mean"]["model"], mean_model, strict=True)) < 1e-6
    verdict = report["verdict"]
    assert abs(verdict["model_minus_least_squares_max_for_k_ge_d"] - (0.5 + 0.01 * N)) < 1e-6
    assert all(
        abs(r - m) < 1e-6
        for r, m in zip(verdict["model_over_3nn_at_k_ge_d"], mean_model[D:], strict=True)
    )
    assert (tmp_path / "out" / "figures" / "garg_toy_linear.png").is_file()
    assert "sparse" not in json.loads((tmp_path / "out" / "data" / "garg_toy.json").read_text())


def test_usage_errors_name_the_runs_folder(tmp_path):
    missing = garg_toy("--runs", "nowhere", cwd=tmp_path)
    assert missing.returncode != 0 and "--runs nowhere: no such folder" in missing.stderr
    (tmp_path / "empty" / "linear" / "seed0").mkdir(parents=True)  # started, never finished
    empty = garg_toy("--runs", "empty", "--docs", "out", cwd=tmp_path)
    assert empty.returncode != 0 and "no finished <setup>/seed<k> run" in empty.stderr
    assert not (tmp_path / "out").exists()  # nothing written, the earlier summary kept
