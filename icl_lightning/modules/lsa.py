"""LSAModule: paper A's linear self-attention transformer as a LightningModule."""

from icl_lightning.models.lsa import LSA
from icl_lightning.modules.base import ICLRegressionModule


class LSAModule(ICLRegressionModule):
    """Trains an :class:`~icl_lightning.models.LSA` stack on regression prompts.

    Args:
        input_dim: d (linked from ``data``).
        num_context: N (linked from ``data``).
        num_layers: L, attention layers (or applications of one layer when recurrent).
        recurrent: one layer with shared weights applied L times.
        num_heads: attention heads per layer.
        key_size: key size per head (default d + 1).
        layer_norm: pre-LayerNorm in each layer.
        softmax: softmax instead of linear attention, one flag or one per layer.
        init_scale: variance scaling of the initial weights, divided by L (paper: 0.002).
    """

    def __init__(
        self,
        input_dim: int,
        num_context: int,
        num_layers: int = 1,
        recurrent: bool = False,
        num_heads: int = 1,
        key_size: int | None = None,
        layer_norm: bool = False,
        softmax: bool | list[bool] = False,
        init_scale: float = 0.002,
    ) -> None:
        super().__init__(input_dim, num_context)
        self.save_hyperparameters()
        self.model = LSA(
            input_dim,
            num_layers=num_layers,
            recurrent=recurrent,
            num_heads=num_heads,
            key_size=key_size,
            layer_norm=layer_norm,
            softmax=softmax,
            init_scale=init_scale,
        )
