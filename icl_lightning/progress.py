"""StepProgressBar: Lightning's rich bar, labelled by optimizer steps."""

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from typing_extensions import override

from icl_lightning.progress_lines import LineProgressBar


class StepProgressBar(RichProgressBar):
    """RichProgressBar whose training label counts steps: ``Epoch 9 | step 4500/5000``.

    Runs here are sized by ``trainer.max_steps``; Lightning's label, ``Epoch e/(max_epochs - 1)``,
    reads ``Epoch 9/-2`` when ``max_epochs`` is unset (-1).

    The bar is updated at most ``refresh_rate`` times a second (Lightning's updates it, and reads
    every progress-bar metric, after every batch: about a tenth of a small model's step here),
    and always at the epoch's last batch and the run's last step; its label follows the step.

    Where stdout is not a terminal (a file under nohup, SLURM, the reproduction runner), the CLI
    replaces this bar by :class:`~icl_lightning.progress_lines.LineProgressBar`, which prints a
    plain line every ``line_interval`` seconds.

    Args:
        line_interval: seconds between plain progress lines off a terminal.
        plain: print plain lines even on a terminal (True), never (False), or only off a
            terminal (None, the default).
        **kwargs: RichProgressBar's options (``refresh_rate``, ``leave``, ``theme``, ...).
    """

    _next_update = 0.0

    def __init__(self, *args, line_interval: float = 30.0, plain: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.line_interval = line_interval
        self.plain = plain

    def as_lines(self) -> ProgressBar:
        """The bar to use: this one, or plain lines where stdout is not a terminal
        (:attr:`plain`)."""
        plain = not sys.stdout.isatty() if self.plain is None else self.plain
        return LineProgressBar(self.line_interval) if plain else self

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.is_enabled:
            now = time.monotonic()
            last = batch_idx + 1 == self.total_train_batches or (
                0 < trainer.max_steps <= trainer.global_step
            )
            if now < self._next_update and not last:
                return
            self._next_update = now + 1.0 / self.refresh_rate
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            label = self._get_train_description(trainer.current_epoch)  # the step moved on
            self.progress.update(self.train_progress_bar_id, description=label)

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        label = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            label += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps > 0:
            label += f" | step {trainer.global_step}/{trainer.max_steps}"
        return f"{label:{len(self.validation_description)}}"
