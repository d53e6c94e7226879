"""DeepFeatureGD: a trained model against one GD step on its own learned features (paper A)."""

import torch
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.theory.gd import best_eta, linear_kernel, one_step_gd, one_step_sums
from icl_lightning.theory.loss import prediction_loss

_FEATURE_MAP = "a feature map x -> phi(x) (an MLPTransformer or FeatureGD) for DeepFeatureGD"


class DeepFeatureGD(Probe):
    """Is the trained model one GD step on its learned features? Losses on the probe's set:

    - ``deep/model_loss``: the trained model, ``0.5 E (y_q - T(prompt))^2``.
    - ``deep/feature_gd_loss``: one GD step from ``w0 = 0`` on the model's own features
      ``phi(x)`` (input MLP + embedding, ``model.features``), prediction
      ``(eta/N) sum_i y_i <phi(x_i), phi(x_q)>`` with the best ``eta`` (``deep/feature_gd_eta``).
    - ``deep/linear_gd_loss``: the same on the raw inputs x, i.e. plain linear GD
      (``deep/linear_gd_eta``).
    - ``deep/attention_gd_loss`` (models with one linear attention layer): the same GD step
      with the kernel ``<phi_i, phi_q>`` replaced by the trained attention's bilinear form
      ``phi_i^T W_K^T W_Q phi_q`` (a learned preconditioner; the model's
      ``attention_kernel``). Close to ``model_loss`` when the model is kernel regression with
      values ``y_i``.
    - ``deep/zero_loss``: the predictor that always says 0.

    The best ``eta`` (:func:`~icl_lightning.theory.gd.best_eta`) is chosen on the whole
    (all-reduced) set, so the numbers do not depend on the number of processes.

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
        features = type(getattr(model, "features", None))
        name, expected = f"{type(model).__name__}.features", _FEATURE_MAP
        require(issubclass(features, nn.Module), name, features.__name__, expected)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        self.check_model(model)
        phi = model.features
        x, y, xq, yq = batch.context_x, batch.context_y, batch.query_x, batch.query_y
        kernels = {"feature": linear_kernel(phi(x), phi(xq)), "linear": linear_kernel(x, xq)}
        attention_kernel = getattr(model, "attention_kernel", None)
        if attention_kernel is not None and (kernel := attention_kernel(x, xq)) is not None:
            kernels["attention"] = kernel
        sums = {
            "model_loss": prediction_loss(predict(model, batch), yq).sum(),
            "zero_loss": prediction_loss(torch.zeros_like(yq), yq).sum(),
        }
        for name, kernel in kernels.items():
            gd_sums = one_step_sums(one_step_gd(kernel, y), yq)
            sums.update({f"{name}_{k}": v for k, v in gd_sums.items()})
        return sums

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = {name: sums[name] / count for name in ("model_loss", "zero_loss")}
        for name in ("feature", "linear", "attention"):
            if f"{name}_pp" in sums:
                gd_sums = {k: sums[f"{name}_{k}"] for k in ("py", "pp", "yy")}
                results[f"{name}_gd_eta"], results[f"{name}_gd_loss"] = best_eta(gd_sums, count)
        return results
