"""Garg et al.'s toy runs at CPU scale, summarised: the GPT-2-style model beside the baselines.

The runs are the reproduction experiment ``garg_toy`` (``icl_lightning/reproduce/experiments.py``:
``configs/garg_tiny.yaml``, Garg et al.'s "tiny" model trained on every prefix with their loss,
Adam lr 1e-3, batch 64, no curriculum, 3 seeds, 5,001 steps):

- ``linear``: Garg et al.'s toy set-up (``conf/toy.yaml``): linear regression, d = 5, prompts of
  11 points (N = 10 + query);
- ``sparse``: sparse linear regression, d = 8 with 2 non-zero weights, 16 points.

Their BaselineCurves probe measures at the end (1,024 prompts): the loss / d after k examples
for the model, least squares, 3-NN, averaging, GD / GD++ (L = 2) and, for sparse, the lasso at
three penalties (every one reported: none is chosen on these prompts). This script averages the
seeds' last curves, draws ``docs/figures/garg_toy_<setup>.png`` and writes
``docs/data/garg_toy.json`` (``--docs``: another folder) with the measurements behind the
verdicts: how far the model is from least squares for k >= d (linear), and whether it is below
least squares for 0 < k < d and how it compares with each lasso there (sparse).

    icl-reproduce --only garg_toy --jobs 2          # trains into logs/reproduce/full/garg_toy
    python scripts/garg_toy.py                      # --runs logs/reproduce/full/garg_toy
"""

import argparse
import json
from pathlib import Path

import torch

from icl_lightning.plotting import line_figure
from icl_lightning.reproduce.experiments import GARG_TOY
from icl_lightning.reproduce.scalars import read_scalars

TASK = "data.init_args.task"


def setups() -> dict[str, tuple[int, int]]:
    """``{variant: (d, N)}`` as the experiment's variants set them."""
    sizes = {}
    for name, options in GARG_TOY.variants.items():
        task = options.get(TASK)
        d = task["init_args"]["input_dim"] if task else options[f"{TASK}.init_args.input_dim"]
        sizes[name] = (d, options["data.init_args.num_context"])
    return sizes


def curves(run_dir: Path) -> dict[str, list[float]]:
    """The last measurement's curve of every learner (its own TensorBoard run)."""
    last = max((run_dir.parent / f"{run_dir.name}_curves" / "baselines").iterdir())
    out = {}
    for folder in sorted(last.iterdir()):
        points = read_scalars(folder)["baselines/loss_vs_k"]
        out[folder.name] = [points[k] for k in sorted(points)]
    return out


def summarize(root: Path) -> dict:
    """Per set-up: the seeds' mean curves, the model's curve per seed and the verdicts'
    measurements (module docstring); set-ups with no finished run are left out."""
    report = {}
    for setup, (d, n) in setups().items():
        runs = sorted((root / setup).glob("seed*[0-9]"))
        runs = [r for r in runs if (r / "done.json").is_file()]  # finished: measured at the end
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
            verdict["model_below_least_squares_for_k_lt_d"] = [
                bool(x) for x in (model.mean(0)[below] < ls[below]).tolist()
            ]
            for lasso in (m for m in names if m.startswith("lasso")):
                verdict[f"model_over_{lasso}_k_lt_d"] = (
                    model.mean(0)[below] / torch.tensor(mean[lasso])[below]
                ).tolist()
        report[setup] = {
            "d": d,
            "N": n,
            "seeds": len(runs),
            "steps": [json.loads((r / "done.json").read_text())["steps"] for r in runs],
            "mean": mean,
            "model_per_seed": model.tolist(),
            "verdict": verdict,
        }
    return report


def write(report: dict, docs: Path) -> None:
    """``<docs>/data/garg_toy.json`` and a figure of the mean curves per set-up,
    ``<docs>/figures/garg_toy_<setup>.png``."""
    (docs / "data").mkdir(parents=True, exist_ok=True)
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    for setup, result in report.items():
        title = f"Garg toy ({setup}, d = {result['d']}): loss vs k, {result['seeds']} seeds"
        k = list(range(result["N"] + 1))
        figure = line_figure(k, result["mean"], "in-context examples k", "squared error / d", title)
        figure.savefig(docs / "figures" / f"garg_toy_{setup}.png", dpi=120)
    (docs / "data" / "garg_toy.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        type=Path,
        default=Path("logs/reproduce/full/garg_toy"),
        help="the experiment's runs: <runs>/<linear|sparse>/seed<k>",
    )
    p.add_argument(
        "--docs",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs",
        help="where data/garg_toy.json and figures/garg_toy_<setup>.png go (default: the "
        "repository's docs/)",
    )
    args = p.parse_args()
    if not args.runs.is_dir():
        raise SystemExit(f"--runs {args.runs}: no such folder (run icl-reproduce --only garg_toy)")
    report = summarize(args.runs)
    if not report:
        raise SystemExit(f"--runs {args.runs}: no finished <setup>/seed<k> run")
    write(report, args.docs)
    for setup, result in report.items():
        print(setup, result["seeds"], "seeds", json.dumps(result["verdict"]))


if __name__ == "__main__":
    main()
