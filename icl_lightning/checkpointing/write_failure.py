"""A run that cannot write (full disk, quota, I/O error) ends with one message saying what is
left to resume from.

The TensorBoard writer writes in a thread of its own: a failed write kills that thread (Python
prints its traceback) and the training thread raises the same error at its next write or
flush. :func:`quiet_writer_threads` keeps the thread's traceback off the screen (the training
thread reports the error), and :func:`write_failure` turns the error into a
:class:`RunWriteError` whose message names the last good checkpoint, or says that none exists.
"""

import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

from icl_lightning.checkpointing.atomic_io import CheckpointWriteError

#: errors of a write that the machine refused (not of the program)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


class RunWriteError(OSError):
    """A run stopped because a file could not be written; the message says what is left."""


def _write_failure_in(error: BaseException) -> OSError | None:
    """The first write failure in ``error``'s chain (itself, its cause or context), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, CheckpointWriteError) or (
            isinstance(error, OSError) and error.errno in WRITE_ERRNOS
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


def last_good_checkpoint(
    trainer: L.Trainer | None, resumed_from: str | None = None
) -> tuple[Path, int] | None:
    """``(path, step)`` of the newest checkpoint of this run that loads: the checkpoint
    callback's last or best file, or ``resumed_from`` (the file this fit resumed from); None
    if there is none."""
    callback = trainer and trainer.checkpoint_callback
    names = [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    found = []
    for name in [*names, resumed_from]:
        if name and Path(name).is_file():
            try:
                checkpoint = torch.load(name, map_location="cpu", weights_only=True, mmap=True)
                found.append((checkpoint["global_step"], Path(name)))
            except Exception:  # noqa: BLE001 (a file that does not load is no checkpoint)
                continue
    if not found:
        return None
    step, path = max(found)
    return path, step


def write_failure(
    error: BaseException, trainer: L.Trainer | None, resumed_from: str | None = None
) -> RunWriteError | None:
    """A :class:`RunWriteError` for ``error`` if a refused write caused it, else None
    (``resumed_from``: the checkpoint this fit resumed from)."""
    failure = _write_failure_in(error)
    if failure is None:
        return None
    reason = failure.strerror or errno.errorcode.get(failure.errno or 0, str(failure))
    what = failure.filename
    if not what:  # the TensorBoard writer's error names no file
        folder = trainer and (getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir)
        what = f"the run's logs in {folder}" if folder else "the run's logs"
    kept = last_good_checkpoint(trainer, resumed_from)
    if kept is None:
        after = (
            "No checkpoint of this run was written, so there is nothing to resume: free space "
            "(or choose another --trainer.logger.init_args.save_dir) and start the run again."
        )
    else:
        path, step = kept
        same = failure.filename and Path(failure.filename).resolve() == path.resolve()
        version = "that file's previous version, unchanged" if same else path
        after = (
            f"The last good checkpoint is {version} (step {step}): free space, then resume "
            f"with --ckpt_path {path}"
        )
    return RunWriteError(failure.errno, f"Could not write {what} ({reason}). {after}")


@contextmanager
def quiet_writer_threads() -> Iterator[None]:
    """Within the block, a TensorBoard writer thread that dies of an ``OSError`` prints no
    traceback (the training thread raises the same error); other threads are untouched."""
    previous = threading.excepthook

    def hook(args) -> None:
        writer = type(args.thread).__module__.startswith("tensorboard.")
        if not (writer and isinstance(args.exc_value, OSError)):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
