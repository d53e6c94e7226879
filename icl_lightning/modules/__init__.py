"""LightningModules: training logic per model family."""

from icl_lightning.modules.base import ICLRegressionModule
from icl_lightning.modules.lsa import LSAModule

__all__ = ["ICLRegressionModule", "LSAModule"]
