"""Shared helpers: run the real CLI in-process or in a subprocess, read TensorBoard scalars."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from icl_lightning.cli import ICLLightningCLI
from icl_lightning.reproduce.scalars import read_scalars  # noqa: F401  (tests import it from here)

# One thread: the models are tiny, and CI's 2 cores are shared with DDP test processes.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True, scope="session")
def _kernels_in_a_session_folder(tmp_path_factory):
    """The LSA's compiled CPU kernels (``models/batch_last.py``) go to a temporary folder of
    this test session, compiled once for all its tests and subprocesses, not to the user's."""
    previous = os.environ.get("ICL_LIGHTNING_KERNELS")
    os.environ["ICL_LIGHTNING_KERNELS"] = str(tmp_path_factory.mktemp("kernels"))
    yield
    if previous is None:
        os.environ.pop("ICL_LIGHTNING_KERNELS")
    else:
        os.environ["ICL_LIGHTNING_KERNELS"] = previous


def without_c_compiler(monkeypatch, tmp_path: Path, kernels_module) -> None:
    """As on a machine without a C compiler: ``$CC`` names no program, the kernel folder is
    empty, and ``kernels_module`` (``batch_last``, ``gpt2_cpu``) forgets the libraries it
    loaded."""
    monkeypatch.setattr(kernels_module, "_libraries", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-cc"))
    monkeypatch.setenv("ICL_LIGHTNING_KERNELS", str(tmp_path / "kernels"))


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, tmp_path_factory, monkeypatch):
    """Every test runs in its own temporary folder: whatever a run writes relative to the
    working directory (``logs/``, ``reports/``, Lightning's ``default_root_dir``) lands there,
    never in the checkout, where a ``make demo`` may be training meanwhile. Tests name the
    shipped files by absolute paths (``ROOT``, ``CONFIGS``). The tuned step sizes' disk cache
    is a temporary folder of the test's own too (not the user's ``~/.cache``, and not in the
    working directory, which some tests watch)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ICL_LIGHTNING_CACHE", str(tmp_path_factory.mktemp("step_size_cache")))


def tiny_args(save_dir: Path, steps: int = 6) -> list[str]:
    """CLI options that shrink any config to a few seconds of CPU work."""
    return [
        f"--trainer.max_steps={steps}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--data.init_args.batch_size=64",
        "--data.init_args.num_val_tasks=96",
        "--data.init_args.batches_per_epoch=3",
    ]


def quiet_trainer(save_dir: Path, **options) -> L.Trainer:
    """A CPU ``Trainer`` writing only under ``save_dir``: no logger, progress bar, model summary
    or validation, plus ``options``."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=save_dir,
        limit_val_batches=0,
        **options,
    )


def cpu_validate_args(devices: int, save_dir: Path) -> list[str]:
    """``validate`` on ``devices`` CPU processes (DDP over gloo for two or more), logging under
    ``save_dir``, without the model summary; configs and options follow."""
    return [
        "validate",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
    ]


def linear_prompts(B: int, N: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B`` float64 linear-regression prompts (seed 1): ``x ~ N(0, I_d)``, ``y = <w, x>`` with
    ``w ~ N(0, I_d)`` per prompt; ``(context_x (B, N, d), context_y (B, N), query_x (B, d))``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, N + 1, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", x, w)
    return x[:, :N], y[:, :N], x[:, N]


def run_cli(args: list[str]) -> ICLLightningCLI:
    """Run ``icl-lightning <args>`` in this process."""
    return ICLLightningCLI(args=args)


def run_cli_subprocess(args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run ``python -m icl_lightning <args>`` in a fresh process (needed for DDP); return output.

    Fails the test with the process output when the command fails.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "icl_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"icl-lightning {' '.join(args)} failed ({proc.returncode}):\n{output[-6000:]}")
    return output


def run_script(name: str, *args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python scripts/<name> <args>`` from ``cwd`` as a user would; its result (return
    code, stdout, stderr as text) for the test to check, usage errors included."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def image_tags(log_dir: Path) -> set[str]:
    """Tags of the images (figures) in the TensorBoard event files under ``log_dir``."""
    tags: set[str] = set()
    for events in Path(log_dir).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        tags.update(accumulator.Tags()["images"])
    return tags
