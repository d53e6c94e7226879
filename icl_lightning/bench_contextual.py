"""icl-benchmark's ``contextual`` table: paper B's block with every kind of contextual layer.

For each kind (``attention`` as paper B's public replication, 8 heads of 4; ``rnn``, ``gru``,
``lstm``, ``diagonal``, ``selective`` from ``configs/contextual_block_<kind>.yaml``), at paper
B's set-up (d = 2, N = 100, batch 64, MLP width 128), over ``--repeats`` interleaved rounds:

- ``bare``: a plain PyTorch loop of the same block, optimizer and batches, ``fit``: the
  block as ``icl-lightning fit`` builds it without its probes (logging, progress bar,
  checkpoints), and ``loop``: Lightning's training loop alone (``fit`` without any callback or
  logger, the ceiling of ``fit``), side by side; the ratios ``fit / bare`` and
  ``loop / bare`` per round (medians printed);
- the seconds of one measurement of each Delta-W probe (its ``compute`` over 2,048 evaluation
  tasks in the probe's own chunks) at N = 100, 400 and 1,024, and each kind's ratio to
  attention's at the same N (measured in the same process, one after the other): their growth
  shows the cost is linear in N.

    icl-benchmark --tables contextual --steps 400 --warmup 50 --repeats 3 --threads 1
"""

import time
from statistics import median

import torch

from icl_lightning.benchmark import Row, output_to, time_bare, time_fit
from icl_lightning.callbacks import DeltaWConvergence, DeltaWEquivalence, FinetuneComparison
from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import ContextualBlock

KINDS = ("attention", "rnn", "gru", "lstm", "diagonal", "selective")
#: paper B's set-up (its public replication): d = 2, N = 100, batch 64, width 128
SETUP = [
    "--data.init_args.task.init_args.input_dim=2",
    "--data.init_args.num_context=100",
    "--data.init_args.batch_size=64",
    "--model.model.init_args.mlp_width=128",
]
ATTENTION = ["--model.model.init_args.num_heads=8", "--model.model.init_args.key_size=4"]
PROBES = (DeltaWEquivalence, DeltaWConvergence, FinetuneComparison)
PROBE_N = (100, 400, 1024)
TASKS = 2048


def row(kind: str, extra: list[str]) -> Row:
    """The kind's block at paper B's set-up (``extra`` after it)."""
    if kind == "attention":
        return Row(kind, "configs/contextual_block.yaml", [*SETUP, *ATTENTION, *extra])
    return Row(kind, f"configs/contextual_block_{kind}.yaml", [*SETUP, *extra])


def block(kind: str) -> ContextualBlock:
    """The kind's block as its config builds it at paper B's set-up."""
    options = {"num_heads": 8, "key_size": 4} if kind == "attention" else {}
    state_size = {"attention": None, "selective": 16}.get(kind, 32)
    return ContextualBlock(
        2, mlp_width=128, contextual_layer=kind, state_size=state_size, **options
    ).eval()


def probe_seconds(kind: str, N: int, tasks: int = TASKS) -> dict[str, float]:
    """Seconds of one measurement of each Delta-W probe (``compute`` over ``tasks`` prompts of
    N context points, in the probe's own chunks; the faster of two)."""
    model = block(kind)
    batch = LinearRegression(2, "normal").sample(tasks, N, seeded_generator("cpu", 0))
    seconds = {}
    for probe_class in PROBES:
        probe, times = probe_class(), []
        for _ in range(2):
            start = time.perf_counter()
            with torch.inference_mode():
                for chunk in batch.split(probe.batch_size):
                    probe.compute(model, chunk)
            times.append(time.perf_counter() - start)
        seconds[probe_class.__name__] = min(times)
    return seconds


def _ratio_cell(ratios: list[float]) -> str:
    """``median (min - max)`` of one kind's per-round ratios."""
    return f"{median(ratios):.3f} ({min(ratios):.3f} - {max(ratios):.3f})"


def contextual_table(args, extra: list[str], log) -> tuple[list[str], dict]:
    """Markdown: per kind, ``bare``, ``fit`` and ``loop`` steps/s, ``fit / bare`` and
    ``loop / bare`` (medians over the rounds), then the probes' seconds per measurement
    against N."""
    runs = {kind: {"bare": [], "fit": [], "loop": []} for kind in KINDS}
    for r in range(1, args.repeats + 1):
        for kind in KINDS:
            with output_to(log):
                runs[kind]["bare"].append(time_bare(row(kind, extra), args.steps, args.warmup))
                runs[kind]["fit"].append(time_fit(row(kind, extra), args.steps, args.warmup))
                runs[kind]["loop"].append(
                    time_fit(row(kind, extra), args.steps, args.warmup, loop_only=True)
                )
            bare, fit, loop = (runs[kind][k][-1]["steps_per_s"] for k in ("bare", "fit", "loop"))
            print(
                f"round {r} {kind}: bare {bare:.1f}, fit {fit:.1f}, loop {loop:.1f} steps/s",
                flush=True,
            )
    lines = [
        "| kind | bare steps/s | fit steps/s | fit / bare (median, min - max) "
        "| loop / bare (Lightning's loop alone) |",
        "|---|---|---|---|---|",
    ]
    for kind, values in runs.items():
        bare, fit, loop = ([v["steps_per_s"] for v in values[k]] for k in ("bare", "fit", "loop"))
        for name, steps_per_s in (("fit", fit), ("loop", loop)):
            values[f"{name} / bare"] = [f / b for f, b in zip(steps_per_s, bare, strict=True)]
        lines.append(
            f"| {kind} | {median(bare):.1f} | {median(fit):.1f} | "
            f"{_ratio_cell(values['fit / bare'])} | {_ratio_cell(values['loop / bare'])} |"
        )
    names = [p.__name__ for p in PROBES]
    lines += ["", f"Seconds per probe measurement ({TASKS} tasks; in parentheses: / attention's):"]
    lines += ["", "| kind | N | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    seconds = {}
    for N in PROBE_N:
        for kind in KINDS:  # attention first: every kind's ratio to it, side by side
            s = seconds[f"{kind} N={N}"] = probe_seconds(kind, N)
            ratios = {n: s[n] / seconds[f"attention N={N}"][n] for n in names}
            s |= {f"{n} / attention": ratios[n] for n in names}
            cells = [f"{s[n]:.2f} ({ratios[n]:.2f}x)" for n in names]
            lines.append(f"| {kind} | {N} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return lines, {"runs": runs, "probe_seconds": seconds}
