"""Garg et al.'s bench side by side with their own code (``icl-benchmark --tables garg``, or
``python -m icl_lightning.bench_garg``), on one thread, rounds interleaved:

- ``baselines``: the loss-against-k curve of least squares, 3-NN and averaging for the same
  1,024 prompts (d = 20, N = 40: 41 points) by :mod:`icl_lightning.theory.baselines` and by
  Garg et al.'s ``LeastSquaresModel``, ``NNModel(3)`` and ``AveragingModel`` (their
  ``models.py``, run by ``--garg-python`` on ``--garg-ref``, their ``src/``): seconds and the
  largest difference of the curves (squared error / d at each k). Ours also with L = 2 GD and
  GD++ (their step sizes tuned per k once beforehand, timed apart);
- ``step``: training steps per second of our :class:`~icl_lightning.models.GPT2` (every-prefix
  loss, Adam, prompts drawn by our task) and of Garg et al.'s ``train_step`` on their
  ``TransformerModel`` (Hugging Face's GPT-2 inside) with their samplers, at the same set-up
  (``--sizes``; d = 20, 41 points, batch 64, Adam lr 1e-4).

Garg et al.'s code needs its own environment (torch, transformers, scikit-learn, xgboost, tqdm;
docs/bench.md).
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

from icl_lightning.cli import run_process
from icl_lightning.cli_defaults import fuse_on_cpu
from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.data.garg_shifts import CurvePrompts
from icl_lightning.models import GPT2
from icl_lightning.modules.prefix import prefix_loss
from icl_lightning.theory import baselines as bl

SIZES = {"tiny": (3, 64, 2), "small": (6, 128, 4), "standard": (12, 256, 8)}

#: run by --garg-python: argv = src, mode, input .pt, output .json
GARG_SIDE = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
mode, data, out = sys.argv[2], torch.load(sys.argv[3]), {}
if mode == "baselines":
    import models
    xs, ys = data["xs"], data["ys"]
    for name, m in [("least_squares", models.LeastSquaresModel()),
                    ("nn_3", models.NNModel(3)), ("averaging", models.AveragingModel())]:
        t = time.perf_counter(); pred = m(xs, ys); s = time.perf_counter() - t
        out[name] = {"seconds": s, "curve": ((pred - ys) ** 2).mean(0).div(xs.shape[2]).tolist()}
else:
    from models import TransformerModel
    from samplers import get_data_sampler
    from tasks import get_task_sampler

    def train_step(model, xs, ys, optimizer, loss_func):  # src/train.py's, verbatim (train.py
        optimizer.zero_grad()  # itself imports wandb and quinine at the top)
        output = model(xs, ys)
        loss = loss_func(output, ys)
        loss.backward()
        optimizer.step()
        return loss.detach().item(), output.detach()

    d, points, batch, steps, warmup = (data[k] for k in ("d", "points", "batch", "steps", "warmup"))
    L, D, H = data["size"]
    torch.manual_seed(0)
    model = TransformerModel(d, points, D, L, H)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data_sampler = get_data_sampler("gaussian", n_dims=d)
    task_sampler = get_task_sampler("linear_regression", d, batch)
    for i in range(steps):
        if i == warmup:
            t = time.perf_counter()
        xs = data_sampler.sample_xs(points, batch, d)
        task = task_sampler()
        ys = task.evaluate(xs)
        train_step(model, xs, ys, optimizer, task.get_training_metric())
    out["steps_per_s"] = (steps - warmup) / (time.perf_counter() - t)
json.dump(out, open(sys.argv[4], "w"))
"""


def garg(python: str, ref: str, mode: str, data: dict) -> dict:
    """Run :data:`GARG_SIDE` in Garg et al.'s environment; its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in.pt", Path(tmp) / "out.json"
        torch.save(data, inputs)
        env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        cmd = [python, "-c", GARG_SIDE, ref, mode, str(inputs), str(outputs)]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return json.loads(outputs.read_text())


def our_baselines(prompts: CurvePrompts, step_sizes: dict) -> dict:
    """Seconds and curves (squared error / d at each k) of our learners on ``prompts``."""
    xs, ys, qs = prompts.xs, prompts.ys, prompts.qs
    (etas, _), (etas_pp, gammas_pp) = step_sizes["gd"], step_sizes["gd++"]
    learners = {
        "least_squares": lambda: bl.least_squares(xs, ys, qs),
        "nn_3": lambda: bl.nearest_neighbours(xs, ys, qs, 3),
        "averaging": lambda: bl.averaging(xs, ys, qs),
        "gd_L2": lambda: bl.gd_curve(xs, ys, qs, etas, 2),
        "gd++_L2": lambda: bl.gd_curve(xs, ys, qs, etas_pp, 2, gammas_pp),
    }
    out = {}
    for name, learner in learners.items():
        start = time.perf_counter()
        pred = learner()
        seconds = time.perf_counter() - start
        out[name] = {
            "seconds": seconds,
            "curve": ((pred - ys) ** 2).mean(0).div(xs.shape[2]).tolist(),
        }
    return out


def baselines_table(python: str, ref: str, repeats: int) -> tuple[list[str], dict]:
    """The ``baselines`` rows (module docstring)."""
    torch.set_num_threads(1)
    task = LinearRegression(20, "normal")
    prompts = CurvePrompts.from_batch(task.sample(1024, 40, seeded_generator("cpu", 7)))
    tuning = CurvePrompts.from_batch(
        task.sample(2048, 40, seeded_generator("cpu", 8), torch.float64)
    )
    start = time.perf_counter()
    step_sizes = {
        "gd": bl.tuned_step_sizes(tuning.xs, tuning.ys, 2, plus_plus=False),
        "gd++": bl.tuned_step_sizes(tuning.xs, tuning.ys, 2, plus_plus=True),
    }
    tuning_seconds = time.perf_counter() - start
    rounds = []
    for _ in range(repeats):
        theirs = garg(python, ref, "baselines", {"xs": prompts.xs, "ys": prompts.ys})
        rounds.append({"ours": our_baselines(prompts, step_sizes), "garg": theirs})
    shared = ["least_squares", "nn_3", "averaging"]
    lines = ["| learner | ours s | Garg et al. s | max curve difference |", "|---|---|---|---|"]
    for name in rounds[0]["ours"]:
        ours = median(r["ours"][name]["seconds"] for r in rounds)
        if name in shared:
            theirs = median(r["garg"][name]["seconds"] for r in rounds)
            a, b = rounds[0]["ours"][name]["curve"], rounds[0]["garg"][name]["curve"]
            diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
            lines.append(f"| {name} | {ours:.3f} | {theirs:.3f} | {diff:.1e} |")
        else:
            lines.append(f"| {name} | {ours:.3f} | - | - |")
    per_round = [
        (
            sum(r["garg"][n]["seconds"] for n in shared),
            sum(r["ours"][n]["seconds"] for n in shared),
            sum(v["seconds"] for v in r["ours"].values()),
        )
        for r in rounds
    ]
    ratio = [g / o for g, o, _ in per_round]
    lines += [
        "",
        "whole curve, ours (LS, 3-NN, averaging, GD, GD++): "
        f"{median(t for *_, t in per_round):.3f} s; "
        f"the three shared learners {median(o for _, o, _ in per_round):.3f} s vs Garg et al.'s "
        f"{median(g for g, *_ in per_round):.3f} s: {median(ratio):.1f}x "
        f"({min(ratio):.1f}-{max(ratio):.1f}x over {repeats} rounds); GD/GD++ step sizes tuned "
        f"once for all k in {tuning_seconds:.2f} s",
    ]
    return lines, {"rounds": rounds, "tuning_seconds": tuning_seconds}


def our_steps_per_s(size: tuple, d: int, points: int, batch: int, steps: int, warmup: int) -> float:
    """Bare training steps/s of our GPT2 at Garg et al.'s set-up (module docstring), with the
    Adam that ``icl-lightning fit`` runs on the CPU (``cli_defaults.fuse_on_cpu``)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    L, D, H = size
    model = GPT2(d, points, D, L, H)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    fuse_on_cpu(optimizer)
    task = LinearRegression(d, "normal")
    for i in range(steps):
        if i == warmup:
            start = time.perf_counter()
        batch_ = task.sample(batch, points - 1, seeded_generator("cpu", 0, i))
        optimizer.zero_grad(set_to_none=True)
        loss = prefix_loss(
            model.prefix_predictions(batch_.context_x, batch_.context_y, batch_.query_x), batch_
        )
        loss.backward()
        optimizer.step()
    return (steps - warmup) / (time.perf_counter() - start)


def step_table(
    python: str, ref: str, sizes: list[str], steps: int, repeats: int
) -> tuple[list[str], dict]:
    """The ``step`` rows (module docstring)."""
    d, points, batch, warmup = 20, 41, 64, max(steps // 10, 2)
    lines = [
        "| size | ours steps/s | Garg et al. steps/s | ours / Garg (min-max) |",
        "|---|---|---|---|",
    ]
    results = {}
    for size in sizes:
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(our_steps_per_s(SIZES[size], d, points, batch, steps, warmup))
            data = {
                "d": d,
                "points": points,
                "batch": batch,
                "steps": steps,
                "warmup": warmup,
                "size": SIZES[size],
            }
            theirs.append(garg(python, ref, "step", data)["steps_per_s"])
        ratio = [a / b for a, b in zip(ours, theirs, strict=True)]
        results[size] = {"ours": ours, "garg": theirs}
        lines.append(
            f"| {size} | {median(ours):.1f} | {median(theirs):.1f} | {median(ratio):.2f} "
            f"({min(ratio):.2f}-{max(ratio):.2f}) |"
        )
    return lines, results


def garg_tables(python: str, ref: str, repeats: int = 3, sizes=("tiny", "small"), steps: int = 60):
    """Both tables as markdown lines, and their raw numbers."""
    if not (Path(ref) / "models.py").is_file():
        raise SystemExit(f"--garg-ref {ref}: no models.py there (give Garg et al.'s src/ folder)")
    base_lines, base = baselines_table(python, ref, repeats)
    step_lines, step = step_table(python, ref, list(sizes), steps, repeats)
    lines = ["## Garg et al.'s baselines (1,024 prompts, d = 20, N = 40, one thread)", ""]
    lines += base_lines + [
        "",
        "## GPT-2 training step (d = 20, 41 points, batch 64, one thread)",
        "",
    ]
    return lines + step_lines, {"baselines": base, "step": step}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--garg-python", required=True, help="python of Garg et al.'s environment")
    p.add_argument("--garg-ref", required=True, help="Garg et al.'s src/ folder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    p.add_argument("--steps", type=int, default=60, help="training steps per step measurement")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args(argv)
    with run_process():  # as icl-lightning runs
        lines, results = garg_tables(
            args.garg_python, args.garg_ref, args.repeats, args.sizes, args.steps
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
