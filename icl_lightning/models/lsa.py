"""Linear self-attention (LSA) transformers of paper A (von Oswald et al., 2023).

Tokens are ``e_i = [x_i, y_i]`` for the N context points and ``[x_q, 0]`` for the query. Each
layer updates every token with attention whose keys and values come from the context tokens
only::

    h_j <- h_j + sum_heads P sum_i (W_Q h_j . W_K h_i) W_V h_i        (linear, no scaling)

and the prediction is ``pred = -h[query, -1]``.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models import batch_last
from icl_lightning.models.init import attention_weights
from icl_lightning.models.linear_attention import LinearAttentionReadout, LinearAttentionUpdate
from icl_lightning.models.products import (
    projection_value,
    stacked_key_query,
    stacked_projection_value,
)


class LSALayer(nn.Module):
    """One multi-head (linear or softmax) self-attention layer over tokens of size D.

    Weights, named as in paper A: ``W_Q, W_K, W_V`` of shape ``(H, key_size, D)`` and the
    output projection ``P`` of shape ``(H, D, key_size)``.

    Args:
        token_dim: D (d + 1 for regression tokens).
        num_heads: H.
        key_size: size of keys, queries and values per head.
        softmax: softmax attention ``softmax(q.k / sqrt(key_size))`` instead of linear.
        layer_norm: apply LayerNorm to the tokens before attention (pre-norm).
        init_scale: variance-scaling factor of the initial weights.
    """

    def __init__(
        self,
        token_dim: int,
        num_heads: int = 1,
        key_size: int | None = None,
        softmax: bool = False,
        layer_norm: bool = False,
        init_scale: float = 0.002,
    ) -> None:
        super().__init__()
        require(num_heads >= 1, "num_heads", num_heads, "an integer >= 1")
        require(key_size is None or key_size >= 1, "key_size", key_size, "None or an integer >= 1")
        require(init_scale > 0, "init_scale", init_scale, "a number > 0")
        key_size = key_size or token_dim
        self.W_Q, self.W_K, self.W_V, self.P = attention_weights(
            token_dim, num_heads, key_size, init_scale
        )
        self.softmax = softmax
        self.norm = nn.LayerNorm(token_dim) if layer_norm else nn.Identity()

    @property
    def is_plain_linear(self) -> bool:
        """One head of linear attention without LayerNorm: the kind of layer paper A's GD
        constructions (:mod:`icl_lightning.theory.gd`) are written in."""
        return self.W_Q.shape[0] == 1 and not self.softmax and isinstance(self.norm, nn.Identity)

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights by their names in paper A, ``{"W_Q", "W_K", "W_V", "P"}``."""
        return {name: getattr(self, name) for name in ("W_Q", "W_K", "W_V", "P")}

    def attention_weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``(B, H, T, N)`` attention of the tokens ``queries`` ``(B, T, D)`` on ``keys``
        ``(B, N, D)``: ``softmax_i(q_t . k_i / sqrt(key_size))`` for softmax attention, the raw
        scores ``q_t . k_i`` for linear attention (``q = W_Q z_t``, ``k = W_K z_i``, z the
        tokens after the layer's LayerNorm, if any)."""
        q = torch.einsum("hkD,btD->bhtk", self.W_Q, self.norm(queries))
        k = torch.einsum("hkD,btD->bhtk", self.W_K, self.norm(keys))
        scores = q @ k.transpose(-1, -2)
        if self.softmax:
            return torch.softmax(scores / math.sqrt(self.W_Q.shape[1]), dim=-1)
        return scores

    def forward(self, h: torch.Tensor, num_context: int, queries: slice = slice(None)):
        """The attention update ``h_attn`` (no residual) of the tokens ``h[:, queries]``.

        Keys and values come from the first ``num_context`` tokens of ``h`` ``(B, T, D)``. Linear
        attention is computed through the context's second moment ``S = sum_i z_i z_i^T``::

            h_attn,j = sum_h P_h W_V,h S W_K,h^T W_Q,h z_j        (z = LayerNorm(h) or h)

        one small ``(D, D)`` matrix per prompt, applied as ``((z_j K) S) V`` with the stacked
        products K and V of :mod:`~icl_lightning.models.products` (O(N D^2 + T H D^2) per
        prompt instead of O(T N k) for the scores).
        """
        z = self.norm(h)
        if self.softmax:
            q = torch.einsum("hkD,btD->bhtk", self.W_Q, z[:, queries])
            k = torch.einsum("hkD,btD->bhtk", self.W_K, z[:, :num_context])
            v = torch.einsum("hkD,btD->bhtk", self.W_V, z[:, :num_context])
            out = F.scaled_dot_product_attention(q, k, v)
            return torch.einsum("hDk,bhtk->btD", self.P, out)
        context = z[:, :num_context]
        S = context.transpose(1, 2) @ context  # (B, D, D)
        D = z.shape[-1]
        a = z[:, queries] @ stacked_key_query(self.W_Q, self.W_K)  # (B, T, H D)
        b = a.view(len(z), -1, D) @ S  # (B, T H, D): rows a_h S
        return b.view(a.shape) @ stacked_projection_value(self.P, self.W_V)

    def residual_update(self, h: torch.Tensor, num_context: int) -> torch.Tensor:
        """``h + h_attn`` for every token: a layer below the last one.

        Linear attention without LayerNorm goes through
        :class:`~icl_lightning.models.linear_attention.LinearAttentionUpdate` (the same
        ``S``-form as :meth:`forward`, with a hand-written backward pass); any other layer is
        ``h + self(h, num_context)``.
        """
        if self.softmax or not isinstance(self.norm, nn.Identity):
            return h + self(h, num_context)
        K = stacked_key_query(self.W_Q, self.W_K)
        V = stacked_projection_value(self.P, self.W_V)
        return LinearAttentionUpdate.apply(h, K, V, num_context)[0]

    def query_update(
        self, h: torch.Tensor, num_context: int, coords: slice = slice(None)
    ) -> torch.Tensor:
        """The attention update of the last token (the query) only, at coordinates ``coords``.

        ``(B, len(coords))``. With ``q'_h = W_K,h^T W_Q,h z_q`` the scores are ``s_hi = z_i .
        q'_h`` (softmax: ``softmax_i(s_hi / sqrt(k))``) and the update is ``sum_h sum_i s_hi
        (P_h W_V,h)[coords] z_i``: O(N H D) per prompt (the last layer needs nothing else, and
        only ``coords = -1`` for the prediction).
        """
        z = self.norm(h)
        context, query = z[:, :num_context], z[:, -1]
        H, key_size, D = self.W_Q.shape
        q = (query @ stacked_key_query(self.W_Q, self.W_K)).unflatten(-1, (H, D))  # q'_h
        scores = context @ q.transpose(1, 2)  # (B, N, H): one (N, D) @ (D, H) per prompt
        if self.softmax:
            scores = torch.softmax(scores / math.sqrt(key_size), dim=1)
        PV = projection_value(self.P[:, coords], self.W_V)  # (H, R, D)
        values = (context @ PV.flatten(0, 1).T).unflatten(-1, (H, -1))  # (B, N, H, R)
        return (scores.unsqueeze(-1) * values).sum((1, 2))

    def readout(self, h: torch.Tensor, num_context: int) -> torch.Tensor:
        """``h'[:, -1, -1]``, the last coordinate of the query token after this layer (with the
        residual), ``(B,)``: the model's last layer.

        Linear attention without LayerNorm goes through
        :class:`~icl_lightning.models.linear_attention.LinearAttentionReadout` (O(N D H) per
        prompt, hand-written backward pass); any other layer through :meth:`query_update`.
        """
        if self.softmax or not isinstance(self.norm, nn.Identity):
            return h[:, -1, -1] + self.query_update(h, num_context, slice(-1, None))[:, 0]
        K = stacked_key_query(self.W_Q, self.W_K)
        U = projection_value(self.P[:, -1:], self.W_V)[:, 0].T  # (D, H): u_h = (P_h W_V,h)[-1]
        return LinearAttentionReadout.apply(h, K, U, num_context)[0]


def predict_query(
    layers: Sequence[LSALayer], h: torch.Tensor, num_context: int, clip: float = 0.0
) -> torch.Tensor:
    """``-h_L[query, -1]``, ``(B,)``: the tokens ``h`` ``(B, T, D)`` (context first, query last)
    through ``layers`` with residuals, every token in the layers below the last
    (:meth:`LSALayer.residual_update`) and only the query's last coordinate in the last one
    (:meth:`LSALayer.readout`). With ``clip > 0`` every layer's output is clamped to
    ``[-clip, clip]`` entry by entry (``h_l <- clamp(h_l)``, paper A's activation clipping)."""
    for layer in layers[:-1]:
        h = layer.residual_update(h, num_context)
        if clip > 0:
            h = h.clamp(-clip, clip)
    last = layers[-1].readout(h, num_context)
    return -(last.clamp(-clip, clip) if clip > 0 else last)


class LSA(nn.Module):
    """A stack of L attention layers (or one layer applied L times) with residuals.

    Args:
        input_dim: d; tokens have size d + 1.
        num_layers: L.
        recurrent: apply one shared layer L times (paper A's recurrent model).
        num_heads: heads per layer.
        key_size: key size per head (default d + 1).
        layer_norm: pre-LayerNorm in each layer (off in paper A's linear experiments).
        softmax: softmax attention, one flag for all layers or one per layer.
        init_scale: initial weights use variance scaling ``init_scale / L`` (paper: 0.002).
        clip: clamp every entry of every layer's output tokens to ``[-clip, clip]`` (0: off).
            Paper A's official notebook clips at 10 for more than 3 layers: a deep LSA is a
            polynomial of high degree in its prompt, and without the clip a rare prompt can
            overflow it (training then stops with a NaN loss).
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 1,
        recurrent: bool = False,
        num_heads: int = 1,
        key_size: int | None = None,
        layer_norm: bool = False,
        softmax: bool | Sequence[bool] = False,
        init_scale: float = 0.002,
        clip: float = 0.0,
    ) -> None:
        super().__init__()
        require(num_layers >= 1, "num_layers", num_layers, "an integer >= 1")
        require(clip >= 0, "clip", clip, "a number >= 0 (0: no activation clipping)")
        flags = [softmax] * num_layers if isinstance(softmax, bool) else list(softmax)
        require(
            len(flags) == num_layers,
            "softmax",
            softmax,
            f"one bool or a list of {num_layers} bools (one per layer)",
        )
        require(
            not recurrent or len(set(flags)) == 1,
            "softmax",
            softmax,
            "the same flag for every application of a recurrent layer",
        )
        self.input_dim = input_dim
        self.num_layers = num_layers
        self.recurrent = recurrent
        self.clip = float(clip)
        layer_args = dict(
            token_dim=input_dim + 1,
            num_heads=num_heads,
            key_size=key_size,
            layer_norm=layer_norm,
            init_scale=init_scale / num_layers,
        )
        count = 1 if recurrent else num_layers
        self.layers = nn.ModuleList(LSALayer(softmax=flags[i], **layer_args) for i in range(count))

    @classmethod
    def from_weights(
        cls,
        layers: list[dict[str, torch.Tensor]],
        num_layers: int | None = None,
        recurrent: bool = False,
    ) -> "LSA":
        """A linear-attention LSA holding ``layers``, one dict ``{"W_Q", "W_K", "W_V", "P"}``
        per layer (e.g. the constructions of :mod:`icl_lightning.theory.gd`).

        ``recurrent=True`` takes one dict, applied ``num_layers`` times. Sizes, dtype and device
        follow the weights; the global RNG is left as it was (the random initialisation is
        overwritten at once).
        """
        num_heads, key_size, token_dim = layers[0]["W_Q"].shape
        like = layers[0]["W_Q"]
        with torch.random.fork_rng(devices=[]):
            model = cls(
                token_dim - 1,
                num_layers=num_layers if recurrent else len(layers),
                recurrent=recurrent,
                num_heads=num_heads,
                key_size=key_size,
            )
        model = model.to(dtype=like.dtype, device=like.device)
        model.load_state_dict(
            {f"layers.{i}.{name}": w for i, layer in enumerate(layers) for name, w in layer.items()}
        )
        return model

    @property
    def shared_layer(self) -> LSALayer | None:
        """The one layer applied at every depth (recurrent, or L = 1); None when the L layers
        are distinct."""
        return self.layers[0] if self.recurrent or self.num_layers == 1 else None

    def layer(self, index: int) -> LSALayer:
        """The layer applied at depth ``index`` (the shared one when recurrent)."""
        return self.layers[0 if self.recurrent else index]

    @staticmethod
    def tokens(context_x, context_y, query_x) -> torch.Tensor:
        """``(B, N+1, d+1)`` tokens: ``[x_i, y_i]`` for the context, then ``[x_q, 0]``."""
        context = torch.cat([context_x, context_y.unsqueeze(-1)], dim=-1)
        query = F.pad(query_x, (0, 1)).unsqueeze(1)
        return torch.cat([context, query], dim=1)

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """Predictions ``-h_L[query, -1]`` of shape ``(B,)``; the last layer computes only the
        query token's last coordinate. Linear attention on the CPU in float32/float64 runs as
        one batch-last autograd function (:mod:`~icl_lightning.models.batch_last`), anything
        else layer by layer (:func:`predict_query`)."""
        layers = [self.layer(i) for i in range(self.num_layers)]
        if batch_last.applies(layers, context_x):
            return batch_last.predict(layers, context_x, context_y, query_x, self.clip)
        h = self.tokens(context_x, context_y, query_x)
        return predict_query(layers, h, context_x.shape[1], self.clip)
