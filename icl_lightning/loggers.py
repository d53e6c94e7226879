"""The run's TensorBoard loggers, where figures, hparams and Custom Scalars layouts go."""

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    """The ``TensorBoardLogger`` instances among ``trainer.loggers`` (empty without one)."""
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
