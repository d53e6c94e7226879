"""FinetuneComparison: paper B's Fig. 3, SGD finetuning of W against the implicit Delta W_i."""

import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat
from matplotlib.figure import Figure
from torch import nn
from torch.func import grad, vmap
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import A_sequence, check_block, delta_W_sequence


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

    Tasks are batched: ``torch.func.vmap(grad(...))`` runs one SGD step for all tasks at once;
    the M steps are sequential. M is the evaluation prompts' context length (the probe's
    ``num_context``, default the datamodule's N). Logs under ``ft/``: ``loss_i0`` (no update),
    ``sgd_loss_i<i>`` and ``dw_loss_i<i>`` for i = 1..M, and the figure ``ft/comparison``.

    Args:
        lr: the SGD learning rate (paper B: 0.01).
        seed: seed of the evaluation tasks (their own, unseen in training).
        **kwargs: the other options of :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[FinetuneComparison(every_n_steps=1000, lr=0.01)])
    """

    namespace = "ft"

    def __init__(self, lr: PositiveFloat = 0.01, seed: NonNegativeInt = 31337, **kwargs) -> None:
        require(lr > 0, "lr", lr, "a number > 0")
        super().__init__(seed=seed, **kwargs)
        self.lr = float(lr)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        block = check_block(model)
        W = block.W.detach()
        examples = block.A_alone(batch.context_x)  # (B, M, D): A(x_i), each example alone
        A_test = block.A_alone(batch.query_x)  # (B, D)

        def example_loss(W_task, z, y):  # one task, one example
            return 0.5 * (block.head(z, W_task) - y) ** 2

        sgd_step = vmap(grad(example_loss))
        W_tasks = W.expand(len(batch), *W.shape)
        sgd = []
        for i in range(batch.num_context):  # sequential steps, batched over tasks
            W_tasks = W_tasks - self.lr * sgd_step(W_tasks, examples[:, i], batch.context_y[:, i])
            sgd.append(block.head(A_test, W_tasks))
        sgd = torch.stack(sgd, dim=1)  # (B, M)
        A_seq = A_sequence(block, batch.context_x, batch.context_y, batch.query_x)
        dW = delta_W_sequence(W, A_seq)  # (B, M, m, D)
        implicit = block.head(A_test.unsqueeze(1).expand_as(A_seq[:, 1:]), W + dW)  # (B, M)
        y = batch.query_y
        return {
            "loss_i0": (0.5 * (block.head(A_test) - y) ** 2).sum(),
            "sgd_loss": (0.5 * (sgd - y.unsqueeze(1)) ** 2).sum(0),
            "dw_loss": (0.5 * (implicit - y.unsqueeze(1)) ** 2).sum(0),
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
