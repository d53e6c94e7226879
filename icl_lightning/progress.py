"""StepProgressBar: Lightning's rich bar, labelled by optimizer steps."""

import time

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class StepProgressBar(RichProgressBar):
    """RichProgressBar whose training label counts steps: ``Epoch 9 | step 4500/5000``.

    Runs here are sized by ``trainer.max_steps``; Lightning's label, ``Epoch e/(max_epochs - 1)``,
    reads ``Epoch 9/-2`` when ``max_epochs`` is unset (-1).

    The bar is updated at most ``refresh_rate`` times a second (Lightning's updates it, and reads
    every progress-bar metric, after every batch: about a tenth of a small model's step here),
    and always at the epoch's last batch and the run's last step; its label follows the step.
    """

    _next_update = 0.0

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
