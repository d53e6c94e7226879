"""Paper B's implicit weight updates (Dherin et al., 2025), for any block k of a stack of
contextual blocks (:class:`~icl_lightning.theory.interface.BlockStack`, such as
:class:`~icl_lightning.models.ContextualTransformer`; K = k = 1 is paper B's single block),
whatever its contextual layer (attention, a recurrence, a state-space layer: only
``A(C, x)``, ``A(x)`` and the prefix outputs of :mod:`icl_lightning.theory.interface` are used).

Block k is a contextual block ``M_{W_k}(A_k(C^k, x^k))`` on its own input tokens ``(C^k, x^k)``
(the prompt's tokens for k = 1; the outputs of blocks 1..k-1 on the full prompt otherwise,
:meth:`~icl_lightning.theory.interface.BlockStack.block_input`). Dropping the block index, for
a part Y of its context C:

- Theorem 2.2: ``Delta W(Y) = (W Delta A(Y)) A(C \\ Y, x)^T / ||A(C \\ Y, x)||^2`` with
  ``Delta A(Y) = A(C, x) - A(C \\ Y, x)``; then ``M_W(A(C, x)) = M_{W + Delta W(Y)}(A(C \\ Y, x))``
  (the whole output token). With the MLP's skip connection the same rank-1 update holds plus
  the output shift ``Delta A(Y)``.
- Proposition 3.1: with ``A_i = A(c_1..c_i, x)`` and ``A_0 = A(x)``,
  ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` and ``W_i = W + Delta W_i`` satisfy
  ``W_i = W_{i-1} - h grad_W L_i(W_{i-1})``, ``h = 1 / ||A_0||^2``,
  ``L_i(W') = trace(Delta_i^T W')``, ``Delta_i = W (A_{i-1} - A_i) A_0^T``.

Context tokens never attend to the query, so replacing block k's output token at the query by
the right-hand side of Theorem 2.2 leaves the final prediction unchanged (for k = K = 1 the
prediction is that token's last entry, paper B's ``T_W(C, x) = T_{W + Delta W}(x)``). All
functions are batched over prompts (and over context prefixes) with no Python loops.
"""

from typing import NamedTuple

import torch

from icl_lightning.checks import require
from icl_lightning.theory.interface import BlockMLP, BlockStack, ContextualLayerLike


def check_model(model: object) -> BlockStack:
    """``model`` itself, or a clear error when it is not a contextual block or stack of them."""
    require(
        isinstance(model, BlockStack),
        "model",
        type(model).__name__,
        "a ContextualBlock or ContextualTransformer (icl_lightning.models) or another "
        "BlockStack (icl_lightning.theory.interface); the Delta-W theory needs its A(C, x), "
        "A(x), prefix outputs and W",
    )
    return model


def delta_W_factors(
    W: torch.Tensor, A_C: torch.Tensor, A_rest: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-1 factors ``u = W (A_C - A_rest)``, ``v = A_rest / ||A_rest||^2`` of Theorem 2.2.

    ``Delta W = u v^T``, so ``||Delta W||_F = ||u|| ||v||``. ``W`` is ``(m, D)``; ``A_C`` and
    ``A_rest`` are ``(..., D)``; ``u`` is ``(..., m)`` and ``v`` ``(..., D)``.
    """
    u = (A_C - A_rest) @ W.transpose(-1, -2)
    v = A_rest / (A_rest * A_rest).sum(-1, keepdim=True)
    return u, v


def delta_W(W: torch.Tensor, A_C: torch.Tensor, A_rest: torch.Tensor) -> torch.Tensor:
    """Theorem 2.2: ``Delta W = (W (A_C - A_rest)) A_rest^T / ||A_rest||^2``, ``(..., m, D)``."""
    u, v = delta_W_factors(W, A_C, A_rest)
    return u.unsqueeze(-1) * v.unsqueeze(-2)


def output_shift(A_C: torch.Tensor, A_rest: torch.Tensor) -> torch.Tensor:
    """The skip-connection variant's additive output shift ``Delta A = A_C - A_rest``."""
    return A_C - A_rest


class Split(NamedTuple):
    """Theorem 2.2 for one split of each prompt's context into Y and C \\ Y."""

    delta_W: torch.Tensor  # (B, m, D)
    A_C: torch.Tensor  # A(C, x), (B, D)
    A_rest: torch.Tensor  # A(C \ Y, x), (B, D)


def token_split(
    layer: ContextualLayerLike, W: torch.Tensor, context, query, Y: torch.Tensor | None = None
) -> Split:
    """Theorem 2.2 on tokens: ``A_C = A(C, x)`` and ``A_rest = A(C \\ Y, x)`` of the layer
    ``A`` on ``context`` ``(B, N, D)`` and ``query`` ``(B, D)`` (``Y``: a bool ``(B, N)`` mask;
    default all of C, ``A_rest = A(x)``), and ``Delta W = (W Delta A) A_rest^T / ||A_rest||^2``."""
    A_C = layer(context, query)
    A_rest = layer.alone(query) if Y is None else layer(context, query, ~Y)
    return Split(delta_W(W, A_C, A_rest), A_C, A_rest)


def delta_W_split(model: BlockStack, k: int, context_x, context_y, query_x, Y=None) -> Split:
    """:func:`token_split` of block k (1-based) on its input ``(C^k, x^k)``; ``Y`` a bool
    ``(B, N)`` mask of the context tokens (default: all of them)."""
    context, query = check_model(model).block_input(k, context_x, context_y, query_x)
    layer, mlp = model.layers(k)
    return token_split(layer, mlp.W, context, query, Y)


def implicit_output(mlp: BlockMLP, split: Split) -> torch.Tensor:
    """``M_{W + Delta W}(A_rest)`` (+ ``Delta A`` with the skip), the whole output token
    ``(B, D)``, from the pre-activation ``u = (W + Delta W) A_rest + b``; Theorem 2.2 says it
    equals ``M_W(A_C)``."""
    u = torch.einsum("bmD,bD->bm", mlp.W + split.delta_W, split.A_rest) + mlp.b
    out = mlp.from_preactivation(u, split.A_rest)
    return out + output_shift(split.A_C, split.A_rest) if mlp.skip else out


class Equivalence(NamedTuple):
    """Theorem 2.2 for block k, on its own input ``(C^k, x^k)``."""

    output: torch.Tensor  # M_{W_k}(A_k(C^k, x^k)), (B, D)
    implicit_output: torch.Tensor  # M_{W_k + Delta W_k}(A_k(C^k \ Y, x^k)) (+ Delta A_k), (B, D)
    prediction: torch.Tensor  # T(C, x), (B,)
    implicit_prediction: torch.Tensor  # T with block k's output token replaced, (B,)


def equivalence(model: BlockStack, k: int, context_x, context_y, query_x, Y=None) -> Equivalence:
    """Both sides of Theorem 2.2 for block k (1-based; ``Y`` as in :func:`delta_W_split`):
    block k's output token at the query and the final predictions from each (equal, since
    the context tokens after block k do not depend on its query output). For K = k = 1:
    ``T_W(C, x)`` and ``T_{W + Delta W(Y)}(C \\ Y, x)``, tokens and predictions."""
    context, query = check_model(model).block_input(k, context_x, context_y, query_x)
    layer, mlp = model.layers(k)
    split = token_split(layer, mlp.W, context, query, Y)
    output, implicit = mlp(split.A_C), implicit_output(mlp, split)
    return Equivalence(
        output,
        implicit,
        model.predict_from(k, context, output),
        model.predict_from(k, context, implicit),
    )


def A_sequence(model: BlockStack, k: int, context_x, context_y, query_x):
    """``A_k,i = A_k(c^k_1..c^k_i, x^k)`` for i = 0..N, ``(B, N + 1, D)``: Proposition 3.1's
    sequence for block k on its own input (``A_k,0 = A_k(x^k)``). From running sums over the
    context, or one scan of a recurrence (the layer's ``prefixes``): O(N) time and memory per
    prompt, equal to N + 1 passes over the prefixes."""
    context, query = check_model(model).block_input(k, context_x, context_y, query_x)
    return model.layers(k)[0].prefixes(context, query)


def delta_W_sequence_norms(
    W: torch.Tensor, A_seq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``||Delta W_i||_F`` for i = 1..N ``(B, N)`` and ``||Delta W_{i+1} - Delta W_i||_F`` for
    i = 1..N-1 ``(B, N - 1)``, with ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` and
    ``A_seq`` from :func:`A_sequence`.

    Rank one: ``||Delta W_i|| = ||W (A_i - A_0)|| / ||A_0||`` and ``||Delta W_{i+1} - Delta
    W_i|| = ||W (A_{i+1} - A_i)|| / ||A_0||``, with ``||W a||^2 = a^T (W^T W) a`` (a ``D x D``
    Gram matrix): O(N D^2) per prompt instead of O(N m D).
    """
    gram = W.transpose(-1, -2) @ W

    def W_norm(a: torch.Tensor) -> torch.Tensor:  # ||W a|| for a of shape (..., D)
        return ((a @ gram) * a).sum(-1).clamp_min(0).sqrt()

    A_0, A_i = A_seq[:, :1], A_seq[:, 1:]
    norm_A_0 = A_0.norm(dim=-1)
    return W_norm(A_i - A_0) / norm_A_0, W_norm(A_i.diff(dim=1)) / norm_A_0
