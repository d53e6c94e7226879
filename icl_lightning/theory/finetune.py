"""Paper B's Fig. 3 learners: finetuning the MLP weight W by SGD against the implicit Delta W_i.

For a contextual block ``T_W(C, x) = M_W(A(C, x))[-1]`` with ``M_W(z) = W_2 f(u) + b_2`` and
the pre-activation ``u = W z + b`` (:class:`~icl_lightning.models.ContextualBlock`), W enters
only through u, so

    grad_W 0.5 (M_W(z)[-1] - y)^2 = g z^T,    g = (M_W(z)[-1] - y) dM_W(z)[-1]/du,

a rank-one step. Both learners are batched over tasks (a leading B), have no host sync inside
their loops, and cost O(M m D) per task for M examples; memory stays O(B (M D + m D)).
"""

import torch
import torch.nn.functional as F

from icl_lightning.models.contextual_block import ContextualBlock
from icl_lightning.theory.delta_w import check_block


def sgd_on_W(
    model: ContextualBlock,
    examples: torch.Tensor,
    targets: torch.Tensor,
    test: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """Test predictions ``T_{W_i}(x_q)`` ``(B, M)`` of SGD on W, one example at a time.

    From ``W_0 = W`` (the block's, never modified), for i = 1..M in order::

        W_i = W_{i-1} - lr grad_W 0.5 (M_{W_{i-1}}(z_i)[-1] - y_i)^2
            = W_{i-1} - lr g_i z_i^T

    with ``z_i = examples[:, i]`` ``(B, M, D)`` (paper B: ``A(x_i)``, each example a prompt with
    no context), ``y_i = targets[:, i]`` ``(B, M)``, and the test prediction after step i
    ``M_{W_i}(z)[-1]`` at ``z = test`` ``(B, D)`` (paper B: ``A(x_q)``). ``g_i`` is taken at
    ``u_i = W_{i-1} z_i + b`` (the activation's derivative by autograd, so any activation is
    exact); the test pre-activation is carried along as ``W_i z = W_{i-1} z - lr g_i (z_i . z)``.
    """
    mlp = check_block(model).mlp
    W = model.W.detach()
    # W_i of every task as D columns (D, B, m): W_i z is D fused multiply-adds over (B, m)
    W_columns = W.T.unsqueeze(1).expand(-1, len(examples), -1).contiguous()
    u_test = F.linear(test, W, mlp.b)  # W_i z + b, (B, m)
    similarity = (examples * test.unsqueeze(1)).sum(-1)  # z_i . z, (B, M)
    predictions = torch.empty_like(targets)
    for i, (z, y) in enumerate(zip(examples.unbind(1), targets.unbind(1), strict=True)):
        z_columns = z.T.unsqueeze(-1)  # (D, B, 1)
        u = torch.addcmul(mlp.b, W_columns[0], z_columns[0])  # W_{i-1} z_i + b, by columns
        for w, c in zip(W_columns[1:], z_columns[1:], strict=True):
            u.addcmul_(w, c)
        prediction, slope = mlp.prediction_and_slope(u, z)
        residual = (prediction - y).unsqueeze(-1)  # g_i = residual * slope, (B, m)
        W_columns.addcmul_(slope, residual * z_columns, value=-lr)
        u_test.addcmul_(slope, residual * similarity[:, i : i + 1], value=-lr)
        predictions[:, i] = mlp.prediction(u_test, test)
    return predictions


def delta_W_predictions(
    model: ContextualBlock, A_seq: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """``T_{W + Delta W_i}(x) = M_{W + Delta W_i}(A_0)[-1]`` for i = 1..N, ``(B, N)``.

    ``Delta W_i = u_i v^T`` with ``u_i = W (A_i - A_0)``, ``v = A_0 / ||A_0||^2``
    (Proposition 3.1; ``A_seq`` from :func:`~icl_lightning.theory.delta_w.A_sequence`), so
    the pre-activation is ``(W + Delta W_i) A_0 + b = W (A_0 + (v . A_0) (A_i - A_0)) + b``:
    one product with W per prefix and no ``(m, D)`` matrix per prefix. Prefixes go ``chunk``
    at a time (default: about 2^20 hidden units per part, so memory stays O(B m) and parts stay
    in cache). Without the ``Delta A`` shift of the skip-connection variant, as paper B
    defines the finetuning comparison.
    """
    mlp = check_block(model).mlp
    chunk = chunk or max(1, 2**20 // (len(A_seq) * len(mlp.b)))
    A_0 = A_seq[:, :1]  # (B, 1, D)
    v = A_0 / (A_0 * A_0).sum(-1, keepdim=True)
    v_dot_A_0 = (v * A_0).sum(-1, keepdim=True)
    parts = []
    for A_i in A_seq[:, 1:].split(chunk, dim=1):
        points = A_0 + v_dot_A_0 * (A_i - A_0)
        parts.append(mlp.prediction(F.linear(points, model.W, mlp.b), A_0))
    return torch.cat(parts, dim=1)
