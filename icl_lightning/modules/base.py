"""ICLRegressionModule: the training logic every model family shares."""

from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from icl_lightning.data.batch import ICLBatch
from icl_lightning.theory.loss import prediction_loss

#: checkpoint key holding the trained network's class, checked before a checkpoint is loaded
NETWORK_CLASS_KEY = "icl_network_class"


def network_class(pl_module: L.LightningModule) -> str:
    """``module.qualname`` of the trained network: ``pl_module.model`` if there is one."""
    network = getattr(pl_module, "model", pl_module)
    return f"{type(network).__module__}.{type(network).__qualname__}"


def weights_are_finite(pl_module: L.LightningModule) -> bool:
    """``all_p isfinite(p)`` over the module's floating parameters and buffers (one host sync)."""
    tensors = [t for t in (*pl_module.parameters(), *pl_module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


def logs_train_step(trainer: L.Trainer) -> bool:
    """Whether Lightning's logger writes the step now running: the ``k``-th optimizer step
    (``k = global_step + 1``) with ``k % log_every_n_steps == 0``; never when
    ``log_every_n_steps`` is 0 (training logs off)."""
    every = trainer.log_every_n_steps
    return every > 0 and (trainer.global_step + 1) % every == 0


#: steps between two checks of the training loss for NaN/inf when ``log_every_n_steps`` is 0
NAN_CHECK_EVERY = 50


def check_initialised(module: nn.Module) -> None:
    """Raise ``ValueError`` naming ``module``'s class when its ``__init__`` did not call
    ``super().__init__()`` (nn.Module's bookkeeping is missing: it has no parameters, and
    PyTorch would fail later on a missing ``_parameters``)."""
    if "_modules" not in vars(module):
        name = type(module).__name__
        raise ValueError(
            f"{name}.__init__ does not call super().__init__(): call it first in "
            f"{name}.__init__, before setting any attribute."
        )


def check_prediction_shape(network: nn.Module, prediction: torch.Tensor, batch: ICLBatch) -> None:
    """Raise ``ValueError`` unless ``network`` predicted one tensor of one number per prompt,
    shape ``(B,)`` (not a tuple; a ``(B, 1)`` output would broadcast against the ``(B,)``
    targets into a ``(B, B)`` loss)."""
    expected = tuple(batch.query_y.shape)
    if not isinstance(prediction, torch.Tensor):
        raise ValueError(
            f"{type(network).__name__}(context_x, context_y, query_x) returned a "
            f"{type(prediction).__name__}; expected a tensor of shape {expected}, one number "
            "per prompt. Return the predictions alone from its forward (keep anything else in "
            "another method)."
        )
    if tuple(prediction.shape) != expected:
        raise ValueError(
            f"{type(network).__name__}(context_x, context_y, query_x) returned predictions of "
            f"shape {tuple(prediction.shape)}; expected {expected}, one number per prompt "
            f"(B = {expected[0]}). Return e.g. `output.squeeze(-1)` from its forward."
        )


def kept_checkpoint(trainer: L.Trainer) -> str:
    """What a run stopped now leaves to resume from: the checkpoint callback's last file if it
    exists on disk, else a sentence saying that no checkpoint was written."""
    last = getattr(trainer.checkpoint_callback, "last_model_path", "")
    if last and Path(last).is_file():
        return f"The last checkpoint, {last}, is kept (finite weights); resume from it."
    return "No checkpoint was written before this step."


class ICLRegressionModule(L.LightningModule):
    """Trains ``model(context_x, context_y, query_x) -> (B,)`` predictions on prompts.

    Loss (paper A): ``0.5 * mean_b (y_q - pred)^2``
    (:func:`~icl_lightning.theory.loss.prediction_loss`). Logs ``train/loss`` every
    ``trainer.log_every_n_steps`` steps (kept on the device: no host sync in the training
    step), ``val/loss`` and ``test/loss`` over the fixed sets (reduced across DDP ranks by
    torchmetrics), and ``val/zero_loss``, the loss of the
    predictor that always says 0, as the reference to beat.

    Safety: the first batch checks that the network returns ``(B,)``
    (:func:`check_prediction_shape`); every checkpoint write first checks that the weights are
    finite, and stores the network's class (:meth:`on_save_checkpoint`). A subclass's mistakes
    are errors naming it: an ``__init__`` without ``super().__init__(model)`` (of the module or
    of the network), and a ``training_step`` that returns None or a loss that is not a 0-d
    tensor with a graph (:meth:`on_before_backward`, :meth:`on_train_batch_end`).

    Args:
        model: the network, any ``nn.Module`` mapping ``context_x (B, N, d)``,
            ``context_y (B, N)`` and ``query_x (B, d)`` to predictions ``(B,)``, e.g. an
            :class:`~icl_lightning.models.LSA`. In a config it is named by ``class_path``, and
            the CLI links its ``input_dim`` from the data. Its weights are in the state dict,
            its options in the run's ``config.yaml``; a subclass with options of its own saves
            them with ``self.save_hyperparameters(ignore=["model"])``.

    Example (YAML)::

        model:
          model:
            class_path: icl_lightning.models.LSA
            init_args: {num_layers: 1, recurrent: true}

    Example (Python)::

        module = ICLRegressionModule(LSA(input_dim=5))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{type(self).__name__}(model=...) got a {type(model).__name__}; expected an "
                "nn.Module mapping (context_x, context_y, query_x) to predictions (B,)."
            )
        check_initialised(model)
        self.model = model
        self.val_loss = MeanMetric()
        self.val_zero_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self._prediction_checked = False

    def __setattr__(self, name: str, value) -> None:
        """As ``nn.Module.__setattr__``, except for ``_current_fx_name``: Lightning sets that
        plain string before and after every hook call (about 40 times a step), and nn.Module's
        checks for parameters, buffers and submodules made that a fifth of the Python calls
        Lightning makes per step; a string needs none of them. Any other attribute set before
        ``super().__init__(model)`` is a ``ValueError`` naming the class
        (:func:`check_initialised`)."""
        if name == "_current_fx_name":
            self.__dict__[name] = value
        else:
            if "_modules" not in self.__dict__:
                check_initialised(self)
            super().__setattr__(name, value)

    @override
    def forward(self, batch: ICLBatch) -> torch.Tensor:
        """Query predictions of shape ``(B,)``; the first batch checks that shape
        (:func:`check_prediction_shape`)."""
        prediction = self.model(batch.context_x, batch.context_y, batch.query_x)
        if not self._prediction_checked:
            check_prediction_shape(self.model, prediction, batch)
            self._prediction_checked = True
        return prediction

    @override
    def training_step(self, batch: ICLBatch, batch_idx: int) -> torch.Tensor:
        loss = prediction_loss(self(batch), batch.query_y).mean()
        if logs_train_step(self.trainer):
            # only on the steps the logger writes (Lightning's cadence): self.log costs about
            # as much as this model's forward pass, so calling it every step slows training
            self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Refuse a loss that backward cannot take or that trains nothing: one that is not 0-d
        (per-prompt values, not reduced) or has no autograd graph (detached, or computed under
        ``torch.no_grad``). Shape and flag checks only: no host sync."""
        if not self.automatic_optimization:
            return
        name = type(self).__name__
        if loss.ndim != 0:
            raise ValueError(
                f"{name}.training_step returned a loss of shape {tuple(loss.shape)}; expected a "
                "0-d tensor. Reduce it over the prompts, e.g. `.mean()`."
            )
        if not loss.requires_grad:
            raise ValueError(
                f"{name}.training_step returned a loss without an autograd graph (detached, "
                "computed under torch.no_grad, or from a network without trainable parameters): "
                "nothing would train. Return the loss computed from the model's predictions."
            )

    @override
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Refuse a ``training_step`` that returned None (Lightning would skip its optimizer
        step with a warning, every step); check the loss for NaN/inf every
        ``log_every_n_steps`` steps (:data:`NAN_CHECK_EVERY` when that is 0; one host sync)."""
        if self.automatic_optimization and outputs.get("loss") is None:
            raise ValueError(
                f"{type(self).__name__}.training_step returned None at step "
                f"{self.global_step}: nothing was trained. Return the loss, a 0-d tensor."
            )
        if self.global_step % (self.trainer.log_every_n_steps or NAN_CHECK_EVERY) == 0:
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"train/loss is {loss.item()} at step {self.global_step}: training "
                    "diverged (or the data holds NaN/inf). Lower the optimizer's lr or set "
                    f"trainer.gradient_clip_val. {kept_checkpoint(self.trainer)}"
                )

    @override
    def validation_step(self, batch: ICLBatch, batch_idx: int) -> None:
        self.val_loss.update(prediction_loss(self(batch), batch.query_y))
        zero = torch.zeros_like(batch.query_y)
        self.val_zero_loss.update(prediction_loss(zero, batch.query_y))

    @override
    def on_validation_epoch_end(self) -> None:
        """Log the validation means once per validation: ``self.log`` costs about 0.2 ms a call
        on a CPU (as much as a validation step of a small model), so the metrics are updated
        in ``validation_step`` and logged here, where Lightning computes (synced over
        processes) and resets them. A subclass whose ``validation_step`` does not update them
        logs nothing here (no NaN curve)."""
        if self.val_loss.update_called:
            self.log("val/loss", self.val_loss, prog_bar=True)
            self.log("val/zero_loss", self.val_zero_loss)

    @override
    def test_step(self, batch: ICLBatch, batch_idx: int) -> None:
        self.test_loss.update(prediction_loss(self(batch), batch.query_y))

    @override
    def on_test_epoch_end(self) -> None:
        """Log the test mean once per test (see :meth:`on_validation_epoch_end`)."""
        if self.test_loss.update_called:
            self.log("test/loss", self.test_loss)

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Before every checkpoint write: refuse non-finite weights (raising here writes
        nothing, so the files on disk stay the last finite ones), and store the network's class
        under :data:`NETWORK_CLASS_KEY` (a checkpoint of another network is then refused before
        it is loaded)."""
        if not weights_are_finite(self):
            raise FloatingPointError(
                f"The weights are not finite at step {self.global_step}: training diverged, and "
                f"no checkpoint was written now. {kept_checkpoint(self.trainer)} Lower the "
                "optimizer's lr or set trainer.gradient_clip_val."
            )
        checkpoint[NETWORK_CLASS_KEY] = network_class(self)

    @override
    def configure_optimizers(self):
        """Paper A's AdamW (lr 1e-3, betas (0.9, 0.98), no weight decay); the CLI's
        ``optimizer`` / ``lr_scheduler`` options replace it."""
        return torch.optim.AdamW(self.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
