"""Normal token construction (paper A, notebook ``normal_token_construct``).

x and y sit in separate tokens, ``x_1, y_1, x_2, y_2, ..., x_N, y_N, x_q``. Every token has the
common width ``D = P + d + 1`` and the layout ``[p_t, x, y]``: an x-token is ``[p_t, x_i, 0]``,
a y-token ``[p_t, 0, y_i]``, the query ``[p_{2N}, x_q, 0]``, where ``p_t`` (t = 0..2N) is a fixed
sinusoidal positional encoding (concatenated, as the official code's ``concat_pe``), which also
tells x- from y-tokens (even / odd t).

Layer 1 is softmax attention, full (not causal) over the 2N context tokens, every token a
query; it can copy y_i into the empty y slot of the x_i-token (induction-head-like copying:
x_i attends to its right neighbour). The following layers are linear attention; once
``[p, x_i, y_i]`` sits in the x_i-token, layer 2 can do paper A's one GD step on it. Keys
and values always come from the context tokens only, and the readout is LSA's
``pred = -h[query, -1]``.
"""

import torch
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models.lsa import LSALayer


def sinusoidal_encoding(num_tokens: int, size: int, dtype=torch.float32, device=None):
    """``(T, P)``: ``p_t[2k] = sin(t w_k)``, ``p_t[2k+1] = cos(t w_k)``, ``w_k = 10000^(-2k/P)``.

    A shift ``t -> t + 1`` is a fixed rotation of every ``(sin, cos)`` pair, so "attend to the
    next token" is one bilinear form ``p_t^T A p_s`` for all t.
    """
    t = torch.arange(num_tokens, dtype=dtype, device=device)[:, None]
    omega = 10000 ** (-torch.arange(0, size, 2, dtype=dtype, device=device) / size)
    pe = torch.stack([torch.sin(t * omega), torch.cos(t * omega)], dim=-1)
    return pe.reshape(num_tokens, -1)[:, :size]


class TokenTransformer(nn.Module):
    """L attention layers over separate x and y tokens; layer 1 softmax, the others linear.

    ``h <- h + Attn_l(h)`` for l = 1..L (keys and values from the 2N context tokens), then
    ``pred = -h_L[query, -1]``. :meth:`first_layer` exposes layer 1's output and attention map.

    Args:
        input_dim: d.
        num_layers: L >= 2 (paper A: 2).
        first_layer_softmax: layer 1 uses softmax attention (paper A); False: all linear.
        pe_size: P, size of the positional encoding.
        num_heads: heads per layer.
        key_size: key size per head (default D = P + d + 1).
        init_scale: variance scaling of the initial weights, divided by L (paper A: 0.02).
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 2,
        first_layer_softmax: bool = True,
        pe_size: int = 16,
        num_heads: int = 1,
        key_size: int | None = None,
        init_scale: float = 0.02,
    ) -> None:
        super().__init__()
        require(num_layers >= 2, "num_layers", num_layers, "an integer >= 2")
        require(pe_size >= 2 and pe_size % 2 == 0, "pe_size", pe_size, "an even integer >= 2")
        self.input_dim, self.pe_size = input_dim, pe_size
        D = pe_size + input_dim + 1
        kw = dict(num_heads=num_heads, key_size=key_size, init_scale=init_scale / num_layers)
        flags = [first_layer_softmax] + [False] * (num_layers - 1)
        self.layers = nn.ModuleList(LSALayer(D, softmax=flag, **kw) for flag in flags)

    def tokens(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(B, 2N+1, D)`` tokens ``[p, x_1, 0], [p, 0, y_1], ..., [p, 0, y_N], [p, x_q, 0]``."""
        B, N, d = context_x.shape
        x_tokens = torch.cat([context_x, context_x.new_zeros(B, N, 1)], dim=-1)
        y_tokens = torch.cat([context_x.new_zeros(B, N, d), context_y[..., None]], dim=-1)
        context = torch.stack([x_tokens, y_tokens], dim=2).reshape(B, 2 * N, d + 1)
        query = torch.cat([query_x, query_x.new_zeros(B, 1)], dim=-1)[:, None]
        h = torch.cat([context, query], dim=1)
        pe = sinusoidal_encoding(2 * N + 1, self.pe_size, h.dtype, h.device)
        return torch.cat([pe.expand(B, -1, -1), h], dim=-1)

    def first_layer(self, context_x, context_y, query_x) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens after layer 1, ``(B, 2N+1, D)``, and its attention weights ``(B, H, 2N+1, 2N)``
        (``softmax(q_t . k_s / sqrt(key_size))`` over the context tokens s; for a linear first
        layer, the raw scores ``q_t . k_s``)."""
        h = self.tokens(context_x, context_y, query_x)
        layer, M = self.layers[0], 2 * context_x.shape[1]
        return h + layer(h, M), layer.attention_weights(h, h[:, :M])

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """Predictions ``-h_L[query, -1]`` of shape ``(B,)``."""
        M = 2 * context_x.shape[1]
        h = self.tokens(context_x, context_y, query_x)
        for layer in self.layers[:-1]:
            h = h + layer(h, M)
        return -(h[:, -1, -1] + self.layers[-1].query_update(h, M, slice(-1, None))[:, 0])
