"""DeltaWEquivalence: paper B's Fig. 1, ``T_W(C, x)`` against ``T_{W + Delta W}(x)`` in training."""

import torch
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.delta_w_blocks import (
    BlockOption,
    block_prefixes,
    validate_block_option,
)
from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import block_equivalence, check_block, implicit_prediction
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

    ``block`` (a stack of K blocks, ``ContextualBlock(num_blocks=K)``): an index k (1-based)
    or ``"all"`` logs the same names under ``dw/block<k>/`` for block k on its own input
    ``(C^k, x^k)``: ``max_abs_diff = max_tasks |M_{W_k}(A_k(C^k, x^k)) - M_{W_k + Delta
    W_k}(A_k(x^k))|`` over the whole output token (+ ``Delta A_k`` with the skip),
    ``max_rel_diff`` relative to the RMS output entry, and the losses of the final prediction
    with block k's query output taken from either side (the context tokens never see the
    query, so both equal ``T(C, x)``); one figure ``dw/block<k>/equivalence`` per block.
    ``None`` (default): the tags above; on a stack, those of block K's whole output token.

    Args:
        block: ``None`` (the last block, tags ``dw/<name>``), ``"all"`` or a block index k
            (1-based, at most num_blocks): tags ``dw/block<k>/<name>``.
        **kwargs: as :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[DeltaWEquivalence(every_n_steps=100)])
    """

    namespace = "dw"
    maxima = ("max_abs_diff",)

    def __init__(self, block: BlockOption = None, **kwargs) -> None:
        super().__init__(**kwargs)
        validate_block_option(block)
        self.block = block

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a :class:`ContextualBlock`, with ``block`` in 1..K."""
        check_block(model)
        block_prefixes(self.block, model)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        blocks = block_prefixes(self.block, model)
        if blocks:
            self.maxima = tuple(f"{prefix}max_abs_diff" for prefix in blocks.values())
            return {
                f"{prefix}{name}": value
                for k, prefix in blocks.items()
                for name, value in self._block_sums(model, batch, k).items()
            }
        context = predict(model, batch)
        implicit = implicit_prediction(model, batch.context_x, batch.context_y, batch.query_x)
        return {
            "loss_context": prediction_loss(context, batch.query_y).sum(),
            "loss_delta_w": prediction_loss(implicit, batch.query_y).sum(),
            "sq_pred": (context**2).sum(),
            "max_abs_diff": (context - implicit).abs().max(),
        }

    @staticmethod
    def _block_sums(model: nn.Module, batch: ICLBatch, k: int) -> dict[str, torch.Tensor]:
        e = block_equivalence(model, k, batch.context_x, batch.context_y, batch.query_x)
        return {
            "loss_context": prediction_loss(e.prediction, batch.query_y).sum(),
            "loss_delta_w": prediction_loss(e.implicit_prediction, batch.query_y).sum(),
            "sq_pred": (e.output**2).mean(-1).sum(),
            "max_abs_diff": (e.output - e.implicit_output).abs().max(),
        }

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = super().finalize(sums, count)
        for prefix in self._prefixes(results):
            rms = results.pop(f"{prefix}sq_pred").sqrt()
            results[f"{prefix}max_rel_diff"] = results[f"{prefix}max_abs_diff"] / rms.clamp_min(
                torch.finfo(rms.dtype).tiny
            )
        return results

    @staticmethod
    def _prefixes(results: dict) -> list[str]:
        """``""`` (single-block tags) or ``"block<k>/"`` for every measured block."""
        return [name.removesuffix("loss_context") for name in results if "loss_context" in name]

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        steps = sorted(self.history)
        figures = {}
        for prefix in self._prefixes(results):
            curves = {
                "T_W(C, x)": [self.history[s][f"{prefix}loss_context"] for s in steps],
                "T_{W+dW}(x)": [self.history[s][f"{prefix}loss_delta_w"] for s in steps],
            }
            where = f" ({prefix.rstrip('/')})" if prefix else ""
            title = f"Theorem 2.2{where}: context == rank-1 update"
            figures[f"{prefix}equivalence"] = line_figure(
                steps, curves, "step", "loss", title, logy=True
            )
        return figures
