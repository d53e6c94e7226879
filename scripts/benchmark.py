"""Speed of icl-lightning, measured side by side in one run: ratios first, then steps/s.

Side by side (default), for one config (default: paper A's one-layer set-up,
configs/lsa_linear.yaml), interleaved over ``--repeats`` rounds (these machines are noisy; the
medians are printed):

- ``bare``: a plain PyTorch loop of the same model, optimizer, gradient clipping and batches;
- ``loop``: ``trainer.fit`` with no callbacks and no logger: Lightning's training loop alone,
  whose cost over ``bare`` bounds ``fit / bare`` from above;
- ``fit``: ``trainer.fit`` built by the CLI from the config (logging, progress bar,
  checkpointing as ``icl-lightning fit`` has them), probes removed;
- ``fit+probes``: the config as it is, with the share of the time spent in the probes;
- ``cli`` (``--cli``): ``icl-lightning fit --config C`` as shipped (probes, validation,
  checkpoints; logs in a temporary folder), steps/s as ``(T(K2) - T(K1)) / (K2 - K1)`` for two
  run lengths, so start-up cancels; and the probes' share of that difference;
- ``jax`` (``--jax-python PATH --jax-ref DIR``): the official JAX code's training step,
  ``PATH DIR/bench_ref.py STEPS train-only``.

Steps/s are counted from the draw of batch ``--warmup`` to the draw of the last batch (a clock
wrapped around the datamodule's ``train_batch``, the same for every loop; no extra callback), with
the probes and validation at their cadence inside that window.
Peak memory is printed beside each figure: max RSS on CPU (reset before each measurement),
``torch.cuda.max_memory_allocated`` on GPU. Extra ``--model...``/``--data...``/``--trainer...``
arguments go to the CLI of every run.

``--scaling`` instead times short fits (probes at start and end) over N, d and L for the LSA and
contextual-block configs and writes ``reports/speed/scaling.md`` and ``reports/speed/scaling.json``.

    python scripts/benchmark.py --steps 1000 --repeats 3
    python scripts/benchmark.py --cli --jax-python PATH --jax-ref DIR
    python scripts/benchmark.py --scaling
"""

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from icl_lightning.callbacks import Probe
from icl_lightning.cli import ICLLightningCLI
from icl_lightning.theory.loss import prediction_loss

REPORTS = Path("reports/speed")


# --------------------------------------------------------------------------------- memory
def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak since :func:`reset_peak_memory`: ``max_memory_allocated`` on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------- timing
class _BatchClock:
    """Wall time from the draw of training batch ``warmup`` to the draw of the last one: the
    steps in between, whatever runs them. It wraps the datamodule's ``train_batch`` (no
    callback: the clock adds nothing to Lightning's loop), the same way for ``fit`` and bare."""

    def __init__(self, data, warmup: int) -> None:
        self.warmup, self.start, self.stop, self.steps = warmup, 0.0, 0.0, 0
        draw = data.train_batch

        def clocked(step: int, *args, **kwargs):
            if torch.cuda.is_initialized():  # the steps before have finished
                torch.cuda.synchronize()
            now = time.perf_counter()
            if step == warmup:
                self.start = now
            elif step > warmup:
                self.stop, self.steps = now, step - warmup
            return draw(step, *args, **kwargs)

        data.train_batch = clocked

    @property
    def seconds(self) -> float:
        return self.stop - self.start


@contextlib.contextmanager
def probe_clock():
    """Records ``(probe name, method, start, end, nested)`` of every ``Probe.run`` (one
    measurement, and its figures where it draws them), ``Probe.measure`` and
    ``Probe._log_figures`` (also called on its own at the end of training); ``nested`` marks a
    call made inside another of them."""
    spans: list[tuple[str, str, float, float, bool]] = []
    originals = {name: getattr(Probe, name) for name in ("run", "measure", "_log_figures")}
    depth = [0]

    def clocked(name, method):
        def timed(self, *args, **kwargs):
            nested = depth[0] > 0
            depth[0] += 1
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                spans.append((type(self).__name__, name, start, time.perf_counter(), nested))

        return timed

    for name, method in originals.items():
        setattr(Probe, name, clocked(name, method))
    try:
        yield spans
    finally:
        for name, method in originals.items():
            setattr(Probe, name, method)


def inside(spans: list[tuple], start: float = -math.inf, stop: float = math.inf) -> float:
    """Seconds spent in the probes (measurements and figures) within ``[start, stop]``."""
    return sum(b - a for _, _, a, b, nested in spans if not nested and a >= start and b <= stop)


def seconds_per_measurement(spans: list[tuple]) -> dict[str, float]:
    """Median seconds of one ``measure`` (figures excluded), by probe, leaving out the first
    one where there are more (it also draws the evaluation set and, for GDAlignment, tunes
    the GD step sizes: one-off costs)."""
    times: dict[str, list[float]] = {}
    for probe, method, a, b, _ in spans:
        if method == "measure":
            times.setdefault(probe, []).append(b - a)
    return {name: statistics.median(t[1:] or t) for name, t in times.items()}


def _cli(config: str, steps: int, log_dir: str, extra: list[str]) -> ICLLightningCLI:
    """The config as ``icl-lightning fit`` builds it (logger, progress bar, checkpointing)."""
    args = [f"--config={config}", f"--trainer.max_steps={steps}", *extra]
    args += [f"--trainer.logger.init_args.save_dir={log_dir}"]
    return ICLLightningCLI(args=args, run=False)


def time_fit(config, steps, warmup, probes, log_dir, extra, loop_only=False) -> dict:
    """Steps/s of ``trainer.fit`` on the config (its probes kept or removed; with
    ``loop_only``, every callback and logger removed), and the probes' share of the timed
    window."""
    cli = _cli(config, steps, log_dir, extra)
    if not probes:
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, Probe)]
    if loop_only:
        cli.trainer.callbacks, cli.trainer.loggers = [], []
    timer = _BatchClock(cli.datamodule, warmup)
    device = cli.trainer.strategy.root_device
    reset_peak_memory(device)
    with probe_clock() as spans:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {
        "steps_per_s": timer.steps / timer.seconds,
        "probe_share": inside(spans, timer.start, timer.stop) / timer.seconds,
        "peak_mb": peak_memory_mb(device),
        "probe_seconds": seconds_per_measurement(spans),
    }


def time_bare(config, steps, warmup, log_dir, extra) -> dict:
    """Steps/s of a plain PyTorch loop: same model, optimizer, clipping, on-device batches."""
    cli = _cli(config, steps, log_dir, extra)
    model, data, trainer = cli.model.model, cli.datamodule, cli.trainer
    device = trainer.strategy.root_device
    model.to(device)
    optimizer = cli.model.configure_optimizers()
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
    clip = trainer.gradient_clip_val
    timer = _BatchClock(data, warmup)
    reset_peak_memory(device)
    for step in range(steps):
        batch = data.train_batch(step, device=device)
        pred = model(batch.context_x, batch.context_y, batch.query_x)
        loss = prediction_loss(pred, batch.query_y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return {"steps_per_s": timer.steps / timer.seconds, "peak_mb": peak_memory_mb(device)}


def _run_child(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run a command; its stdout, wall seconds and peak RSS in MB (``os.wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return out.decode(), seconds, usage.ru_maxrss / 1024


def time_jax(python: str, ref: str, steps: int, threads: int | None) -> dict:
    """Steps/s of the official JAX code's training step (its ``bench_ref.py``, compile
    excluded by its own warm-up step); ``threads = 1`` runs XLA's CPU client on one thread."""
    env = None
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    cmd = [python, str(Path(ref) / "bench_ref.py"), str(steps), "train-only"]
    out, _, peak = _run_child(cmd, env=env)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"{ref}/bench_ref.py printed no 'RESULT {{...}}' line:\n{out[-2000:]}")
    return {"steps_per_s": json.loads(lines[-1][7:])["steps_per_s"], "peak_mb": peak}


def time_cli(config: str, short: int, long: int, extra: list[str]) -> dict:
    """``icl-lightning fit --config C`` as shipped (in-process, the console script's code):
    steps/s as ``(long - short) / (T(long) - T(short))`` and the probes' share of that time."""
    runs = {}
    for steps in (short, long):
        with tempfile.TemporaryDirectory() as log_dir, probe_clock() as spans:
            args = ["fit", f"--config={config}", f"--trainer.max_steps={steps}", *extra]
            args += [f"--trainer.logger.init_args.save_dir={log_dir}"]
            reset_peak_memory(torch.device("cpu"))
            start = time.perf_counter()
            with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
                ICLLightningCLI(args=args)
            runs[steps] = (time.perf_counter() - start, inside(spans))
    (t_short, p_short), (t_long, p_long) = runs[short], runs[long]
    return {
        "steps_per_s": (long - short) / (t_long - t_short),
        "probe_share": (p_long - p_short) / (t_long - t_short),
        "probe_share_whole_run": p_long / t_long,
        "peak_mb": peak_memory_mb(torch.device("cpu")),
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def side_by_side(args, extra: list[str]) -> dict:
    names = ["bare", "loop", "fit", "fit+probes"]
    names += ["cli"] * args.cli + ["jax"] * bool(args.jax_python)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.repeats):
            c, s, w = args.config, args.steps, args.warmup
            runs["bare"].append(time_bare(c, s, w, log_dir, extra))
            runs["loop"].append(time_fit(c, s, w, False, log_dir, extra, loop_only=True))
            runs["fit"].append(time_fit(c, s, w, False, log_dir, extra))
            runs["fit+probes"].append(time_fit(c, s, w, True, log_dir, extra))
            if args.cli:
                runs["cli"].append(time_cli(c, args.cli_steps[0], args.cli_steps[1], extra))
            if args.jax_python:
                jax = time_jax(args.jax_python, args.jax_ref, args.jax_steps, args.threads)
                runs["jax"].append(jax)

    def ratio(a: str, b: str) -> list[float]:  # one per round
        pairs = zip(runs[a], runs[b], strict=True)
        return [x["steps_per_s"] / y["steps_per_s"] for x, y in pairs]

    ratios = {
        "loop / bare": ratio("loop", "bare"),
        "fit / bare": ratio("fit", "bare"),
        "fit+probes / fit": ratio("fit+probes", "fit"),
    }
    if args.cli and args.jax_python:
        ratios["cli / jax"] = ratio("cli", "jax")
    if args.jax_python:
        ratios["fit / jax"] = ratio("fit", "jax")
        ratios["fit+probes / jax"] = ratio("fit+probes", "jax")
    if args.reference_steps_per_s:
        for name in ("fit", "fit+probes"):
            ratios[f"{name} / reference"] = [
                r["steps_per_s"] / args.reference_steps_per_s for r in runs[name]
            ]
    lines = [
        f"config {args.config} {' '.join(extra)}: {args.repeats} rounds, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}",
        "",
        "ratio (median of the per-round ratios; min - max):",
    ]
    for name, values in ratios.items():
        spread = f"{min(values):.3f} - {max(values):.3f}"
        lines.append(f"  {name:<24s} {statistics.median(values):6.3f}   ({spread})")
    lines.append("steps/s (median; every round), peak memory, probes' share of the time:")
    for name, values in runs.items():
        shown = ", ".join(f"{v['steps_per_s']:.1f}" for v in values)
        line = f"  {name:<11s} {_median(values, 'steps_per_s'):8.1f} steps/s ({shown})"
        line += f"   peak {_median(values, 'peak_mb'):7.0f} MB"
        if "probe_share" in values[0]:
            line += f"   probes {100 * _median(values, 'probe_share'):4.1f}% of the time"
        if "probe_share_whole_run" in values[0]:
            line += f" ({100 * _median(values, 'probe_share_whole_run'):.1f}% of the whole run)"
        lines.append(line)
    print("\n" + "\n".join(lines))
    return {"config": args.config, "extra": extra, "ratios": ratios, "runs": runs, "lines": lines}


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


def scaling(args, extra: list[str]) -> list[dict]:
    """Steps/s under ``fit`` and seconds per probe measurement, one axis varied at a time."""
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for family, (config, base, axes) in SCALING.items():
            if args.family and family not in args.family:
                continue
            for axis, (option, values) in axes.items():
                for value in values:
                    overrides = base + [f"{option}={value}"] + extra
                    result = time_fit(config, args.scaling_steps, 2, True, log_dir, overrides)
                    row = {"family": family, "axis": axis, "value": value, **result}
                    rows.append(row)
                    per_probe = row["probe_seconds"]  # median of its measurements at start, end
                    shown = ", ".join(f"{k} {v:.2f} s" for k, v in per_probe.items())
                    print(
                        f"{family:>16s} {axis}={value:<5d} {row['steps_per_s']:8.1f} steps/s "
                        f"peak {row['peak_mb']:6.0f} MB | {shown}",
                        flush=True,
                    )
    return rows


def _growth(rows: list[dict], family: str, probes: list[str]) -> list[str]:
    """How each probe's time per measurement grows from the smallest to the largest N > 10,
    against linear growth."""
    by_n = {r["value"]: r for r in rows if r["family"] == family and r["axis"] == "N"}
    sizes = sorted(n for n in by_n if n > 10)
    if len(sizes) < 2:
        return []
    small, large = by_n[sizes[0]], by_n[sizes[-1]]
    lines = [f"From N = {sizes[0]} to {sizes[-1]} (x{sizes[-1] / sizes[0]:.2f}; linear growth):"]
    for p in probes:
        factor = large["probe_seconds"][p] / small["probe_seconds"][p]
        lines.append(f"- {p}: time per measurement x{factor:.2f}")
    return lines


def write_scaling(rows: list[dict], meta: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Scaling ({meta['machine']}, torch threads {meta['threads']})", ""]
    for family in sorted({r["family"] for r in rows}, key=list(SCALING).index):
        probes = list(next(r for r in rows if r["family"] == family)["probe_seconds"])
        head = ["axis", "steps/s (fit)", "peak MB"] + [f"{p} s" for p in probes]
        lines += [f"## {family}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in (r for r in rows if r["family"] == family):
            cells = [
                f"{r['axis']} = {r['value']}",
                f"{r['steps_per_s']:.1f}",
                f"{r['peak_mb']:.0f}",
            ]
            cells += [f"{r['probe_seconds'][p]:.3f}" for p in probes]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_growth(rows, family, probes), ""]
    (REPORTS / "scaling.md").write_text("\n".join(lines))
    print(f"wrote {REPORTS / 'scaling.md'} and {REPORTS / 'scaling.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lsa_linear.yaml")
    parser.add_argument("--steps", type=int, default=1050, help="steps per bare/fit run")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time the shipped command")
    parser.add_argument("--cli-steps", type=int, nargs=2, default=[300, 1300], metavar="K")
    parser.add_argument("--jax-python", help="a Python with jax, optax, dm-haiku, ...")
    parser.add_argument("--jax-ref", help="folder with the official code and bench_ref.py")
    parser.add_argument("--jax-steps", type=int, default=1000)
    parser.add_argument("--reference-steps-per-s", type=float, help="a figure measured elsewhere")
    parser.add_argument(
        "--threads", type=int, help="torch threads (1: XLA on one thread too); default: torch's"
    )
    parser.add_argument("--name", help="report name (default: the config's): reports/speed/...")
    parser.add_argument("--scaling", action="store_true", help="the N, d, L tables instead")
    parser.add_argument("--scaling-steps", type=int, default=30, help="fit steps per point")
    parser.add_argument(
        "--family", nargs="+", choices=list(SCALING), help="--scaling: these families only"
    )
    args, extra = parser.parse_known_args()
    bad = [a for a in extra if not a.startswith(("--model", "--data", "--trainer"))]
    if bad:
        parser.error(f"unknown arguments {bad}: only --model.*, --data.*, --trainer.* pass on")
    if bool(args.jax_python) != bool(args.jax_ref):
        parser.error("--jax-python and --jax-ref go together")
    if args.jax_ref and not (Path(args.jax_ref) / "bench_ref.py").is_file():
        parser.error(f"--jax-ref {args.jax_ref}: expected a folder containing bench_ref.py")
    if args.jax_python and not Path(args.jax_python).is_file():
        parser.error(f"--jax-python {args.jax_python}: no such file")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: expected an integer >= 1")
        torch.set_num_threads(args.threads)
    meta = {
        "machine": f"{os.cpu_count()} CPUs" if not torch.cuda.is_available() else "CUDA",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
    }
    if args.scaling:
        write_scaling(scaling(args, extra), meta)
        return
    result = side_by_side(args, extra)
    REPORTS.mkdir(parents=True, exist_ok=True)
    name = REPORTS / f"benchmark_{args.name or Path(args.config).stem}"
    name.with_suffix(".json").write_text(json.dumps({"meta": meta, **result}, indent=1))
    local = {args.jax_python: "JAX_PYTHON", args.jax_ref: "JAX_REF"}  # this machine's paths
    command = " ".join(["python", *(local.get(a, a) for a in sys.argv)])
    head = f"# Side by side ({meta['machine']}, {meta['date']}, load {meta['load_average'][0]:.1f})"
    text = [head, "", f"    {command}", "", "```", *result["lines"], "```", ""]
    name.with_suffix(".md").write_text("\n".join(text))
    print(f"wrote {name}.md and {name}.json")


if __name__ == "__main__":
    main()
