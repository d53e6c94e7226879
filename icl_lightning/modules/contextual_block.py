"""ContextualBlockModule: paper B's contextual block as a LightningModule."""

from typing import Literal

from jsonargparse.typing import PositiveFloat, PositiveInt

from icl_lightning.models.contextual_block import ContextualBlock
from icl_lightning.modules.base import ICLRegressionModule


class ContextualBlockModule(ICLRegressionModule):
    """Trains a :class:`~icl_lightning.models.ContextualBlock` ``T_W(C, x) = M_W(A(C, x))[-1]``.

    Args:
        input_dim: d (linked from ``data``).
        num_context: N (linked from ``data``).
        num_heads: attention heads in A.
        key_size: key size per head (default d + 1).
        mlp_width: m, rows of the MLP's first weight W.
        activation: the MLP's activation f.
        attention: ``"softmax"`` (paper B) or ``"linear"`` attention in A.
        attention_residual: ``A = e_q + attention`` (the attention's skip connection).
        mlp_skip: keep the MLP's skip connection (off in paper B's experiments).
        layer_norm: LayerNorms inside A (before the attention and on its output).
        init_scale: variance-scaling (fan-in) factor of the initial weights.

    Example (YAML)::

        model:
          class_path: icl_lightning.modules.ContextualBlockModule
          init_args: {mlp_width: 64, mlp_skip: false}
    """

    def __init__(
        self,
        input_dim: int,
        num_context: int,
        num_heads: PositiveInt = 1,
        key_size: PositiveInt | None = None,
        mlp_width: PositiveInt = 64,
        activation: Literal["relu", "gelu", "tanh", "identity"] = "relu",
        attention: Literal["softmax", "linear"] = "softmax",
        attention_residual: bool = True,
        mlp_skip: bool = False,
        layer_norm: bool = False,
        init_scale: PositiveFloat = 1.0,
    ) -> None:
        super().__init__(input_dim, num_context)
        self.save_hyperparameters()
        self.model = ContextualBlock(
            input_dim,
            num_heads=int(num_heads),
            key_size=None if key_size is None else int(key_size),
            mlp_width=int(mlp_width),
            activation=activation,
            attention=attention,
            attention_residual=attention_residual,
            mlp_skip=mlp_skip,
            layer_norm=layer_norm,
            init_scale=float(init_scale),
        )
