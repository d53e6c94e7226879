"""FinetuneComparison: paper B's Fig. 3, SGD finetuning of W against the implicit Delta W_i."""

import re

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.block_probe import BlockProbe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import A_sequence
from icl_lightning.theory.finetune import (
    context_free_inputs,
    context_free_readout,
    delta_W_predictions,
    read,
    sgd_on_W,
)
from icl_lightning.theory.loss import prediction_loss


class FinetuneComparison(BlockProbe):
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

    For block k of a stack (``block``: an index k or ``"all"``; tags ``ft/block<k>/...``, one
    figure ``ft/block<k>/comparison`` per block) both learners change block k's ``W_k`` alone
    and predict with the context-free network ``T_{W_k'}(x)`` (the query token alone through
    blocks 1..K; :mod:`icl_lightning.theory.finetune`): SGD on the examples' losses
    ``0.5 (T_{W_k}(x_i) - y_i)^2``, and ``W_k + Delta W_k,i`` with Proposition 3.1's
    ``Delta W_k,i`` of block k on its own input tokens ``(C^k, x^k)`` of the full prompt. For
    K = 1 these are paper B's learners above.

    When the SGD learner's test loss is not finite (lr too large for the inputs' scale), the
    probe warns once, naming ``lr`` and the first example i where it diverged.

    Args:
        lr: the SGD learning rate (paper B: 0.01).
        seed: seed of the evaluation tasks (their own, unseen in training).
        batch_size: tasks per chunk; the SGD loop runs once per chunk, so large chunks are
            fast (memory is O(batch_size (M D + m D)) only).
        **kwargs: ``block`` (:class:`~icl_lightning.callbacks.block_probe.BlockProbe`) and the
            other options of :class:`~icl_lightning.callbacks.Probe`.

    Example::

        trainer = Trainer(callbacks=[FinetuneComparison(every_n_steps=1000, lr=0.01)])
    """

    namespace = "ft"
    marker = "loss_i0"

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
        self.warned_divergence = False

    @override
    def block_sums(self, model: nn.Module, batch: ICLBatch, k: int) -> dict[str, torch.Tensor]:
        """Sums over tasks of both learners' test losses for block k's W (K = 1: paper B)."""
        mlp, readout = model.layers(k)[1], context_free_readout(model, k)
        examples, test = context_free_inputs(model, k, batch.context_x, batch.query_x)
        sgd = sgd_on_W(mlp, examples, batch.context_y, test, self.lr, readout)  # (B, M)
        implicit = torch.cat(  # (B, M); prefixes of a few tasks at a time stay in cache
            [
                delta_W_predictions(
                    mlp,
                    A_sequence(model, k, p.context_x, p.context_y, p.query_x),
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

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for p in self.prefixes(results):
            out[f"{p}loss_i0"] = float(results[f"{p}loss_i0"])
            for name in ("sgd_loss", "dw_loss"):
                out |= self.per_i(f"{p}{name}", results[f"{p}{name}"])
            self._warn_if_diverged(p, results[f"{p}sgd_loss"])
        return out

    def _warn_if_diverged(self, prefix: str, sgd_loss: torch.Tensor) -> None:
        """Warn once per run when SGD's test loss is not finite, naming lr and the first i."""
        bad = (~torch.isfinite(sgd_loss)).nonzero()
        if self.warned_divergence or not len(bad):
            return
        self.warned_divergence = True
        i = int(bad[0]) + 1
        before = f" (test loss {float(sgd_loss[i - 2]):.3g} at i = {i - 1})" if i > 1 else ""
        rank_zero_warn(
            f"{type(self).__name__}: SGD on W{self.where(prefix)} diverged at lr={self.lr:g}: its "
            f"test loss is not finite from example i = {i}{before}. Lower "
            "FinetuneComparison.lr (init_args.lr) or the inputs' scale; the Delta-W curve is "
            "unaffected."
        )

    @override
    def layout(self) -> dict[str, list]:
        """Custom Scalars: SGD beside Delta W after the first, middle and last example
        (i = 1, N // 2, N) of each block, with the loss before any example (i = 0)."""
        names = set(self.history[max(self.history)]) if self.history else set()
        last: dict[str, int] = {}
        for name in names:
            if match := re.fullmatch(r"(block\d+/)?sgd_loss_i(\d+)", name):
                prefix = match[1] or ""
                last[prefix] = max(last.get(prefix, 0), int(match[2]))
        charts = {}
        for p, N in sorted(last.items()):
            for i in sorted({1, max(N // 2, 1), N}):
                tags = (f"{p}loss_i0", f"{p}sgd_loss_i{i}", f"{p}dw_loss_i{i}")
                charts[f"Fig. 3{self.where(p)}: SGD vs Delta W at i = {i}"] = [
                    "Multiline",
                    [f"{self.prefix}{tag}" for tag in tags if tag in names],
                ]
        return charts

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        figures = {}
        for p in self.prefixes(results):
            i = range(0, len(results[f"{p}sgd_loss"]) + 1)
            start = [float(results[f"{p}loss_i0"])]
            curves = {
                f"SGD on W (lr {self.lr:g})": start + results[f"{p}sgd_loss"].tolist(),
                "Delta W_i": start + results[f"{p}dw_loss"].tolist(),
            }
            title = f"Paper B, Fig. 3{self.where(p)}: finetuning vs in-context Delta W"
            figures[f"{p}comparison"] = line_figure(i, curves, "examples i", "test loss", title)
        return figures
