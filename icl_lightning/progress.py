"""StepProgressBar: Lightning's rich bar, labelled by optimizer steps."""

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class StepProgressBar(RichProgressBar):
    """RichProgressBar whose training label counts steps: ``Epoch 9 | step 4500/5000``.

    Runs here are sized by ``trainer.max_steps``; Lightning's label, ``Epoch e/(max_epochs - 1)``,
    reads ``Epoch 9/-2`` when ``max_epochs`` is unset (-1).
    """

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        label = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            label += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps > 0:
            label += f" | step {trainer.global_step}/{trainer.max_steps}"
        return f"{label:{len(self.validation_description)}}"
