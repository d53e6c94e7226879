"""FinetuneComparison: paper B's Fig. 3, SGD finetuning of W against the implicit Delta W_i."""

import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import A_sequence, check_block
from icl_lightning.theory.finetune import delta_W_predictions, sgd_on_W
from icl_lightning.theory.loss import prediction_loss


class FinetuneComparison(Probe):
    """Finetuning W by SGD on the context, example by example, against ``Delta W_i``.

    For each evaluation task (unseen weights: the probe's own seed) with context
    ``c_1..c_M`` and test point ``(x_q, y_q)``, two learners start from the current trained
    block (a copy: the training model is never touched):

    - SGD: ``W_i = W_{i-1} - lr * grad_W 0.5 (T_W(x_i) - y_i)^2`` at ``W = W_{i-1}``, one
      example at a time in context order (each example is a prompt with no context, the
      query token ``[x_i; 0]``); only W changes. Its test loss after i steps is
      ``0.5 (T_{W_i}(x_q) - y_q)^2``.
    - Delta W: the test loss ``0.5 (T_{W + Delta W_i}(x_q) - y_q)^2`` with Proposition 3.1's
      ``Delta W_i`` from ``c_1..c_i`` (without the ``Delta A`` shift when the MLP keeps its
      skip connection, as the paper defines it).

    Both learners live in :mod:`icl_lightning.theory.finetune`: one SGD step for all tasks
    at once (the M steps are sequential, with no host sync), and ``Delta W_i`` for all i from
    running sums over the context, so time and memory grow linearly in M. M is the
    evaluation prompts' context length (the probe's ``num_context``, default the
    datamodule's N). Logs under ``ft/``: ``loss_i0`` (no update),
    ``sgd_loss_i<i>`` and ``dw_loss_i<i>`` for i = 1..M, and the figure ``ft/comparison``.

    Args:
        lr: the SGD learning rate (paper B: 0.01).
        seed: seed of the evaluation tasks (their own, unseen in training).
        batch_size: tasks per chunk; the SGD loop runs once per chunk, so large chunks are
            fast (memory is O(batch_size (M D + m D)) only).
        **kwargs: the other options of :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[FinetuneComparison(every_n_steps=1000, lr=0.01)])
    """

    namespace = "ft"

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a :class:`ContextualBlock`."""
        check_block(model)

    def __init__(
        self,
        lr: PositiveFloat = 0.01,
        seed: NonNegativeInt = 31337,
        batch_size: PositiveInt = 4096,
        **kwargs,
    ) -> None:
        require(lr > 0, "lr", lr, "a number > 0")
        super().__init__(seed=seed, batch_size=batch_size, **kwargs)
        self.lr = float(lr)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        block = check_block(model)
        examples = block.A_alone(batch.context_x)  # (B, M, D): A(x_i), each example alone
        A_test = block.A_alone(batch.query_x)  # (B, D)
        sgd = sgd_on_W(block, examples, batch.context_y, A_test, self.lr)  # (B, M)
        implicit = torch.cat(  # (B, M); prefixes of a few tasks at a time stay in cache
            [
                delta_W_predictions(block, A_sequence(block, p.context_x, p.context_y, p.query_x))
                for p in batch.split(128)
            ]
        )
        y = batch.query_y
        return {
            "loss_i0": prediction_loss(block.head(A_test), y).sum(),
            "sgd_loss": prediction_loss(sgd, y.unsqueeze(1)).sum(0),
            "dw_loss": prediction_loss(implicit, y.unsqueeze(1)).sum(0),
        }

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {"loss_i0": float(results["loss_i0"])}
        for name in ("sgd_loss", "dw_loss"):
            out.update({f"{name}_i{i}": float(v) for i, v in enumerate(results[name], start=1)})
        return out

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        i = range(0, len(results["sgd_loss"]) + 1)
        start = [float(results["loss_i0"])]
        curves = {
            f"SGD on W (lr {self.lr:g})": start + results["sgd_loss"].tolist(),
            "Delta W_i": start + results["dw_loss"].tolist(),
        }
        title = "Finetuning vs in-context Delta W"
        return {"comparison": line_figure(i, curves, "examples i", "test loss", title)}
