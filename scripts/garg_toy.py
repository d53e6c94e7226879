"""Garg et al.'s toy runs at CPU scale: the GPT-2-style model beside the baselines.

Two set-ups, each over ``--seeds`` seeds, one run at a time (``icl-lightning fit`` with
``configs/garg_tiny.yaml``, Garg et al.'s "tiny" model, trained on every prefix with their
loss, Adam lr 1e-4... raised to ``--lr``):

- ``linear``: Garg et al.'s toy set-up (``conf/toy.yaml``): linear regression, d = 5, prompts of
  11 points (N = 10 + query), batch 64, no curriculum;
- ``sparse``: sparse linear regression, d = 8 with 2 non-zero weights, 16 points.

The BaselineCurves probe measures at the end (1,024 prompts): the loss / d after k examples for
the model, least squares, 3-NN, averaging, GD / GD++ (L = 2) and, for sparse, the lasso. Then
``--summarize`` (also run after the runs) averages the seeds' curves, draws
``docs/figures/garg_toy_<setup>.png`` and writes ``docs/data/garg_toy.json`` with the
verdicts: the model tracks least squares from k >= d (linear), and is lasso-like below d
(sparse: below least squares there).

    OMP_NUM_THREADS=1 nohup python scripts/garg_toy.py --steps 1000 > garg_toy.log &
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from icl_lightning.plotting import line_figure
from icl_lightning.reproduce.scalars import read_scalars

SETUPS = {
    "linear": (5, 10, ["--data.init_args.task.class_path=icl_lightning.data.LinearRegression"]),
    "sparse": (
        8,
        15,
        [
            "--data.init_args.task.class_path=icl_lightning.data.SparseLinear",
            "--data.init_args.task.init_args.num_nonzero=2",
        ],
    ),
}


def run(setup: str, seed: int, steps: int, lr: float, root: Path) -> None:
    d, n, task = SETUPS[setup]
    args = [
        sys.executable,
        "-m",
        "icl_lightning",
        "fit",
        "--config=configs/garg_tiny.yaml",
        *task,
        f"--data.init_args.task.init_args.input_dim={d}",
        "--data.init_args.task.init_args.input_distribution=normal",
        f"--data.init_args.num_context={n}",
        "--data.init_args.curriculum=null",
        f"--model.init_args.model.init_args.num_positions={n + 1}",
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--trainer.max_steps={steps}",
        "--trainer.val_check_interval=500",
        "--data.init_args.batches_per_epoch=500",
        "--data.init_args.num_val_tasks=1024",
        f"--optimizer.init_args.lr={lr}",
        "--trainer.callbacks.every_n_steps=0",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.name=garg_toy_{setup}",
        f"--trainer.logger.init_args.version=seed{seed}",
        "--progress_bar.refresh_rate=0",
    ]
    subprocess.run(args, check=True)


def curves(run_dir: Path) -> dict[str, list[float]]:
    """The last measurement's curve of every learner (its own TensorBoard run)."""
    last = max((run_dir.parent / f"{run_dir.name}_curves" / "baselines").iterdir())
    out = {}
    for folder in sorted(last.iterdir()):
        points = read_scalars(folder)["baselines/loss_vs_k"]
        out[folder.name] = [points[k] for k in sorted(points)]
    return out


def summarize(root: Path, seeds: list[int]) -> dict:
    report = {}
    for setup, (d, n, _) in SETUPS.items():
        runs = [root / f"garg_toy_{setup}" / f"seed{s}" for s in seeds]
        runs = [r for r in runs if (r.parent / f"{r.name}_curves" / "baselines").is_dir()]
        if not runs:
            continue
        per_seed = [curves(r) for r in runs]
        names = per_seed[0].keys()
        mean = {m: torch.tensor([c[m] for c in per_seed]).mean(0).tolist() for m in names}
        model = torch.tensor([c["model"] for c in per_seed])
        ls = torch.tensor(mean["least_squares"])
        k = list(range(n + 1))
        beyond = [i for i in k if i >= d]
        below = [i for i in k if 0 < i < d]
        verdict = {}
        if setup == "linear":
            gap = (model[:, beyond] - ls[beyond]).abs().max().item()
            verdict["model_minus_least_squares_max_for_k_ge_d"] = gap
            verdict["model_over_3nn_at_k_ge_d"] = (
                model.mean(0)[beyond] / torch.tensor(mean["nn_3"])[beyond]
            ).tolist()
        else:
            lasso = min((m for m in names if m.startswith("lasso")), key=lambda m: sum(mean[m]))
            verdict["best_lasso"] = lasso
            verdict["model_below_least_squares_for_k_lt_d"] = [
                bool(x) for x in (model.mean(0)[below] < ls[below]).tolist()
            ]
            verdict["model_over_lasso_k_lt_d"] = (
                model.mean(0)[below] / torch.tensor(mean[lasso])[below]
            ).tolist()
        report[setup] = {
            "d": d,
            "N": n,
            "seeds": len(runs),
            "mean": mean,
            "model_per_seed": model.tolist(),
            "verdict": verdict,
        }
        title = f"Garg toy ({setup}, d = {d}): loss vs k, {len(runs)} seeds"
        figure = line_figure(k, mean, "in-context examples k", "squared error / d", title)
        figure.savefig(f"docs/figures/garg_toy_{setup}.png", dpi=120)
    Path("docs/data/garg_toy.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--root", type=Path, default=Path("logs/garg_toy"))
    p.add_argument("--summarize", action="store_true", help="only summarise finished runs")
    args = p.parse_args()
    if not args.summarize:
        for setup in args.setups:
            for seed in args.seeds:
                run(setup, seed, args.steps, args.lr, args.root)
    for setup, result in summarize(args.root, args.seeds).items():
        print(setup, json.dumps(result["verdict"]))


if __name__ == "__main__":
    main()
