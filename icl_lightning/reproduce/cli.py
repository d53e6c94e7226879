"""``icl-reproduce``: train both papers' experiments over several seeds, then write the report.

    icl-reproduce --quick                        # every experiment, reduced size
    icl-reproduce                                # the papers' own scale (prints its estimate)
    icl-reproduce --only lsa_one_layer contextual_block --seeds 5
    icl-reproduce --only lsa_deep --seeds 1 --max-steps 5000    # part of the way
    icl-reproduce --only lsa_deep --jobs 4 --threads 2           # 4 runs at once
    icl-reproduce --launcher slurm --partition gpu --time 240 --gpus-per-run 1

``--max-steps K`` stops every run of the full scale at K steps (at most the paper's count): the
report then says "K of the paper's S steps" for each experiment, and a later call with a larger
K resumes those runs from their ``last.ckpt`` instead of starting again.

Runs live in ``<--logs>/<quick|full>/<experiment>/<variant>/seed<k>/`` (``--logs`` defaults to
``./logs/reproduce`` in the working directory); a finished run is not run again, an interrupted
one resumes from its ``last.ckpt``, and what an attempt left without one is moved aside to
``seed<k>.stale-<time>/``, never deleted. A run folder is trained by one runner at a time (a
second one says who owns it). The report goes to ``<--out>/<quick|full>/`` (``--out`` defaults
to ``./reports``): ``report.md``, ``results.json`` and one PNG per figure.
"""

import argparse
import importlib.util
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from icl_lightning.preflight import check_writable
from icl_lightning.reproduce.experiments import EXPERIMENTS, Experiment
from icl_lightning.reproduce.progress import Outcome, Progress
from icl_lightning.reproduce.report import write_report
from icl_lightning.reproduce.runner import (
    Interrupted,
    available_cores,
    jobs_and_threads,
    log_tail,
    run_local,
)
from icl_lightning.reproduce.runs import Run

LAUNCHERS = ("processes", "slurm", "submitit-local")


def parser_for(experiments: Sequence[Experiment], prog: str | None) -> argparse.ArgumentParser:
    names = [e.name for e in experiments]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    quick = "reduced size: every experiment runs, in minutes (the estimate is printed first)"
    add("--quick", action="store_true", help=quick)
    add("--seeds", type=int, default=3, help="seeds per run (default 3)")
    add("--only", nargs="+", choices=names, metavar="NAME", help=str(names))
    add("--max-steps", type=int, metavar="K", help="stop each full-scale run at K steps")
    add("--report-only", action="store_true", help="no training, only the report")
    add(
        "--logs",
        type=Path,
        default=Path("logs", "reproduce"),
        help="the runs' folder (default: logs/reproduce in the working directory)",
    )
    add(
        "--out",
        type=Path,
        default=Path("reports"),
        help="the report's folder (default: reports in the working directory)",
    )
    add("--jobs", type=int, help="runs at once here (default: cores / threads)")
    add("--threads", type=int, help="torch threads per run (default 1)")
    add(
        "--launcher",
        choices=LAUNCHERS,
        default="processes",
        help="processes: --jobs at once here (default); slurm: one SLURM job per run "
        "(submitit); submitit-local: the same jobs through submitit's local executor",
    )
    cluster = parser.add_argument_group(
        "--launcher slurm (needs the extra: pip install '.[cluster]')"
    )
    cluster.add_argument("--partition", help="SLURM partition")
    cluster.add_argument(
        "--time",
        type=int,
        default=120,
        metavar="MIN",
        help="time limit of each job in minutes (default 120); a job reaching it (or "
        "preempted) saves, requeues and resumes",
    )
    cluster.add_argument("--gpus-per-run", type=int, default=0, metavar="G", help="default 0")
    cluster.add_argument("--account", help="SLURM account")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse impossible options as usage errors naming them."""
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds} is invalid: expected an integer >= 1")
    if args.max_steps is not None and (args.max_steps < 1 or args.quick):
        parser.error(
            f"--max-steps={args.max_steps} is invalid: expected an integer >= 1, without --quick"
        )
    for option in ("jobs", "threads", "time"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option}={value} is invalid: expected an integer >= 1")
    if args.gpus_per_run < 0:
        parser.error(f"--gpus-per-run={args.gpus_per_run} is invalid: expected an integer >= 0")
    if args.launcher != "processes" and importlib.util.find_spec("submitit") is None:
        parser.error(
            f"--launcher {args.launcher} needs submitit, which is not installed: expected "
            "`pip install -e '.[cluster]'` first (or --launcher processes)."
        )
    if args.launcher == "slurm" and shutil.which("sbatch") is None and not args.report_only:
        parser.error(
            "--launcher slurm: no `sbatch` on PATH, so no SLURM cluster to submit to: expected "
            "a SLURM login node (or --launcher processes / submitit-local here)."
        )


def check_folders(parser: argparse.ArgumentParser, args: argparse.Namespace, scale: str) -> None:
    """``--out`` (and, to train, ``--logs``) must be folders this user can write, checked
    before any training: a usage error naming the option otherwise."""
    folders = {"out": args.out} if args.report_only else {"logs": args.logs, "out": args.out}
    for option, folder in folders.items():
        try:
            check_writable(option, str(folder / scale))
        except ValueError as error:
            hint = " (a report of runs there alone: --report-only)" if option == "logs" else ""
            parser.error(f"{error}{hint}")


def warn_oversubscribed(jobs: int, threads: int, cores: int) -> None:
    """Warn when ``jobs`` runs of ``threads`` threads ask for more than the ``cores``."""
    if jobs * threads > cores:
        warnings.warn(
            f"--jobs {jobs} x --threads {threads} = {jobs * threads} threads on {cores} "
            "core(s): the runs slow each other down (a run's time and the estimates grow); "
            f"expected --jobs x --threads <= {cores}.",
            stacklevel=2,
        )


def check_logs_hold_runs(parser: argparse.ArgumentParser, logs: Path, runs: list[Run]) -> None:
    """``--report-only`` needs runs to report on: refuse a ``--logs`` without any event file
    of the chosen runs (the report would say "missing" everywhere, over a good one)."""
    if not any(next(r.directory.glob("events.out.tfevents.*"), None) for r in runs):
        parser.error(
            f"--logs={logs.parent}: no run of the chosen experiments under {logs}; expected the "
            "folder a previous training wrote (the same --logs, --quick and --only)."
        )


def train(
    args: argparse.Namespace, runs: list[Run], logs: Path, jobs: int, threads: int
) -> list[Outcome]:
    """Train the runs (under ``logs``) with the chosen launcher; return their outcomes."""
    progress = Progress(runs, jobs if args.launcher == "processes" else len(runs))
    if args.launcher == "processes":
        return run_local(runs, jobs, threads, progress)
    from icl_lightning.reproduce import slurm  # needs submitit (checked by check_args)

    options = slurm.ClusterOptions(
        args.partition, args.time, args.gpus_per_run, args.account, cpus=threads
    )
    cluster = "slurm" if args.launcher == "slurm" else "local"
    executor = slurm.executor(cluster, logs / "submitit", options)
    poll = 10.0 if cluster == "slurm" else 1.0  # seconds between looks at the jobs' states
    return slurm.run_submitit(runs, executor, threads, progress, poll)


def summarize_interrupt(stopped: Interrupted, command: str) -> str:
    """What an interrupted reproduction saved, and how to continue it."""
    outcomes = stopped.outcomes
    lines = ["Stopped (Ctrl+C, SIGTERM or SIGHUP)."]
    lines += [f"  {o.run.name}: {o.message}" for o in outcomes if o.status == "interrupted"]
    done = sum(o.status in ("trained", "skipped") for o in outcomes)
    lines.append(f"  {done} run(s) finished before; they are kept.")
    if stopped.note:
        lines.append(stopped.note)
    lines.append(f"Continue (finished runs are skipped, the others resume): {command}")
    return "\n".join(lines)


def main(
    argv: list[str] | None = None,
    experiments: Sequence[Experiment] = EXPERIMENTS,
    prog: str = "icl-reproduce",
) -> None:
    """Parse ``argv``, train the chosen ``experiments``' runs, then write the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = parser_for(experiments, prog)
    args = parser.parse_args(argv)
    check_args(parser, args)
    scale = "quick" if args.quick else "full"
    check_folders(parser, args, scale)
    logs, out = args.logs.resolve() / scale, args.out.resolve() / scale
    chosen = [e for e in experiments if args.only is None or e.name in args.only]
    runs = [
        Run(e, v, s, args.quick, logs, args.max_steps)
        for e in chosen
        for v in e.variant_names(args.quick)
        for s in range(args.seeds)
    ]
    jobs, threads = jobs_and_threads(args.jobs, args.threads, available_cores())
    if args.launcher == "processes" and not args.report_only:
        warn_oversubscribed(jobs, threads, available_cores())
    if args.report_only:
        check_logs_hold_runs(parser, logs, runs)
    estimate = sum(r.estimated_seconds() for r in runs)
    print(
        f"{len(runs)} runs; estimated {estimate / 60:.0f} min on a 2-core CPU one at a time "
        f"(less on a GPU); {jobs} at once here with {threads} thread(s) each"
    )
    if not args.report_only:
        start = time.perf_counter()
        try:
            outcomes = train(args, runs, logs, jobs, threads)
        except Interrupted as stopped:
            print(summarize_interrupt(stopped, shlex.join([prog, *argv])))
            raise SystemExit(130) from None
        unfinished = [o for o in outcomes if o.status in ("failed", "interrupted", "busy")]
        if unfinished:
            details = "\n".join(
                f"  {o.run.name}: {o.message}"
                + (f"\n{log_tail(o.run.log)}" if o.status == "failed" else "")
                for o in unfinished
            )
            raise SystemExit(f"{len(unfinished)} run(s) did not finish:\n{details}")
        print(f"all runs finished in {(time.perf_counter() - start) / 60:.1f} min")
    try:
        write_report(chosen, args.seeds, logs, out, args.quick, args.max_steps)
    except OSError as error:
        raise SystemExit(
            f"the report cannot be written to {out} ({error}); the runs are kept: free space "
            "there (or choose another --out) and call again with --report-only"
        ) from None
    except KeyboardInterrupt:
        again = shlex.join([prog, *argv, *([] if args.report_only else ["--report-only"])])
        print(f"Stopped while writing the report; the runs are kept. Write it with: {again}")
        raise SystemExit(130) from None
    print(f"report: {out / 'report.md'}")
