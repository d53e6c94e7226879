"""The contextual block of paper B (Dherin et al., 2025): ``T_W(C, x) = M_W(A(C, x))``.

Tokens are ``e_i = [x_i; y_i]`` for the N context points and ``e_q = [x_q; 0]`` for the query
(size ``D = d + 1``). The contextual layer ``A`` is one (softmax or linear) multi-head
self-attention layer read at the query position; the query attends to the context tokens
*and to itself*, so ``A(x)``, the same layer applied to the query alone, is well defined
(softmax over the query alone gives ``A(x) = e_q + P V e_q``)::

    e^ = LN_1(e)                                      (only with layer_norm)
    a  = sum_h P_h sum_{j in S + {q}} alpha_hj W_V,h e^_j
         alpha_hj = softmax_j(<W_Q,h e^_q, W_K,h e^_j> / sqrt(k))     (softmax attention)
         alpha_hj = <W_Q,h e^_q, W_K,h e^_j>                          (linear attention)
    A(S, x) = LN_2(e_q + a)                           (LN_2 only with layer_norm; the residual
                                                       e_q only with attention_residual)

where S is the part of the context the query sees (all of C for ``A(C, x)``, none for ``A(x)``).
Both LayerNorms are *inside* A, so the theorem's form is untouched. The MLP, whose first dense
layer has weight ``W`` (``m x D``), and the prediction are::

    M_W(z) = W_2 f(W z + b) + b_2  (+ z with mlp_skip)        in R^D
    T_W(C, x) = M_W(A(C, x))[-1]                               (the query's y slot)

Theorem 2.2 then reads ``T_W(C, x) = T_{W + Delta W}(x)`` with ``Delta W`` of rank one; see
:mod:`icl_lightning.theory.delta_w`, which only uses :meth:`ContextualBlock.A`,
:meth:`ContextualBlock.A_alone`, :attr:`ContextualBlock.W` and :meth:`ContextualBlock.head`.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from icl_lightning.checks import require
from icl_lightning.models.init import attention_weights, variance_scaling_

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

    def forward(
        self, context: torch.Tensor, query: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A(S, x)`` for the context tokens ``context`` (B, N, D) and ``query`` (B, D).

        ``keep`` selects S: ``None`` (all of C), a bool ``(B, N)`` mask, or ``(B, S, N)`` masks
        for S subsets at once (output ``(B, S, D)``); the query token is always attended to.
        """
        B, N, D = context.shape
        masks = torch.ones(B, 1, N, dtype=torch.bool, device=context.device)
        if keep is not None:
            masks = keep if keep.ndim == 3 else keep.unsqueeze(1)
        S = masks.shape[1]
        self_mask = torch.ones(B, S, 1, dtype=torch.bool, device=context.device)
        masks = torch.cat([masks, self_mask], dim=-1)  # (B, S, N + 1): the query is last
        tokens = self.norm_in(torch.cat([context, query.unsqueeze(1)], dim=1))
        q = torch.einsum("hkD,bD->bhk", self.W_Q, tokens[:, -1])
        k = torch.einsum("hkD,btD->bhtk", self.W_K, tokens)
        v = torch.einsum("hkD,btD->bhtk", self.W_V, tokens)
        q = q.unsqueeze(2).expand(-1, -1, S, -1)  # one query row per subset
        if self.attention == "softmax":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks.unsqueeze(1))
        else:
            scores = (q @ k.transpose(-1, -2)) * masks.unsqueeze(1)
            out = scores @ v
        a = torch.einsum("hDk,bhsk->bsD", self.P, out)
        h = a + query.unsqueeze(1) if self.residual else a
        h = self.norm_out(h)
        return h if keep is not None and keep.ndim == 3 else h.squeeze(1)


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
        out = F.linear(
            ACTIVATIONS[self.activation](F.linear(z, self.W, self.b)), self.W_2, self.b_2
        )
        return out + z if self.skip else out


class ContextualBlock(nn.Module):
    """Paper B's contextual block ``T_W(C, x) = M_W(A(C, x))[-1]`` (equations in the module doc).

    Args:
        input_dim: d; tokens have size D = d + 1.
        num_heads: attention heads.
        key_size: key size per head (default D).
        mlp_width: m, rows of W.
        activation: the MLP's activation f.
        attention: ``"softmax"`` or ``"linear"`` attention in A.
        attention_residual: ``A = e_q + attention`` (the attention's own skip connection).
        mlp_skip: keep the MLP's skip connection (off in paper B's experiments).
        layer_norm: LayerNorms inside A (before the attention and on its output).
        init_scale: variance-scaling (fan-in) factor of all initial weights.

    Example::

        block = ContextualBlock(input_dim=4)
        pred = block(context_x, context_y, query_x)                     # T_W(C, x)
        same = block.forward_with(block.W + dW, None, None, query_x)    # T_{W+dW}(x)
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
    ) -> None:
        super().__init__()
        require(input_dim >= 1, "input_dim", input_dim, "an integer >= 1")
        require(num_heads >= 1, "num_heads", num_heads, "an integer >= 1")
        require(key_size is None or key_size >= 1, "key_size", key_size, "None or >= 1")
        require(mlp_width >= 1, "mlp_width", mlp_width, "an integer >= 1")
        require(activation in ACTIVATIONS, "activation", activation, f"one of {list(ACTIVATIONS)}")
        require(attention in ("softmax", "linear"), "attention", attention, "softmax or linear")
        require(init_scale > 0, "init_scale", init_scale, "a number > 0")
        D = input_dim + 1
        self.input_dim = input_dim
        self.contextual = ContextualLayer(
            D, num_heads, key_size, attention, attention_residual, layer_norm, init_scale
        )
        self.mlp = ContextualMLP(D, mlp_width, activation, mlp_skip, init_scale)

    @property
    def W(self) -> torch.Tensor:
        """The MLP's first dense weight W, ``(m, D)``."""
        return self.mlp.W

    @property
    def mlp_skip(self) -> bool:
        """Whether ``M_W`` keeps its skip connection (then Theorem 2.2 adds ``Delta A``)."""
        return self.mlp.skip

    @staticmethod
    def tokens(context_x, context_y, query_x) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens ``[x_i; y_i]`` ``(B, N, D)`` and query token ``[x_q; 0]`` ``(B, D)``."""
        return torch.cat([context_x, context_y.unsqueeze(-1)], -1), F.pad(query_x, (0, 1))

    def A(self, context_x, context_y, query_x, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``A(C, x)`` ``(B, D)``; with ``keep`` masks, ``A(S, x)`` for the kept part S of C.

        ``keep``: bool ``(B, N)`` (output ``(B, D)``) or ``(B, S, N)`` (output ``(B, S, D)``).
        """
        return self.contextual(*self.tokens(context_x, context_y, query_x), keep)

    def A_alone(self, query_x: torch.Tensor) -> torch.Tensor:
        """``A(x)`` ``(..., D)``: the layer applied to the query token alone."""
        flat = query_x.reshape(-1, self.input_dim)
        out = self.A(
            flat.new_zeros(len(flat), 0, self.input_dim), flat.new_zeros(len(flat), 0), flat
        )
        return out.reshape(*query_x.shape[:-1], -1)

    def head(self, z: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction ``M_W(z)[-1]`` for ``z`` ``(..., D)``; ``W`` replaces the weight.

        ``W`` of shape ``(m, D)`` is shared; ``(..., m, D)`` gives one W per z (vmapped
        ``torch.func.functional_call``, so the module's own weight is never touched).
        """
        if W is None:
            return self.mlp(z)[..., -1]
        if W.ndim == 2:
            return functional_call(self.mlp, {"W": W}, (z,))[..., -1]
        batch = z.shape[:-1]
        require(W.shape[:-2] == batch, "W", tuple(W.shape), f"(m, D) or {(*batch, 'm', 'D')}")
        one = vmap(lambda w, u: functional_call(self.mlp, {"W": w}, (u,))[-1])
        return one(W.reshape(-1, *W.shape[-2:]), z.reshape(-1, z.shape[-1])).reshape(batch)

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """``T_W(C, x)``, predictions ``(B,)``."""
        return self.head(self.A(context_x, context_y, query_x))

    def forward_with(self, W: torch.Tensor, context_x, context_y, query_x) -> torch.Tensor:
        """``T_{W'}(C, x)`` with ``W' = W`` given (``(m, D)`` or per prompt ``(B, m, D)``).

        ``context_x = None`` (or an empty context) gives ``T_{W'}(x)``.
        """
        if context_x is None or context_x.shape[1] == 0:
            return self.head(self.A_alone(query_x), W)
        return self.head(self.A(context_x, context_y, query_x), W)
