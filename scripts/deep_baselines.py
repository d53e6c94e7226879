"""Paper A's deep table from finished ``lsa_deep`` runs, against the GD++ baselines of this code.

Every run folder ``<runs>/<variant>/seed<k>/`` of ``icl-reproduce --only lsa_deep`` holds the
trained model (``checkpoints/last.ckpt``) and its config. This script validates each checkpoint
once more with two GDAlignment probes, so that the final models are measured against L steps of
GD and against GD++ tuned by the code as it is now, with one ``(eta_l, gamma_l)`` per step
(``per_layer``) and with one pair shared by the steps (``shared``):

- ``trained / GD``: ``loss_model / loss_gd`` on the probe's evaluation prompts;
- ``trained / GD++``: ``loss_model / loss_gd_pp``, and ``model cos``: ``model_cos_pp``, for each
  kind of GD++;
- ``GD++ held-out loss``: the loss of the tuned GD++ on its own held-out prompts;
- ``trained / official GD++``: against GD++ with the step sizes that paper A's official code
  learns (``--official``, default ``docs/data/gd_plus_plus_official.json``), on the same
  evaluation prompts.

It prints a markdown table with the mean +- std over seeds and writes the numbers per run as
JSON (``--out``), and with ``--figure`` the losses against L; ``--from-json`` rebuilds both
from earlier ``--out`` files (merged) without validating again::

    python scripts/deep_baselines.py --runs logs/reproduce/full/lsa_deep --out deep.json \
        --figure deep.png
"""

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from icl_lightning.callbacks import GDAlignment
from icl_lightning.cli import ICLLightningCLI
from icl_lightning.plotting import line_figure
from icl_lightning.theory import gd_plus_plus_predict, prediction_loss

KINDS = ("per_layer", "shared")
LAST = Path("checkpoints/last.ckpt")


def probe_config(kind: str, num_tasks: int) -> dict:
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


def official_loss(probe: GDAlignment, trainer, official: dict) -> float:
    """Mean query loss of GD++ with the official code's sizes for the probe's L, in float64 on
    the probe's evaluation prompts (nan when the file has no sizes for that L)."""
    sizes = official["layers"].get(str(probe.learner_steps))
    if sizes is None:
        return float("nan")
    batch = probe.evaluation_set(trainer, trainer.strategy.root_device).to(torch.float64)
    inputs = (batch.context_x, batch.context_y, batch.query_x)
    pred = gd_plus_plus_predict(*inputs, sizes["etas"], sizes["gammas"], probe.learner_steps)
    return float(prediction_loss(pred, batch.query_y).mean())


def measure(run: Path, num_tasks: int, official: dict, tuned: dict) -> dict[str, float]:
    """``gd/<kind>/<name>`` of both probes after validating ``run``'s last checkpoint, and
    ``official_loss`` (:func:`official_loss`). ``tuned`` caches the probes' step sizes by
    ``(kind, L)``: they depend on the prompts' distribution and L only, so each is tuned once
    for all seeds (and shared by the recurrent and the non-recurrent model of one L)."""
    callbacks = json.dumps([probe_config(kind, num_tasks) for kind in KINDS])
    config = yaml.safe_load((run / "config.yaml").read_text())
    for option in ("ckpt_path", "weights_only"):  # options of the subcommands
        config.pop(option, None)
    args = [
        f"--config={json.dumps(config)}",
        f"--trainer.callbacks={callbacks}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's messages; stdout is the table
        cli = ICLLightningCLI(args=args, run=False)
        probes = [c for c in cli.trainer.callbacks if isinstance(c, GDAlignment)]
        steps = cli.model.model.num_layers
        for probe in probes:
            if (probe.tag, steps) in tuned:
                probe.step_sizes.load_state_dict(tuned[probe.tag, steps])
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=run / LAST)
    results = {"official_loss": official_loss(probes[0], cli.trainer, official)}
    for probe in probes:
        tuned[probe.tag, steps] = probe.step_sizes.state_dict()
        results.update(probe.last_results)
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
        "trained / official GD++": get["loss_model"] / values["official_loss"],
        "GD loss": get["loss_gd"],
        "GD++ loss": get["loss_gd_pp"],
        "official GD++ loss": values["official_loss"],
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def table(numbers: dict[str, dict[str, dict]]) -> list[str]:
    """The markdown table: a row per variant, mean +- std over its seeds."""
    columns = ["trained / GD++", "model cos", "GD++ held-out loss"]
    first = ["trained loss", "trained / GD", "trained / official GD++"]
    header = ["model", "seeds", *first, *(f"{c} ({k})" for k in KINDS for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, seeds in numbers.items():
        cells = [variant, str(len(seeds))]
        cells += [mean_std([s["per_layer"][c] for s in seeds.values()]) for c in first]
        for kind in KINDS:
            cells += [mean_std([s[kind][c] for s in seeds.values()]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure(numbers: dict[str, dict[str, dict]], path: Path) -> None:
    """The losses of the non-recurrent models (variants ``L<k>``) and of the baselines against
    L, means over seeds (the baselines' losses are on the same evaluation prompts)."""
    depths = sorted(int(v[1:]) for v in numbers if v[1:].isdigit())

    def mean(name: str, kind: str = "per_layer") -> list[float]:
        return [statistics.mean(s[kind][name] for s in numbers[f"L{L}"].values()) for L in depths]

    curves = {
        "trained LSA": mean("trained loss"),
        "L steps of GD": mean("GD loss"),
        "GD++, per-step sizes (converged)": mean("GD++ loss"),
        "GD++, official code's sizes": mean("official GD++ loss"),
        "GD++, one shared pair": mean("GD++ loss", "shared"),
    }
    title = "Paper A: trained deep LSA vs GD and GD++"
    drawn = line_figure(depths, curves, "layers L", "loss", title, logy=True)
    drawn.axes[0].set_xticks(depths)
    drawn.axes[0].legend(fontsize=8, loc="lower left")
    drawn.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, help="the lsa_deep folder of the runs")
    p.add_argument("--from-json", type=Path, nargs="+", help="no validation: earlier --out files")
    p.add_argument("--num-tasks", type=int, default=10_000, help="evaluation prompts per probe")
    p.add_argument("--out", type=Path, help="JSON file of the numbers per run")
    p.add_argument("--figure", type=Path, help="PNG of the losses against L")
    p.add_argument(
        "--official",
        type=Path,
        default=Path(__file__).parents[1] / "docs/data/gd_plus_plus_official.json",
        help="the official code's GD++ sizes per L",
    )
    args = p.parse_args()
    if (args.runs is None) == (args.from_json is None):
        p.error("give either --runs (validate the runs) or --from-json (earlier results)")
    for option, path in [
        ("--official", args.official),
        *(("--from-json", f) for f in args.from_json or []),
    ]:
        if not path.is_file():
            p.error(f"{option} {path}: no such file")
    numbers: dict[str, dict[str, dict]] = {}
    for path in args.from_json or []:
        for variant, seeds in json.loads(path.read_text()).items():
            numbers.setdefault(variant, {}).update(seeds)
    if args.runs is not None:
        runs = sorted(
            d for d in args.runs.glob("*/seed*") if (d / "checkpoints/last.ckpt").is_file()
        )
        if not runs:
            p.error(f"--runs {args.runs}: no <variant>/seed<k>/checkpoints/last.ckpt below it")
        official = json.loads(args.official.read_text())
        tuned: dict[tuple[str, int], dict] = {}
        for run in runs:
            print(f"validating {run}", file=sys.stderr, flush=True)
            values = measure(run, args.num_tasks, official, tuned)
            numbers.setdefault(run.parent.name, {})[run.name] = {k: row(values, k) for k in KINDS}
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=1))
    if args.figure:
        figure(numbers, args.figure)
    print("\n".join(table(numbers)))


if __name__ == "__main__":
    main()
