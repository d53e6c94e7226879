"""LineProgressBar: progress as plain text lines, for output that is not a terminal."""

import sys
import time

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from typing_extensions import override


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LineProgressBar(ProgressBar):
    """One plain line every ``interval`` seconds of training, and one at the last step:
    ``step 1200/5000 (24%)  train/loss 0.0123  41.2 steps/s  elapsed 29s  left 1m32s``.

    Where stdout is a file (nohup, SLURM, the reproduction runner), a rich bar redraws in place
    and the file receives nothing until the end; these lines arrive as training goes. The rate
    is measured over the steps since the previous line; ``left`` is (max_steps - step) / rate.

    Args:
        interval: seconds between lines (the first line comes after the first step).
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        if not interval > 0:
            raise ValueError(f"progress_bar.line_interval={interval}: expected seconds > 0.")
        self.interval = interval
        self._enabled = True
        self._start = self._last_time = 0.0
        self._last_step = 0

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last_time = time.monotonic()
        self._last_step = trainer.global_step
        self._first = True

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        last = 0 < trainer.max_steps <= trainer.global_step
        if not self._enabled or not (self._first or last or now - self._last_time >= self.interval):
            return
        self._first = False
        print(self.line(trainer, now), file=sys.stdout, flush=True)
        self._last_time, self._last_step = now, trainer.global_step

    def line(self, trainer, now: float) -> str:
        """The progress line at ``now`` (see the class docstring)."""
        step, total = trainer.global_step, trainer.max_steps
        parts = [
            f"step {step}/{total} ({100 * step / total:.0f}%)" if total > 0 else f"step {step}"
        ]
        for name, value in trainer.progress_bar_metrics.items():
            parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        if step > self._last_step:
            parts.append(f"{rate:.1f} steps/s")
        parts.append(f"elapsed {_duration(now - self._start)}")
        if total > 0 and step > self._last_step:
            parts.append(f"left {_duration((total - step) / rate)}")
        return "  ".join(parts)
