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
