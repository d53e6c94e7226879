"""Paper A's deep table from finished ``lsa_deep`` runs, against the GD++ baselines of this code.

Every run folder ``<runs>/<variant>/seed<k>/`` of ``icl-reproduce --only lsa_deep`` holds the
trained model (``checkpoints/last.ckpt``) and its config. This script validates each checkpoint
once more with two GDAlignment probes, so that the final models are measured against L steps of
GD and against GD++ tuned by the code as it is now, with one ``(eta_l, gamma_l)`` per step
(``per_layer``) and with one pair shared by the steps (``shared``):

- ``trained / GD``: ``loss_model / loss_gd`` on the probe's evaluation prompts;
- ``trained / GD++``: ``loss_model / loss_gd_pp``, and ``model cos``: ``model_cos_pp``, for each
  kind of GD++;
- ``GD++ held-out loss``: the loss of the tuned GD++ on its own held-out prompts.

It prints a markdown table with the mean +- std over seeds and writes the numbers per run as
JSON (``--out``)::

    python scripts/deep_baselines.py --runs logs/reproduce/full/lsa_deep --out deep.json
"""

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

from icl_lightning.cli import ICLLightningCLI

KINDS = ("per_layer", "shared")


def probe(kind: str, num_tasks: int) -> dict:
    return {
        "class_path": "icl_lightning.callbacks.GDAlignment",
        "init_args": {
            "every_n_steps": 0,
            "num_tasks": num_tasks,
            "gd_plus_plus": kind,
            "tag": kind,
            "log_figures": False,
        },
    }


def measure(run: Path, num_tasks: int) -> dict[str, float]:
    """``gd/<kind>/<name>`` of both probes after validating ``run``'s last checkpoint."""
    callbacks = json.dumps([probe(kind, num_tasks) for kind in KINDS])
    args = [
        "validate",
        f"--config={run / 'config.yaml'}",
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"--trainer.callbacks={callbacks}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    with contextlib.redirect_stdout(sys.stderr):  # the run summary; stdout is the table
        cli = ICLLightningCLI(args=args)
    results = {}
    for callback in cli.trainer.callbacks:
        results.update(getattr(callback, "last_results", {}))
    return results


def row(values: dict[str, float], kind: str) -> dict[str, float]:
    """The table's numbers of one run for one kind of GD++."""
    get = {name: values[f"gd/{kind}/{name}"] for name in ("loss_model", "loss_gd", "loss_gd_pp")}
    return {
        "trained / GD": get["loss_model"] / get["loss_gd"],
        "trained / GD++": get["loss_model"] / get["loss_gd_pp"],
        "model cos": values[f"gd/{kind}/model_cos_pp"],
        "GD++ held-out loss": values[f"gd/{kind}/gd_pp_held_out_loss"],
        "trained loss": get["loss_model"],
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="the lsa_deep folder of the runs")
    p.add_argument("--num-tasks", type=int, default=10_000, help="evaluation prompts per probe")
    p.add_argument("--out", type=Path, help="JSON file of the numbers per run")
    args = p.parse_args()
    runs = sorted(d for d in args.runs.glob("*/seed*") if (d / "checkpoints/last.ckpt").is_file())
    if not runs:
        p.error(f"--runs {args.runs}: no <variant>/seed<k>/checkpoints/last.ckpt below it")
    numbers: dict[str, dict[str, dict]] = {}
    for run in runs:
        print(f"validating {run}", file=sys.stderr, flush=True)
        values = measure(run, args.num_tasks)
        numbers.setdefault(run.parent.name, {})[run.name] = {k: row(values, k) for k in KINDS}
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=1))
    columns = ["trained / GD++", "model cos", "GD++ held-out loss"]
    header = ["model", "seeds", "trained loss", "trained / GD"]
    header += [f"{c} ({k})" for k in KINDS for c in columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant, seeds in numbers.items():
        cells = [variant, str(len(seeds))]
        for c in ("trained loss", "trained / GD"):
            cells.append(mean_std([s["per_layer"][c] for s in seeds.values()]))
        for kind in KINDS:
            cells += [mean_std([s[kind][c] for s in seeds.values()]) for c in columns]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
