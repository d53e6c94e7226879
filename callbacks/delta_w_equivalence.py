"""DeltaWEquivalence: paper B's Fig. 1, ``T_W(C, x)`` against ``T_{W + Delta W}(x)`` in training."""

import torch
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import check_block, implicit_prediction
from icl_lightning.theory.loss import prediction_loss


class DeltaWEquivalence(Probe):
    """Theorem 2.2 measured on the fixed evaluation tasks, every ``every_n_steps`` steps.

    With ``T = T_W(C, x)`` (the block reading its context) and ``T' = T_{W + Delta W}(x)``
    (the query alone through the rank-1 updated weights; plus ``Delta A`` with the MLP's skip
    connection), logs under ``dw/``:

    - ``loss_context``: ``0.5 * E (y_q - T)^2``; ``loss_delta_w``: ``0.5 * E (y_q - T')^2``;
    - ``max_abs_diff``: ``max_tasks |T - T'|``;
    - ``max_rel_diff``: ``max_abs_diff / sqrt(E T^2)`` (relative to the RMS prediction, which
      stays finite where a single ``T`` is near 0);
    - the figure ``dw/equivalence``: both losses against the training step so far.

    Theorem 2.2 is exact, so the differences are rounding errors (about 1e-7 of the output in
    float32, 1e-16 in float64) at every step, trained or not.

    Args: as :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[DeltaWEquivalence(every_n_steps=100)])
    """

    namespace = "dw"
    maxima = ("max_abs_diff",)

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a :class:`ContextualBlock`."""
        check_block(model)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        context = predict(model, batch)
        implicit = implicit_prediction(model, batch.context_x, batch.context_y, batch.query_x)
        return {
            "loss_context": prediction_loss(context, batch.query_y).sum(),
            "loss_delta_w": prediction_loss(implicit, batch.query_y).sum(),
            "sq_pred": (context**2).sum(),
            "max_abs_diff": (context - implicit).abs().max(),
        }

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = super().finalize(sums, count)
        rms = results.pop("sq_pred").sqrt()
        results["max_rel_diff"] = results["max_abs_diff"] / rms.clamp_min(
            torch.finfo(rms.dtype).tiny
        )
        return results

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        steps = sorted(self.history)
        curves = {
            "T_W(C, x)": [self.history[s]["loss_context"] for s in steps],
            "T_{W+dW}(x)": [self.history[s]["loss_delta_w"] for s in steps],
        }
        title = "Theorem 2.2: context == rank-1 update"
        return {"equivalence": line_figure(steps, curves, "step", "loss", title, logy=True)}
