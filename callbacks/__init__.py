"""Probes: callbacks that measure what the papers claim while a model trains.

Installed as ``icl_lightning.callbacks``; name a probe in YAML with
``class_path: icl_lightning.callbacks.<Probe>``.
"""

from icl_lightning.callbacks.baselines import BaselineCurves
from icl_lightning.callbacks.block_probe import BlockProbe
from icl_lightning.callbacks.context_length import ContextLengthProbe
from icl_lightning.callbacks.copy_score import CopyScore
from icl_lightning.callbacks.deep_features import DeepFeatureGD
from icl_lightning.callbacks.delta_w_convergence import DeltaWConvergence
from icl_lightning.callbacks.delta_w_equivalence import DeltaWEquivalence
from icl_lightning.callbacks.finetune_comparison import FinetuneComparison
from icl_lightning.callbacks.gd_alignment import GDAlignment
from icl_lightning.callbacks.gd_baseline import GDBaselineProbe
from icl_lightning.callbacks.ood import OODProbe
from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.callbacks.shifted_prompts import ShiftedPromptCurves

__all__ = [
    "BaselineCurves",
    "BlockProbe",
    "ContextLengthProbe",
    "CopyScore",
    "DeepFeatureGD",
    "DeltaWConvergence",
    "DeltaWEquivalence",
    "FinetuneComparison",
    "GDAlignment",
    "GDBaselineProbe",
    "OODProbe",
    "Probe",
    "ShiftedPromptCurves",
    "predict",
]
