"""PrefixRegressionModule: Garg et al.'s training, a loss at every prefix of the prompt."""

from typing import Literal

import torch
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.modules.base import ICLRegressionModule, logs_train_step
from icl_lightning.theory.loss import prediction_loss


def prefix_targets(batch: ICLBatch) -> torch.Tensor:
    """``(B, N+1)`` targets ``y_1..y_N, y_q``: those of the predictions after k = 0..N points."""
    return torch.cat([batch.context_y, batch.query_y[:, None]], dim=1)


def prefix_loss(predictions: torch.Tensor, batch: ICLBatch) -> torch.Tensor:
    """Garg et al.'s loss, ``1/(B (N+1)) sum_b sum_{k=0..N} (y_{k+1} - f(P_k, x_{k+1}))^2 / d``:
    the squared error of the prediction after every prefix ``P_k`` of k points, divided by d (so
    that predicting 0 scores 1 on linear regression with ``x, w ~ N(0, I)``)."""
    return (prefix_targets(batch) - predictions).square().mean() / batch.input_dim


class PrefixRegressionModule(ICLRegressionModule):
    """Trains a network that predicts at every input of the prompt, as Garg et al. (2022).

    The network maps ``(context_x, context_y, query_x)`` to the query prediction ``(B,)`` (as
    every network here, so probes measure it) and also has
    ``prefix_predictions(context_x, context_y, query_x) -> (B, N+1)``: column k is its
    prediction for ``x_{k+1}`` (``x_q`` for k = N) after the first k points, e.g.
    :class:`~icl_lightning.models.GPT2`.

    Loss, ``loss``:

    - ``"garg"``: :func:`prefix_loss`, the squared error / d at every prefix position;
    - ``"paper_a"``: paper A's ``0.5 * mean_b (y_q - pred)^2`` at the query only (as
      :class:`ICLRegressionModule`).

    Validation logs ``val/loss`` and ``val/zero_loss`` (paper A's query loss, comparable
    across modules) and ``val/prefix_loss`` (:func:`prefix_loss`).

    Args:
        model: the network (see above).
        loss: ``"garg"`` or ``"paper_a"``.

    Raises:
        ValueError: for an unknown ``loss``, or ``"garg"`` with a network that has no
            ``prefix_predictions``.

    Example (YAML)::

        model:
          class_path: icl_lightning.modules.PrefixRegressionModule
          init_args:
            loss: garg
            model: {class_path: icl_lightning.models.GPT2}
    """

    def __init__(self, model: nn.Module, loss: Literal["garg", "paper_a"] = "garg") -> None:
        super().__init__(model)
        require(loss in ("garg", "paper_a"), "loss", loss, "'garg' or 'paper_a'")
        require(
            loss == "paper_a" or callable(getattr(model, "prefix_predictions", None)),
            "loss",
            loss,
            f"'paper_a' for a {type(model).__name__}: 'garg' needs a network with "
            "prefix_predictions(context_x, context_y, query_x) -> (B, N+1)",
        )
        self.loss = loss
        self.val_prefix_loss = MeanMetric()

    def prefix_predictions(self, batch: ICLBatch) -> torch.Tensor:
        """``(B, N+1)`` predictions after every prefix of each prompt (shape checked)."""
        predictions = self.model.prefix_predictions(batch.context_x, batch.context_y, batch.query_x)
        expected = (len(batch), batch.num_context + 1)
        if tuple(predictions.shape) != expected:
            raise ValueError(
                f"{type(self.model).__name__}.prefix_predictions returned shape "
                f"{tuple(predictions.shape)}; expected {expected}, one prediction per prefix."
            )
        return predictions

    @override
    def training_step(self, batch: ICLBatch, batch_idx: int) -> torch.Tensor:
        if self.loss == "paper_a":
            return super().training_step(batch, batch_idx)
        loss = prefix_loss(self.prefix_predictions(batch), batch)
        if logs_train_step(self.trainer):
            self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: ICLBatch, batch_idx: int) -> None:
        if not callable(getattr(self.model, "prefix_predictions", None)):
            return super().validation_step(batch, batch_idx)
        predictions = self.prefix_predictions(batch)
        self.val_loss.update(prediction_loss(predictions[:, -1], batch.query_y))
        self.val_zero_loss.update(prediction_loss(torch.zeros_like(batch.query_y), batch.query_y))
        self.val_prefix_loss.update(prefix_loss(predictions, batch), len(batch))

    @override
    def on_validation_epoch_end(self) -> None:
        """The base module's validation means, and ``val/prefix_loss`` when the network has
        prefix predictions (it was updated)."""
        super().on_validation_epoch_end()
        if self.val_prefix_loss.update_called:
            self.log("val/prefix_loss", self.val_prefix_loss)
