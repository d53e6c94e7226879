"""Paper A's alignment metrics between a trained model T and a GD learner G, and the
interpolation of trained LSA weights with the GD construction.

A learner is any batched function ``fn(context_x, context_y, query_x) -> (B,)`` (an
``nn.Module`` model, or a partial of :func:`~icl_lightning.theory.gd.gd_predict`).
"""

from collections.abc import Callable

import torch

from icl_lightning.theory.gd import Weights

Learner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def predictions_and_sensitivities(
    fn: Learner, context_x, context_y, query_x
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` predictions and ``(B, d)`` sensitivities ``d pred_b / d x_q`` of every prompt b.

    One forward pass and one backward pass of ``sum_b pred_b`` with respect to the queries:
    exact when each prediction depends on its own prompt only, as for every learner here (no
    layer mixes prompts; probes run models in eval mode). Works under ``no_grad`` and
    ``inference_mode`` (the inputs are cloned out of it); a learner that ignores ``x_q`` has
    sensitivities 0.
    """
    with torch.inference_mode(False), torch.enable_grad():
        cx, cy, qx = (t.clone() for t in (context_x, context_y, query_x))
        qx.requires_grad_(True)
        pred = fn(cx, cy, qx)
        if not pred.requires_grad:
            return pred, torch.zeros_like(qx)
        (sens,) = torch.autograd.grad(pred.sum(), qx, allow_unused=True)
    return pred.detach(), torch.zeros_like(qx) if sens is None else sens


def sensitivities(fn: Learner, context_x, context_y, query_x) -> torch.Tensor:
    """The sensitivities of :func:`predictions_and_sensitivities`, ``(B, d)``."""
    return predictions_and_sensitivities(fn, context_x, context_y, query_x)[1]


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Row-wise cosine similarity ``<a, b> / (|a| |b|)``."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


def alignment_sums(
    pred_T: torch.Tensor, sens_T: torch.Tensor, pred_G: torch.Tensor, sens_G: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Sums over prompts of paper A's alignment metrics between T and G.

    ``preds_diff = sum_b |T_b - G_b|``, ``model_cos = sum_b cos(dT_b/dx_q, dG_b/dx_q)``,
    ``model_diff = sum_b |dT_b/dx_q - dG_b/dx_q|_2``; divide by the number of prompts for means.
    """
    return {
        "preds_diff": (pred_T - pred_G).abs().sum(),
        "model_cos": cosine(sens_T, sens_G).sum(),
        "model_diff": (sens_T - sens_G).norm(dim=-1).sum(),
    }


def matched_products(
    trained: Weights, constructed: Weights, input_dim: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The products that determine a one-head LSA layer, trained beside constructed, on one scale.

    ``{"W_K^T W_Q": (M_KQ / c, M_KQ*), "P W_V": (c M_PV, M_PV*)}`` with ``M_KQ = W_K^T W_Q`` and
    ``M_PV = P W_V`` (:mod:`icl_lightning.models.products`) and ``*`` the construction's. Only the
    product of the two matters, so the trained pair is normalised by ``c``, the mean of the first
    d diagonal entries of its ``M_KQ``, which makes it directly comparable with a construction
    whose ``M_KQ`` is ``[[I_d, 0], [0, 0]]``.
    """

    def products(w: Weights) -> tuple[torch.Tensor, torch.Tensor]:
        return w["W_K"][0].T @ w["W_Q"][0], w["P"][0] @ w["W_V"][0]

    KQ, PV = products(trained)
    c = KQ.diagonal()[:input_dim].mean()
    KQ_gd, PV_gd = products(constructed)
    return {"W_K^T W_Q": (KQ / c, KQ_gd), "P W_V": (c * PV, PV_gd)}


def interpolate_lsa_layer(trained: Weights, constructed: Weights, input_dim: int) -> Weights:
    """The one-head LSA layer halfway between a trained layer and a constructed one.

    ``M = (M_trained + M_constructed) / 2`` for both products of :func:`matched_products`
    (the trained one normalised), returned as ``W_Q = M_KQ``, ``W_K = W_V = I``, ``P = M_PV``
    (key size ``D = d + 1``).
    """
    (KQ, KQ_gd), (PV, PV_gd) = matched_products(trained, constructed, input_dim).values()
    eye = torch.eye(KQ.shape[0], dtype=KQ.dtype, device=KQ.device)
    return {
        "W_Q": ((KQ + KQ_gd) / 2)[None],
        "W_K": eye[None],
        "W_V": eye.clone()[None],
        "P": ((PV + PV_gd) / 2)[None],
    }
