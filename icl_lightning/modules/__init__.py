"""The LightningModule: the training logic every model shares (the model itself is injected)."""

from icl_lightning.modules.base import ICLRegressionModule

__all__ = ["ICLRegressionModule"]
