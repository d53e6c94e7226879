"""FinetuneComparison: paper B's Fig. 3, SGD finetuning of W against the implicit Delta W_i."""

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.delta_w_blocks import (
    BlockOption,
    block_prefixes,
    validate_block_option,
)
from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import block_A_sequence, check_block
from icl_lightning.theory.finetune import (
    context_free_inputs,
    context_free_readout,
    delta_W_predictions,
    read,
    sgd_on_W,
)
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

    ``block`` (a stack of K blocks, ``ContextualBlock(num_blocks=K)``): an index k (1-based)
    or ``"all"`` logs the same names under ``ft/block<k>/`` for learners of block k's ``W_k``
    alone, both predicting with the context-free network ``T_{W_k'}(x)`` (the query token
    alone through blocks 1..K; :mod:`icl_lightning.theory.finetune`): SGD on the examples'
    losses ``0.5 (T_{W_k}(x_i) - y_i)^2``, and ``W_k + Delta W_k,i`` with Proposition 3.1's
    ``Delta W_k,i = W_k (A_k,i - A_k,0) A_k,0^T / ||A_k,0||^2`` of block k on its own input
    tokens ``(C^k, x^k)`` of the full prompt; one figure ``ft/block<k>/comparison`` per block.
    ``None`` (default): the last block, tags as above (a single block: paper B's comparison).

    Args:
        lr: the SGD learning rate (paper B: 0.01).
        seed: seed of the evaluation tasks (their own, unseen in training).
        batch_size: tasks per chunk; the SGD loop runs once per chunk, so large chunks are
            fast (memory is O(batch_size (M D + m D)) only).
        block: ``None`` (the last block, tags ``ft/<name>``), ``"all"`` or a block index k
            (1-based, at most num_blocks): tags ``ft/block<k>/<name>``.
        **kwargs: the other options of :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[FinetuneComparison(every_n_steps=1000, lr=0.01)])
    """

    namespace = "ft"

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a :class:`ContextualBlock`, with ``block`` in 1..K."""
        check_block(model)
        block_prefixes(self.block, model)

    def __init__(
        self,
        lr: PositiveFloat = 0.01,
        seed: NonNegativeInt = 31337,
        batch_size: PositiveInt = 4096,
        block: BlockOption = None,
        **kwargs,
    ) -> None:
        require(lr > 0, "lr", lr, "a number > 0")
        super().__init__(seed=seed, batch_size=batch_size, **kwargs)
        validate_block_option(block)
        self.lr = float(lr)
        self.block = block

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        blocks = block_prefixes(self.block, check_block(model)) or {1: ""}
        return {
            f"{prefix}{name}": value
            for k, prefix in blocks.items()
            for name, value in self._block_sums(model, k, batch).items()
        }

    def _block_sums(self, model: nn.Module, k: int, batch: ICLBatch) -> dict[str, torch.Tensor]:
        """Sums over tasks of both learners' test losses for block k's W (k = K = 1: paper B)."""
        mlp, readout = model.layers(k)[1], context_free_readout(model, k)
        examples, test = context_free_inputs(model, k, batch.context_x, batch.query_x)
        sgd = sgd_on_W(mlp, examples, batch.context_y, test, self.lr, readout)  # (B, M)
        implicit = torch.cat(  # (B, M); prefixes of a few tasks at a time stay in cache
            [
                delta_W_predictions(
                    mlp,
                    block_A_sequence(model, k, p.context_x, p.context_y, p.query_x),
                    test=z,
                    readout=readout,
                )
                for p, z in zip(batch.split(128), test.split(128), strict=True)
            ]
        )
        y = batch.query_y
        untouched = read(mlp, readout, F.linear(test, mlp.W, mlp.b), test)
        return {
            "loss_i0": prediction_loss(untouched, y).sum(),
            "sgd_loss": prediction_loss(sgd, y.unsqueeze(1)).sum(0),
            "dw_loss": prediction_loss(implicit, y.unsqueeze(1)).sum(0),
        }

    @staticmethod
    def _prefixes(results: dict) -> list[str]:
        """``""`` (the default tags) or ``"block<k>/"`` for every measured block."""
        return [name.removesuffix("loss_i0") for name in results if name.endswith("loss_i0")]

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for p in self._prefixes(results):
            out[f"{p}loss_i0"] = float(results[f"{p}loss_i0"])
            for name in ("sgd_loss", "dw_loss"):
                values = results[f"{p}{name}"]
                out.update({f"{p}{name}_i{i}": float(v) for i, v in enumerate(values, start=1)})
        return out

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        figures = {}
        for p in self._prefixes(results):
            i = range(0, len(results[f"{p}sgd_loss"]) + 1)
            start = [float(results[f"{p}loss_i0"])]
            curves = {
                f"SGD on W (lr {self.lr:g})": start + results[f"{p}sgd_loss"].tolist(),
                "Delta W_i": start + results[f"{p}dw_loss"].tolist(),
            }
            where = f" ({p.rstrip('/')})" if p else ""
            title = f"Finetuning vs in-context Delta W{where}"
            figures[f"{p}comparison"] = line_figure(i, curves, "examples i", "test loss", title)
        return figures
