"""Paper B's Fig. 3 learners: finetuning the MLP weight W by SGD against the implicit Delta W_i.

For block k of a stack of contextual blocks (:class:`~icl_lightning.theory.interface.BlockStack`,
any contextual layer; K = k = 1 is paper B's block) with ``M_W(z) = W_2 f(u) + b_2`` and the
pre-activation ``u = W z + b``, W enters only through u, so

    grad_W 0.5 (r(M_W(z)) - y)^2 = g z^T,    g = (r(M_W(z)) - y) d r(M_W(z))/du,

a rank-one step, where the readout r maps the block's output token to the prediction.

Both learners change block k's ``W_k`` only and predict with the *context-free* network
``T_{W_k'}(x)``: the query token ``[x; 0]`` alone through blocks 1..K
(:func:`context_free_inputs`, :func:`context_free_readout`). Then z is ``A_k(x^k)`` with
``x^k`` the query token after blocks 1..k-1 on the query alone, and r runs blocks k+1..K on the
query alone; for k = K, r reads the token's last entry. For K = 1: z = A(x), paper B's set-up.

Both learners are batched over tasks (a leading B), have no host sync inside their loops, and
cost O(M m D) per task for M examples (times the cost of r); memory stays O(B (M D + m D)).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import vjp

from icl_lightning.theory.interface import BlockMLP, BlockStack

#: the rest of the network after a block: output tokens ``(..., D)`` -> predictions ``(...)``,
#: each row on its own; ``None``: the token's last entry
Readout = Callable[[torch.Tensor], torch.Tensor] | None


def read(
    mlp: BlockMLP,
    readout: Readout,
    u: torch.Tensor,
    z: torch.Tensor,
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prediction ``r(M_W(z))`` from the pre-activation ``u = W z + b`` ``(..., m)``, with
    r = ``readout`` (default: ``M_W(z)[-1]``; ``hidden``: a buffer like u for its hidden
    units)."""
    if readout is None:
        return mlp.prediction(u, z, hidden)
    return readout(mlp.from_preactivation(u, z))


def read_and_slope(
    mlp: BlockMLP,
    readout: Readout,
    u: torch.Tensor,
    z: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`read` and its gradient in u ``(..., m)``, row by row (one vector-Jacobian product
    with cotangent 1; exact for any activation, and under ``torch.no_grad`` too); ``out``:
    buffers ``(hidden, slope)`` like u for the default readout."""
    if readout is None:
        return mlp.prediction_and_slope(u, z, out)
    # with grad enabled: under no_grad torch's fused CPU RNNs keep nothing for a backward pass
    with torch.inference_mode(False), torch.enable_grad():
        u, z = (t.clone() if t.is_inference() else t for t in (u, z))
        prediction, pullback = vjp(lambda v: readout(mlp.from_preactivation(v, z)), u)
        (slope,) = pullback(torch.ones_like(prediction))
    return prediction.detach(), slope.detach()


def context_free_inputs(
    model: BlockStack, k: int, context_x: torch.Tensor, query_x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block k's MLP inputs on context-free prompts: ``z_i = A_k(x^k(x_i))`` for the context
    inputs ``(B, M, d)`` -> ``(B, M, D)`` and ``z = A_k(x^k(x_q))`` for the queries ``(B, d)``
    -> ``(B, D)``, where ``x^k(x)`` is the token ``[x; 0]`` after blocks 1..k-1 on it alone
    (k = 1: the token itself, so ``z = A_1(x)``)."""
    layer = model.layers(k)[0]
    points = torch.cat([context_x, query_x.unsqueeze(1)], dim=1).flatten(0, 1)  # (B (M + 1), d)
    no_x, no_y = points.new_zeros(len(points), 0, model.input_dim), points.new_zeros(len(points), 0)
    _, tokens = model.block_input(k, no_x, no_y, points)  # x^k of every point, alone
    z = layer.alone(tokens).unflatten(0, (len(query_x), -1))
    return z[:, :-1], z[:, -1]


def context_free_readout(model: BlockStack, k: int) -> Readout:
    """r of block k: its output tokens ``(..., D)`` through blocks k+1..K on the query alone, to
    the predictions ``(...)``; ``None`` (the token's last entry) for k = K."""
    if k == model.num_blocks:
        return None

    def readout(out: torch.Tensor) -> torch.Tensor:
        flat = out.reshape(-1, out.shape[-1])
        return model.predict_from(k, flat.new_zeros(len(flat), 0, flat.shape[-1]), flat).reshape(
            out.shape[:-1]
        )

    return readout


def sgd_on_W(
    mlp: BlockMLP,
    examples: torch.Tensor,
    targets: torch.Tensor,
    test: torch.Tensor,
    lr: float,
    readout: Readout = None,
) -> torch.Tensor:
    """Test predictions ``r(M_{W_i}(z))`` ``(B, M)`` of SGD on ``W = mlp.W``, one example at a
    time.

    From ``W_0 = W`` (the block's, never modified), for i = 1..M in order::

        W_i = W_{i-1} - lr grad_W 0.5 (r(M_{W_{i-1}}(z_i)) - y_i)^2
            = W_{i-1} - lr g_i z_i^T

    with ``z_i = examples[:, i]`` ``(B, M, D)`` (paper B: ``A(x_i)``, each example a prompt with
    no context; :func:`context_free_inputs`), ``y_i = targets[:, i]`` ``(B, M)``, the readout r
    (:func:`context_free_readout`; default: the token's last entry, for k = K) and the test
    prediction after step i ``r(M_{W_i}(z))`` at ``z = test`` ``(B, D)`` (paper B: ``A(x_q)``).
    ``g_i`` is taken at ``u_i = W_{i-1} z_i + b`` (:func:`read_and_slope`); the
    test pre-activation is carried along as ``W_i z = W_{i-1} z - lr g_i (z_i . z)``.
    """
    W, b, examples, test = (t.detach() for t in (mlp.W, mlp.b, examples, test))
    # W_i of every task as D columns (D, B, m): W_i z is D fused multiply-adds over (B, m)
    W_columns = W.T.unsqueeze(1).expand(-1, len(examples), -1).contiguous()
    u_test = F.linear(test, W, b)  # W_i z + b, (B, m)
    similarity = (examples * test.unsqueeze(1)).sum(-1)  # z_i . z, (B, M)
    predictions = targets.new_empty(targets.shape[::-1])  # (M, B): row i written at step i
    # buffers reused every step: the loop allocates nothing
    u, hidden, slope_buffer = u_test.new_empty((3, *u_test.shape))
    for i, (z, y) in enumerate(zip(examples.unbind(1), targets.unbind(1), strict=True)):
        z_columns = z.T.unsqueeze(-1)  # (D, B, 1)
        torch.addcmul(b, W_columns[0], z_columns[0], out=u)  # W_{i-1} z_i + b, by columns
        for w, c in zip(W_columns[1:], z_columns[1:], strict=True):
            u.addcmul_(w, c)
        prediction, slope = read_and_slope(mlp, readout, u, z, (hidden, slope_buffer))
        residual = (prediction - y).unsqueeze(-1)  # g_i = residual * slope, (B, m)
        W_columns.addcmul_(slope, residual * z_columns, value=-lr)
        u_test.addcmul_(slope, residual * similarity[:, i : i + 1], value=-lr)
        predictions[i] = read(mlp, readout, u_test, test, hidden)
    return predictions.T


def delta_W_predictions(
    mlp: BlockMLP,
    A_seq: torch.Tensor,
    chunk: int | None = None,
    test: torch.Tensor | None = None,
    readout: Readout = None,
) -> torch.Tensor:
    """``r(M_{W + Delta W_i}(z))`` for i = 1..N, ``(B, N)``; ``W = mlp.W``.

    ``Delta W_i = u_i v^T`` with ``u_i = W (A_i - A_0)``, ``v = A_0 / ||A_0||^2``
    (Proposition 3.1; ``A_seq`` of block k from :func:`~icl_lightning.theory.delta_w.A_sequence`),
    applied at
    ``z = test`` ``(B, D)`` (default ``A_0``: then ``T_{W + Delta W_i}(x)``, which Theorem 2.2
    makes the block's prediction from ``c_1..c_i``), read by ``readout`` r (default: the last
    entry). The pre-activation is ``(W + Delta W_i) z + b = W (z + (v . z) (A_i - A_0)) + b``:
    one product with W per prefix and no ``(m, D)`` matrix per prefix. Prefixes go ``chunk``
    at a time (default: about 2^19 hidden units per part, so memory stays O(B m) and parts stay
    in cache). Without the ``Delta A`` shift of the skip-connection variant, as paper B
    defines the finetuning comparison.
    """
    chunk = chunk or max(1, 2**19 // (len(A_seq) * len(mlp.b)))
    A_0 = A_seq[:, :1]  # (B, 1, D)
    z = A_0 if test is None else test.unsqueeze(1)
    v = A_0 / (A_0 * A_0).sum(-1, keepdim=True)
    v_dot_z = (v * z).sum(-1, keepdim=True)
    parts = []
    for A_i in A_seq[:, 1:].split(chunk, dim=1):
        points = z + v_dot_z * (A_i - A_0)
        u = F.linear(points, mlp.W, mlp.b)
        parts.append(read(mlp, readout, u, z.expand(-1, A_i.shape[1], -1)))
    return torch.cat(parts, dim=1)
