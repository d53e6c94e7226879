"""The two weight products that determine a multi-head attention layer (paper A's notation).

With ``W_Q, W_K, W_V`` of shape ``(H, k, D)`` and ``P`` of shape ``(H, D, k)``, head h scores a
query token z_j against a key token z_i by ``(W_Q,h z_j) . (W_K,h z_i) = z_i^T (W_K,h^T W_Q,h)
z_j`` and writes ``P_h W_V,h z_i``: only the ``(D, D)`` products below matter, never the four
factors separately.
"""

import torch


def key_query(W_Q: torch.Tensor, W_K: torch.Tensor) -> torch.Tensor:
    """``W_K,h^T W_Q,h`` of every head, ``(H, D, D)``: entry ``[h, E, F] = sum_k W_K[h, k, E]
    W_Q[h, k, F]``, so that ``q_j . k_i = z_i^T (W_K,h^T W_Q,h) z_j``."""
    return W_K.transpose(1, 2) @ W_Q


def projection_value(P: torch.Tensor, W_V: torch.Tensor) -> torch.Tensor:
    """``P_h W_V,h`` of every head, ``(H, R, D)`` for ``P`` of shape ``(H, R, k)`` (R = D, or
    the rows of P kept): entry ``[h, R, E] = sum_k P[h, R, k] W_V[h, k, E]``, the map from a
    token to what head h writes into the residual stream."""
    return P @ W_V


def stacked_key_query(W_Q: torch.Tensor, W_K: torch.Tensor) -> torch.Tensor:
    """``K = [KQ_1^T ... KQ_H^T]``, ``(D, H D)`` with ``KQ_h = W_K,h^T W_Q,h``: for a token row
    z, ``(z K)[h D : (h + 1) D] = (KQ_h z)^T``, the vector whose dot product with ``z_i`` is
    head h's score ``q . k_i``."""
    H, _, D = W_Q.shape
    return key_query(W_Q, W_K).permute(2, 0, 1).reshape(D, H * D)


def stacked_projection_value(P: torch.Tensor, W_V: torch.Tensor) -> torch.Tensor:
    """``V = [PV_1^T; ...; PV_H^T]``, ``(H D, R)`` with ``PV_h = P_h W_V,h`` ``(R, D)``: for
    rows ``b_h`` stacked as ``b = [b_1 ... b_H]``, ``b V = sum_h b_h PV_h^T``."""
    H, R, _ = P.shape
    return projection_value(P, W_V).transpose(1, 2).reshape(-1, R)
