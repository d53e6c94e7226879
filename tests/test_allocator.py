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

#: page faults per training step of Garg et al.'s tiny GPT-2 (argv[1]: "keep" or "default")
STEPS = """
import resource, sys, torch
from icl_lightning.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import GPT2
from icl_lightning.modules.prefix import prefix_loss
torch.set_num_threads(1)
model = GPT2(20, 41, 64, 3, 2)
optimizer = torch.optim.Adam(model.parameters())
task = LinearRegression(20, "normal")
for step in range(23):
    if step == 3:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batch = task.sample(64, 40, seeded_generator("cpu", 0, step))
    optimizer.zero_grad()
    predictions = model.prefix_predictions(batch.context_x, batch.context_y, batch.query_x)
    prefix_loss(predictions, batch).backward()
    optimizer.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_kept_memory_takes_fewer_page_faults_per_step():
    """Measured here: about 1,000 - 1,600 a step by glibc's defaults, 15 - 110 kept."""
    faults = {}
    for setting in ("default", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", STEPS, setting], capture_output=True, text=True, check=True
        )
        faults[setting] = float(out.stdout.split()[-1])
    assert faults["keep"] < faults["default"] / 3, faults


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_keep_freed_memory_sets_glibc():
    assert keep_freed_memory()


def test_icl_lightning_keeps_freed_memory_before_the_run(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(cli, "ICLLightningCLI", lambda args: calls.append("run"))
    cli.main(["fit", f"--config={CONFIGS / 'demo.yaml'}"])
    assert calls == ["kept", "run"]
