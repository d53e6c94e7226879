"""TokenTransformerModule: paper A's normal token construction as a LightningModule."""

from icl_lightning.checks import require
from icl_lightning.models.token_transformer import TokenTransformer
from icl_lightning.modules.base import ICLRegressionModule


class TokenTransformerModule(ICLRegressionModule):
    """Trains a :class:`~icl_lightning.models.TokenTransformer` on prompts laid out as separate
    tokens ``x_1, y_1, ..., x_N, y_N, x_q`` with positional encodings; layer 1 softmax (it learns
    to copy each y_i next to its x_i), the others linear; readout ``-h[query, -1]``.

    Args:
        input_dim: d (linked from ``data``).
        num_context: N (linked from ``data``).
        num_layers: L >= 2 (paper A: 2).
        first_layer_softmax: softmax attention in layer 1 (paper A); False: all linear.
        pe_size: P, size of the sinusoidal positional encoding (even).
        num_heads: heads per layer.
        key_size: key size per head (default P + d + 1).
        init_scale: variance scaling of the initial weights, divided by L (paper A: 0.02).
    """

    def __init__(
        self,
        input_dim: int,
        num_context: int,
        num_layers: int = 2,
        first_layer_softmax: bool = True,
        pe_size: int = 16,
        num_heads: int = 1,
        key_size: int | None = None,
        init_scale: float = 0.02,
    ) -> None:
        super().__init__(input_dim, num_context)
        require(num_layers >= 2, "num_layers", num_layers, "an integer >= 2")
        require(pe_size >= 2 and pe_size % 2 == 0, "pe_size", pe_size, "an even integer >= 2")
        require(num_heads >= 1, "num_heads", num_heads, "an integer >= 1")
        require(key_size is None or key_size >= 1, "key_size", key_size, "None or an integer >= 1")
        require(init_scale > 0, "init_scale", init_scale, "a number > 0")
        self.save_hyperparameters()
        self.model = TokenTransformer(
            input_dim,
            num_layers=num_layers,
            first_layer_softmax=first_layer_softmax,
            pe_size=pe_size,
            num_heads=num_heads,
            key_size=key_size,
            init_scale=init_scale,
        )
