"""Attention as a contextual layer: the query attends to the context tokens *and to itself*,
so ``A(x)``, the same layer applied to the query alone, is well defined (softmax over the query
alone gives ``A(x) = e_q + P V e_q``)::

    e^ = LN_1(e)                                      (only with layer_norm)
    a  = sum_h P_h sum_{j in S + {q}} alpha_hj W_V,h e^_j
         alpha_hj = softmax_j(<W_Q,h e^_q, W_K,h e^_j> / sqrt(k))     (softmax attention)
         alpha_hj = <W_Q,h e^_q, W_K,h e^_j>                          (linear attention)
    A(S, x) = LN_2(e_q + a)                           (LN_2 only with layer_norm; the residual
                                                       e_q only with residual)

where S is the part of the context the query sees (all of C for ``A(C, x)``, none for ``A(x)``).
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F

from icl_lightning.models.contextual_layers.base import ContextualLayer
from icl_lightning.models.init import attention_weights
from icl_lightning.models.products import key_query, projection_value


class Attention(ContextualLayer):
    """Multi-head (softmax or linear) self-attention read at the query position (module doc).

    Args:
        token_dim: D = d + 1.
        num_heads: H.
        key_size: k, size of queries, keys and values per head (default D).
        attention: ``"softmax"`` (``scaled_dot_product_attention``) or ``"linear"``.
        residual: add the query token ``e_q`` to the attention output.
        layer_norm: LayerNorm on the tokens before attention and on the output.
        init_scale: variance-scaling (fan-in) factor of the initial weights.
    """

    def __init__(
        self,
        token_dim: int,
        num_heads: int = 1,
        key_size: int | None = None,
        attention: Literal["softmax", "linear"] = "softmax",
        residual: bool = True,
        layer_norm: bool = False,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__(token_dim, residual, layer_norm)
        self.W_Q, self.W_K, self.W_V, self.P = attention_weights(
            token_dim, num_heads, key_size or token_dim, init_scale
        )
        self.attention = attention

    def _scores(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Scores of the tokens ``(B, T, D)`` against the query token ``(B, D)``, ``(B, T, H)``,
        as ``e^_t . q'_h`` (:meth:`_queries`)."""
        return tokens @ self._queries(query).transpose(1, 2)

    def _queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """``q'_h = W_K,h^T W_Q,h e^`` of every head for tokens ``e^`` ``(..., D)``, divided by
        ``sqrt(k)`` for softmax attention, ``(..., H, D)``: then ``e^_t . q'_h`` is the score
        ``<W_Q,h e^, W_K,h e^_t>`` (scaled). One product with the ``(D, H D)`` matrix of all
        heads."""
        H, key_size, D = self.W_Q.shape
        KQ = key_query(self.W_Q, self.W_K).permute(2, 0, 1).reshape(D, H * D)  # [F, h, E]
        if self.attention == "softmax":
            KQ = KQ / math.sqrt(key_size)
        return (tokens @ KQ).unflatten(-1, (H, D))

    def _PV(self) -> torch.Tensor:
        """``(P_h W_V,h)^T`` of every head, ``(H, D, D)``."""
        return projection_value(self.P, self.W_V).transpose(1, 2)

    def _output(self, mixed: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``LN_2(e_q + sum_h P_h W_V,h mixed_h)`` for attention-weighted tokens ``mixed``
        ``(..., H, D)`` (``mixed_h = sum_t alpha_ht e^_t``); ``query`` broadcasts against it."""
        return self._finish(mixed.flatten(-2) @ self._PV().flatten(0, 1), query)

    def forward(
        self, context: torch.Tensor, query: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A(S, x)`` for the context tokens ``context`` (B, N, D) and ``query`` (B, D).

        ``keep`` selects S: ``None`` (all of C), a bool ``(B, N)`` mask, or ``(B, S, N)`` masks
        for S subsets at once (output ``(B, S, D)``); the query token is always attended to.
        Only the query's row of the attention is computed: O((N + 1) H D) per prompt and
        subset.
        """
        tokens = self.norm_in(torch.cat([context, query.unsqueeze(1)], dim=1))  # query last
        if keep is None:  # heads first, (B, H, T): the softmax runs along contiguous memory
            weights = self._queries(tokens[:, -1]) @ tokens.transpose(1, 2)
            if self.attention == "softmax":
                weights = torch.softmax(weights, dim=-1)
            return self._output(weights @ tokens, query)  # one (H, T) @ (T, D) per prompt
        scores = self._scores(tokens, tokens[:, -1])  # (B, T, H)
        masks = keep if keep.ndim == 3 else keep.unsqueeze(1)  # (B, S, N)
        masks = F.pad(masks, (0, 1), value=True).unsqueeze(-1)  # (B, S, T, 1): + the query
        scores = scores.unsqueeze(1)  # (B, 1, T, H)
        if self.attention == "softmax":
            scores = torch.softmax(scores.masked_fill(~masks, -torch.inf), dim=2)
        else:
            scores = scores * masks
        mixed = torch.einsum("bsth,btD->bshD", scores, tokens)
        out = self._output(mixed, query.unsqueeze(1))
        return out if keep.ndim == 3 else out.squeeze(1)

    def prefixes(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``A(c_1..c_i, x)`` for every prefix i = 0..N at once, ``(B, N + 1, D)``.

        Running sums over the context instead of N + 1 masked passes (time and memory
        O(N H D) per prompt). With the query token first, prefix i attends to tokens 0..i.
        Softmax: with ``w_t = exp(s_t - m)``, ``m`` the maximum score of all N + 1 tokens (one
        shared stabiliser, so the ratios are exact), prefix i mixes
        ``sum_{t<=i} w_t e^_t / sum_{t<=i} w_t``; linear attention mixes ``sum_{t<=i} s_t e^_t``.
        The smallest denominator is the query's own ``w_q``; a prompt where it underflows
        (scores spanning more than the dtype's exp range) takes the masked passes instead.
        """
        tokens = self.norm_in(torch.cat([query.unsqueeze(1), context], dim=1))  # query first
        scores = self._scores(tokens, tokens[:, 0])  # (B, N + 1, H)
        if self.attention == "softmax":
            scores = torch.exp(scores - scores.amax(1, keepdim=True))
        # heads last, (B, N + 1, D, H): the elementwise ops run along H, not along D = d + 1
        mixed = (tokens.unsqueeze(-1) * scores.unsqueeze(2)).cumsum_(1)
        if self.attention == "softmax":
            mixed.mul_(scores.cumsum(1).reciprocal_().unsqueeze(2))
        PV = self._PV().transpose(0, 1).flatten(0, 1)  # (D H, D), rows in mixed's order
        out = self._finish(mixed.flatten(-2) @ PV, query.unsqueeze(1))
        if self.attention == "softmax":
            lost = (scores[:, 0] < torch.finfo(scores.dtype).tiny).any(-1)  # (B,)
            if lost.any():
                N = context.shape[1]
                keep = (
                    torch.arange(N, device=out.device)
                    < torch.arange(N + 1, device=out.device)[:, None]
                )
                out[lost] = self(context[lost], query[lost], keep.expand(int(lost.sum()), -1, -1))
        return out

    def context_only(self, context: torch.Tensor) -> torch.Tensor:
        """Every context token read as a query over the context alone, ``(B, N, D)``:
        ``LN_2(e_i + sum_h P_h sum_{j in C} alpha_h,ij W_V,h e^_j)`` (the query token is never
        attended to, so context tokens carry no query information)."""
        tokens = self.norm_in(context)
        q = self._queries(tokens)  # (B, N, H, D)
        scores = torch.einsum("bjD,bihD->bihj", tokens, q)  # (B, N_i, H, N_j)
        if self.attention == "softmax":
            scores = torch.softmax(scores, dim=-1)
        return self._output(scores @ tokens.unsqueeze(1), context)

    def alone(self, query: torch.Tensor) -> torch.Tensor:
        """``A(x)`` for query tokens ``(B, D)``: the query attends to itself only (softmax
        weight 1; linear weight ``s_qq``), ``LN_2(e_q + sum_h P_h W_V,h alpha_h e^_q)``."""
        z = self.norm_in(query)
        if self.attention == "softmax":  # every head mixes e^_q alone
            return self._finish(z @ self._PV().sum(0), query)
        weights = self._scores(z.unsqueeze(1), z).transpose(1, 2)  # (B, H, 1)
        return self._output(weights * z.unsqueeze(1), query)
