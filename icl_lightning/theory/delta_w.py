"""Paper B's implicit weight updates of a contextual block (Dherin et al., 2025).

For a block ``T_W(C, x) = M_W(A(C, x))`` (:class:`~icl_lightning.models.ContextualBlock`) and
a part Y of the context C:

- Theorem 2.2: ``Delta W(Y) = (W Delta A(Y)) A(C \\ Y, x)^T / ||A(C \\ Y, x)||^2`` with
  ``Delta A(Y) = A(C, x) - A(C \\ Y, x)``; then ``T_W(C, x) = T_{W + Delta W(Y)}(C \\ Y, x)``.
  With the MLP's skip connection the same rank-1 update holds plus the output shift
  ``Delta A(Y)`` (read at the prediction slot).
- Proposition 3.1: with ``A_i = A(c_1..c_i, x)`` and ``A_0 = A(x)``,
  ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` and ``W_i = W + Delta W_i`` satisfy
  ``W_i = W_{i-1} - h grad_W L_i(W_{i-1})``, ``h = 1 / ||A_0||^2``,
  ``L_i(W') = trace(Delta_i^T W')``, ``Delta_i = W (A_{i-1} - A_i) A_0^T``.

All functions are batched over prompts (and over context prefixes) with no Python loops. They
use only the block's public ``A``, ``A_alone``, ``W``, ``mlp_skip`` and ``head``.

A stack of K blocks (``ContextualBlock(num_blocks=K)``): block k, with its own input tokens
``(C^k, x^k)`` (blocks 1..k-1 run on the full prompt, :meth:`ContextualBlock.block_input`), is a
contextual block ``M_{W_k}(A_k(C^k, x^k))`` whose output is a whole token. The ``block_*``
functions apply both results to it through the token-level entries :func:`token_split` and
:func:`token_implicit_output`: ``M_{W_k}(A_k(C^k, x^k)) = M_{W_k + Delta W_k}(A_k(x^k))``
(+ ``Delta A_k`` with the MLP's skip). Context tokens never attend to the query, so replacing
block k's query output by the right-hand side leaves the final prediction unchanged.
"""

from typing import NamedTuple

import torch

from icl_lightning.checks import require
from icl_lightning.models.contextual_block import ContextualBlock, ContextualLayer, ContextualMLP


def check_block(model: object) -> ContextualBlock:
    """``model`` itself, or a clear error when it is not a :class:`ContextualBlock`."""
    require(
        isinstance(model, ContextualBlock),
        "model",
        type(model).__name__,
        "a ContextualBlock (icl_lightning.models.ContextualBlock); the Delta-W theory "
        "needs its A(C, x), A(x) and W",
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


class Split(NamedTuple):
    """Theorem 2.2 for one split of each prompt's context into Y and C \\ Y."""

    delta_W: torch.Tensor  # (B, m, D)
    A_C: torch.Tensor  # A(C, x), (B, D)
    A_rest: torch.Tensor  # A(C \ Y, x), (B, D)


def delta_W_split(
    model: ContextualBlock, context_x, context_y, query_x, Y: torch.Tensor | None = None
) -> Split:
    """``Delta W(Y)`` of Theorem 2.2; ``Y`` is a bool ``(B, N)`` mask (default: all of C)."""
    model = check_block(model)
    A_C = model.A(context_x, context_y, query_x)
    A_rest = model.A_alone(query_x) if Y is None else model.A(context_x, context_y, query_x, ~Y)
    return Split(delta_W(model.W, A_C, A_rest), A_C, A_rest)


def implicit_prediction(
    model: ContextualBlock, context_x, context_y, query_x, Y: torch.Tensor | None = None
) -> torch.Tensor:
    """``T_{W + Delta W(Y)}(C \\ Y, x)`` ``(B,)``, plus ``Delta A(Y)[-1]`` when the MLP keeps
    its skip connection; Theorem 2.2 says it equals ``T_W(C, x)`` exactly."""
    split = delta_W_split(model, context_x, context_y, query_x, Y)
    pred = model.head(split.A_rest, model.W + split.delta_W)
    if model.mlp_skip:
        pred = pred + output_shift(split.A_C, split.A_rest)[..., -1]
    return pred


def token_split(layer: ContextualLayer, W: torch.Tensor, context, query) -> Split:
    """Theorem 2.2 for Y = C at token level, for any block: ``A_C = A(C^k, x^k)``,
    ``A_rest = A(x^k)`` of the layer ``A`` on tokens ``context`` (B, N, D) and ``query`` (B, D),
    and ``Delta W = (W (A_C - A_rest)) A_rest^T / ||A_rest||^2``."""
    A_C, A_rest = layer(context, query), layer.alone(query)
    return Split(delta_W(W, A_C, A_rest), A_C, A_rest)


def token_implicit_output(mlp: ContextualMLP, split: Split) -> torch.Tensor:
    """``M_{W + Delta W}(A_rest)`` (+ ``Delta A`` with the skip), the whole output token
    ``(B, D)``, from the pre-activation ``u = (W + Delta W) A_rest + b``; Theorem 2.2 says it
    equals ``M_W(A_C)``."""
    u = torch.einsum("bmD,bD->bm", mlp.W + split.delta_W, split.A_rest) + mlp.b
    out = mlp.from_preactivation(u, split.A_rest)
    return out + output_shift(split.A_C, split.A_rest) if mlp.skip else out


class BlockEquivalence(NamedTuple):
    """Theorem 2.2 for block k of a stack, on its own input ``(C^k, x^k)``."""

    output: torch.Tensor  # M_{W_k}(A_k(C^k, x^k)), (B, D)
    implicit_output: torch.Tensor  # M_{W_k + Delta W_k}(A_k(x^k)) (+ Delta A_k), (B, D)
    prediction: torch.Tensor  # T(C, x), (B,)
    implicit_prediction: torch.Tensor  # T with block k's query output replaced, (B,)


def block_equivalence(model: ContextualBlock, k: int, context_x, context_y, query_x):
    """:class:`BlockEquivalence` of block k (1-based): both output tokens of block k at the
    query, and the final predictions through blocks k+1..K from each (equal, since context
    tokens ``C^{k+1} = M_{W_k}(A_k,ctx(C^k))`` do not depend on the query)."""
    context, query = check_block(model).block_input(k, context_x, context_y, query_x)
    layer, mlp = model.layers(k)
    split = token_split(layer, mlp.W, context, query)
    output, implicit = mlp(split.A_C), token_implicit_output(mlp, split)
    if k < model.num_blocks:
        context = mlp(layer.context_only(context))
    return BlockEquivalence(
        output,
        implicit,
        model.predict_from(k, context, output),
        model.predict_from(k, context, implicit),
    )


def block_A_sequence(model: ContextualBlock, k: int, context_x, context_y, query_x):
    """``A_k(c^k_1..c^k_i, x^k)`` for i = 0..N ``(B, N + 1, D)``: Proposition 3.1's sequence
    for block k on its own input (running sums, :meth:`ContextualLayer.prefixes`)."""
    context, query = check_block(model).block_input(k, context_x, context_y, query_x)
    return model.layers(k)[0].prefixes(context, query)


def output_shift(A_C: torch.Tensor, A_rest: torch.Tensor) -> torch.Tensor:
    """The skip-connection variant's additive output shift ``Delta A = A_C - A_rest``."""
    return A_C - A_rest


def A_sequence(model: ContextualBlock, context_x, context_y, query_x) -> torch.Tensor:
    """``A_i = A(c_1..c_i, x)``, i = 0..N, ``(B, N + 1, D)``; ``A_0 = A(x)``.

    From running sums over the context (:meth:`ContextualBlock.A_prefixes`): O(N) time and
    memory per prompt, equal to N + 1 masked passes ``A(C, x, keep=c_1..c_i)``.
    """
    return check_block(model).A_prefixes(context_x, context_y, query_x)


def delta_W_sequence_factors(
    W: torch.Tensor, A_seq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of ``Delta W_i = u_i v^T`` for i = 1..N: ``u_i = W (A_i - A_0)`` ``(B, N, m)``,
    ``v = A_0 / ||A_0||^2`` ``(B, D)``; ``A_seq`` is ``(B, N + 1, D)`` from :func:`A_sequence`."""
    A_0 = A_seq[:, :1]
    u, v = delta_W_factors(W, A_seq[:, 1:], A_0.expand_as(A_seq[:, 1:]))
    return u, v[:, 0]


def delta_W_sequence(W: torch.Tensor, A_seq: torch.Tensor) -> torch.Tensor:
    """Proposition 3.1: ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2``, ``(B, N, m, D)``."""
    u, v = delta_W_sequence_factors(W, A_seq)
    return u.unsqueeze(-1) * v[:, None, None, :]


def delta_W_sequence_norms(
    W: torch.Tensor, A_seq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``||Delta W_i||_F`` for i = 1..N ``(B, N)`` and ``||Delta W_{i+1} - Delta W_i||_F`` for
    i = 1..N-1 ``(B, N - 1)``, without forming the ``(B, N, m)`` factors ``u_i``.

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


class GradientSteps(NamedTuple):
    """Proposition 3.1's gradient-step form of token consumption."""

    h: torch.Tensor  # step size 1 / ||A_0||^2, (B,)
    Delta: torch.Tensor  # Delta_i = W (A_{i-1} - A_i) A_0^T, (B, N, m, D)


def gradient_steps(W: torch.Tensor, A_seq: torch.Tensor) -> GradientSteps:
    """``h = 1 / ||A(x)||^2`` and ``Delta_i = W (A_{i-1} - A_i) A(x)^T`` for i = 1..N."""
    A_0 = A_seq[:, 0]
    u = (A_seq[:, :-1] - A_seq[:, 1:]) @ W.transpose(-1, -2)  # (B, N, m)
    Delta = u.unsqueeze(-1) * A_0[:, None, None, :]
    return GradientSteps(1.0 / (A_0 * A_0).sum(-1), Delta)


def token_loss(Delta_i: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``L_i(W) = trace(Delta_i^T W)`` (its gradient in W is ``Delta_i``)."""
    return (Delta_i * W).sum((-2, -1))


def unrolled_weights(W: torch.Tensor, steps: GradientSteps) -> torch.Tensor:
    """``W_i = W - h sum_{j <= i} Delta_j`` for i = 1..N, the recursion
    ``W_i = W_{i-1} - h grad L_i(W_{i-1})`` from ``W_0 = W`` in closed form, ``(B, N, m, D)``."""
    return W - steps.h[:, None, None, None] * steps.Delta.cumsum(1)
