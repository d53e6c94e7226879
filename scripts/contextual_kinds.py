"""Paper B's set-up (d = 2, N = 100 and 400, batch 64, MLP width 128) for every kind of
contextual layer, 3 seeds, one ``icl-lightning fit`` per (kind, N, seed), then one table.

    python scripts/contextual_kinds.py run --out DIR --steps 1000 --jobs 2
    python scripts/contextual_kinds.py table --out DIR

Each run is ``configs/contextual_block_<kind>.yaml`` (attention: ``contextual_block.yaml`` with 8
heads of 4, as paper B's public replication) with the set-up's options on the command line; it
logs to ``DIR/<kind>_N<N>_s<seed>/``. ``table`` reads each run's final scalars (TensorBoard) and
prints, per kind and N, the mean and spread over seeds of: val/loss, the equivalence error
``max |T_W(C, x) - T_{W + dW}(x)|``, the fall of the per-token updates
``||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||`` and the test losses after all N examples of SGD on W
and of ``W + dW_N``, with verdicts.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

KINDS = ("attention", "rnn", "gru", "lstm", "diagonal", "selective")
ROOT = Path(__file__).resolve().parents[1]


def command(kind: str, N: int, seed: int, steps: int, out: Path) -> list[str]:
    """The ``icl-lightning fit`` of one run."""
    config = "contextual_block.yaml" if kind == "attention" else f"contextual_block_{kind}.yaml"
    model = "--model.model.init_args."
    extra = [f"{model}num_heads=8", f"{model}key_size=4"] if kind == "attention" else []
    return [
        str(Path(sys.executable).parent / "icl-lightning"),
        "fit",
        f"--config={ROOT / 'configs' / config}",
        f"--seed_everything={seed}",
        f"--trainer.max_steps={steps}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={kind}_N{N}_s{seed}",
        "--trainer.enable_progress_bar=false",
        "--data.task.init_args.input_dim=2",
        f"--data.num_context={N}",
        "--data.batch_size=64",
        f"{model}mlp_width=128",
        *extra,
    ]


def run_one(args: tuple) -> str:
    kind, N, seed, steps, out = args
    name = f"{kind}_N{N}_s{seed}"
    if (out / name / "version_0" / "done").exists():
        return f"{name}: done before"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.call(command(kind, N, seed, steps, out), stdout=log, stderr=log, env=env)
    if rc == 0:
        (out / name / "version_0" / "done").touch()
    return f"{name}: rc {rc}"


def final(run: Path) -> dict[str, float]:
    """The last value of every scalar of a run."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def summary(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    spread = f" ± {t.std():.2g}" if len(t) > 1 else ""
    return f"{t.mean():.3g}{spread}"


def table(out: Path, Ns: list[int]) -> str:
    rows = [
        "| kind | N | seeds | val/loss | max abs equivalence error (float32) | update fall "
        "‖ΔW_N − ΔW_N−1‖ / ‖ΔW_2 − ΔW_1‖ | test loss before → after N examples: SGD on W / "
        "W + ΔW_N | verdicts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    data = {}
    for kind in KINDS:
        for N in Ns:
            runs = sorted(out.glob(f"{kind}_N{N}_s*/version_0/done"))
            scalars = [final(r.parent) for r in runs]
            if not scalars:
                continue
            col = {k: [s[k] for s in scalars if k in s] for k in scalars[0]}
            sgd, dw = col[f"ft/sgd_loss_i{N}"], col[f"ft/dw_loss_i{N}"]
            start, ratio, err = col["ft/loss_i0"], col["dw/update_ratio"], col["dw/max_abs_diff"]
            fall = sum(ratio) / len(ratio)
            shrink = "shrink" if fall <= 0.1 else ("fall" if fall < 0.5 else "do not shrink")
            mean = {k: sum(v) / len(v) for k, v in (("sgd", sgd), ("dw", dw), ("0", start))}
            both = "both fall" if max(mean["sgd"], mean["dw"]) < mean["0"] else "not both fall"
            ft = (
                "ΔW lower"
                if mean["dw"] < mean["sgd"] / 3
                else "SGD lower"
                if mean["sgd"] < mean["dw"] / 3
                else "alike (within 3x)"
            )
            verdicts = (
                f"Thm 2.2 {'exact' if max(err) <= 1e-5 else 'NOT exact'}; updates {shrink} "
                f"({1 / fall:.3g}x); {both}, {ft}"
            )
            data[f"{kind}_N{N}"] = {k: v for k, v in col.items() if "_i" not in k}
            rows.append(
                f"| {kind} | {N} | {len(runs)} | {summary(col['val/loss'])} | {summary(err)} | "
                f"{summary(ratio)} | {summary(start)} → {summary(sgd)} / {summary(dw)} | "
                f"{verdicts} |"
            )
    (out / "table.json").write_text(json.dumps(data, indent=1))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs")
    parser.add_argument("--steps", type=int, default=5000, help="training steps (paper B: 5000)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--N", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.action == "table":
        print(table(args.out, args.N))
        return
    todo = [(k, N, s, args.steps, args.out) for N in args.N for s in args.seeds for k in args.kinds]
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(run_one, todo):
            print(line, flush=True)


if __name__ == "__main__":
    main()
