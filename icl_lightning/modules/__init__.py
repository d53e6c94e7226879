"""LightningModules: training logic per model family."""

from icl_lightning.modules.base import ICLRegressionModule
from icl_lightning.modules.contextual_block import ContextualBlockModule
from icl_lightning.modules.lsa import LSAModule
from icl_lightning.modules.mlp_transformer import FeatureGDModule, MLPTransformerModule
from icl_lightning.modules.token_transformer import TokenTransformerModule

__all__ = [
    "ContextualBlockModule",
    "FeatureGDModule",
    "ICLRegressionModule",
    "LSAModule",
    "MLPTransformerModule",
    "TokenTransformerModule",
]
