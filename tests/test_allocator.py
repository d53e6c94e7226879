"""Freed memory kept for the next step: fewer page faults per training step, set by the CLI."""

import ctypes
import subprocess
import sys

import pytest
from conftest import CONFIGS

from icl_lightning import cli
from icl_lightning.allocator import keep_freed_memory

try:
    GLIBC = hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
except OSError:
    GLIBC = False

#: page faults per "step" that writes and frees four 4 MB blocks, as a training step does its
#: activations (argv[1]: "keep" or "default")
STEPS = """
import ctypes, resource, sys
from icl_lightning.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 4 << 20
for step in range(23):
    if step == 3:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(4)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_kept_memory_takes_fewer_page_faults_per_step():
    """glibc's defaults give the freed blocks back to the system and fault them in again at
    every step (about 4,000 faults: every page of 16 MB); kept, the next step reuses them (0).
    A real model's count under the defaults depends on the heap's layout (66 - 16,000 a step
    measured for the GPT-2s), so the test controls the allocations."""
    faults = {}
    for setting in ("default", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", STEPS, setting], capture_output=True, text=True, check=True
        )
        faults[setting] = float(out.stdout.split()[-1])
    assert faults["default"] > 1000 and faults["keep"] < faults["default"] / 10, faults


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_keep_freed_memory_sets_glibc():
    assert keep_freed_memory()


def test_icl_lightning_keeps_freed_memory_before_the_run(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(cli, "ICLLightningCLI", lambda args: calls.append("run"))
    cli.main(["fit", f"--config={CONFIGS / 'demo.yaml'}"])
    assert calls == ["kept", "run"]
