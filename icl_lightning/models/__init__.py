"""Plain ``nn.Module`` models, weights named as in the papers; no Lightning here."""

from icl_lightning.models.lsa import LSA, LSALayer

__all__ = ["LSA", "LSALayer"]
