"""Weight initialisation as in paper A's Haiku code."""

import math

import torch
from torch import nn


def variance_scaling_(weight: torch.Tensor, scale: float, fan_in: int) -> torch.Tensor:
    """Haiku's ``VarianceScaling(scale, "fan_in", "truncated_normal")``.

    Draws from a normal truncated at +-2 std with ``std = sqrt(scale / fan_in) / 0.8796``
    (0.8796 is the std of a unit normal truncated at +-2, so the result has variance
    ``scale / fan_in``).
    """
    std = math.sqrt(scale / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def attention_weights(
    token_dim: int, num_heads: int, key_size: int, init_scale: float
) -> tuple[nn.Parameter, ...]:
    """Multi-head attention weights named as in paper A, drawn in this order:
    ``W_Q, W_K, W_V`` of shape ``(H, key_size, D)`` (fan-in D) and the output projection ``P``
    of shape ``(H, D, key_size)`` (fan-in ``H key_size``), each :func:`variance_scaling_`."""
    shape = (num_heads, key_size, token_dim)
    W_QKV = [variance_scaling_(torch.empty(shape), init_scale, token_dim) for _ in range(3)]
    P = variance_scaling_(
        torch.empty(num_heads, token_dim, key_size), init_scale, num_heads * key_size
    )
    return tuple(nn.Parameter(w) for w in [*W_QKV, P])
