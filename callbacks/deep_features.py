"""DeepFeatureGD: a trained model against one GD step on its own learned features (paper A)."""

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.models.lsa import LSALayer
from icl_lightning.models.mlp_transformer import one_step_gd


def gd_sums(context_phi, context_y, query_phi, query_y) -> dict[str, torch.Tensor]:
    """Sums from which the loss of one GD step with the best ``eta`` follows (see
    :func:`optimal_gd_loss`): with ``p = one_step_gd(..., eta=1)`` the GD prediction is
    ``eta p``, so only ``sum p y`` and ``sum p^2`` are needed."""
    p = one_step_gd(context_phi, context_y, query_phi)
    return {"py": (p * query_y).sum(), "pp": (p * p).sum()}


def optimal_gd_loss(py, pp, yy, count) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, eta*)`` of one GD step with the loss-minimising step size, over ``count`` prompts.

    The loss ``0.5/n sum (y - eta p)^2`` is a parabola in ``eta``, minimised by
    ``eta* = sum p y / sum p^2``, where it equals ``0.5/n (sum y^2 - (sum p y)^2 / sum p^2)``
    (the vectorised closed form of paper A's grid search over eta).
    """
    pp = pp.clamp_min(torch.finfo(pp.dtype).tiny)
    return 0.5 * (yy - py**2 / pp) / count, py / pp


def attention_gd_prediction(layer: LSALayer, context_phi, context_y, query_phi) -> torch.Tensor:
    """One preconditioned GD step (eta = 1) on features phi with the attention's own metric:
    ``(1/N) sum_i y_i sum_h <W_Q^h [phi_q, 0], W_K^h [phi_i, 0]>``, i.e. plain GD on ``phi``
    with ``<phi_i, phi_q>`` replaced by the layer's bilinear form ``phi_i^T W_K^T W_Q phi_q``."""
    q = torch.einsum("hkD,bD->bhk", layer.W_Q, F.pad(query_phi, (0, 1)))
    k = torch.einsum("hkD,bnD->bhnk", layer.W_K, F.pad(context_phi, (0, 1)))
    return torch.einsum("bhk,bhnk,bn->b", q, k, context_y) / context_y.shape[1]


class DeepFeatureGD(Probe):
    """Is the trained model one GD step on its learned features? Losses on the probe's set:

    - ``deep/model_loss``: the trained model, ``0.5 E (y_q - T(prompt))^2``.
    - ``deep/feature_gd_loss``: one GD step from ``w0 = 0`` on the model's own features
      ``phi(x)`` (input MLP + embedding, ``model.features``), prediction
      ``(eta/N) sum_i y_i <phi(x_i), phi(x_q)>`` with the best ``eta`` (``deep/feature_gd_eta``).
    - ``deep/linear_gd_loss``: the same on the raw inputs x, i.e. plain linear GD
      (``deep/linear_gd_eta``).
    - ``deep/attention_gd_loss`` (one-layer linear-attention models only): the same GD step
      but with the kernel ``<phi_i, phi_q>`` replaced by the trained attention's bilinear form
      ``phi_i^T W_K^T W_Q phi_q`` (a learned preconditioner; :func:`attention_gd_prediction`).
      Close to ``model_loss`` when the model is kernel regression with values ``y_i``.
    - ``deep/zero_loss``: the predictor that always says 0.

    The best ``eta`` is chosen on the whole (all-reduced) set, so the numbers do not depend on
    the number of processes.

    Args: as :class:`~icl_lightning.callbacks.Probe`.

    Raises:
        ValueError: when the model has no ``features`` map (e.g. a plain LSA).

    Example::

        trainer = Trainer(callbacks=[DeepFeatureGD(every_n_steps=500)])
    """

    namespace = "deep"

    @override
    def check_model(self, model: nn.Module) -> None:
        """Needs the model's feature map ``model.features``."""
        phi = getattr(model, "features", None)
        require(
            isinstance(phi, nn.Module),
            f"{type(model).__name__}.features",
            type(phi).__name__,
            "a feature map x -> phi(x) (an MLPTransformer or FeatureGD) for DeepFeatureGD",
        )

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        self.check_model(model)
        phi = model.features
        x, y, xq, yq = batch.context_x, batch.context_y, batch.query_x, batch.query_y
        feature = gd_sums(phi(x), y, phi(xq), yq)
        linear = gd_sums(x, y, xq, yq)
        sums = {}
        layers = getattr(model, "layers", [])
        if len(layers) == 1 and isinstance(layers[0], LSALayer) and not layers[0].softmax:
            p = attention_gd_prediction(layers[0], phi(x), y, phi(xq))
            sums = {"attention_py": (p * yq).sum(), "attention_pp": (p * p).sum()}
        return {
            **sums,
            "model_se": (0.5 * (predict(model, batch) - yq) ** 2).sum(),
            "yy": (yq * yq).sum(),
            **{f"feature_{k}": v for k, v in feature.items()},
            **{f"linear_{k}": v for k, v in linear.items()},
        }

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = {"model_loss": sums["model_se"] / count, "zero_loss": 0.5 * sums["yy"] / count}
        for name in ("feature", "linear", "attention"):
            if f"{name}_py" not in sums:
                continue
            loss, eta = optimal_gd_loss(sums[f"{name}_py"], sums[f"{name}_pp"], sums["yy"], count)
            results[f"{name}_gd_loss"], results[f"{name}_gd_eta"] = loss, eta
        return results
