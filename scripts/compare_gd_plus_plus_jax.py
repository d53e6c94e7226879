"""GD++ step sizes side by side: ours (before / after the converged tuning) and paper A's
official JAX training, scored on one common set of test prompts.

For each L: the step sizes a probe gets (:class:`~icl_lightning.theory.StepSizes` with its
defaults: the tuning set keyed ``(seed, 1)``, the selection set keyed ``(seed, 2)``; population
samples on this task, :mod:`~icl_lightning.theory.population`),
per layer and shared; the previous method on the same tuning prompts (per layer: 300 Adam
iterations from the shared grid optimum, the best iterate kept; shared: the grid search alone);
and the official code's ``pre_train_gd_hps`` at the notebook's settings
(``scripts/gd_plus_plus_jax_worker.py``, run with the JAX venv, one process per L alongside our
tuning; its log and JSON result are kept in ``--jax-results`` and reused). Every set of sizes
is scored by the direct GD++ learner (:func:`~icl_lightning.theory.gd_plus_plus_predict`,
float64) on ``--eval-tasks`` fresh prompts
keyed ``(seed, 3)`` of paper A's distribution (d = 10, N = 10, x ~ U(-0.5, 0.5)^d,
w ~ N(0, I)), and on the official code's own 10,000 evaluation prompts, where the official
model's float32 loss is printed beside ours as a check that its sizes are read right.

The loss is heavy-tailed: a rare prompt with a large ``lam_max`` can make aggressive sizes
blow up, so a set of 20,000 prompts may not show it. ``--tail-sets K --tail-tasks M`` also
scores every set of sizes on K fresh sets of M prompts keyed ``(--tail-seed, k)`` (the mean of
each set, and their pooled mean).

    python scripts/compare_gd_plus_plus_jax.py --layers 2 3 4 5 \\
        --jax-python JAX_VENV/bin/python --jax-ref JAXREF --jax-results DIR \\
        --tail-sets 5 --tail-tasks 100000
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.theory import StepSizes, gd_plus_plus_predict, optimal_eta_gamma
from icl_lightning.theory.gd import spectral_form, spectral_predict
from icl_lightning.theory.loss import prediction_loss

D = N = 10


def previous_per_layer(prompts, num_steps, iterations=300, lr=0.02):
    """The per-layer sizes before the converged tuning: Adam on ``eta_l = eta* exp(a_l)``,
    ``gamma_l = gamma* + b_l / lam`` from the shared grid optimum, the best iterate kept."""
    eta0, gamma0 = optimal_eta_gamma(*prompts, num_steps=num_steps)
    lam, q, s = spectral_form(*prompts[:3])
    scale = float(lam[:, -1].mean())
    a = torch.zeros(1, num_steps, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, num_steps, dtype=torch.float64, requires_grad=True)

    def sizes():
        return eta0 * a.exp(), gamma0 + b / scale

    def loss():
        pred = spectral_predict(lam, q, s, *sizes(), num_steps, N)
        return prediction_loss(pred, prompts[3]).mean()

    optimizer = torch.optim.Adam([a, b], lr=lr)
    with torch.no_grad():
        best = (float(loss()), *sizes())
    for _ in range(iterations):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        with torch.no_grad():
            best = min(best, (float(loss()), *sizes()), key=lambda entry: entry[0])
    return best[1][0].tolist(), best[2][0].tolist()


def launch(args, L) -> subprocess.Popen | None:
    """Start the official training at L layers, its output in ``--jax-results``/L{L}.log,
    unless that folder holds its result or its log (a run under way: delete it to rerun)."""
    folder = Path(args.jax_results)
    if (folder / f"L{L}.json").exists() or (folder / f"L{L}.log").exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    worker = Path(__file__).with_name("gd_plus_plus_jax_worker.py")
    command = [args.jax_python, str(worker), "--jax-ref", args.jax_ref, "--layers", str(L)]
    command += ["--steps", str(args.jax_steps), "--save-eval", str(folder / f"eval_L{L}.npz")]
    with open(folder / f"L{L}.log", "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def official(args, L, job: subprocess.Popen | None) -> dict:
    """The official training's result at L layers: waits until its log has the result line,
    then keeps it as L{L}.json."""
    folder = Path(args.jax_results)
    path, log = folder / f"L{L}.json", folder / f"L{L}.log"
    while not path.exists():
        lines = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
        if lines:
            path.write_text(lines[0].removeprefix("RESULT "))
        elif job is not None and job.poll() is not None:
            raise RuntimeError(f"the official GD++ training at L = {L} failed; see {log}")
        else:
            time.sleep(10)
    result = json.loads(path.read_text())
    with np.load(folder / f"eval_L{L}.npz") as saved:
        tokens = torch.from_numpy(saved["tokens"]).double()
        targets = torch.from_numpy(saved["targets"]).double()
    result["prompts"] = (tokens[:, :N, :D], tokens[:, :N, D], tokens[:, N, :D], targets[:, D])
    return result


def score(prompts, etas, gammas, L) -> float:
    """Mean query loss of L GD++ steps with these sizes (direct form, float64)."""
    cx, cy, qx, qy = prompts
    return float(prediction_loss(gd_plus_plus_predict(cx, cy, qx, etas, gammas, L), qy).mean())


def tail_scores(task, sizes, L, args) -> dict[str, list[float]]:
    """Mean query loss of each set of sizes on each of the ``--tail-sets`` fresh sets
    (spectral form, float64)."""
    scores = {name: [] for name in sizes}
    for k in range(args.tail_sets):
        generator = seeded_generator("cpu", args.tail_seed, k)
        batch = task.sample(args.tail_tasks, N, generator, torch.float64)
        lam, q, s = spectral_form(batch.context_x, batch.context_y, batch.query_x)
        for name, (etas, gammas) in sizes.items():
            eta = torch.tensor([etas], dtype=torch.float64).reshape(1, -1).expand(1, L)
            gamma = torch.tensor([gammas], dtype=torch.float64).reshape(1, -1).expand(1, L)
            pred = spectral_predict(lam, q, s, eta, gamma, L, N)[0]
            scores[name].append(float(prediction_loss(pred, batch.query_y).mean()))
    return scores


def tune_ours(task, L, seed) -> dict:
    """Our sizes at L steps, before and after; prints how the tuning went and its time."""
    start = time.perf_counter()
    per_layer = StepSizes(10_000, seed).tune(task, N, L, "cpu")
    per_layer_seconds = time.perf_counter() - start
    start = time.perf_counter()
    shared = StepSizes(10_000, seed, gd_plus_plus="shared").tune(task, N, L, "cpu")
    shared_seconds = time.perf_counter() - start
    tuning = per_layer.prompts(task, N, D, "cpu", 1)
    fit, shared_fit = per_layer.plus_plus_fit, shared.plus_plus_fit
    print(
        f"L={L}: per-layer won from {fit.start!r}, tuning {fit.tuning_loss:.5f}, selection "
        f"{fit.selection_loss:.5f}, |grad|/loss {fit.gradient_norm:.1e}, "
        f"{per_layer_seconds:.1f} s; shared: tuning {shared_fit.tuning_loss:.5f}, selection "
        f"{shared_fit.selection_loss:.5f}, |grad|/loss {shared_fit.gradient_norm:.1e}, "
        f"{shared_seconds:.1f} s; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return {
        "per-layer before": previous_per_layer(tuning, L),
        "per-layer after": (per_layer.eta_pp, per_layer.gamma_pp),
        "shared before": optimal_eta_gamma(*tuning, num_steps=L),
        "shared after": (shared.eta_pp, shared.gamma_pp),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--jax-python", required=True, help="a Python with jax, optax, dm-haiku")
    parser.add_argument("--jax-ref", required=True, help="folder holding the official src/")
    parser.add_argument("--jax-results", required=True, help="folder of the official results")
    parser.add_argument("--jax-steps", type=int, default=30_000)
    parser.add_argument("--eval-tasks", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tail-sets", type=int, default=0, help="fresh prompt sets (tail)")
    parser.add_argument("--tail-tasks", type=int, default=100_000, help="prompts per tail set")
    parser.add_argument("--tail-seed", type=int, default=7)
    args = parser.parse_args()
    task = LinearRegression(input_dim=D)
    batch = task.sample(args.eval_tasks, N, seeded_generator("cpu", args.seed, 3), torch.float64)
    common = (batch.context_x, batch.context_y, batch.query_x, batch.query_y)
    jobs = {L: launch(args, L) for L in args.layers}  # in parallel with our tuning
    ours = {L: tune_ours(task, L, args.seed) for L in args.layers}
    rows = []
    for L in args.layers:
        theirs = official(args, L, jobs[L])
        sizes = dict(ours[L], **{"official per-layer": (theirs["etas"], theirs["gammas"])})
        losses = {name: score(common, *pair, L) for name, pair in sizes.items()}
        on_theirs = {name: score(theirs["prompts"], *pair, L) for name, pair in sizes.items()}
        tail = tail_scores(task, sizes, L, args) if args.tail_sets else {}
        rows.append((L, losses, on_theirs, theirs["official_eval_loss"], tail))
        print(f"L={L} sizes: " + "; ".join(
            f"{k} eta {np.round(e, 3)} gamma {np.round(g, 4)}" for k, (e, g) in sizes.items()
        ), flush=True)  # fmt: skip
    names = list(rows[0][1])
    print(f"\nHeld-out loss on {args.eval_tasks} common prompts (direct GD++, float64):")
    print("| L | " + " | ".join(names) + " | after / official |")
    print("|---" * (len(names) + 2) + "|")
    for L, losses, _, _, _ in rows:
        ratio = losses["per-layer after"] / losses["official per-layer"]
        print(f"| {L} | " + " | ".join(f"{losses[n]:.5f}" for n in names) + f" | {ratio:.3f} |")
    print("\nOn the official code's 10,000 evaluation prompts (its own float32 loss last):")
    print("| L | " + " | ".join(names) + " | official model (JAX) |")
    print("|---" * (len(names) + 2) + "|")
    for L, _, on_theirs, jax_loss, _ in rows:
        print(
            f"| {L} | " + " | ".join(f"{on_theirs[n]:.5f}" for n in names) + f" | {jax_loss:.5f} |"
        )
    if args.tail_sets:
        print(
            f"\nOn {args.tail_sets} fresh sets of {args.tail_tasks} prompts keyed "
            f"({args.tail_seed}, k): each set's mean / the pooled mean"
        )
        print("| L | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for L, _, _, _, tail in rows:
            cells = [
                " ".join(f"{x:.4g}" for x in tail[n]) + f" / **{np.mean(tail[n]):.5g}**"
                for n in names
            ]
            print(f"| {L} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
