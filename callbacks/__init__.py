"""Probes: callbacks that measure what the papers claim while a model trains.

Installed as ``icl_lightning.callbacks``; name a probe in YAML with
``class_path: icl_lightning.callbacks.<Probe>``.
"""

from icl_lightning.callbacks.context_length import ContextLengthProbe
from icl_lightning.callbacks.probe import Probe, predict

__all__ = ["ContextLengthProbe", "Probe", "predict"]
