"""Paper A's deep table on a test set: trained models and GD / GD++ baselines, robust statistics.

Three disjoint prompt sets, named by their role: the baselines' step sizes are tuned on the
*tuning* set and chosen on the *selection* set (:class:`~icl_lightning.theory.StepSizes`,
keys ``(0, 1)`` and ``(0, 2)``; population samples on paper A's task), and every number here is
on the *test* set: ``--test-tasks`` fresh float64 prompts of paper A's distribution (d = N =
10) keyed ``(--test-seed, 3)``. Every loss is summarised per prompt set
(:func:`~icl_lightning.theory.robust_stats.summarize`): the mean with a bootstrap interval,
the median, the 99.9 % quantile and the number of prompts whose loss exceeds 1; two means are a
tie when their intervals overlap.

Baselines for each L: L steps of GD; GD++ with our per-step sizes; GD++ with one shared pair;
GD++ with the official code's sizes (``--official``: ``pre_train_gd_hps`` at its notebook's
settings); each GD++ also through its LSA construction with the experiment's activation clip
(paper A's notebook: 10 when L > 3), side by side with the unclipped one. With ``--runs``, the
final checkpoint of every run ``<runs>/<variant>/seed<k>/`` is scored on the same test set, in
float64, with its own clip (``model.clip``); the table's ± is over the trained model's seeds
only: the baselines are one set of sizes on one test set. Runs whose last checkpoint is short
of their ``max_steps`` (still training) are named and skipped. ``--from-json`` rebuilds the
table and the figure (median and mean against L) from earlier ``--out`` files::

    python scripts/deep_baselines.py --layers 2 3 4 5 --out docs/data/deep_baselines.json \
        --figure docs/figures/paper_a_deep_vs_L.png
    python scripts/deep_baselines.py --runs logs/reproduce/full/lsa_deep --out deep.json
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import yaml

from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import LSA
from icl_lightning.plotting import line_figure
from icl_lightning.theory import StepSizes, gd_plus_plus_lsa_layer, prediction_loss
from icl_lightning.theory.gd import spectral_form, spectral_predict
from icl_lightning.theory.population import contraction
from icl_lightning.theory.robust_stats import compare, summarize

D = N = 10
LAST = Path("checkpoints/last.ckpt")
CHUNK = 50_000
SETS = ("test_set", "tuning_set", "selection_set")
OFFICIAL = Path(__file__).parents[1] / "docs/data/gd_plus_plus_official.json"


def clip_of(L: int) -> float:
    """Paper A's notebook clips activations at 10 when L > 3."""
    return 10.0 if L > 3 else 0.0


def test_set(count: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``count`` float64 prompts keyed ``(seed, 3)``: the test set."""
    task = LinearRegression(input_dim=D)
    batch = task.sample(count, N, seeded_generator("cpu", seed, 3), torch.float64)
    return batch.context_x, batch.context_y, batch.query_x, batch.query_y


def chunked(function, prompts) -> torch.Tensor:
    """``function(*chunk)`` over the prompts in chunks of ``CHUNK``, concatenated."""
    count = len(prompts[3])
    return torch.cat(
        [function(*(t[i : i + CHUNK] for t in prompts)) for i in range(0, count, CHUNK)]
    )


def spectral_forms(prompts) -> tuple[torch.Tensor, ...]:
    """:func:`~icl_lightning.theory.gd.spectral_form` of the prompts, in chunks."""
    count = len(prompts[3])
    parts = [
        spectral_form(*(t[i : i + CHUNK] for t in prompts[:3])) for i in range(0, count, CHUNK)
    ]
    return tuple(torch.cat(part) for part in zip(*parts, strict=True))


def gd_plus_plus_losses(prompts, spectral, etas, gammas, L: int, clip: float) -> torch.Tensor:
    """Per-prompt losses of L GD++ steps: the spectral form without clip, the LSA
    construction (:func:`~icl_lightning.theory.gd_plus_plus_lsa_layer`) with ``clip``."""
    if clip == 0:
        lam, q, s = spectral
        sizes = [torch.tensor([v], dtype=torch.float64) for v in (etas, gammas)]
        pred = spectral_predict(lam, q, s, *sizes, L, N)[0]
        return prediction_loss(pred, prompts[3])
    layers = [gd_plus_plus_lsa_layer(D, N, e, g) for e, g in zip(etas, gammas, strict=True)]
    model = LSA.from_weights(layers)
    model.clip = clip

    def losses(cx, cy, qx, qy):
        with torch.no_grad():
            return prediction_loss(model(cx, cy, qx), qy)

    return chunked(losses, prompts)


def baselines(
    L: int, prompts, spectral, official: dict, seconds: dict, tuning_tasks: int = 10_000
) -> dict[str, dict]:
    """Summaries of every baseline at L steps on the test set, with the sizes and, for ours,
    how they were tuned."""
    task = LinearRegression(input_dim=D)
    start = time.perf_counter()
    ours = StepSizes(tuning_tasks, 0).tune(task, N, L, "cpu")
    shared = StepSizes(tuning_tasks, 0, gd_plus_plus="shared").tune(task, N, L, "cpu")
    seconds[L] = time.perf_counter() - start
    lam, q, s = spectral
    eta = torch.tensor([ours.eta], dtype=torch.float64)
    pred = spectral_predict(lam, q, s, eta, torch.zeros(1, dtype=torch.float64), L, N)[0]
    gd = prediction_loss(pred, prompts[3])
    kinds = {
        "GD++ (ours, per step)": (ours.eta_pp, ours.gamma_pp),
        "GD++ (one shared pair)": ([shared.eta_pp] * L, [shared.gamma_pp] * L),
    }
    sizes = official["layers"].get(str(L))
    if sizes is not None:
        kinds["GD++ (official code's sizes)"] = (sizes["etas"], sizes["gammas"])
    rows = {"GD": {**summarize(gd), "eta": ours.eta}}
    fit = ours.plus_plus_fit
    for name, (etas, gammas) in kinds.items():
        clips = [0.0] + ([clip_of(L)] if clip_of(L) else [])
        for clip in clips:
            label = name + (f", clip {clip:g}" if clip else "")
            losses = gd_plus_plus_losses(prompts, spectral, etas, gammas, L, clip)
            rows[label] = {**summarize(losses), "etas": etas, "gammas": gammas}
            if not clip:
                rows[label]["contraction"] = contraction(etas, gammas, fit.support, N)
    ours_row = rows["GD++ (ours, per step)"]
    ours_row.update(
        tuning_loss=fit.tuning_loss,
        selection_loss=fit.selection_loss,
        support=fit.support,
        support_tail=fit.tail,
        tuning_seconds=seconds[L],
    )
    return rows


def finished(run: Path) -> bool:
    """Whether ``run``'s last checkpoint is at its config's ``trainer.max_steps``; an unfinished
    run (still training, or stopped) is named on stderr and not scored."""
    steps = torch.load(run / LAST, map_location="cpu", weights_only=False)["global_step"]
    planned = yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"]
    if steps < planned:
        print(f"not scored: {run} is at step {steps} of {planned}", file=sys.stderr)
    return steps >= planned


def trained_losses(run: Path, prompts) -> tuple[int, float, torch.Tensor]:
    """``(L, clip, per-prompt losses)`` of ``run``'s last checkpoint on the test set, in
    float64."""
    from icl_lightning.cli import ICLLightningCLI

    config = yaml.safe_load((run / "config.yaml").read_text())
    for option in ("ckpt_path", "weights_only"):
        config.pop(option, None)
    args = [f"--config={json.dumps(config)}", "--trainer.logger=false", "--trainer.callbacks=[]"]
    # sys.argv is this script's: LightningCLI would warn that it sees both
    with contextlib.redirect_stdout(sys.stderr), mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = ICLLightningCLI(args=args, run=False)
    state = torch.load(run / LAST, map_location="cpu", weights_only=False)["state_dict"]
    cli.model.load_state_dict(state)
    model = cli.model.model.double().eval()

    def losses(cx, cy, qx, qy):
        with torch.no_grad():
            return prediction_loss(model(cx, cy, qx), qy)

    return model.num_layers, model.clip, chunked(losses, prompts)


def cell(s: dict) -> str:
    return (
        f"{s['mean']:.4g} [{s['mean_low']:.4g}, {s['mean_high']:.4g}] | {s['median']:.4g} | "
        f"{s['q999']:.3g} | {s['above_1']}"
    )


def table(numbers: dict) -> list[str]:
    """Markdown: per L, every baseline's summary; per trained variant, the mean over seeds of
    each statistic ± their std over seeds, and how its mean compares with each baseline's
    (tie / lower / higher, per seed)."""
    lines = [
        "| L | learner | test mean [95 % bootstrap] | median | 99.9 % quantile | losses > 1 |",
        "|---|---|---|---|---|---|",
    ]
    for L, rows in sorted(numbers.get("baselines", {}).items(), key=lambda kv: int(kv[0])):
        lines += [f"| {L} | {name} | {cell(s)} |" for name, s in rows.items()]
    trained = numbers.get("trained", {})
    if trained:
        lines += ["", "| model | seeds | test mean | median | 99.9 % quantile | losses > 1 |"]
        lines += ["|---|---|---|---|---|---|"]
        for variant, seeds in trained.items():
            values = list(seeds.values())

            def spread(name, values=values):
                xs = [v["summary"][name] for v in values]
                return f"{statistics.mean(xs):.4g}" + (
                    f" ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else ""
                )

            cells = [spread(n) for n in ("mean", "median", "q999", "above_1")]
            lines.append(f"| {variant} | {len(values)} | " + " | ".join(cells) + " |")
        lines += ["", "| model | against | per seed: tie / lower / higher |", "|---|---|---|"]
        for variant, seeds in trained.items():
            for name in next(iter(seeds.values()))["versus"]:
                verdicts = [v["versus"][name] for v in seeds.values()]
                lines.append(f"| {variant} | {name} | {', '.join(verdicts)} |")
    return lines


def figure(numbers: dict, path: Path) -> None:
    """Median (solid) and mean (dashed) test losses against L: baselines, and trained models
    (variants ``L<k>``, means over seeds) when present."""
    rows = numbers["baselines"]
    depths = sorted(int(L) for L in rows)
    names = [
        "GD",
        "GD++ (ours, per step)",
        "GD++ (one shared pair)",
        "GD++ (official code's sizes)",
    ]
    curves = {}
    for name in names:
        if all(name in rows[str(L)] for L in depths):
            curves[f"{name}, median"] = [rows[str(L)][name]["median"] for L in depths]
            curves[f"{name}, mean"] = [rows[str(L)][name]["mean"] for L in depths]
    trained = numbers.get("trained", {})
    have = [L for L in depths if f"L{L}" in trained]
    if have == depths:
        for stat in ("median", "mean"):
            curves[f"trained LSA, {stat}"] = [
                statistics.mean(v["summary"][stat] for v in trained[f"L{L}"].values())
                for L in depths
            ]
    title = "Paper A, deep: test median (solid), mean (dashed)"
    drawn = line_figure(depths, curves, "layers / steps L", "loss", title, logy=True)
    axes = drawn.axes[0]
    colours = {}
    for line in axes.get_lines():  # one colour per learner, dashed for its mean
        learner, stat = line.get_label().rsplit(", ", 1)
        line.set_color(colours.setdefault(learner, f"C{len(colours)}"))
        line.set_linestyle("--" if stat == "mean" else "-")
    off = [
        f"{c} at L = {L}: {v:.2g}"
        for c, vs in curves.items()
        for L, v in zip(depths, vs, strict=True)
        if v > 10
    ]
    if off:  # a mean that blew up: keep the others readable and say where it went
        axes.set_ylim(top=10)
        axes.text(0.02, 0.98, "off the chart: " + "; ".join(off), transform=axes.transAxes,
                  fontsize=7, va="top")  # fmt: skip
    axes.set_xticks(depths)
    axes.legend(fontsize=7, loc="lower left")
    drawn.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", help="baselines at these L (no runs needed)")
    p.add_argument("--runs", type=Path, help="the lsa_deep folder of finished runs")
    p.add_argument("--from-json", type=Path, nargs="+", help="no scoring: earlier --out files")
    p.add_argument("--test-tasks", type=int, default=1_000_000, help="prompts of the test set")
    p.add_argument("--test-seed", type=int, default=0, help="the test set's key (seed, 3)")
    p.add_argument("--tuning-tasks", type=int, default=10_000, help="StepSizes' num_tasks")
    p.add_argument("--out", type=Path, help="JSON file of the numbers")
    p.add_argument("--figure", type=Path, help="PNG of the median and mean losses against L")
    p.add_argument("--official", type=Path, default=OFFICIAL, help="the official GD++ sizes")
    args = p.parse_args()
    if sum(x is not None for x in (args.layers, args.runs, args.from_json)) == 0:
        p.error("give --layers (baselines), --runs (trained models) or --from-json")
    for option, path in [("--official", args.official)] + [
        ("--from-json", f) for f in args.from_json or []
    ]:
        if not path.is_file():
            p.error(f"{option} {path}: no such file")
    runs = []
    if args.runs is not None:
        runs = sorted(d for d in args.runs.glob("*/seed*") if (d / LAST).is_file())
        if not runs:
            p.error(f"--runs {args.runs}: no <variant>/seed<k>/checkpoints/last.ckpt below it")
        runs = [run for run in runs if finished(run)]
        if not runs:
            p.error(f"--runs {args.runs}: no run below it has trained to its max_steps")
    numbers: dict = {"baselines": {}, "trained": {}}
    for path in args.from_json or []:
        earlier = json.loads(path.read_text())
        for part in ("baselines", "trained"):
            for key, value in earlier.get(part, {}).items():
                numbers[part].setdefault(key, {}).update(value)
        for key in SETS:  # the prompt sets: every file must have scored on the same ones
            if key in earlier and numbers.setdefault(key, earlier[key]) != earlier[key]:
                p.error(f"--from-json {path}: its {key} {earlier[key]} differs from the others'")
    if args.layers or runs:
        sets = {
            "test_set": {"count": args.test_tasks, "key": [args.test_seed, 3]},
            "tuning_set": {"count": args.tuning_tasks, "key": [0, 1]},
            "selection_set": {"key": [0, 2]},
        }
        for key, value in sets.items():
            if numbers.setdefault(key, value) != value:
                p.error(f"--from-json: its {key} {numbers[key]} is not this scoring's {value}")
        prompts = test_set(args.test_tasks, args.test_seed)
        spectral = spectral_forms(prompts)
        official = json.loads(args.official.read_text())
        seconds: dict[int, float] = {}
        depths = set(args.layers or [])
        trained = {run: trained_losses(run, prompts) for run in runs}
        depths |= {L for L, _, _ in trained.values()}
        for L in sorted(depths):
            print(f"baselines at L = {L}", file=sys.stderr, flush=True)
            numbers["baselines"][str(L)] = baselines(
                L, prompts, spectral, official, seconds, args.tuning_tasks
            )
        for run, (L, clip, losses) in trained.items():
            summary = summarize(losses)
            versus = {name: compare(summary, s) for name, s in numbers["baselines"][str(L)].items()}
            entry = {"summary": summary, "clip": clip, "layers": L, "versus": versus}
            numbers["trained"].setdefault(run.parent.name, {})[run.name] = entry
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=1))
    if args.figure:
        figure(numbers, args.figure)
    print("\n".join(table(numbers)))


if __name__ == "__main__":
    main()
