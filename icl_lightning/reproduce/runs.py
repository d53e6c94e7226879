"""One training run of the reproduction: its folder, derived config, command and state.

A run is ``icl-lightning fit --config <run dir>/reproduce.yaml``: the experiment's shipped
config with the experiment's, the variant's and the seed's changes, in a fresh process, in
``<logs>/<quick|full>/<experiment>/<variant>/seed<k>/``. It is finished when that folder holds a
``done.json`` for at least its planned steps; otherwise it resumes from ``checkpoints/last.ckpt``
when there is one, and what an attempt left without one is moved aside to
``seed<k>.stale-<time>/`` (never deleted). Every path is absolute, so a run resumes the same way
from any working directory.
"""

import contextlib
import io
import itertools
import json
import os
import pickle
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from icl_lightning.cli import ICLLightningCLI
from icl_lightning.reproduce.experiments import Experiment
from icl_lightning.reproduce.lock import LOCK_NAME
from icl_lightning.run_directory import RUN_FILES

#: the project's root: the shipped configs are relative to it
ROOT = Path(__file__).resolve().parents[2]
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
#: the first words of the line that opens each attempt in a run's ``fit.log``
ATTEMPT_MARK = "==== icl-reproduce attempt"


def resolved_config(config: Path, options: list[str]) -> dict:
    """The options that ``icl-lightning fit --config <config> <options>`` runs with, as its
    ``--print_config`` writes them: read by the CLI's own parser (a ``config:`` base merged, every
    default spelled out); a ValueError naming ``config`` with the CLI's message if it fails."""
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        try:
            ICLLightningCLI(args=["fit", f"--config={config}", *options, "--print_config"])
        except SystemExit as exit_info:
            if exit_info.code:
                problem = errors.getvalue().rpartition("error: ")[2] or str(exit_info)
                problem = " ".join(line.strip() for line in problem.splitlines())
                raise ValueError(f"--config={config}: {problem}") from exit_info
    return yaml.safe_load(printed.getvalue())


def set_callback_option(config: dict, path: str, value) -> None:
    """``callbacks.<Class>.<arg>``: set the init arg of the trainer callback of ``config`` whose
    class_path ends in ``Class``; a ValueError if it has none."""
    _, name, arg = path.split(".")
    match = [
        c for c in config["trainer"]["callbacks"] or [] if c["class_path"].endswith(f".{name}")
    ]
    if not match:
        raise ValueError(f"{path}: no callback {name} in the config")
    match[0]["init_args"][arg] = value


def planned_steps(experiment: Experiment, quick: bool, max_steps: int | None = None) -> int:
    """Steps of each run: the quick or the full count, capped at ``max_steps`` when given."""
    steps = experiment.quick_steps if quick else experiment.full_steps
    return steps if max_steps is None else min(steps, max_steps)


@dataclass(frozen=True)
class Run:
    """Seed ``seed`` of ``variant`` of ``experiment``, at the quick or the full scale (capped at
    ``max_steps``), under ``logs`` (``<--logs>/<quick|full>``, absolute)."""

    experiment: Experiment
    variant: str
    seed: int
    quick: bool
    logs: Path
    max_steps: int | None = None

    @property
    def name(self) -> str:
        return f"{self.experiment.name}/{self.variant} seed {self.seed}"

    @property
    def directory(self) -> Path:
        return self.logs / self.experiment.name / self.variant / f"seed{self.seed}"

    @property
    def steps(self) -> int:
        return planned_steps(self.experiment, self.quick, self.max_steps)

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    def steps_done(self) -> int:
        """The step its ``last.ckpt`` was saved at (``global_step``); 0 without one or when it
        cannot be read (for the time estimate only: resuming reads the checkpoint itself)."""
        if not self.checkpoint.is_file():
            return 0
        try:
            checkpoint = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            return int(checkpoint.get("global_step", 0))
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
            return 0

    def estimated_seconds(self) -> float:
        """Its cost on a 2-core CPU from the experiment's measured seconds (per 1,000 steps of
        the ones left after :meth:`steps_done`, or per quick run)."""
        e = self.experiment
        if self.quick:
            return e.quick_seconds
        left = max(0, self.steps - self.steps_done())
        return 10 + e.variant_seconds.get(self.variant, e.seconds) * left / 1000

    def config(self) -> dict:
        """The experiment's config as the CLI reads it (:func:`resolved_config`: an overlay's
        base merged), with the experiment's, the variant's and the seed's changes, and the
        logger writing into :attr:`directory`. A change ``a.b.c`` is the CLI's option
        ``--a.b.c``; ``callbacks.<Class>.<arg>`` then sets a probe's argument."""
        e = self.experiment
        changes = {
            **e.changes,
            **e.variants[self.variant],
            **(e.quick if self.quick else {}),
            "trainer.max_steps": self.steps,
            "seed_everything": self.seed,
            "data.init_args.seed": self.seed,
            "trainer.enable_progress_bar": False,  # the runner shows progress over runs
        }
        probes = {path: value for path, value in changes.items() if path.startswith("callbacks.")}
        options = [  # a string as it is: the CLI keeps the quotes of a JSON string
            f"--{path}={v if isinstance(v, str) else json.dumps(v)}"
            for path, v in changes.items()
            if path not in probes
        ]
        try:
            config = resolved_config(ROOT / e.config, options)
            for path, value in probes.items():
                set_callback_option(config, path, value)
        except ValueError as error:
            raise ValueError(f"{self.name}: its config cannot be built: {error}") from error
        logger = config["trainer"]["logger"] or {"class_path": TENSORBOARD, "init_args": {}}
        logger["init_args"].update(
            save_dir=str(self.directory.parents[1]), name=self.variant, version=self.directory.name
        )
        config["trainer"]["logger"] = logger
        return config

    def finished(self) -> bool:
        """Whether ``done.json`` says the run reached its planned steps. A ``done.json`` that
        cannot be read or holds no whole step count (cut off by a full disk, edited by hand, a
        folder) counts as unfinished, with a warning naming it."""
        done = self.directory / "done.json"
        if not done.exists():
            return False
        try:
            steps = json.loads(done.read_text()).get("steps", self.steps)
            problem = f"its steps are {steps!r}, not a whole number"
        except (OSError, ValueError, AttributeError) as error:
            steps, problem = None, f"{type(error).__name__}: {error}"
        if isinstance(steps, bool) or not isinstance(steps, int):
            warnings.warn(
                f"{done} is not a complete record of a finished run ({problem}): treating the "
                "run as unfinished; it resumes from its last.ckpt.",
                stacklevel=1,
            )
            return False
        return steps >= self.steps

    def set_aside(self) -> Path | None:
        """Move what an earlier attempt wrote into ``<variant>/seed<k>.stale-<time>/`` when it
        cannot be resumed (files of a run, see :data:`RUN_FILES`, but no ``last.ckpt``: stopped
        before its first checkpoint, or the checkpoint moved away); return that folder, or
        None when there was nothing to move. Nothing is ever deleted; the runner's lock file
        stays (the caller holds it)."""
        if self.checkpoint.exists() or not any(
            next(self.directory.glob(pattern), None) for pattern in RUN_FILES
        ):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.directory.with_name(f"{self.directory.name}.stale-{stamp}")
        for k in itertools.count(1):
            if not aside.exists():
                break
            aside = self.directory.with_name(f"{self.directory.name}.stale-{stamp}-{k}")
        aside.mkdir()
        for entry in self.directory.iterdir():
            if entry.name != LOCK_NAME:
                entry.rename(aside / entry.name)
        return aside

    def prepare(self) -> list[str]:
        """Write ``reproduce.yaml`` into the run folder; return the ``fit`` command, resuming
        from ``last.ckpt`` when the folder holds one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "reproduce.yaml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return fit_command(config_path, self.checkpoint)

    @property
    def log(self) -> Path:
        return self.directory / "fit.log"


def fit_command(config: Path, checkpoint: Path) -> list[str]:
    """``python -m icl_lightning fit --config=<config>``, with ``--ckpt_path=<checkpoint>`` when
    that file exists. Never ``--overwrite``: what an earlier attempt left without a checkpoint
    is moved aside first (:meth:`Run.set_aside`), and the fit refuses to mix runs otherwise."""
    command = [sys.executable, "-m", "icl_lightning", "fit", f"--config={config}"]
    return [*command, f"--ckpt_path={checkpoint}"] if checkpoint.exists() else command


def child_environment(threads: int) -> dict[str, str]:
    """This process' environment with ``threads`` torch (OpenMP, MKL) threads for a child."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }


def write_done(directory: Path, seconds: float, steps: int, command: list[str]) -> None:
    """Mark the run in ``directory`` finished at ``steps`` (a temporary file, then renamed, so
    a reader never sees a partial record)."""
    partial = directory / "done.json.partial"
    partial.write_text(json.dumps({"seconds": seconds, "steps": steps, "command": command}))
    partial.replace(directory / "done.json")


def mark_attempt(log: Path, command: list[str]) -> None:
    """Append the line that opens an attempt to the run's ``fit.log`` (appended to by every
    attempt): :func:`interrupted_at` reads only what follows the last one."""
    with open(log, "a") as f:
        f.write(f"{ATTEMPT_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")


def interrupted_at(log: Path) -> str | None:
    """The child's own line saying where it stopped and what it saved (``Interrupted at step
    k; saved ...``), from this attempt's part of its ``fit.log`` (after the last
    :func:`mark_attempt` line); None if it has none."""
    if not log.exists():
        return None
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 20000))
        tail = f.read().decode(errors="replace").splitlines()
    starts = [i for i, line in enumerate(tail) if line.startswith(ATTEMPT_MARK)]
    attempt = tail[starts[-1] :] if starts else tail
    lines = [line for line in attempt if line.startswith("Interrupted at step")]
    return lines[-1] if lines else None
