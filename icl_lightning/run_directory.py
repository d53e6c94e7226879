"""Where a run writes: a resumed run's own directory, else a new one, never another run's.

:func:`choose_run_directory` sets the parsed options before anything is built:

- ``fit --ckpt_path <run>/checkpoints/<x>.ckpt`` continues ``<run>``: the TensorBoard logger
  (or, without a logger, ``trainer.default_root_dir``) points at it again, however the path
  was spelled, so curves and ``last.ckpt`` stay one run.
- Without a logger, a new run goes to ``<trainer.default_root_dir>/version_<k>``.
- A fit into an explicit ``--trainer.logger.init_args.version`` whose directory already holds a
  run is refused (two runs would mix in one folder), unless ``--overwrite=true`` deletes that
  run's event files and checkpoints first.
- Every output folder must be writable (:func:`~icl_lightning.preflight.check_writable`).
"""

import re
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from icl_lightning.preflight import LIGHTNING_CKPT_NAMES, check_writable

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
#: what marks a directory as holding a run: TensorBoard or CSV logs, checkpoints
RUN_FILES = ("events.out.tfevents.*", "metrics.csv", "checkpoints/*.ckpt")


def resumed_run(ckpt_path: str | None) -> Path | None:
    """``<run>`` when ``ckpt_path`` is ``<run>/checkpoints/<name>.ckpt`` (a run's own file)."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
        return None
    folder = Path(ckpt_path).resolve().parent
    return folder.parent if folder.name == "checkpoints" else None


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


def earlier_run_files(run: Path, option: str, ckpt_path: str | None, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``run`` (the directory ``option`` chose) that this fit
    replaces: none when there are none or the fit resumes from a checkpoint inside ``run``.
    Otherwise a ValueError (two runs would mix in one folder), unless ``overwrite``: then
    those files (and the earlier ``hparams.yaml``), for the caller to delete."""
    if ckpt_path and run.resolve() in Path(ckpt_path).resolve().parents:
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


def choose_run_directory(config, fit: bool) -> None:
    """Set the parsed run options ``config`` (``trainer``, ``ckpt_path``, ``overwrite``) as the
    module docstring says; a ValueError names an option that cannot work. With ``overwrite``,
    global rank zero deletes the earlier run's files here."""
    trainer = config.trainer
    resumed = resumed_run(config.get("ckpt_path")) if fit else None
    if not trainer.logger:
        root = Path(trainer.default_root_dir)
        check_writable("trainer.default_root_dir", str(root))
        is_resume = resumed is not None and resumed.is_dir()
        trainer.default_root_dir = str(resumed if is_resume else next_version(root))
        return
    logger = getattr(trainer.logger, "init_args", None)
    tensorboard = getattr(trainer.logger, "class_path", None) == TENSORBOARD
    if tensorboard and resumed is not None and any(resumed.glob("events.*")):
        logger.save_dir = str(resumed.parent.parent)
        logger.name = resumed.parent.name
        number = re.fullmatch(r"version_(\d+)", resumed.name)
        logger.version = int(number[1]) if number else resumed.name
    if logger is None or logger.get("save_dir") is None:
        return
    check_writable("trainer.logger.init_args.save_dir", logger.save_dir)
    run = logger_run_directory(logger.save_dir, logger.get("name"), logger.get("version"))
    if fit and run is not None and rank_zero_only.rank == 0:
        option, ckpt_path = "trainer.logger.init_args.version", config.get("ckpt_path")
        for path in earlier_run_files(run, option, ckpt_path, config.get("overwrite")):
            path.unlink()
