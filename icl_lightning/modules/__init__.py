"""The LightningModule: the training logic every model shares (the model itself is injected)."""

from icl_lightning.modules.base import ICLRegressionModule
from icl_lightning.modules.prefix import PrefixRegressionModule

__all__ = ["ICLRegressionModule", "PrefixRegressionModule"]
