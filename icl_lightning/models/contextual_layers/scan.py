"""A parallel scan of the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``."""

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every ``h_t = a_t * h_{t-1} + b_t``, t = 1..T along dim 1, from ``h_0 = 0``: ``(B, T, ...)``.

    ``a`` (broadcast to ``b``'s shape) and ``b`` are elementwise (a diagonal recurrence). Hillis
    and Steele's scan: after the round with shift s, position t holds the composition of the
    affine maps ``h -> a_r h + b_r`` over ``r = t - 2s + 1..t``,
    ``(a_t, b_t) o (a_{t-s}, b_{t-s}) = (a_t a_{t-s}, a_t b_{t-s} + b_t)``; ceil(log2 T) rounds
    of whole-tensor products (no Python loop over tokens), differentiable.
    """
    T = b.shape[1]
    a = a.expand_as(b)
    shift = 1
    while shift < T:
        b = torch.cat([b[:, :shift], torch.addcmul(b[:, shift:], a[:, shift:], b[:, :-shift])], 1)
        if 2 * shift < T:  # the last round needs no products of a
            a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], 1)
        shift *= 2
    return b
