"""Training speed of ``icl-lightning fit`` against a bare PyTorch loop, measured side by side.

For one config (default: paper A's one-layer set-up, configs/lsa_linear.yaml) it times, in one
process and interleaved over ``--repeats`` rounds (these machines are noisy):

- ``bare``: a plain loop of the same model, optimizer, gradient clipping and on-device batches;
- ``fit``: ``trainer.fit`` built by the CLI from the config (TensorBoard logging, progress bar,
  checkpointing as ``icl-lightning fit`` has them), probes removed;
- ``fit+probes``: the config as it is, probes included.

Steps/s are counted after ``--warmup`` steps. It prints the medians and the ratios
fit / bare and (fit+probes) / fit.

    python scripts/benchmark.py --steps 1000 --repeats 3
"""

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch

from icl_lightning.callbacks import Probe
from icl_lightning.cli import ICLLightningCLI


class _StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps_per_s = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and not self.start:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.steps_per_s = (trainer.global_step - self.warmup) / (time.perf_counter() - self.start)


def _cli(config: str, steps: int, log_dir: str) -> ICLLightningCLI:
    """The config as ``icl-lightning fit`` builds it (logger, progress bar, checkpointing)."""
    args = [f"--config={config}", f"--trainer.max_steps={steps}"]
    args += [f"--trainer.logger.init_args.save_dir={log_dir}"]
    return ICLLightningCLI(args=args, run=False)


def time_fit(config: str, steps: int, warmup: int, probes: bool, log_dir: str) -> float:
    """Steps/s of ``trainer.fit`` on the config (its probes kept or removed)."""
    cli = _cli(config, steps, log_dir)
    if not probes:
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, Probe)]
    timer = _StepTimer(warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.steps_per_s


def time_bare(config: str, steps: int, warmup: int, log_dir: str) -> float:
    """Steps/s of a plain PyTorch loop: same model, optimizer, clipping, on-device batches."""
    cli = _cli(config, steps, log_dir)
    model, data, trainer = cli.model.model, cli.datamodule, cli.trainer
    optimizer = cli.model.configure_optimizers()
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
    clip = trainer.gradient_clip_val
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        batch = data.train_batch(step)
        pred = model(batch.context_x, batch.context_y, batch.query_x)
        loss = 0.5 * ((pred - batch.query_y) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lsa_linear.yaml")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"bare": [], "fit": [], "fit+probes": []}
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.repeats):
            runs["bare"].append(time_bare(args.config, args.steps, args.warmup, log_dir))
            runs["fit"].append(time_fit(args.config, args.steps, args.warmup, False, log_dir))
            runs["fit+probes"].append(time_fit(args.config, args.steps, args.warmup, True, log_dir))
    median = {name: statistics.median(v) for name, v in runs.items()}
    print(
        f"\nconfig {args.config}: {args.steps} steps x {args.repeats} rounds, "
        f"torch threads {torch.get_num_threads()}"
    )
    for name, values in runs.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:<11s} median {median[name]:7.1f} steps/s   ({shown})")
    ratios = [f / b for f, b in zip(runs["fit"], runs["bare"], strict=True)]
    probe_ratios = [p / f for p, f in zip(runs["fit+probes"], runs["fit"], strict=True)]
    print(f"  fit / bare          = {statistics.median(ratios):.3f} (median of per-round ratios)")
    print(f"  fit+probes / fit    = {statistics.median(probe_ratios):.3f}")


if __name__ == "__main__":
    main()
