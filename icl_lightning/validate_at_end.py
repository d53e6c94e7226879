"""ValidateAtEnd: a run whose last step is not the end of an epoch still validates there."""

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class ValidateAtEnd(Callback):
    """Validate after the run's last step (``trainer.max_steps``) even when it ends mid-epoch.

    Lightning validates at the end of an epoch (or every ``val_check_interval`` batches), so a
    run with ``max_steps`` below ``batches_per_epoch`` would end without ``val/loss``. At the
    last step this callback sets ``trainer.should_stop``, which makes Lightning run its
    validation loop once before stopping (where validation is due in this epoch at all:
    ``check_val_every_n_epoch`` and ``limit_val_batches=0`` are respected). Where the last step
    ends an epoch, Lightning validates there anyway and nothing changes.
    """

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        ends_epoch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if 0 < trainer.max_steps <= trainer.global_step and not ends_epoch:
            trainer.should_stop = True
