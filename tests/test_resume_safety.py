"""A run is never written by two processes, never silently changed by a resume, and a failing
disk or writer ends with one message naming what is left to resume from (issue 29, items 3,
5, 6)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from icl_lightning.run_lock import RunLock, RunLocked

_HOLD = """
import sys, time
from icl_lightning.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(lock_file) -> subprocess.Popen:
    """Another process holding ``lock_file``, once it has said so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD), str(lock_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_run_lock_names_its_live_owner_and_a_dead_owner_never_blocks(tmp_path):
    lock_file = tmp_path / "run" / ".fit.lock"
    holder = _holder(lock_file)
    try:
        with pytest.raises(RunLocked, match=rf"run is in use by pid {holder.pid} on .*-c"):
            RunLock(lock_file).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no release: the file stays behind
        holder.wait()
    assert lock_file.is_file()
    with RunLock(lock_file) as lock:  # the dead owner's file does not block
        assert lock.owner()["pid"] == os.getpid()
    assert not lock_file.exists()  # a release leaves no trace
