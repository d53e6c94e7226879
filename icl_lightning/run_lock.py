"""RunLock: one process at a time owns a folder (a run directory, a runner's run folder).

An exclusive ``fcntl.flock`` on a lock file (created with its folder), taken without waiting:
it is atomic (the kernel grants it to one process only) and lasts as long as the process holds
the file open, so the kernel drops it when the process ends, however it ends (``kill -9``
included). A lock file left by a dead process therefore never blocks. While held, the file
records its owner (pid, host, command line, start time), and the process that loses raises
:class:`RunLocked` naming it.

:meth:`RunLock.release` deletes the file, and the folders created for it while still empty
(a finished run keeps no trace of the lock, a refused one no folder); a process that
acquires checks that the file it locked is still the one at ``path``, so a release between its
open and its lock cannot hand one folder to two processes. POSIX only (``fcntl``); on a network
filesystem ``flock`` is as reliable as that filesystem's locking.

Example::

    lock = RunLock("logs/demo/version_0/.fit.lock").acquire()  # RunLocked if another holds it
    try:
        ...  # write the run
    finally:
        lock.release()
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path


class RunLocked(ValueError):
    """Another live process holds the lock; the message names it (the CLI turns this
    ``ValueError`` into a usage error)."""


def _owner_record() -> dict:
    """This process as the lock file records it."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe_owner(record: dict | None) -> str:
    """``pid <p> on <host> (since <time>): <command>``, or a phrase when the record is not
    written yet or unreadable."""
    if not record:
        return "another process (it has not recorded itself yet)"
    return (
        f"pid {record.get('pid')} on {record.get('host')} (since {record.get('started')}): "
        f"{record.get('command')}"
    )


class RunLock:
    """An exclusive, process-lifetime lock on the file ``path`` (created with its folder).

    Args:
        path: the lock file, e.g. ``<run>/.fit.lock``.
        what: what the lock guards, for the message (default: the lock file's folder).
    """

    def __init__(self, path: str | os.PathLike, what: str | None = None) -> None:
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int | None:
        """The open lock file while held: a child started with ``pass_fds=(lock.fd,)`` holds
        the lock too, until it ends (the runner's ``fit`` children)."""
        return self._fd

    def acquire(self) -> "RunLock":
        """Take the lock now, or raise :class:`RunLocked` naming its owner; returns ``self``."""
        if self._fd is not None:
            return self
        folder = self.path.parent
        while True:
            self._created = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # its folder was removed by a release in between: again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = describe_owner(_wait_for_record(fd))
                os.close(fd)
                raise RunLocked(f"{self.what} is in use by {owner}") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # released and deleted between our open and our lock: again
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_owner_record()).encode())
            os.fsync(fd)
        except OSError:  # a full disk: no lock, no file left behind
            self.release()
            raise
        return self

    def owner(self) -> dict | None:
        """The record in the lock file (this process's while held), or None."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Delete the lock file, and the folders :meth:`acquire` created for it that are still
        empty; drop the lock (nothing when not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there), or gone
                break
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _wait_for_record(fd: int, seconds: float = 2.0) -> dict | None:
    """The owner's record in the locked file ``fd``: an owner writes it just after it takes the
    lock, so an empty file is read again for up to ``seconds`` (None if it stays empty)."""
    deadline = time.monotonic() + seconds
    while (record := _read_record(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return record


def _read_record(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 1 << 16, 0).decode())
    except (OSError, ValueError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not deleted or replaced since opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


#: what ``flock`` says on a filesystem without locks (Lustre mounted without ``flock``, some NFS)
NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}


def acquire_where_supported(lock: RunLock, unlocked: str) -> RunLock | None:
    """``lock.acquire()``, or None with a warning where the filesystem has no file locks (the
    caller then goes on unlocked); ``unlocked`` says, for the warning, what that leaves open.

    Raises:
        RunLocked: another live process holds the lock; the message names it.
        OSError: any other failure to make the lock file (read-only, full disk, ...).
    """
    try:
        return lock.acquire()
    except OSError as error:
        if error.errno not in NO_LOCKS:
            raise
        warnings.warn(
            f"{lock.path.parent}: this filesystem has no file locks ({error.strerror}); {unlocked}",
            stacklevel=3,
        )
        return None
