"""Where a run writes: a resumed run's own directory, else a new one, never another run's.

:func:`choose_run_directory` sets the parsed options before anything is built:

- ``fit --ckpt_path <run>/checkpoints/<x>.ckpt`` continues ``<run>``: the TensorBoard logger
  (or, without a logger, ``trainer.default_root_dir``) points at it again, however the path
  was spelled, so curves and ``last.ckpt`` stay one run. A checkpoint written elsewhere
  (``--checkpoint.dirpath``) continues the run directory it records.
- ``--ckpt_path last`` is the newest ``checkpoints/last.ckpt`` of this config's runs
  (:func:`resolve_last`); with none, a usage error.
- A new run goes to the next free ``version_<k>`` (under the logger's ``<save_dir>/<name>``,
  or ``trainer.default_root_dir`` without a logger).
- A fit claims its run directory (:class:`~icl_lightning.run_lock.RunLock` on
  ``<run>/.fit.lock``, global rank zero only) before anything is written: a second process
  cannot write the same run (a usage error naming the owner), and two new runs started at
  once get two versions.
- A fit into an explicit ``--trainer.logger.init_args.version`` whose directory already holds a
  run is refused (two runs would mix in one folder), unless ``--overwrite=true`` deletes that
  run's event files and checkpoints first.
- Every output folder must be writable (:func:`~icl_lightning.preflight.check_writable`).
"""

import re
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from icl_lightning.preflight import LIGHTNING_CKPT_NAMES, check_writable
from icl_lightning.run_lock import RunLock, RunLocked, acquire_where_supported

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
#: loggers whose run directory is ``<save_dir>/<name>/version_<k>``
VERSIONED_LOGGERS = (TENSORBOARD, "lightning.pytorch.loggers.CSVLogger")
#: what marks a directory as holding a run: TensorBoard or CSV logs, checkpoints
RUN_FILES = ("events.out.tfevents.*", "metrics.csv", "checkpoints/*.ckpt")
#: the lock file by which a fit owns its run directory
LOCK_FILE = ".fit.lock"


def resumed_run(ckpt_path: str | None) -> Path | None:
    """``<run>`` when ``ckpt_path`` is ``<run>/checkpoints/<name>.ckpt`` (a run's own file)."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
        return None
    folder = Path(ckpt_path).resolve().parent
    return folder.parent if folder.name == "checkpoints" else None


def holds_run(folder: Path, patterns: tuple[str, ...] = ("config.yaml", *RUN_FILES)) -> bool:
    """Whether ``folder`` holds a file of a run (by default its config, logs or checkpoints)."""
    return any(next(folder.glob(pattern), None) for pattern in patterns)


def continued_run(ckpt_path: str | None, recorded: Path | None) -> Path | None:
    """The run a fit from ``ckpt_path`` continues: ``<run>`` of ``<run>/checkpoints/<x>.ckpt``,
    else the run directory the checkpoint records (``recorded``), whichever holds a run's
    record (its config or logs); None for a checkpoint of no run found here."""
    record = ("config.yaml", "events.out.tfevents.*", "metrics.csv")
    for run in (resumed_run(ckpt_path), recorded if ckpt_path else None):
        if run is not None and run.is_dir() and holds_run(run, record):
            return run
    return None


def runs_root(config) -> Path | None:
    """The folder of this config's run directories: the logger's ``<save_dir>/<name>``, or
    ``trainer.default_root_dir`` without a logger; None for other loggers."""
    trainer = config.trainer
    if not trainer.logger:
        return Path(trainer.default_root_dir)
    logger = getattr(trainer.logger, "init_args", None)
    if getattr(trainer.logger, "class_path", None) not in VERSIONED_LOGGERS or not logger:
        return None
    return Path(logger.save_dir) / (logger.get("name") or "") if logger.get("save_dir") else None


def resolve_last(config) -> str:
    """The file ``--ckpt_path last`` names: ``<checkpoint.dirpath>/last.ckpt`` when that option
    is given, else the newest ``<run>/checkpoints/last.ckpt`` of this config's runs (of the
    explicit ``--trainer.logger.init_args.version`` alone, when given). A ValueError when
    there is none: Lightning would start a new run without a word."""
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    logger = getattr(config.trainer.logger, "init_args", None) or {}
    root = runs_root(config)
    if dirpath:
        where, candidates = dirpath, [Path(dirpath) / "last.ckpt"]
    elif root is not None and logger.get("version") is not None:
        run = logger_run_directory(logger.save_dir, logger.get("name"), logger.version)
        where, candidates = str(run), [run / "checkpoints" / "last.ckpt"]
    else:
        where = str(root) if root is not None else "the logger's folder"
        candidates = list(root.glob("*/checkpoints/last.ckpt")) if root is not None else []
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise ValueError(
            f"--ckpt_path=last: no last.ckpt to resume under {where}: expected the path of a "
            "checkpoint (<run>/checkpoints/last.ckpt), or no --ckpt_path to start a new run."
        )
    return str(max(found, key=lambda path: path.stat().st_mtime))


def next_version(root: Path) -> Path:
    """``root/version_<k>`` with ``k`` one more than the largest there (0 if none)."""
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    return root / f"version_{max(taken, default=-1) + 1}"


def logger_run_directory(save_dir: str, name: str | None, version: int | str | None) -> Path | None:
    """``<save_dir>/<name>/version_<k>`` (or ``/<version>`` for a string): the directory of a
    logger given an explicit ``version``; None when the logger picks a new one itself."""
    if version is None:
        return None
    folder = f"version_{version}" if isinstance(version, int) else str(version)
    return Path(save_dir) / (name or "") / folder


def claim(run: Path) -> RunLock | None:
    """Own ``run`` for this process's life (:data:`LOCK_FILE`), or raise RunLocked naming
    the process that owns it; a ValueError when ``run`` cannot be written. On a filesystem
    without file locks: None, with a warning (the run goes on unclaimed)."""
    lock = RunLock(run / LOCK_FILE, what=f"the run directory {run}")
    unlocked = (
        "the run is not claimed, so a second fit into it at the same time would not be refused."
    )
    try:
        return acquire_where_supported(lock, unlocked)
    except RunLocked as error:
        raise RunLocked(
            f"{error}. One run directory takes one fit at a time: expected that fit to end "
            "first, or another version."
        ) from None
    except OSError as error:
        raise ValueError(
            f"the run directory {run} cannot be written ({error.strerror}): expected a folder "
            "this user can write to, on a disk with free space."
        ) from error


def claim_new_version(root: Path) -> tuple[Path, RunLock | None]:
    """The next free ``root/version_<k>``, claimed (:func:`claim`); a version that another
    process owns, or that holds a run by now, is passed over."""
    run = next_version(root)
    while True:
        try:
            lock = claim(run)
        except RunLocked:
            lock = None
        else:
            if lock is None or not holds_run(run):
                return run, lock
            lock.release()
        run = root / f"version_{int(run.name[8:]) + 1}"


def earlier_run_files(run: Path, option: str, resumes: bool, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``run`` (the directory ``option`` chose) that this fit
    replaces: none when there are none or the fit ``resumes`` that run. Otherwise a
    ValueError (two runs would mix in one folder), unless ``overwrite``: then those files (and
    the earlier ``hparams.yaml``), for the caller to delete."""
    if resumes:
        return []
    held = [path for pattern in RUN_FILES for path in sorted(run.glob(pattern))]
    if held and not overwrite:
        raise ValueError(
            f"--{option}: the run directory {run} already holds a run ({held[0].name}): "
            "expected a new version, or --ckpt_path "
            f"{run / 'checkpoints' / 'last.ckpt'} to continue that run, or --overwrite=true "
            "to delete its event files and checkpoints and start again there."
        )
    return [*held, *run.glob("hparams.yaml")] if held else []


def choose_run_directory(
    config, fit: bool, recorded: Path | None = None
) -> tuple[RunLock | None, dict[str, object]]:
    """Set the parsed run options ``config`` (``trainer``, ``ckpt_path``, ``overwrite``) as the
    module docstring says; ``recorded`` is the run directory the resumed checkpoint records.
    A ValueError names an option that cannot work. With ``overwrite``, global rank zero
    deletes the earlier run's files here.

    Returns the claim on the run directory (a fit on global rank zero; release it when the fit
    ends, else None) and the options chosen here for a new run as the user gave them
    (``dotted.key -> value``: its config should rerun as a new run, not in this version).
    """
    trainer = config.trainer
    resumed = continued_run(config.get("ckpt_path"), recorded) if fit else None
    owner = fit and rank_zero_only.rank == 0
    if not trainer.logger:
        check_writable("trainer.default_root_dir", str(trainer.default_root_dir))
        if resumed is not None:
            trainer.default_root_dir = str(resumed)
            return claim(resumed) if owner else None, {}
        root = Path(trainer.default_root_dir)
        run, lock = claim_new_version(root) if owner else (next_version(root), None)
        trainer.default_root_dir = str(run)
        return lock, {"trainer.default_root_dir": str(root)}
    logger = getattr(trainer.logger, "init_args", None)
    tensorboard = getattr(trainer.logger, "class_path", None) == TENSORBOARD
    if tensorboard and resumed is not None:
        logger.save_dir = str(resumed.parent.parent)
        logger.name = resumed.parent.name
        number = re.fullmatch(r"version_(\d+)", resumed.name)
        logger.version = int(number[1]) if number else resumed.name
    root = runs_root(config)
    if root is None:
        return None, {}
    check_writable("trainer.logger.init_args.save_dir", logger.save_dir)
    if not owner:
        return None, {}
    if logger.get("version") is None:
        run, lock = claim_new_version(root)
        logger.version = int(run.name[8:])
        return lock, {"trainer.logger.init_args.version": None}
    run = logger_run_directory(logger.save_dir, logger.get("name"), logger.version)
    lock = claim(run)
    resumes = resumed is not None and resumed.resolve() == run.resolve()
    try:
        option = "trainer.logger.init_args.version"
        for path in earlier_run_files(run, option, resumes, config.get("overwrite")):
            path.unlink()
    except ValueError:
        if lock is not None:
            lock.release()
        raise
    return lock, {}
