"""DeltaWConvergence: paper B's Fig. 2, the token-by-token updates ``Delta W_i`` converge."""

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.block_probe import BlockProbe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import A_sequence, delta_W_sequence_norms


class DeltaWConvergence(BlockProbe):
    """``||Delta W_i||`` and ``||Delta W_{i+1} - Delta W_i||`` (Frobenius) against i.

    ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` (Proposition 3.1) for the first i context
    points, all i from running sums over the context (O(N) per task); being rank 1,
    ``||Delta W_{i+1} - Delta W_i|| = ||W (A_{i+1} - A_i)|| / ||A_0||``. Both are averaged
    over the evaluation tasks. For block k of a stack, ``A_i = A_k(c^k_1..c^k_i, x^k)`` on the
    block's own input tokens. Logs under ``dw/``: ``update_first`` (i = 1), ``update_last``
    (i = N - 1), ``update_ratio`` (last over first; below 1 when the updates shrink as the
    context grows), ``norm_first``, ``norm_last``, and the figure ``dw/convergence`` of both
    curves against i; with ``block`` an index k or ``"all"`` the same names go under
    ``dw/block<k>/``.

    Args:
        batch_size: tasks per chunk (default 128, whose running sums stay in cache).
        per_token: also log every point of both curves, ``norm_i<i>`` and ``update_i<i>``
            (for reports that plot the curves over training or over seeds).
        **kwargs: ``block`` (:class:`~icl_lightning.callbacks.block_probe.BlockProbe`) and the
            options of :class:`~icl_lightning.callbacks.Probe` (prompts need N >= 2 context
            points).

    Example::

        trainer = Trainer(callbacks=[DeltaWConvergence(every_n_steps=500)])
    """

    namespace = "dw"
    marker = "norm"
    charts = {
        "Prop. 3.1: |Delta W_i| at the first and last i": r"norm_(first|last)",
        "Prop. 3.1: |Delta W_i+1 - Delta W_i| at the first and last i": r"update_(first|last)",
    }

    def __init__(self, batch_size: PositiveInt = 128, per_token: bool = False, **kwargs) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.per_token = per_token

    @override
    def check(self, pl_module: "L.LightningModule", datamodule: object) -> None:
        """As :meth:`Probe.check`, and prompts of N >= 2 context points (one update needs two
        prefixes), named by the option that sets N."""
        super().check(pl_module, datamodule)
        option, N = f"{type(self).__name__}.num_context", self.num_context
        if N is None:
            option, N = "data.init_args.num_context", getattr(datamodule, "num_context", None)
        if self.size == "current" and N is not None:
            option = "data.init_args.curriculum.points.start"
            N = self._curriculum(datamodule).size(0, datamodule.input_dim, N)[1]
        require(
            N is None or N >= 2,
            option,
            N,
            "an integer >= 2 for DeltaWConvergence (||Delta W_{i+1} - Delta W_i|| needs two "
            "context points)",
        )

    @override
    def block_sums(self, model: nn.Module, batch: ICLBatch, k: int) -> dict[str, torch.Tensor]:
        require(batch.num_context >= 2, "num_context", batch.num_context, ">= 2 for updates")
        A_seq = A_sequence(model, k, batch.context_x, batch.context_y, batch.query_x)
        norm, update = delta_W_sequence_norms(model.layers(k)[1].W, A_seq)
        return {"norm": norm.sum(0), "update": update.sum(0)}

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        scalars = {}
        for p in self.prefixes(results):
            norm, update = results[f"{p}norm"], results[f"{p}update"]
            scalars |= {
                f"{p}update_first": float(update[0]),
                f"{p}update_last": float(update[-1]),
                f"{p}update_ratio": float(update[-1] / update[0]),
                f"{p}norm_first": float(norm[0]),
                f"{p}norm_last": float(norm[-1]),
            }
            if self.per_token:
                scalars |= self.per_i(f"{p}norm", norm) | self.per_i(f"{p}update", update)
        return scalars

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        figures = {}
        for p in self.prefixes(results):
            norm, update = results[f"{p}norm"].cpu(), results[f"{p}update"].cpu()
            i = range(1, len(norm) + 1)
            curves = {"||dW_i||": norm, "||dW_{i+1} - dW_i||": list(update) + [float("nan")]}
            title = f"Paper B, Fig. 2 (Prop. 3.1){self.where(p)}: convergence of dW_i"
            figures[f"{p}convergence"] = line_figure(
                i, curves, "context points i", "norm", title, True
            )
        return figures
