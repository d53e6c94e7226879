"""LightningModules for paper A's "beyond linear" models: the MLP transformer and its
GD-on-learned-features baseline."""

from icl_lightning.checks import require
from icl_lightning.models.mlp_transformer import FeatureGD, MLPTransformer
from icl_lightning.modules.base import ICLRegressionModule


def _check_features(feature_dim: int, mlp_width: int, mlp_layers: int) -> None:
    require(feature_dim >= 1, "feature_dim", feature_dim, "an integer >= 1")
    require(mlp_width >= 1, "mlp_width", mlp_width, "an integer >= 1")
    require(mlp_layers >= 0, "mlp_layers", mlp_layers, "an integer >= 0")


class MLPTransformerModule(ICLRegressionModule):
    """Trains an :class:`~icl_lightning.models.MLPTransformer`: input MLP ``g``, linear embedding
    ``E`` (features ``phi = E g``), L attention layers (optional MLP blocks), readout
    ``-h[query, -1]``.

    Args:
        input_dim: d (linked from ``data``).
        num_context: N (linked from ``data``).
        feature_dim: F, size of the learned features ``phi(x)`` (paper A: 40).
        mlp_width: hidden width of the input MLP (paper A: 40).
        mlp_layers: ``Linear -> GELU`` blocks of the input MLP (0: linear features).
        num_layers: L attention layers.
        softmax: softmax instead of linear attention, one flag or one per layer.
        mlp_blocks: a residual token-wise MLP after each attention layer.
        widening_factor: hidden width of the MLP blocks in units of the token size F + 1.
        num_heads: attention heads per layer.
        key_size: key size per head (default F + 1).
        init_scale: variance scaling of the attention weights, divided by L (paper A: 0.002).
    """

    def __init__(
        self,
        input_dim: int,
        num_context: int,
        feature_dim: int = 40,
        mlp_width: int = 40,
        mlp_layers: int = 1,
        num_layers: int = 1,
        softmax: bool | list[bool] = False,
        mlp_blocks: bool = False,
        widening_factor: int = 4,
        num_heads: int = 1,
        key_size: int | None = None,
        init_scale: float = 0.002,
    ) -> None:
        super().__init__(input_dim, num_context)
        _check_features(feature_dim, mlp_width, mlp_layers)
        for option, value in [
            ("num_layers", num_layers),
            ("widening_factor", widening_factor),
            ("num_heads", num_heads),
        ]:
            require(value >= 1, option, value, "an integer >= 1")
        require(key_size is None or key_size >= 1, "key_size", key_size, "None or an integer >= 1")
        require(init_scale > 0, "init_scale", init_scale, "a number > 0")
        self.save_hyperparameters()
        self.model = MLPTransformer(
            input_dim,
            feature_dim=feature_dim,
            mlp_width=mlp_width,
            mlp_layers=mlp_layers,
            num_layers=num_layers,
            softmax=softmax,
            mlp_blocks=mlp_blocks,
            widening_factor=widening_factor,
            num_heads=num_heads,
            key_size=key_size,
            init_scale=init_scale,
        )


class FeatureGDModule(ICLRegressionModule):
    """Paper A's "GD on learned deep features" baseline (:class:`~icl_lightning.models.FeatureGD`):
    ``pred = (eta / N) sum_i y_i <phi(x_i), phi(x_q)>``, attention fixed to the one-step GD
    construction, only the input MLP and embedding trained (and ``eta`` if ``learn_eta``).

    Args:
        input_dim: d (linked from ``data``).
        num_context: N (linked from ``data``).
        feature_dim: F, size of ``phi(x)``.
        mlp_width: hidden width of the input MLP.
        mlp_layers: ``Linear -> GELU`` blocks of the input MLP (0: linear features).
        eta: GD step size of the fixed attention (paper A: 0.1).
        learn_eta: train ``eta`` as well.
    """

    def __init__(
        self,
        input_dim: int,
        num_context: int,
        feature_dim: int = 40,
        mlp_width: int = 40,
        mlp_layers: int = 1,
        eta: float = 0.1,
        learn_eta: bool = False,
    ) -> None:
        super().__init__(input_dim, num_context)
        _check_features(feature_dim, mlp_width, mlp_layers)
        require(eta > 0, "eta", eta, "a number > 0")
        self.save_hyperparameters()
        self.model = FeatureGD(input_dim, feature_dim, mlp_width, mlp_layers, eta, learn_eta)
