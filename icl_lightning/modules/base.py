"""ICLRegressionModule: the training logic every model family shares."""

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from icl_lightning.data.batch import ICLBatch


class ICLRegressionModule(L.LightningModule):
    """Trains ``self.model(context_x, context_y, query_x) -> (B,)`` predictions on prompts.

    Loss (paper A): ``0.5 * mean_b (y_q - pred)^2``. Logs ``train/loss`` every
    ``trainer.log_every_n_steps`` steps (kept on the device: no host sync in the training
    step), ``val/loss`` and ``test/loss`` over the fixed sets (reduced across DDP ranks by
    torchmetrics), and ``val/zero_loss``, the loss of the
    predictor that always says 0, as the reference to beat.

    Subclasses build ``self.model`` in ``__init__``. The CLI links ``input_dim`` and
    ``num_context`` from the data, so a subclass takes both as its first arguments.

    Args:
        input_dim: d, the task's input dimension (linked from ``data``).
        num_context: N, context points per prompt (linked from ``data``).

    Example::

        class MyModule(ICLRegressionModule):
            def __init__(self, input_dim: int, num_context: int, width: int = 64):
                super().__init__(input_dim, num_context)
                self.model = MyModel(input_dim, width)
    """

    model: nn.Module

    def __init__(self, input_dim: int, num_context: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.num_context = num_context
        self.val_loss = MeanMetric()
        self.val_zero_loss = MeanMetric()
        self.test_loss = MeanMetric()

    @override
    def forward(self, batch: ICLBatch) -> torch.Tensor:
        """Query predictions of shape ``(B,)``."""
        return self.model(batch.context_x, batch.context_y, batch.query_x)

    @staticmethod
    def squared_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-prompt loss ``0.5 * (y_q - pred)^2``."""
        return 0.5 * (target - pred) ** 2

    @override
    def training_step(self, batch: ICLBatch, batch_idx: int) -> torch.Tensor:
        loss = self.squared_errors(self(batch), batch.query_y).mean()
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # only on the steps the logger writes (Lightning's cadence): self.log costs about
            # as much as this model's forward pass, so calling it every step slows training
            self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Check the loss for NaN/inf every ``log_every_n_steps`` steps (one host sync then)."""
        if self.global_step % self.trainer.log_every_n_steps == 0:
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"train/loss is {loss.item()} at step {self.global_step}: training "
                    "diverged. Lower the optimizer's lr or set trainer.gradient_clip_val; "
                    "checkpoints already written are kept."
                )

    @override
    def validation_step(self, batch: ICLBatch, batch_idx: int) -> None:
        self.val_loss.update(self.squared_errors(self(batch), batch.query_y))
        zero = torch.zeros_like(batch.query_y)
        self.val_zero_loss.update(self.squared_errors(zero, batch.query_y))
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/zero_loss", self.val_zero_loss)

    @override
    def test_step(self, batch: ICLBatch, batch_idx: int) -> None:
        self.test_loss.update(self.squared_errors(self(batch), batch.query_y))
        self.log("test/loss", self.test_loss)

    @override
    def configure_optimizers(self):
        """Paper A's AdamW (lr 1e-3, betas (0.9, 0.98), no weight decay); the CLI's
        ``optimizer`` / ``lr_scheduler`` options replace it."""
        return torch.optim.AdamW(self.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
