"""icl-benchmark: the speed of icl-lightning, measured side by side in one run.

Tables (``--tables``, default ``side-by-side``), each over ``--repeats`` interleaved rounds
(these machines are noisy: ratios are taken within a round, medians printed):

- ``side-by-side``, for one config (``--config``): ``bare``, a plain PyTorch loop of the same
  model, optimizer, clipping and batches; ``loop``, ``trainer.fit`` with no callbacks and no
  logger (its cost over ``bare`` bounds ``fit / bare`` from above); ``fit``, the config as
  ``icl-lightning fit`` builds it (logging, progress bar, checkpoints) without its probes;
  ``shipped``, the same with the config's probes at their shipped cadence (below); ``jax``
  (``--jax-python`` and ``--jax-ref``), the official JAX code's one-layer training step.
- ``deep``: paper A's deep LSA from ``--deep-config`` at L = 2, L = 4 (lr 5e-4, clipping 10)
  and the recurrent L = 4, ``fit`` and ``shipped``, beside the official code's step of the same
  model (``bench_ref.py STEPS train-only layers=L deq=0``, ``deq=1`` for the recurrent one).
- ``probes``: every config of ``--configs``: ``fit`` without its probes
  (``--trainer.callbacks=[]``), ``shipped``, and the probes' share ``1 - shipped / fit``; and
  for each config whose training takes at most ``--whole-run-limit`` seconds, its whole run as
  shipped, in a process of its own: the wall time and the share of it spent in the probes' hook
  calls (measured, not extrapolated; :func:`time_whole_run`).
- ``flops``: every config of ``--configs`` and paper A's deep variants of ``--deep-config``
  (L = 3, 4, 5 and the recurrent L = 4): the training step's FLOPs as
  ``torch.utils.flop_counter`` counts them on the per-layer PyTorch formulation
  (:func:`~icl_lightning.models.batch_last.disabled`: the counter cannot see into the CPU
  kernels, and a faster formulation does the same work), the step's time on one fixed batch
  (forward, loss, backward, clipping, optimizer), its GFLOP/s and their share of this machine's
  one-thread float32 peak (:func:`matmul_peak`, a 2048^3 product timed before and after each
  row), the bare loop (the step with the data sampled, as ``bare``) and, where the official code
  has the same model, its step and ``bare / JAX``.
- ``scaling``: short fits over N, d and L of the LSA and contextual-block configs: steps/s and
  seconds per probe measurement.
- ``contextual``: paper B's block with every kind of contextual layer, ``bare`` beside ``fit``
  and the Delta-W probes' seconds against N (:mod:`icl_lightning.bench_contextual`).

Steps/s count from the start of step ``--warmup`` to the start of the last step
(:class:`~icl_lightning.profiling.HookTimer`, Lightning's profiler interface; the bare loop
reads the same clock at the same point).

``shipped``: a config's probes measure every ``every_n_steps`` of a ``max_steps`` run (plus
once at the start and once at the end, where they also draw their figures), far more steps than
a benchmark can run. So the probes' cost is measured, not their share: one more fit of
``--probe-steps`` steps, in which every probe measures every ``probe_steps // 3`` steps, times
each probe's hook calls (the first measurement, with its one-off work such as drawing the
evaluation set; a periodic measurement; the figures; the hooks of every step; the hooks that
run once, such as setup and teardown), and these costs are extrapolated to the shipped cadence
and length: ``P = first + n * measurement + figures + once + max_steps * per_step`` with ``n``
the measurements after the first in ``max_steps`` steps, and
``shipped = max_steps / (max_steps / fit + P)`` steps/s.

Peak memory: max RSS on CPU (reset before each run), ``torch.cuda.max_memory_allocated`` on
GPU. The runs' own output (progress bars, Lightning's messages) goes to a log file in ``--out``
(``--verbose``: to the terminal). Extra ``--model...``/``--data...``/``--trainer...``/
``--optimizer...`` arguments go to every run (after the deep rows' own options).

    icl-benchmark --steps 1000 --repeats 3
    icl-benchmark --tables deep probes --jax-python PATH --jax-ref DIR
    icl-benchmark --tables flops --threads 1 --jax-python PATH --jax-ref DIR
    icl-benchmark --tables scaling
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch
from torch.utils.flop_counter import FlopCounterMode

from icl_lightning.callbacks.probe import Probe
from icl_lightning.cli import ICLLightningCLI, run_process
from icl_lightning.models import batch_last
from icl_lightning.profiling import HookTimer, peak_memory_mb, reset_peak_memory
from icl_lightning.theory.loss import prediction_loss

TABLES = ("side-by-side", "deep", "probes", "flops", "scaling", "contextual", "garg")
PASSED_ON = ("--model", "--data", "--trainer", "--optimizer", "--lr_scheduler")
#: paper A's deep settings for L > 3 (its notebook; bench_ref.py uses the same)
DEEP_L4 = ["--model.model.num_layers=4", "--optimizer.init_args.lr=5e-4"]
DEEP_L4 += ["--trainer.gradient_clip_val=10", "--model.model.clip=10"]
#: the official code's model of each shipped config (``bench_ref.py`` options)
JAX_MODELS = {"lsa_linear": [], "lsa_deep": ["layers=2", "deq=0"]}


@dataclass
class Row:
    """One model to time: a config, options added to it, and the official code's same model
    (``bench_ref.py`` options; ``None``: none)."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    jax: list[str] | None = None


def deep_rows(config: str, extra: list[str]) -> list[Row]:
    """Paper A's deep models: L = 2 as shipped, L = 4 and the recurrent L = 4 (then ``extra``)."""
    recurrent = [*DEEP_L4, "--model.model.recurrent=true"]
    return [
        Row("L = 2", config, extra, ["layers=2", "deq=0"]),
        Row("L = 4", config, [*DEEP_L4, *extra], ["layers=4", "deq=0"]),
        Row("L = 4 recurrent", config, [*recurrent, *extra], ["layers=4", "deq=1"]),
    ]


def deep_variants(config: str, extra: list[str]) -> list[Row]:
    """Paper A's deeper models beside the shipped L = 2: L = 3 (gradient clipping 10), L = 4
    and 5 (lr 5e-4, gradient and activation clipping 10), the recurrent L = 4."""
    L3 = ["--model.model.num_layers=3", "--trainer.gradient_clip_val=10"]
    L5 = [*DEEP_L4, "--model.model.num_layers=5"]
    return [
        Row("lsa_deep L = 3", config, [*L3, *extra], ["layers=3", "deq=0"]),
        Row("lsa_deep L = 4", config, [*DEEP_L4, *extra], ["layers=4", "deq=0"]),
        Row("lsa_deep L = 5", config, [*L5, *extra], ["layers=5", "deq=0"]),
        *deep_rows(config, extra)[2:],
    ]


# ------------------------------------------------------------------------- the runs' output
@contextlib.contextmanager
def output_to(log: Path | None):
    """Send everything written to this process's stdout and stderr (file descriptors 1 and 2:
    progress bars, logging, warnings) to ``log`` while inside; ``None``: leave it as it is."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# ---------------------------------------------------------------------------------- runs
def _args(config: str, log_dir: str, extra: list[str], probes: bool = True) -> list[str]:
    """CLI options of the config as ``icl-lightning fit`` builds it, logging into ``log_dir``;
    with ``probes=False`` as ``--trainer.callbacks=[]``."""
    args = [f"--config={config}", *extra, f"--trainer.logger.init_args.save_dir={log_dir}"]
    return args if probes else [*args, "--trainer.callbacks=[]"]


def build(
    config: str, log_dir: str, extra: list[str], steps: int, probes: bool = True
) -> ICLLightningCLI:
    """The config as ``icl-lightning fit`` builds it (logger, progress bar, checkpointing),
    for ``steps`` steps (see :func:`_args`)."""
    args = [*_args(config, log_dir, extra, probes), f"--trainer.max_steps={steps}"]
    return ICLLightningCLI(args=args, run=False)


def shipped_max_steps(cli: ICLLightningCLI, config: str, extra: list[str]) -> int:
    """The config's own ``trainer.max_steps`` (with ``extra``), parsed by ``cli``'s parser."""
    return cli.parser.parse_args(_args(config, "logs", extra)).trainer.max_steps


def probes_of(cli: ICLLightningCLI) -> list[Probe]:
    return [c for c in cli.trainer.callbacks if isinstance(c, Probe)]


def fit(cli: ICLLightningCLI, timed: list[Probe] = ()) -> HookTimer:
    """``trainer.fit``, clocked by a :class:`HookTimer` (timing the hook
    calls of ``timed``)."""
    timer = HookTimer([probe.state_key for probe in timed])
    cli.trainer.profiler = timer
    reset_peak_memory(cli.trainer.strategy.root_device)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer


def time_fit(row: Row, steps: int, warmup: int, loop_only: bool = False) -> dict:
    """Steps/s of ``trainer.fit`` without the config's probes (``loop_only``: without any
    callback or logger: Lightning's loop alone)."""
    with tempfile.TemporaryDirectory() as log_dir:
        cli = build(row.config, log_dir, row.overrides, steps, probes=False)
        if loop_only:
            cli.trainer.callbacks, cli.trainer.loggers = [], []
        timer = fit(cli)
        device = cli.trainer.strategy.root_device
        return {"steps_per_s": timer.steps_per_second(warmup), "peak_mb": peak_memory_mb(device)}


def _bare_parts(row: Row) -> tuple:
    """The model, datamodule, optimizer, gradient clip and device of ``row`` as the CLI builds
    them, the model on its device."""
    with tempfile.TemporaryDirectory() as log_dir:
        cli = build(row.config, log_dir, row.overrides, 2, probes=False)
    model, data, trainer = cli.model.model, cli.datamodule, cli.trainer
    device = trainer.strategy.root_device
    model.to(device)
    optimizer = cli.model.configure_optimizers()
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
    return model, data, optimizer, trainer.gradient_clip_val, device


def _train_step(model, optimizer, clip, batch) -> None:
    """One plain PyTorch training step: forward, loss, backward, clipping, optimizer."""
    pred = model(batch.context_x, batch.context_y, batch.query_x)
    loss = prediction_loss(pred, batch.query_y).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


def time_bare(row: Row, steps: int, warmup: int, fixed_batch: bool = False) -> dict:
    """Steps/s of a plain PyTorch loop: same model, optimizer, clipping, on-device batches
    (``fixed_batch``: the first batch every step, the training step alone)."""
    model, data, optimizer, clip, device = _bare_parts(row)
    timer = HookTimer([])
    reset_peak_memory(device)
    batch = data.train_batch(0, device=device)
    for step in range(steps):
        timer.start_step()  # the clock of fit's steps, read at the same point
        _train_step(
            model, optimizer, clip, batch if fixed_batch else data.train_batch(step, device=device)
        )
    return {"steps_per_s": timer.steps_per_second(warmup), "peak_mb": peak_memory_mb(device)}


def step_flops(row: Row) -> int:
    """FLOPs of one training step (after a first one, which sets up the optimizer's state)
    as ``torch.utils.flop_counter`` counts them, on the per-layer PyTorch formulation."""
    model, data, optimizer, clip, device = _bare_parts(row)
    batch = data.train_batch(0, device=device)
    _train_step(model, optimizer, clip, batch)
    with batch_last.disabled(), FlopCounterMode(display=False) as counter:
        _train_step(model, optimizer, clip, batch)
    return counter.get_total_flops()


def matmul_peak(n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of this machine's fastest of ``repeats`` ``n x n x n`` float32 matrix products
    on one thread (``2 n^3`` FLOPs each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / min(seconds) / 1e9


#: the callback hooks Lightning calls once in every optimizer step (``on_train_batch_end``,
#: where a probe measures, is timed with the measurements)
STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)


def probe_costs(timer: HookTimer, probe: Probe, steps: int) -> dict[str, float]:
    """Seconds of one probe in a fit of ``steps`` steps: ``first`` (its measurement at the
    start, with one-off work), ``measurement`` (one periodic measurement: its
    ``on_train_batch_end`` time over the measurements made there), ``figures`` (its
    ``on_train_end`` less the last measurement when it made one there), ``per_step`` (the
    :data:`STEP_HOOKS`, per step) and ``once`` (every other hook: setup, teardown, the
    validation and checkpoint hooks, which run once or at their own cadence, not per step)."""
    key, every = probe.state_key, probe.every_n_steps
    periodic = [s for s in probe.history if s > 0 and every and s % every == 0]
    first = timer.seconds(key, "on_train_start")
    batch_end = timer.seconds(key, "on_train_batch_end")
    end = timer.seconds(key, "on_train_end")
    measurement = batch_end / len(periodic) if periodic else end
    final_measured = steps not in periodic
    per_step = sum(timer.seconds(key, hook) for hook in STEP_HOOKS)
    timed = {"on_train_start", "on_train_batch_end", "on_train_end", *STEP_HOOKS}
    hooks = {hook for span_key, hook, *_ in timer.spans if span_key == key} - timed
    return {
        "first": first,
        "measurement": measurement,
        "figures": max(0.0, end - measurement * final_measured),
        "per_step": per_step / steps,
        "once": sum(timer.seconds(key, hook) for hook in hooks),
    }


def shipped_seconds(costs: dict[str, float], every: int, max_steps: int) -> float:
    """A probe's seconds in a run of ``max_steps`` steps measuring every ``every`` steps
    (0: at the start and end only): ``first + n * measurement + figures + once +
    max_steps * per_step``, with ``n`` the measurements after the first (one at every multiple
    of ``every``, and the last step)."""
    periodic = max_steps // every if every else 0
    final = 0 if every and max_steps % every == 0 else 1
    fixed = costs["first"] + costs["figures"] + costs["once"]
    return fixed + (periodic + final) * costs["measurement"] + costs["per_step"] * max_steps


def time_probes(row: Row, steps: int) -> dict:
    """One fit of ``steps`` steps with the config's probes measuring every ``steps // 3``
    steps: each probe's costs (:func:`probe_costs`), its seconds in the shipped run
    (:func:`shipped_seconds` at its own ``every_n_steps`` and the config's ``max_steps``)."""
    with tempfile.TemporaryDirectory() as log_dir:
        cli = build(row.config, log_dir, row.overrides, steps)
        probes, max_steps = probes_of(cli), shipped_max_steps(cli, row.config, row.overrides)
        shipped_every = {probe.state_key: probe.every_n_steps for probe in probes}
        for probe in probes:
            probe.every_n_steps = max(1, steps // 3)
        timer = fit(cli, probes)
    per_probe = {}
    for probe in probes:
        costs = probe_costs(timer, probe, steps)
        every = shipped_every[probe.state_key]
        seconds = shipped_seconds(costs, every, max_steps)
        per_probe[probe.state_key] = {**costs, "every_n_steps": every, "shipped_s": seconds}
    total = sum(p["shipped_s"] for p in per_probe.values())
    return {"max_steps": max_steps, "probes": per_probe, "shipped_s": total}


def time_whole_run(row: Row, log: Path | None, threads: int | None) -> dict:
    """Wall seconds of the whole ``icl-lightning fit`` run of ``row`` as shipped, in a process of
    its own (imports, set-up, training, validation, checkpoints and summary), and its probes'
    seconds in it, timed by their hook calls (:mod:`icl_lightning.bench_whole_run`); ``share``
    is their ratio."""
    with tempfile.TemporaryDirectory() as log_dir:
        out = Path(log_dir) / "probe_seconds.json"
        options = _args(row.config, log_dir, row.overrides)
        cmd = [sys.executable, "-m", "icl_lightning.bench_whole_run", str(out), *options]
        env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        _run_child(cmd, log, env)
        wall = time.perf_counter() - start
        got = json.loads(out.read_text())
    probes = sum(got["probe_seconds"].values())
    return {"wall_s": wall, "probes_s": probes, "share": probes / wall, **got}


def _run_child(cmd: list[str], log: Path | None, env: dict | None = None) -> tuple[str, float]:
    """Run a command; its stdout and peak RSS in MB (``os.wait4``); stderr to ``log``."""
    with open(log or os.devnull, "a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        stderr = None if log is None else err
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        where = f"; its output is in {log}" if log else ""
        sys.exit(f"{' '.join(cmd)} failed (exit {code}){where}")
    return out.decode(), usage.ru_maxrss / 1024


def time_jax(python: str, ref: str, steps: int, options: list[str], threads, log) -> dict:
    """Steps/s of the official JAX code's training step (``bench_ref.py STEPS train-only
    OPTIONS``, compile excluded by its own warm-up step); ``threads = 1`` runs XLA's CPU client
    on one thread."""
    env = None
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    cmd = [python, str(Path(ref) / "bench_ref.py"), str(steps), "train-only", *options]
    out, peak = _run_child(cmd, log, env=env)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"{ref}/bench_ref.py printed no 'RESULT {{...}}' line:\n{out[-2000:]}")
    return {"steps_per_s": json.loads(lines[-1][7:])["steps_per_s"], "peak_mb": peak}


def shipped(fit_steps_per_s: float, probes: dict) -> dict:
    """Steps/s of the shipped run, ``max_steps / (max_steps / fit + P)``, and the probes'
    share of its time, ``P / (max_steps / fit + P)``."""
    steps, seconds = probes["max_steps"], probes["shipped_s"]
    total = steps / fit_steps_per_s + seconds
    return {"steps_per_s": steps / total, "share": seconds / total}


# ------------------------------------------------------------------------------- tables
def _spread(values: list[float], fmt: str = ".2f") -> str:
    return f"{min(values):{fmt}} - {max(values):{fmt}}" if len(values) > 1 else "-"


def jax_round(row: Row, args, log, got: dict) -> str:
    """Time the official step of ``row`` once, append it to ``got["jax"]`` and return the
    round's line suffix ``, JAX <steps/s> steps/s``."""
    result = time_jax(args.jax_python, args.jax_ref, args.jax_steps, row.jax, args.threads, log)
    got.setdefault("jax", []).append(result)
    return f", JAX {result['steps_per_s']:.1f} steps/s"


def measure_rows(
    rows: list[Row], args, log, jax: bool, whole_run_limit: float = 0.0
) -> dict[str, dict]:
    """``fit``, probe costs and (with ``jax``) the official step of every row, interleaved
    over ``args.repeats`` rounds, a line per row and round; and the whole run
    (:func:`time_whole_run`) of every row whose training is estimated to take at most
    ``whole_run_limit`` seconds (``max_steps / fit``)."""
    runs: dict[str, dict[str, list]] = {row.name: {} for row in rows}
    for r in range(1, args.repeats + 1):
        for row in rows:
            start = time.perf_counter()
            got = runs[row.name]
            with output_to(log):
                fitted = time_fit(row, args.steps, args.warmup)
                probes = time_probes(row, args.probe_steps)
            got.setdefault("fit", []).append(fitted)
            got.setdefault("probes", []).append(probes)
            got.setdefault("shipped", []).append(shipped(fitted["steps_per_s"], probes))
            line = f"round {r}/{args.repeats}  {row.name}: fit {fitted['steps_per_s']:.1f}"
            line += f", shipped {got['shipped'][-1]['steps_per_s']:.1f} steps/s"
            line += f" (probes {got['shipped'][-1]['share']:.1%})"
            if probes["max_steps"] / fitted["steps_per_s"] <= whole_run_limit:
                whole = time_whole_run(row, log, args.threads)
                got.setdefault("whole", []).append(whole)
                line += f", whole run {whole['wall_s']:.1f} s (probes {whole['share']:.1%})"
            if jax and row.jax is not None:
                line += jax_round(row, args, log, got)
            print(f"{line}   [{time.perf_counter() - start:.0f} s]", flush=True)
    return runs


def measure_flops(rows: list[Row], args, log, jax: bool) -> dict[str, dict]:
    """Per row: the counted FLOPs per step (once), and over ``args.repeats`` interleaved rounds
    the one-thread matmul peak before and after, the step on a fixed batch, the bare loop and
    (with ``jax``, where the official code has the model) its step."""
    runs: dict[str, dict] = {row.name: {"peak": [], "step": [], "bare": []} for row in rows}
    for r in range(1, args.repeats + 1):
        for row in rows:
            start, got = time.perf_counter(), runs[row.name]
            with output_to(log):
                if "flops" not in got:
                    got["flops"] = step_flops(row)
                before = matmul_peak()
                got["step"].append(time_bare(row, args.steps, args.warmup, fixed_batch=True))
                got["peak"].append((before + matmul_peak()) / 2)
                got["bare"].append(time_bare(row, args.steps, args.warmup))
            gflops = got["flops"] * got["step"][-1]["steps_per_s"] / 1e9
            line = f"round {r}/{args.repeats}  {row.name}: {got['flops'] / 1e6:.1f} MFLOP, "
            line += f"{gflops:.1f} GFLOP/s = {gflops / got['peak'][-1]:.1%} of one thread's "
            line += f"{got['peak'][-1]:.0f}, bare {got['bare'][-1]['steps_per_s']:.1f} steps/s"
            if jax and row.jax is not None:
                line += jax_round(row, args, log, got)
            print(f"{line}   [{time.perf_counter() - start:.0f} s]", flush=True)
    return runs


def flops_table(runs: dict[str, dict]) -> list[str]:
    """Markdown: per row, counted FLOPs per step, the step's time, GFLOP/s and share of the
    one-thread matmul peak, the bare loop, the official step and the ratio."""
    lines = [
        "| config | counted MFLOP / step | step ms | GFLOP/s | % of one-thread peak (min - max) "
        "| peak GFLOP/s | bare steps/s | JAX steps/s | bare / JAX (min - max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, got in runs.items():
        step = [s["steps_per_s"] for s in got["step"]]
        gflops = [got["flops"] * sps / 1e9 for sps in step]
        share = [g / p for g, p in zip(gflops, got["peak"], strict=True)]
        bare = [b["steps_per_s"] for b in got["bare"]]
        cells = [name, f"{got['flops'] / 1e6:.1f}", f"{1e3 / median(step):.2f}"]
        cells += [f"{median(gflops):.1f}", f"{median(share):.1%} ({_spread(share, '.1%')})"]
        cells += [f"{median(got['peak']):.0f}", f"{median(bare):.1f}"]
        if "jax" in got:
            jax = [j["steps_per_s"] for j in got["jax"]]
            ratio = [a / b for a, b in zip(bare, jax, strict=True)]
            cells += [f"{median(jax):.1f}", f"{median(ratio):.2f} ({_spread(ratio)})"]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def deep_table(runs: dict[str, dict]) -> list[str]:
    """Markdown: per deep model, steps/s of fit and shipped, the JAX step, their ratios."""
    lines = [
        "| model | fit steps/s | shipped steps/s | probes | JAX steps/s | fit / JAX "
        "| shipped / JAX (min - max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, got in runs.items():
        fit_sps = [f["steps_per_s"] for f in got["fit"]]
        ship = [s["steps_per_s"] for s in got["shipped"]]
        share = median(s["share"] for s in got["shipped"])
        cells = [name, f"{median(fit_sps):.1f}", f"{median(ship):.1f}", f"{share:.1%}"]
        if "jax" in got:
            jax = [j["steps_per_s"] for j in got["jax"]]
            by_fit = [a / b for a, b in zip(fit_sps, jax, strict=True)]
            by_ship = [a / b for a, b in zip(ship, jax, strict=True)]
            cells += [f"{median(jax):.1f}", f"{median(by_fit):.2f}"]
            cells += [f"{median(by_ship):.2f} ({_spread(by_ship)})"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def probes_table(runs: dict[str, dict]) -> list[str]:
    """Markdown: per config, steps/s without and with its probes (shipped cadence), the
    share, and each probe's seconds per measurement and cadence."""
    lines = [
        "| config | max_steps | fit without probes, steps/s | with probes (shipped) | share "
        "(min - max) | whole run: s, probes' share (min - max) "
        "| per probe: s per measurement, every_n_steps, first |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, got in runs.items():
        fit_sps = median(f["steps_per_s"] for f in got["fit"])
        ship = median(s["steps_per_s"] for s in got["shipped"])
        shares = [s["share"] for s in got["shipped"]]
        probes = got["probes"][-1]["probes"]
        detail = "; ".join(
            f"{key} {median(p['probes'][key]['measurement'] for p in got['probes']):.3f} s "
            f"/ {probes[key]['every_n_steps']}, first "
            f"{median(p['probes'][key]['first'] for p in got['probes']):.2f} s"
            for key in probes
        )
        cells = [name, str(got["probes"][-1]["max_steps"]), f"{fit_sps:.1f}", f"{ship:.1f}"]
        cells += [f"{median(shares):.1%} ({_spread(shares, '.1%')})"]
        whole = got.get("whole", [])
        wall, whole_shares = [w["wall_s"] for w in whole], [w["share"] for w in whole]
        cells += [
            f"{median(wall):.1f} s, {median(whole_shares):.1%} ({_spread(whole_shares, '.1%')})"
            if whole
            else "-"
        ]
        cells += [detail or "no probes"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def side_by_side(args, extra: list[str], log) -> tuple[list[str], dict]:
    """``bare``, ``loop``, ``fit``, ``shipped`` (and ``jax``) on ``args.config``."""
    row = Row(Path(args.config).stem, args.config, extra)
    runs: dict[str, list[dict]] = {"bare": [], "loop": [], "fit": [], "shipped": []}
    if args.jax_python:
        runs["jax"] = []
    for r in range(1, args.repeats + 1):
        start = time.perf_counter()
        with output_to(log):
            runs["bare"].append(time_bare(row, args.steps, args.warmup))
            runs["loop"].append(time_fit(row, args.steps, args.warmup, loop_only=True))
            runs["fit"].append(time_fit(row, args.steps, args.warmup))
            probes = time_probes(row, args.probe_steps)
        runs["shipped"].append({**shipped(runs["fit"][-1]["steps_per_s"], probes), **probes})
        if args.jax_python:
            jax = time_jax(args.jax_python, args.jax_ref, args.jax_steps, [], args.threads, log)
            runs["jax"].append(jax)
        shown = ", ".join(f"{name} {v[-1]['steps_per_s']:.1f}" for name, v in runs.items())
        print(f"round {r}/{args.repeats}  {shown} steps/s   [{time.perf_counter() - start:.0f} s]")

    def ratio(a: str, b: str) -> list[float]:  # one per round
        pairs = zip(runs[a], runs[b], strict=True)
        return [x["steps_per_s"] / y["steps_per_s"] for x, y in pairs]

    ratios = {"loop / bare": ratio("loop", "bare"), "fit / bare": ratio("fit", "bare")}
    ratios["shipped / fit"] = ratio("shipped", "fit")
    if args.jax_python:
        ratios["fit / jax"], ratios["shipped / jax"] = ratio("fit", "jax"), ratio("shipped", "jax")
    if args.reference_steps_per_s:
        for name in ("fit", "shipped"):
            ratios[f"{name} / reference"] = [
                r["steps_per_s"] / args.reference_steps_per_s for r in runs[name]
            ]
    lines = [f"config {args.config} {' '.join(extra)}".rstrip(), ""]
    lines += ["| ratio | median | min - max |", "|---|---|---|"]
    lines += [f"| {k} | {median(v):.3f} | {_spread(v, '.3f')} |" for k, v in ratios.items()]
    lines += ["", "| run | steps/s (median) | every round | peak MB |", "|---|---|---|---|"]
    for name, values in runs.items():
        shown = ", ".join(f"{v['steps_per_s']:.1f}" for v in values)
        peak = f"{median(v['peak_mb'] for v in values):.0f}" if "peak_mb" in values[0] else "-"
        lines.append(
            f"| {name} | {median(v['steps_per_s'] for v in values):.1f} | {shown} | {peak} |"
        )
    share = median(v["share"] for v in runs["shipped"])
    lines += ["", f"probes' share of the shipped run: {share:.1%}"]
    return lines, {"ratios": ratios, "runs": runs}


# ------------------------------------------------------------------------------ scaling
SCALING = {  # family: (config, base overrides, {axis: (option, values)})
    "lsa": (
        "configs/lsa_linear.yaml",
        [],
        {
            "N": ("--data.init_args.num_context", [10, 100, 400, 1024]),
            "d": ("--data.init_args.task.init_args.input_dim", [2, 10, 32]),
            "L": ("--model.model.init_args.num_layers", list(range(1, 9))),
        },
    ),
    "contextual_block": (  # paper B's public replication: d = 2, 8 heads of 4, width 128
        "configs/contextual_block.yaml",
        [
            "--data.init_args.task.init_args.input_dim=2",
            "--data.init_args.num_context=100",
            "--data.init_args.batch_size=64",
            "--model.model.init_args.num_heads=8",
            "--model.model.init_args.key_size=4",
            "--model.model.init_args.mlp_width=128",
        ],
        {
            "N": ("--data.init_args.num_context", [10, 100, 400, 1024]),
            "d": ("--data.init_args.task.init_args.input_dim", [2, 10, 32]),
        },
    ),
}


def scaling(args, extra: list[str], log) -> tuple[list[str], list[dict]]:
    """Steps/s of ``fit`` and seconds per probe measurement, one axis varied at a time."""
    rows, lines = [], []
    for family, (config, base, axes) in SCALING.items():
        if args.family and family not in args.family:
            continue
        probe_names: list[str] = []
        for axis, (option, values) in axes.items():
            for value in values:
                row = Row(f"{family} {axis}={value}", config, [*base, f"{option}={value}", *extra])
                with output_to(log):
                    fitted = time_fit(row, args.scaling_steps, 2)
                    probes = time_probes(row, args.scaling_steps)
                seconds = {k: p["measurement"] for k, p in probes["probes"].items()}
                probe_names = list(seconds)
                rows.append(
                    {
                        "family": family,
                        "axis": axis,
                        "value": value,
                        **fitted,
                        "probe_seconds": seconds,
                    }
                )
                shown = ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items())
                print(f"{row.name}: {fitted['steps_per_s']:.1f} steps/s | {shown}", flush=True)
        head = ["axis", "steps/s (fit)", "peak MB"] + [f"{p} s" for p in probe_names]
        lines += [f"### {family}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in (r for r in rows if r["family"] == family):
            cells = [
                f"{r['axis']} = {r['value']}",
                f"{r['steps_per_s']:.1f}",
                f"{r['peak_mb']:.0f}",
            ]
            cells += [f"{r['probe_seconds'][p]:.3f}" for p in probe_names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines, rows


# ------------------------------------------------------------------------------ command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icl-benchmark", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    p.add_argument("--tables", nargs="+", choices=TABLES, default=["side-by-side"])
    p.add_argument("--out", default="reports/benchmark", help="folder of the reports and log")
    p.add_argument("--name", default="benchmark", help="report file names: OUT/NAME.md, .json")
    p.add_argument("--verbose", action="store_true", help="show the runs' own output")
    p.add_argument("--config", default="configs/lsa_linear.yaml", help="side-by-side's config")
    p.add_argument("--deep-config", default="configs/lsa_deep.yaml")
    p.add_argument("--configs", nargs="+", help="probes and flops tables (default: configs/*.yaml)")
    p.add_argument("--steps", type=int, default=1050, help="steps per bare/loop/fit run")
    p.add_argument("--warmup", type=int, default=50, help="steps before the clock starts")
    p.add_argument("--probe-steps", type=int, default=150, help="steps of the probes' run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--jax-python", help="a Python with jax, optax, dm-haiku, ml_collections")
    p.add_argument("--jax-ref", help="folder of the official code, with bench_ref.py")
    p.add_argument("--jax-steps", type=int, default=1000)
    p.add_argument("--garg-python", help="garg table: Python of Garg et al.'s env (bench.md)")
    p.add_argument("--garg-ref", help="garg table: Garg et al.'s src/ folder (models.py)")
    p.add_argument("--reference-steps-per-s", type=float, help="a figure measured elsewhere")
    p.add_argument("--threads", type=int, help="torch threads (1: XLA on one thread too)")
    p.add_argument(
        "--whole-run-limit",
        type=float,
        default=60.0,
        help="probes: also time the whole run of configs that train in at most this many s",
    )
    p.add_argument("--scaling-steps", type=int, default=30, help="fit steps per scaling point")
    p.add_argument("--family", nargs="+", choices=list(SCALING), help="scaling: these only")
    return p


def check(p: argparse.ArgumentParser, args, extra: list[str]) -> None:
    """A usage error (exit 2) naming the option, for every option that cannot work."""
    bad = [a for a in extra if not a.startswith(PASSED_ON)]
    if bad:
        p.error(f"unknown arguments {bad}: only {', '.join(o + '.*' for o in PASSED_ON)} pass on")
    for name in ("repeats", "jax_steps", "scaling_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= 1")
    if args.warmup < 0:
        p.error(f"--warmup {args.warmup}: expected an integer >= 0")
    if args.steps < args.warmup + 2:
        p.error(
            f"--steps {args.steps}: expected an integer >= --warmup + 2 = {args.warmup + 2} "
            "(the clock counts the steps after the warm-up)"
        )
    if args.probe_steps < 3:
        p.error(f"--probe-steps {args.probe_steps}: expected an integer >= 3")
    if args.jax_ref and not args.jax_python:
        p.error("--jax-python is missing: --jax-ref needs a Python with jax to run bench_ref.py")
    if args.jax_python and not args.jax_ref:
        p.error("--jax-ref is missing: --jax-python needs the folder holding bench_ref.py")
    if args.jax_python and not Path(args.jax_python).is_file():
        p.error(f"--jax-python {args.jax_python}: no such file (expected a Python executable)")
    if args.jax_ref and not (Path(args.jax_ref) / "bench_ref.py").is_file():
        p.error(f"--jax-ref {args.jax_ref}: expected a folder containing bench_ref.py")
    if args.whole_run_limit < 0:
        p.error(f"--whole-run-limit {args.whole_run_limit}: expected seconds >= 0 (0: none)")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: expected an integer >= 1")
    needed = {
        "side-by-side": [("--config", args.config)],
        "deep": [("--deep-config", args.deep_config)],
        "probes": [("--configs", c) for c in args.configs or []],
        "flops": [("--deep-config", args.deep_config)],
    }
    needed["flops"] += needed["probes"]
    for table in args.tables:
        for option, path in needed.get(table, []):
            if not Path(path).is_file():
                p.error(f"{option} {path}: no such file")
    if {"probes", "flops"} & set(args.tables) and not args.configs:
        args.configs = sorted(str(c) for c in Path("configs").glob("*.yaml"))
        if not args.configs:
            p.error(f"--configs: no configs/*.yaml in {Path.cwd()}; name the config files")


def _command(args) -> str:
    """The command line, this machine's JAX paths replaced by names."""
    local = {args.jax_python: "JAX_PYTHON", args.jax_ref: "JAX_REF"}
    return " ".join(["icl-benchmark", *(local.get(a, a) for a in sys.argv[1:])])


def write_report(report: Path, meta: dict, sections: list[str], results: dict) -> list[str]:
    """Write the tables so far to ``report`` (markdown) and its ``.json`` twin (every round's
    figures); return the markdown's lines."""
    meta["load_average_after"] = os.getloadavg()[0]
    head = (
        f"# icl-benchmark ({meta['machine']}, torch threads {meta['threads']}, {meta['date']}, "
        f"load {meta['load_average_before']:.1f} -> {meta['load_average_after']:.1f})"
    )
    text = [head, "", f"    {meta['command']}", "", *sections]
    report.write_text("\n".join(text))
    report.with_suffix(".json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    return text


def run_table(table: str, args, extra: list[str], log) -> tuple[list[str], str, object]:
    """One table of ``args.tables``: its markdown lines, its title and its results."""
    jax = bool(args.jax_python)
    if table == "side-by-side":
        lines, result = side_by_side(args, extra, log)
        title = "Side by side"
    elif table == "deep":
        result = measure_rows(deep_rows(args.deep_config, extra), args, log, jax)
        lines, title = deep_table(result), "Deep LSA beside the official JAX step"
    elif table == "probes":
        rows = [Row(Path(c).stem, c, extra) for c in args.configs]
        result = measure_rows(rows, args, log, jax=False, whole_run_limit=args.whole_run_limit)
        lines, title = probes_table(result), "The probes' share of each config"
    elif table == "flops":
        rows = [Row(Path(c).stem, c, extra, JAX_MODELS.get(Path(c).stem)) for c in args.configs]
        rows += deep_variants(args.deep_config, extra)
        result = measure_flops(rows, args, log, jax)
        lines, title = flops_table(result), "FLOPs per step against the machine's peak"
    elif table == "contextual":  # paper B's block with every contextual layer
        from icl_lightning.bench_contextual import contextual_table

        lines, result = contextual_table(args, extra, log)
        title = "Paper B's block with every kind of contextual layer"
    elif table == "garg":  # Garg et al.'s baselines and GPT-2 step (docs/bench.md)
        from icl_lightning.bench_garg import garg_tables

        if not (args.garg_python and args.garg_ref):
            raise SystemExit("--tables garg needs --garg-python and --garg-ref")
        lines, result = garg_tables(args.garg_python, args.garg_ref, args.repeats)
        title = "Garg et al.'s bench beside their code"
    else:
        lines, result = scaling(args, extra, log)
        title = "Scaling"
    return lines, title, result


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``icl-benchmark`` (and ``scripts/benchmark.py``)."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    check(p, args, extra)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = None if args.verbose else out / f"{args.name}.log"
    if log is not None:
        log.write_text("")
        print(f"the runs' own output goes to {log} (--verbose shows it here)", flush=True)
    meta = {
        "machine": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{os.cpu_count()} CPUs",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before": os.getloadavg()[0],
        "command": _command(args),
    }
    sections: list[str] = []
    results: dict = {}
    with run_process():  # as icl-lightning runs
        for table in args.tables:
            print(f"--- {table}", flush=True)
            lines, title, results[table] = run_table(table, args, extra, log)
            sections += [f"## {title}", "", *lines, ""]
            text = write_report(out / f"{args.name}.md", meta, sections, results)
    print("\n" + "=" * 30 + " results " + "=" * 30 + "\n" + "\n".join(text))
    report = out / f"{args.name}.md"
    print(f"wrote {report} and {report.with_suffix('.json')}")


if __name__ == "__main__":
    main()
