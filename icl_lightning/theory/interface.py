"""What paper B's theory needs from a model: the contextual-layer interface, as structural types
(``typing.Protocol``), so that :mod:`icl_lightning.theory` takes any model that has these
readings and imports no model class.

A contextual layer ``A`` (attention, a recurrence, a state-space layer, a user's own) gives
``A(C, x)``, ``A(x)`` and the prefix outputs ``A(c_1..c_i, x)``, i = 0..N, in one pass; the MLP
``M_W`` gives W, its pre-activation read-outs; a stack of K contextual blocks gives each block's
``(A_k, M_{W_k})``, its input tokens and the prediction from its output token.
"""

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ContextualLayerLike(Protocol):
    """``A``: ``layer(C, x, keep=None) = A(S, x)`` ``(B, D)`` for context tokens ``(B, N, D)``, a
    query token ``(B, D)`` and S = all of C or the tokens a bool ``keep`` ``(B, N)`` marks;
    ``alone(x) = A(x)``; ``prefixes(C, x) = [A(c_1..c_i, x)]_{i=0..N}`` ``(B, N + 1, D)``."""

    def __call__(self, context: torch.Tensor, query: torch.Tensor, keep=None) -> torch.Tensor: ...

    def alone(self, query: torch.Tensor) -> torch.Tensor: ...

    def prefixes(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class BlockMLP(Protocol):
    """``M_W(z) = W_2 f(W z + b) + b_2 (+ z with skip)``: W ``(m, D)``, b ``(m,)``, and the output
    from the pre-activation ``u = W z + b`` (the whole token, or its last entry with the slope
    in u)."""

    W: torch.Tensor
    b: torch.Tensor
    skip: bool

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    def from_preactivation(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...

    def prediction(self, u: torch.Tensor, z: torch.Tensor, hidden=None) -> torch.Tensor: ...

    def prediction_and_slope(self, u: torch.Tensor, z: torch.Tensor, out=None): ...


@runtime_checkable
class BlockStack(Protocol):
    """K contextual blocks, block K read at the query: ``layers(k) = (A_k, M_{W_k})``;
    ``block_input(k, cx, cy, qx) = (C^k, x^k)``; ``predict_from(k, C^k, output)`` the
    prediction with block k's output token at the query replaced by ``output``."""

    input_dim: int

    @property
    def num_blocks(self) -> int: ...

    def layers(self, k: int) -> tuple[ContextualLayerLike, BlockMLP]: ...

    def block_input(self, k: int, context_x, context_y, query_x): ...

    def predict_from(self, k: int, context: torch.Tensor, output: torch.Tensor) -> torch.Tensor: ...
