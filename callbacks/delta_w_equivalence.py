"""DeltaWEquivalence: paper B's Fig. 1, ``T_W(C, x)`` against ``T_{W + Delta W}(x)`` in training."""

import torch
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.block_probe import BlockProbe
from icl_lightning.data.batch import ICLBatch
from icl_lightning.theory.delta_w import equivalence
from icl_lightning.theory.loss import prediction_loss


class DeltaWEquivalence(BlockProbe):
    """Theorem 2.2 measured on the fixed evaluation tasks, every ``every_n_steps`` steps.

    For the measured block (paper B's single block, or block k of a stack on its own input
    ``(C^k, x^k)``) with ``T = M_W(A(C, x))``, its output token at the query, and
    ``T' = M_{W + Delta W}(A(x))`` (the query alone through the rank-1 updated weights; plus
    ``Delta A`` with the MLP's skip connection), logs under ``dw/``:

    - ``loss_context``: ``0.5 * E (y_q - pred)^2`` of the network's prediction;
      ``loss_delta_w``: the same with the block's output token taken from ``T'`` (for a single
      block, ``pred = T[-1]`` and ``T'[-1]``);
    - ``max_abs_diff``: ``max_tasks |T - T'|`` over the whole output token;
    - ``max_rel_diff``: ``max_abs_diff`` over the RMS output entry ``sqrt(E T^2)`` (it stays
      finite where a single entry is near 0);

    Paper B's Figure 1, both losses against the training step, is the Custom Scalars chart
    "Theorem 2.2: loss of T_W(C, x) vs T_{W + Delta W}(x)" (TensorBoard draws it live from the
    scalars, so the probe draws no image of it).

    Theorem 2.2 is exact, so the differences are rounding errors (about 1e-7 of the output in
    float32, 1e-16 in float64) at every step, trained or not. With ``block`` an index k or
    ``"all"`` the same names go under ``dw/block<k>/``, with a chart per block.

    Args:
        **kwargs: ``block`` (:class:`~icl_lightning.callbacks.block_probe.BlockProbe`) and the
            options of :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[DeltaWEquivalence(every_n_steps=100)])
    """

    namespace = "dw"
    charts = {
        "Theorem 2.2: loss of T_W(C, x) vs T_{W + Delta W}(x)": r"loss_(context|delta_w)",
        "Theorem 2.2: largest difference of the two outputs": r"max_(abs|rel)_diff",
    }
    maxima_per_block = ("max_abs_diff",)
    marker = "loss_context"

    @override
    def block_sums(self, model: nn.Module, batch: ICLBatch, k: int) -> dict[str, torch.Tensor]:
        e = equivalence(model, k, batch.context_x, batch.context_y, batch.query_x)
        return {
            "loss_context": prediction_loss(e.prediction, batch.query_y).sum(),
            "loss_delta_w": prediction_loss(e.implicit_prediction, batch.query_y).sum(),
            "sq_output": (e.output**2).mean(-1).sum(),
            "max_abs_diff": (e.output - e.implicit_output).abs().max(),
        }

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = super().finalize(sums, count)
        for prefix in self.prefixes(results):
            rms = results.pop(f"{prefix}sq_output").sqrt()
            results[f"{prefix}max_rel_diff"] = results[f"{prefix}max_abs_diff"] / rms.clamp_min(
                torch.finfo(rms.dtype).tiny
            )
        return results
