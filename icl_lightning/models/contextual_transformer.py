"""Paper B's contextual blocks (Dherin et al., 2025), one or a stack of K.

One block is ``T_W(C, x) = M_W(A(C, x))``. Tokens are ``e_i = [x_i; y_i]`` for the N context
points and ``e_q = [x_q; 0]`` for the query (size ``D = d + 1``). The contextual layer ``A``
(:mod:`icl_lightning.models.contextual_layers`, option ``contextual_layer``) is read at the query
position, the last token: multi-head softmax or linear attention (the query attends to the
context and to itself), an Elman RNN, a GRU, an LSTM, a diagonal linear recurrence (S4D / LRU)
or its selective (Mamba-style) variant, or a user's own subclass; each is
``A(S, x) = LN_2(e_q + a(S, x))`` with the residual ``e_q`` and the LayerNorms optional.
Both LayerNorms are *inside* A, so the theorem's form is untouched. The MLP, whose first dense
layer has weight ``W`` (``m x D``), and the block's output token are::

    M_W(z) = W_2 f(W z + b) + b_2  (+ z with mlp_skip)        in R^D
    T_W(C, x) = M_W(A(C, x))

A stack of K blocks (:class:`ContextualTransformer`) runs blocks 1..K-1 on every token, from
``(C^1, x^1)`` = the prompt's tokens::

    C^{k+1} = M_{W_k}(A_k,ctx(C^k))    (each context token a query over the context alone:
                                        all of it for attention, its past for a recurrence)
    x^{k+1} = M_{W_k}(A_k(C^k, x^k))

and reads block K at the query: the prediction is ``M_{W_K}(A_K(C^K, x^K))[-1]`` (K = 1: paper
B's block, ``T_W(C, x)[-1]``). Context tokens never attend to the query, so block k is a
contextual block on its own input ``(C^k, x^k)``; :mod:`icl_lightning.theory.delta_w` applies
Theorem 2.2 and Proposition 3.1 to any block k through :meth:`ContextualTransformer.layers`,
:meth:`ContextualTransformer.block_input` and :meth:`ContextualTransformer.predict_from`.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models.contextual_layers import ContextualLayer, build_layer, layer_class
from icl_lightning.models.init import variance_scaling_

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "identity": lambda u: u}


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
        num_heads: attention heads of every block (attention only).
        key_size: key size per head (default D; attention only).
        mlp_width: m, rows of every block's W.
        activation: the MLPs' activation f.
        attention: ``"softmax"`` or ``"linear"`` attention in every A (attention only).
        attention_residual: ``A = e_q + a``, the contextual layer's own skip connection (every
            kind).
        mlp_skip: keep the MLPs' skip connection (off in paper B's experiments).
        layer_norm: LayerNorms inside every A (on its input tokens and on its output).
        init_scale: variance-scaling (fan-in) factor of all initial weights.
        contextual_layer: the kind of every A, one of ``attention``, ``rnn`` (Elman, tanh),
            ``gru``, ``lstm``, ``diagonal`` (S4D / LRU), ``selective`` (Mamba-style), or the
            import path ``package.module.Class`` of a user's
            :class:`~icl_lightning.models.contextual_layers.ContextualLayer` subclass.
        state_size: S, the state size of the recurrent and state-space kinds (default: D for
            ``rnn``, ``gru``, ``lstm``; 16 for ``diagonal``, ``selective``).
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
        contextual_layer: str = "attention",
        state_size: int | None = None,
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
        require(state_size is None or state_size >= 1, "state_size", state_size, "None or >= 1")
        layer_class(contextual_layer)  # the check, naming contextual_layer
        D = input_dim + 1
        self.input_dim = input_dim

        def layers() -> tuple[ContextualLayer, ContextualMLP]:  # one block's A and M_W
            return build_layer(
                contextual_layer,
                D,
                attention_residual,
                layer_norm,
                init_scale,
                state_size,
                num_heads=num_heads,
                key_size=key_size,
                attention=attention,
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
