"""One owner per run folder: an exclusive ``fcntl.flock`` on ``<run>/runner.lock``.

The claim is atomic (the kernel grants the lock to one open file at a time) and ends with the
last process holding it: the runner passes the open lock to the run's ``fit`` child, so a rerun
cannot start a second child in a folder whose child still trains or saves, even after the runner
itself was killed. A lock file left by a crashed process holds no lock and is claimed again.
The file names its owner (pid, host, command) for the message of whoever finds it taken.
(``icl-lightning fit`` keeps its own lock in the run folder; this one is the runner's.)
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

LOCK_NAME = "runner.lock"
#: what ``flock`` says on a filesystem without locks (Lustre mounted without ``flock``, some NFS)
UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}


class Busy(Exception):
    """The folder is owned by another live process; the message names it."""


def owner_text(record: dict) -> str:
    """``pid 123 on host h (<command>), since <time>``, and whether that pid is gone."""
    pid, host = record.get("pid"), record.get("host")
    text = f"pid {pid} on {host} ({record.get('command', '?')}), since {record.get('since', '?')}"
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        text += "; that process has ended, its fit child still holds the folder (saving?)"
    return text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """The runner's claim on ``directory`` (created if missing): :meth:`claim`, then
    :meth:`release`; :attr:`fd` is the open lock, to hand to a child (``pass_fds``)."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.fd: int | None = None

    def claim(self) -> None:
        """Take the lock and write this process as its owner.

        Raises:
            Busy: another process holds it; the message names that owner.
            OSError: the folder or lock file cannot be made (read-only, full disk, a file
                in the way). A filesystem without locks is a warning (the folder unlocked).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = read_owner(fd)
            os.close(fd)
            raise Busy(f"{self.path.parent} is owned by {owner}") from None
        except OSError as error:
            if error.errno not in UNSUPPORTED:
                os.close(fd)
                raise
            warnings.warn(
                f"{self.path}: this filesystem has no file locks ({error.strerror}); the run "
                "folder is used unlocked, so two runners on it at once could mix one run.",
                stacklevel=2,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv) or sys.executable,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Close the lock (it ends once no child holds it either)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_owner(fd: int) -> str:
    """The owner written in the open lock file ``fd``, as text."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or "pid" not in record:
        return "another process (its record is not written yet)"
    return owner_text(record)
