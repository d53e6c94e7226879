"""Synthetic regression prompts: task samplers, the batch type and the DataModule."""

from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.datamodule import ICLDataModule
from icl_lightning.data.garg_tasks import (
    DecisionTree,
    LinearClassification,
    NoisyLinearRegression,
    QuadraticRegression,
)
from icl_lightning.data.nonlinear import ReLUNetwork, Sine, SparseLinear
from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.sharding import shard
from icl_lightning.data.tasks import LinearRegression, TaskSampler

__all__ = [
    "DecisionTree",
    "ICLBatch",
    "ICLDataModule",
    "LinearClassification",
    "LinearRegression",
    "NoisyLinearRegression",
    "QuadraticRegression",
    "ReLUNetwork",
    "Sine",
    "SparseLinear",
    "TaskSampler",
    "seeded_generator",
    "shard",
]
