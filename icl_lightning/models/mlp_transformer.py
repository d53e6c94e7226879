"""Transformers on learned deep features (paper A, "beyond linear").

A feature map ``phi(x) = E g(x)`` (an input MLP ``g`` with GELU, then a linear embedding ``E``)
turns each input into a feature vector; tokens are ``[phi(x_i), y_i]`` for the context and
``[phi(x_q), 0]`` for the query, and the LSA readout ``pred = -h[query, -1]`` is kept. One GD
step on these features from ``w0 = 0`` predicts

    pred = (eta / N) sum_i y_i <phi(x_i), phi(x_q)>                      (kernel regression view)

(:func:`~icl_lightning.theory.gd.one_step_gd` with the kernel ``<phi(x_i), phi(x_q)>``; models
import nothing from the theory, so :class:`FeatureGD` writes it out; a test holds it to that
function), which :class:`FeatureGD` computes with fixed (GD-construction)
attention, and which a trained :class:`MLPTransformer` can implement with its attention.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models.init import variance_scaling_
from icl_lightning.models.lsa import LSA, LSALayer


class FeatureMap(nn.Module):
    """``phi(x) = E g(x)``: ``mlp_layers`` blocks ``Linear -> GELU`` of width ``mlp_width``
    (the input MLP ``g``; none: ``g = id``), then the linear embedding ``E`` to ``feature_dim``.

    Args:
        input_dim: d.
        feature_dim: F, the size of ``phi(x)``.
        mlp_width: hidden width of the input MLP (paper A: 40).
        mlp_layers: number of ``Linear -> GELU`` blocks (0: ``phi`` is linear).

    :class:`MLPTransformer` and :class:`FeatureGD` take these options (but ``input_dim``) as
    keyword arguments, ``**features``.
    """

    def __init__(
        self, input_dim: int, feature_dim: int = 40, mlp_width: int = 40, mlp_layers: int = 1
    ) -> None:
        super().__init__()
        require(feature_dim >= 1, "feature_dim", feature_dim, "an integer >= 1")
        require(mlp_width >= 1, "mlp_width", mlp_width, "an integer >= 1")
        require(mlp_layers >= 0, "mlp_layers", mlp_layers, "an integer >= 0")
        sizes = [input_dim] + [mlp_width] * mlp_layers
        blocks = [
            nn.Sequential(nn.Linear(a, b), nn.GELU())
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        self.mlp = nn.Sequential(*blocks)
        self.embedding = nn.Linear(sizes[-1], feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., F)``."""
        return self.embedding(self.mlp(x))


class MLPBlock(nn.Module):
    """Token-wise residual MLP update ``W_2 GELU(W_1 h + b_1) + b_2`` (width ``k * D``); the
    output layer starts near zero (variance scaling ``init_scale``) so the block starts as ~id."""

    def __init__(self, token_dim: int, widening_factor: int, init_scale: float) -> None:
        super().__init__()
        hidden = widening_factor * token_dim
        self.up = nn.Linear(token_dim, hidden)
        self.down = nn.Linear(hidden, token_dim)
        with torch.no_grad():
            variance_scaling_(self.down.weight, init_scale, hidden)
            self.down.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The update (no residual)."""
        return self.down(nn.functional.gelu(self.up(h)))


class MLPTransformer(nn.Module):
    """Input MLP + linear embedding + L attention layers (optional MLP blocks) + LSA readout.

    ``h_0 = [phi(x_i), y_i]_i, [phi(x_q), 0]``; layer l: ``h <- h + Attn_l(h)`` (keys and values
    from the context tokens only), then ``h <- h + MLP_l(h)`` when ``mlp_blocks``;
    ``pred = -h_L[query, -1]``. Without positional information the prediction is invariant to
    the order of the context points.

    Args:
        input_dim: d.
        num_layers: L attention layers.
        softmax: softmax instead of linear attention, one flag or one per layer.
        mlp_blocks: add a residual token-wise MLP after each attention layer.
        widening_factor: hidden width of those MLP blocks, in units of the token size.
        num_heads: attention heads per layer.
        key_size: key size per head (default F + 1).
        init_scale: variance scaling of attention (and MLP-block output) weights, divided by L.
        **features: the feature map's options (:class:`FeatureMap`: ``feature_dim`` F, the
            size of ``phi(x)``, so tokens have size F + 1; ``mlp_width``; ``mlp_layers``).
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 1,
        softmax: bool | Sequence[bool] = False,
        mlp_blocks: bool = False,
        widening_factor: int = 4,
        num_heads: int = 1,
        key_size: int | None = None,
        init_scale: float = 0.002,
        **features,
    ) -> None:
        super().__init__()
        require(num_layers >= 1, "num_layers", num_layers, "an integer >= 1")
        require(widening_factor >= 1, "widening_factor", widening_factor, "an integer >= 1")
        flags = [softmax] * num_layers if isinstance(softmax, bool) else list(softmax)
        require(len(flags) == num_layers, "softmax", softmax, f"a bool or {num_layers} bools")
        self.features = FeatureMap(input_dim, **features)
        D, scale = self.features.embedding.out_features + 1, init_scale / num_layers
        self.layers = nn.ModuleList(
            LSALayer(D, num_heads, key_size, softmax=flag, init_scale=scale) for flag in flags
        )
        blocks = [MLPBlock(D, widening_factor, scale) for _ in flags] if mlp_blocks else []
        self.blocks = nn.ModuleList(blocks)

    def tokens(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(B, N+1, F+1)`` tokens ``[phi(x_i), y_i]`` and ``[phi(x_q), 0]``."""
        return LSA.tokens(self.features(context_x), context_y, self.features(query_x))

    def attention_kernel(self, context_x, query_x) -> torch.Tensor | None:
        """``(B, N)`` kernel ``k_i = sum_h <W_Q^h [phi(x_q); 0], W_K^h [phi(x_i); 0]>`` of the
        model's one linear attention layer: the bilinear form ``phi_i^T W_K^T W_Q phi_q`` (a
        learned metric) that replaces ``<phi_i, phi_q>`` when that layer is read as one GD step.
        None unless the model has exactly one attention layer and it is linear."""
        if len(self.layers) != 1 or self.layers[0].softmax:
            return None
        query = F.pad(self.features(query_x), (0, 1)).unsqueeze(1)
        context = F.pad(self.features(context_x), (0, 1))
        return self.layers[0].attention_weights(query, context).sum(1)[:, 0]

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """Predictions ``-h_L[query, -1]`` of shape ``(B,)``."""
        N = context_x.shape[1]
        h = self.tokens(context_x, context_y, query_x)
        for i, layer in enumerate(self.layers):
            if i == len(self.layers) - 1:  # the last layer only needs the query token
                h = h[:, -1] + layer.query_update(h, N)
            else:
                h = h + layer(h, N)
            if self.blocks:
                h = h + self.blocks[i](h)
        return -h[..., -1]


class FeatureGD(nn.Module):
    """Paper A's "GD on learned deep features": attention fixed to the one-step GD construction.

    ``pred = (eta / N) sum_i y_i <phi(x_i), phi(x_q)>``
    (:func:`~icl_lightning.theory.gd.one_step_gd`); only the feature map ``phi`` (input MLP and
    embedding) is trained, and ``eta`` when ``learn_eta``. Paper A fixes ``eta = 0.1``; since
    ``phi`` can absorb any scale, a learnable ``eta`` changes only the parametrisation.

    Args:
        input_dim: d.
        eta: the GD step size of the fixed attention (paper A: 0.1).
        learn_eta: train ``eta`` as well.
        **features: the feature map's options (:class:`FeatureMap`: ``feature_dim``,
            ``mlp_width``, ``mlp_layers``).
    """

    def __init__(
        self,
        input_dim: int,
        eta: float = 0.1,
        learn_eta: bool = False,
        **features,
    ) -> None:
        super().__init__()
        require(eta > 0, "eta", eta, "a number > 0")
        self.features = FeatureMap(input_dim, **features)
        # a plain float when fixed, so a float64 model uses eta exactly (no float32 rounding)
        self.eta = nn.Parameter(torch.tensor(float(eta))) if learn_eta else float(eta)

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(eta / N) sum_i y_i <phi(x_i), phi(x_q)>`` of shape ``(B,)``."""
        kernel = torch.einsum("bnf,bf->bn", self.features(context_x), self.features(query_x))
        return self.eta / context_y.shape[-1] * (context_y * kernel).sum(-1)
