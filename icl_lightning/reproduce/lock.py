"""The runner's claim on a run folder: a :class:`~icl_lightning.run_lock.RunLock` on
``<run>/runner.lock`` (the ``fit`` inside keeps its own, ``.fit.lock``).

The runner hands the open lock to the run's ``fit`` child (``pass_fds``), so the claim lasts
until the child ends: a rerun cannot start a second child in a folder whose child still trains
or saves, even after the runner itself was killed.
"""

from pathlib import Path

from icl_lightning.run_lock import RunLock, acquire_where_supported

LOCK_NAME = "runner.lock"


def claim_folder(directory: Path) -> RunLock | None:
    """Own ``directory`` (created if missing): its held lock, or None with a warning where the
    filesystem has no locks (the folder is then used unlocked).

    Raises:
        RunLocked: another live process owns it; the message names that owner.
        OSError: the folder or lock file cannot be made (read-only, full disk, a file in
            the way).
    """
    lock = RunLock(directory / LOCK_NAME, what=f"the run folder {directory}")
    return acquire_where_supported(
        lock, "the run folder is used unlocked, so two runners on it at once could mix one run."
    )
