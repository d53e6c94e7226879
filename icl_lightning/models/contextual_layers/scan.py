"""A two-level (chunked) scan of the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``."""

import math

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every ``h_t = a_t * h_{t-1} + b_t``, t = 1..T along dim 1, from ``h_0 = 0``: ``(B, T, ...)``.

    ``a`` (broadcast to ``b``'s shape) and ``b`` are elementwise (a diagonal recurrence). The T
    tokens are cut into C chunks of K = ceil(sqrt(T)) (the last T - C K tokens after them):

    - within every chunk at once, K steps of ``g_k = a_k * g_{k-1} + b_k`` from ``g = 0`` and of
      the running product ``P_k = a_k P_{k-1}``;
    - across chunks, C steps carry each chunk's last state: ``H_c = g_c,K + P_c,K H_{c-1}``;
    - then ``h = g + P * H_{c-1}`` for every token of chunk c, in one product.

    About 2 sqrt(T) steps of whole-tensor products (no Python loop over the T tokens) and a few
    passes over the data (Hillis and Steele's scan makes log2 T passes), differentiable, with
    the loop's own products: exact in float64.
    """
    T = b.shape[1]
    if T == 0:
        return b
    a = a.expand_as(b)
    K = math.isqrt(T - 1) + 1
    C = T // K
    a_c, b_c = (x[:, : C * K].unflatten(1, (C, K)) for x in (a, b))  # (B, C, K, ...)
    g, P = [b_c[:, :, 0]], [a_c[:, :, 0]]
    for k in range(1, K):
        g.append(torch.addcmul(b_c[:, :, k], a_c[:, :, k], g[-1]))
        P.append(a_c[:, :, k] * P[-1])
    carried = [torch.zeros_like(g[-1][:, 0]), g[-1][:, 0]]  # the state before chunks 0, 1, ...
    for c in range(1, C - 1):
        carried.append(torch.addcmul(g[-1][:, c], P[-1][:, c], carried[-1]))
    before = torch.stack(carried[:C], 1).unsqueeze(2)  # (B, C, 1, ...)
    h = torch.addcmul(torch.stack(g, 2), torch.stack(P, 2), before).flatten(1, 2)
    if C * K == T:
        return h
    tail = [h[:, -1]]
    for t in range(C * K, T):
        tail.append(torch.addcmul(b[:, t], a[:, t], tail[-1]))
    return torch.cat([h, torch.stack(tail[1:], 1)], 1)
