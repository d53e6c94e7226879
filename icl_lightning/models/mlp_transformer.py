"""Transformers on learned deep features (paper A, "beyond linear").

A feature map ``phi(x) = E g(x)`` (an input MLP ``g`` with GELU, then a linear embedding ``E``)
turns each input into a feature vector; tokens are ``[phi(x_i), y_i]`` for the context and
``[phi(x_q), 0]`` for the query, and the LSA readout ``pred = -h[query, -1]`` is kept. One GD
step on these features from ``w0 = 0`` predicts

    pred = (eta / N) sum_i y_i <phi(x_i), phi(x_q)>                      (kernel regression view)

which :class:`FeatureGD` computes with fixed (GD-construction) attention, and which a trained
:class:`MLPTransformer` can implement with its attention.
"""

from collections.abc import Sequence

import torch
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models.init import variance_scaling_
from icl_lightning.models.lsa import LSA, LSALayer


def one_step_gd(context_phi, context_y, query_phi, eta=1.0) -> torch.Tensor:
    """One GD step from ``w0 = 0`` on ``L(w) = 1/(2N) sum_i (<w, phi_i> - y_i)^2``, then predict.

    ``pred = (eta / N) sum_i y_i <phi_i, phi_q>`` for ``(B, N, F)`` context features, ``(B, N)``
    targets and ``(B, F)`` query features; returns ``(B,)``. Linear in ``eta``.
    """
    N = context_phi.shape[1]
    return eta / N * torch.einsum("bn,bnf,bf->b", context_y, context_phi, query_phi)


def gd_layer(feature_dim: int, eta: float, num_context: int, dtype=torch.float32) -> LSALayer:
    """The LSA layer of paper A's construction that performs :func:`one_step_gd` on tokens
    ``[phi, y]``: ``W_K = W_Q = [[I_F, 0], [0, 0]]``, ``W_V = [[0, 0], [0, -1]]`` (w0 = 0),
    ``P = (eta / N) I``. Then ``-h[query, -1]`` after the layer is the GD prediction."""
    D = feature_dim + 1
    layer = LSALayer(D, num_heads=1, key_size=D).to(dtype)
    with torch.no_grad():
        selector = torch.eye(D)
        selector[-1, -1] = 0
        value = torch.zeros(D, D)
        value[-1, -1] = -1
        layer.W_Q.copy_(selector[None])
        layer.W_K.copy_(selector[None])
        layer.W_V.copy_(value[None])
        layer.P.copy_(eta / num_context * torch.eye(D, dtype=dtype)[None])
    return layer


class FeatureMap(nn.Module):
    """``phi(x) = E g(x)``: ``mlp_layers`` blocks ``Linear -> GELU`` of width ``mlp_width``
    (the input MLP ``g``; none: ``g = id``), then the linear embedding ``E`` to ``feature_dim``.

    Args:
        input_dim: d.
        feature_dim: F, the size of ``phi(x)``.
        mlp_width: hidden width of the input MLP (paper A: 40).
        mlp_layers: number of ``Linear -> GELU`` blocks (0: ``phi`` is linear).
    """

    def __init__(self, input_dim: int, feature_dim: int, mlp_width: int, mlp_layers: int) -> None:
        super().__init__()
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
        feature_dim: F, size of the learned features ``phi(x)`` (tokens have size F + 1).
        mlp_width: hidden width of the input MLP.
        mlp_layers: ``Linear -> GELU`` blocks in the input MLP (0: linear features).
        num_layers: L attention layers.
        softmax: softmax instead of linear attention, one flag or one per layer.
        mlp_blocks: add a residual token-wise MLP after each attention layer.
        widening_factor: hidden width of those MLP blocks, in units of the token size.
        num_heads: attention heads per layer.
        key_size: key size per head (default F + 1).
        init_scale: variance scaling of attention (and MLP-block output) weights, divided by L.
    """

    def __init__(
        self,
        input_dim: int,
        feature_dim: int = 40,
        mlp_width: int = 40,
        mlp_layers: int = 1,
        num_layers: int = 1,
        softmax: bool | Sequence[bool] = False,
        mlp_blocks: bool = False,
        widening_factor: int = 4,
        num_heads: int = 1,
        key_size: int | None = None,
        init_scale: float = 0.002,
    ) -> None:
        super().__init__()
        flags = [softmax] * num_layers if isinstance(softmax, bool) else list(softmax)
        require(len(flags) == num_layers, "softmax", softmax, f"a bool or {num_layers} bools")
        self.features = FeatureMap(input_dim, feature_dim, mlp_width, mlp_layers)
        D, scale = feature_dim + 1, init_scale / num_layers
        self.layers = nn.ModuleList(
            LSALayer(D, num_heads, key_size, softmax=flag, init_scale=scale) for flag in flags
        )
        blocks = [MLPBlock(D, widening_factor, scale) for _ in flags] if mlp_blocks else []
        self.blocks = nn.ModuleList(blocks)

    def tokens(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(B, N+1, F+1)`` tokens ``[phi(x_i), y_i]`` and ``[phi(x_q), 0]``."""
        return LSA.tokens(self.features(context_x), context_y, self.features(query_x))

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

    ``pred = (eta / N) sum_i y_i <phi(x_i), phi(x_q)>`` (:func:`one_step_gd`); only the feature map
    ``phi`` (input MLP and embedding) is trained, and ``eta`` when ``learn_eta``. Paper A fixes
    ``eta = 0.1``; since ``phi`` can absorb any scale, a learnable ``eta`` changes only the
    parametrisation. :meth:`gd_layer` gives the same attention as explicit LSA weights.

    Args:
        input_dim: d.
        feature_dim: F.
        mlp_width: hidden width of the input MLP.
        mlp_layers: ``Linear -> GELU`` blocks of the input MLP (0: linear features).
        eta: the GD step size of the fixed attention (paper A: 0.1).
        learn_eta: train ``eta`` as well.
    """

    def __init__(
        self,
        input_dim: int,
        feature_dim: int = 40,
        mlp_width: int = 40,
        mlp_layers: int = 1,
        eta: float = 0.1,
        learn_eta: bool = False,
    ) -> None:
        super().__init__()
        self.features = FeatureMap(input_dim, feature_dim, mlp_width, mlp_layers)
        # a plain float when fixed, so a float64 model uses eta exactly (no float32 rounding)
        self.eta = nn.Parameter(torch.tensor(float(eta))) if learn_eta else float(eta)

    def gd_layer(self, num_context: int) -> LSALayer:
        """The fixed attention as an :class:`LSALayer` (see :func:`gd_layer`)."""
        F = self.features.embedding.out_features
        weight = self.features.embedding.weight
        return gd_layer(F, float(self.eta), num_context, weight.dtype).to(weight.device)

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(eta / N) sum_i y_i <phi(x_i), phi(x_q)>`` of shape ``(B,)``."""
        phi = self.features
        return one_step_gd(phi(context_x), context_y, phi(query_x), self.eta)
