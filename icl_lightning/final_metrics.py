"""FinalMetrics: the run's final measurements in TensorBoard's hparams tab."""

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from icl_lightning.loggers import tensorboard_loggers


class FinalMetrics(Callback):
    """At the end of training, log ``params`` with the run's final metrics to the hparams tab.

    The metrics are every one-number entry of ``trainer.callback_metrics`` but ``train/*``:
    ``val/loss``, ``val/zero_loss`` and each probe's last scalars, as ``hp/<name>`` (their own
    tags, so the curves themselves are untouched). Runs can then be compared side by side.

    Args:
        params: the run's options, e.g. the CLI's ``model``, ``data`` and ``optimizer``.
    """

    def __init__(self, params: dict) -> None:
        self.params = params

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            f"hp/{name}": float(value)
            for name, value in trainer.callback_metrics.items()
            if value.numel() == 1 and not name.startswith("train/")
        }
        if metrics:
            for board in tensorboard_loggers(trainer):
                board.log_hyperparams(self.params, metrics, step=trainer.global_step)
