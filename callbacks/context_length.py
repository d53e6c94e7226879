"""ContextLengthProbe: the model's loss as a function of how many context points it sees."""

import torch
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.loss import prediction_loss


class ContextLengthProbe(Probe):
    """Loss ``0.5 * E (y_q - T(c_1..c_n, x_q))^2`` for each context length n = 1..N.

    Logs ``context/loss_n<n>`` for every n and the figure ``context/loss_vs_n``. An in-context
    learner's curve falls with n; a model that ignores its context stays flat.

    Args: as :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[ContextLengthProbe(every_n_steps=500)])
    """

    namespace = "context"

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        losses = [
            prediction_loss(predict(model, batch.prefix(n)), batch.query_y).sum()
            for n in range(1, batch.num_context + 1)
        ]
        return {"loss": torch.stack(losses)}

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        return {f"loss_n{n}": float(v) for n, v in enumerate(results["loss"], start=1)}

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        losses = results["loss"].cpu()
        n = range(1, len(losses) + 1)
        figure = line_figure(
            n, {"model": losses}, "context points n", "loss", "Paper A: loss vs context length"
        )
        return {"loss_vs_n": figure}
