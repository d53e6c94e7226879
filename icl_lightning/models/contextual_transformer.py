"""Paper B's contextual blocks (Dherin et al., 2025), one or a stack of K.

One block is ``T_W(C, x) = M_W(A(C, x))``. Tokens are ``e_i = [x_i; y_i]`` for the N context
points and ``e_q = [x_q; 0]`` for the query (size ``D = d + 1``). The contextual layer ``A``
is one (softmax or linear) multi-head self-attention layer read at the query position; the
query attends to the context tokens *and to itself*, so ``A(x)``, the same layer applied to
the query alone, is well defined (softmax over the query alone gives ``A(x) = e_q + P V e_q``)::

    e^ = LN_1(e)                                      (only with layer_norm)
    a  = sum_h P_h sum_{j in S + {q}} alpha_hj W_V,h e^_j
         alpha_hj = softmax_j(<W_Q,h e^_q, W_K,h e^_j> / sqrt(k))     (softmax attention)
         alpha_hj = <W_Q,h e^_q, W_K,h e^_j>                          (linear attention)
    A(S, x) = LN_2(e_q + a)                           (LN_2 only with layer_norm; the residual
                                                       e_q only with attention_residual)

where S is the part of the context the query sees (all of C for ``A(C, x)``, none for ``A(x)``).
Both LayerNorms are *inside* A, so the theorem's form is untouched. The MLP, whose first dense
layer has weight ``W`` (``m x D``), and the block's output token are::

    M_W(z) = W_2 f(W z + b) + b_2  (+ z with mlp_skip)        in R^D
    T_W(C, x) = M_W(A(C, x))

A stack of K blocks (:class:`ContextualTransformer`) runs blocks 1..K-1 on every token, from
``(C^1, x^1)`` = the prompt's tokens::

    C^{k+1} = M_{W_k}(A_k,ctx(C^k))    (each context token a query over the context alone)
    x^{k+1} = M_{W_k}(A_k(C^k, x^k))

and reads block K at the query: the prediction is ``M_{W_K}(A_K(C^K, x^K))[-1]`` (K = 1: paper
B's block, ``T_W(C, x)[-1]``). Context tokens never attend to the query, so block k is a
contextual block on its own input ``(C^k, x^k)``; :mod:`icl_lightning.theory.delta_w` applies
Theorem 2.2 and Proposition 3.1 to any block k through :meth:`ContextualTransformer.layers`,
:meth:`ContextualTransformer.block_input` and :meth:`ContextualTransformer.predict_from`.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models.init import attention_weights, variance_scaling_
from icl_lightning.models.products import key_query, projection_value

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "identity": lambda u: u}


class ContextualLayer(nn.Module):
    """The contextual layer ``A``: attention read at the query position (see the module doc).

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
        super().__init__()
        self.W_Q, self.W_K, self.W_V, self.P = attention_weights(
            token_dim, num_heads, key_size or token_dim, init_scale
        )
        self.attention = attention
        self.residual = residual
        self.norm_in = nn.LayerNorm(token_dim) if layer_norm else nn.Identity()
        self.norm_out = nn.LayerNorm(token_dim) if layer_norm else nn.Identity()

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

    def _finish(self, h: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``LN_2(e_q + h)`` (without ``e_q`` when the residual is off)."""
        return self.norm_out(h + query if self.residual else h)

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


class ContextualMLP(nn.Module):
    """``M_W(z) = W_2 f(W z + b) + b_2 (+ z)``, the MLP whose first dense layer has weight W.

    Args:
        token_dim: D.
        width: m, the hidden width (W is ``m x D``).
        activation: f.
        skip: keep the MLP's skip connection (``+ z``).
        init_scale: variance-scaling (fan-in) factor of the initial weights.
    """

    def __init__(
        self,
        token_dim: int,
        width: int = 64,
        activation: str = "relu",
        skip: bool = False,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.W = nn.Parameter(
            variance_scaling_(torch.empty(width, token_dim), init_scale, token_dim)
        )
        self.b = nn.Parameter(torch.zeros(width))
        self.W_2 = nn.Parameter(variance_scaling_(torch.empty(token_dim, width), init_scale, width))
        self.b_2 = nn.Parameter(torch.zeros(token_dim))
        self.activation = activation
        self.skip = skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``M_W(z)`` for ``z`` of shape ``(..., D)``."""
        return self.from_preactivation(F.linear(z, self.W, self.b), z)

    def from_preactivation(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``M_W(z) = W_2 f(u) + b_2 (+ z)`` from the pre-activation ``u = W z + b`` ``(..., m)``:
        W enters only through u, so a gradient in W is ``(d/du) z^T``."""
        out = F.linear(ACTIVATIONS[self.activation](u), self.W_2, self.b_2)
        return out + z if self.skip else out

    def prediction(
        self, u: torch.Tensor, z: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``M_W(z)[-1] = f(u) . W_2[-1] + b_2[-1] (+ z[-1])`` from ``u = W z + b``, ``(...)``.
        For relu, ``hidden`` (like u) receives ``f(u)`` instead of a new tensor."""
        if self.activation == "relu" and hidden is not None:
            return self._readout(torch.clamp_min(u, 0, out=hidden), z)
        return self._readout(ACTIVATIONS[self.activation](u), z)

    def prediction_and_slope(
        self, u: torch.Tensor, z: torch.Tensor, out: tuple | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prediction` and its gradient in u, ``W_2[-1] * f'(u)`` ``(..., m)``. For relu
        in closed form, ``f'(u) = sign(relu(u))`` (0 at u = 0, as autograd), written into the
        buffers ``out = (hidden, slope)`` when given (a loop over many steps then allocates
        nothing); for any other f one vector-Jacobian product
        through f alone (plain ``torch.autograd.grad`` on a detached copy of u, which works
        under ``torch.no_grad`` and ``torch.inference_mode`` too)."""
        w = self.W_2[-1].detach()
        if self.activation == "relu":  # cheaper than autograd's threshold_backward
            hidden, slope = u.new_empty((2, *u.shape)) if out is None else out
            prediction = self.prediction(u.detach(), z, hidden)  # writes relu(u) into hidden
            return prediction, torch.sign(hidden, out=slope).mul_(w)
        with torch.inference_mode(False), torch.enable_grad():
            u = (u.clone() if u.is_inference() else u.detach()).requires_grad_()
            hidden = ACTIVATIONS[self.activation](u)
            (slope,) = torch.autograd.grad(hidden, u, w.expand_as(u))
        return self._readout(hidden.detach(), z), slope

    def _readout(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        prediction = hidden @ self.W_2[-1] + self.b_2[-1]
        return prediction + z[..., -1] if self.skip else prediction


class TokenBlock(nn.Module):
    """An earlier block k < K of a stack: maps every token through ``M_{W_k}(A_k(., .))``.

    Context token i becomes ``M_W(A_ctx(C)_i)`` (:meth:`ContextualLayer.context_only`: it
    attends to the context only) and the query becomes ``M_W(A(C, x))``, so no query
    information reaches the context tokens.
    """

    def __init__(self, contextual: ContextualLayer, mlp: ContextualMLP) -> None:
        super().__init__()
        self.contextual = contextual
        self.mlp = mlp

    def context_tokens(self, context: torch.Tensor) -> torch.Tensor:
        """``C^{k+1} = M_W(A_ctx(C^k))`` ``(B, N, D)`` from ``C^k``."""
        return self.mlp(self.contextual.context_only(context))

    def forward(
        self, context: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C^{k+1}, x^{k+1})`` from ``(C^k, x^k)``, shapes ``(B, N, D)`` and ``(B, D)``."""
        return self.context_tokens(context), self.mlp(self.contextual(context, query))


class ContextualTransformer(nn.Module):
    """K contextual blocks, the last read at the query (equations in the module doc).

    Args:
        input_dim: d; tokens have size D = d + 1.
        num_heads: attention heads of every block.
        key_size: key size per head (default D).
        mlp_width: m, rows of every block's W.
        activation: the MLPs' activation f.
        attention: ``"softmax"`` or ``"linear"`` attention in every A.
        attention_residual: ``A = e_q + attention`` (the attention's own skip connection).
        mlp_skip: keep the MLPs' skip connection (off in paper B's experiments).
        layer_norm: LayerNorms inside every A (before the attention and on its output).
        init_scale: variance-scaling (fan-in) factor of all initial weights.
        num_blocks: K. Blocks 1..K-1 (:class:`TokenBlock`, ``earlier``) map every token;
            block K (``contextual``, ``mlp``) is read at the query. K = 1 is paper B's block
            (:class:`~icl_lightning.models.ContextualBlock`).

    Example::

        model = ContextualTransformer(input_dim=4, num_blocks=2)
        pred = model(context_x, context_y, query_x)                 # (B,)
        context, query = model.block_input(1, context_x, context_y, query_x)
        A_1, M_1 = model.layers(1)                                   # block 1's A and M_W
    """

    def __init__(
        self,
        input_dim: int,
        num_heads: int = 1,
        key_size: int | None = None,
        mlp_width: int = 64,
        activation: Literal["relu", "gelu", "tanh", "identity"] = "relu",
        attention: Literal["softmax", "linear"] = "softmax",
        attention_residual: bool = True,
        mlp_skip: bool = False,
        layer_norm: bool = False,
        init_scale: float = 1.0,
        num_blocks: int = 2,
    ) -> None:
        super().__init__()
        require(num_blocks >= 1, "num_blocks", num_blocks, "an integer >= 1")
        require(input_dim >= 1, "input_dim", input_dim, "an integer >= 1")
        require(num_heads >= 1, "num_heads", num_heads, "an integer >= 1")
        require(key_size is None or key_size >= 1, "key_size", key_size, "None or >= 1")
        require(mlp_width >= 1, "mlp_width", mlp_width, "an integer >= 1")
        require(activation in ACTIVATIONS, "activation", activation, f"one of {list(ACTIVATIONS)}")
        require(attention in ("softmax", "linear"), "attention", attention, "softmax or linear")
        require(init_scale > 0, "init_scale", init_scale, "a number > 0")
        D = input_dim + 1
        self.input_dim = input_dim

        def layers() -> tuple[ContextualLayer, ContextualMLP]:  # one block's A and M_W
            return ContextualLayer(
                D, num_heads, key_size, attention, attention_residual, layer_norm, init_scale
            ), ContextualMLP(D, mlp_width, activation, mlp_skip, init_scale)

        # block K first, then blocks 1..K-1: seeded weights as in earlier versions
        self.contextual, self.mlp = layers()
        self.earlier = nn.ModuleList(TokenBlock(*layers()) for _ in range(num_blocks - 1))

    @property
    def num_blocks(self) -> int:
        """K, the number of contextual blocks."""
        return len(self.earlier) + 1

    def layers(self, k: int) -> tuple[ContextualLayer, ContextualMLP]:
        """``(A_k, M_{W_k})`` of block k (1-based; k = K is the block read at the query)."""
        K = self.num_blocks
        require(1 <= k <= K, "block", k, f"an integer in 1..{K} (num_blocks={K}) or 'all'")
        block = self if k == K else self.earlier[k - 1]
        return block.contextual, block.mlp

    @staticmethod
    def tokens(context_x, context_y, query_x) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens ``[x_i; y_i]`` ``(B, N, D)`` and query token ``[x_q; 0]`` ``(B, D)``."""
        return torch.cat([context_x, context_y.unsqueeze(-1)], -1), F.pad(query_x, (0, 1))

    def block_input(self, k: int, context_x, context_y, query_x):
        """``(C^k, x^k)``: block k's input tokens ``(B, N, D)``, ``(B, D)``, the outputs of
        blocks 1..k-1 on the full prompt (k = 1: the prompt's tokens)."""
        self.layers(k)
        context, query = self.tokens(context_x, context_y, query_x)
        for block in self.earlier[: k - 1]:
            context, query = block(context, query)
        return context, query

    def predict_from(self, k: int, context: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The prediction ``(...)`` from block k's input context ``C^k`` ``(..., N, D)`` and its
        output token at the query ``output`` ``(..., D)``: ``output[-1]`` for k = K, else
        through blocks k+1..K (with ``C^{k+1} = M_{W_k}(A_k,ctx(C^k))``)."""
        if k == self.num_blocks:
            return output[..., -1]
        context, query = self.earlier[k - 1].context_tokens(context), output
        for block in self.earlier[k:]:
            context, query = block(context, query)
        return self.mlp(self.contextual(context, query))[..., -1]

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """The predictions ``(B,)``: the prompt's tokens through all K blocks."""
        context, query = self.tokens(context_x, context_y, query_x)
        for block in self.earlier:
            context, query = block(context, query)
        return self.mlp(self.contextual(context, query))[..., -1]
