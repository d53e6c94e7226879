"""Plain ``nn.Module`` models, weights named as in the papers; no Lightning here."""

from icl_lightning.models.contextual_block import ContextualBlock
from icl_lightning.models.contextual_transformer import ContextualTransformer
from icl_lightning.models.gpt2 import GPT2
from icl_lightning.models.lsa import LSA, LSALayer
from icl_lightning.models.mlp_transformer import FeatureGD, FeatureMap, MLPTransformer
from icl_lightning.models.token_transformer import TokenTransformer

__all__ = [
    "ContextualBlock",
    "ContextualTransformer",
    "GPT2",
    "FeatureGD",
    "FeatureMap",
    "LSA",
    "LSALayer",
    "MLPTransformer",
    "TokenTransformer",
]
