"""ExactResume: a resumed run continues at the very step, epoch and curve point it stopped at;
:func:`nothing_to_train` tells beforehand when a resume would train no step."""

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from icl_lightning.checkpointing.lightning_private import fit_loop_progress, set_logging_step


class ExactResume(Callback):
    """Corrects the two loop counters Lightning restores off by one here.

    - The epoch: Lightning marks the current epoch finished when training ends, even between
      two epoch ends (``max_steps`` reached mid-epoch), and resumes a finished epoch's
      checkpoint into an empty epoch; either way a resumed run's epoch counter (and epoch-wise
      LR schedulers) would run one ahead of an uninterrupted run. So every checkpoint stores an
      epoch stopped midway as unfinished, and a finished one as the next epoch's start.
    - The logging step (the x of every curve): a checkpoint written at a run's end restores it
      one ahead of ``global_step``, which would shift every curve of a resumed run by one step.
      At the first batch of every fit it is set to ``global_step``; with one optimizer the two
      are equal at every step of an uninterrupted run.

    The CLI adds it to every run. Example::

        trainer = L.Trainer(callbacks=[ExactResume(), RunCheckpoint(save_last=True)])
    """

    _align_logging_step = False

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._align_logging_step = True

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # Lightning restores the logging step when the epoch loop restarts, after on_train_start
        if self._align_logging_step:
            set_logging_step(trainer, trainer.global_step)
            self._align_logging_step = False

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        epochs, batches = fit_loop_progress(checkpoint)
        if not (epochs and batches) or epochs["total"]["processed"] != epochs["total"]["started"]:
            return  # no loop state, or the epoch is (correctly) stored as running
        if batches["is_last_batch"]:  # a finished epoch: store the next one's start
            batches["current"] = dict.fromkeys(batches["current"], 0)
            batches["is_last_batch"] = False
        elif batches["current"]["completed"] > 0:  # stopped midway: store it as running
            for count in (epochs["total"], epochs["current"]):
                count["processed"] = count["completed"] = count["started"] - 1


def nothing_to_train(checkpoint: dict, max_steps: int | None, max_epochs: int | None) -> str | None:
    """Why a fit resumed from ``checkpoint`` with these ``--trainer`` limits trains no step
    (Lightning's own stopping rule: ``max_steps`` or ``max_epochs`` reached, where -1 is no
    limit and ``max_epochs`` defaults to 1000 without ``max_steps``), or None if it trains."""
    steps = -1 if max_steps is None else max_steps
    epochs = max_epochs if max_epochs is not None else (1000 if steps == -1 else -1)
    step = checkpoint.get("global_step", 0)
    if steps != -1 and step >= steps:
        return f"the checkpoint is at step {step}, and --trainer.max_steps={steps}"
    progress, _ = fit_loop_progress(checkpoint)
    done = progress["current"]["completed"] if progress else 0
    if epochs != -1 and done >= epochs:
        return f"the checkpoint is at the end of epoch {done}, and --trainer.max_epochs={epochs}"
    return None
