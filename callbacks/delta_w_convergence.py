"""DeltaWConvergence: paper B's Fig. 2, the token-by-token updates ``Delta W_i`` converge."""

import torch
from jsonargparse.typing import PositiveInt
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.delta_w import A_sequence, check_block, delta_W_sequence_norms


class DeltaWConvergence(Probe):
    """``||Delta W_i||`` and ``||Delta W_{i+1} - Delta W_i||`` (Frobenius) against i.

    ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` (Proposition 3.1) for the first i context
    points, all i from running sums over the context (O(N) per task); being rank 1,
    ``||Delta W_{i+1} - Delta W_i|| = ||W (A_{i+1} - A_i)|| / ||A_0||``. Both are averaged
    over the evaluation tasks. Logs under ``dw/``: ``update_first`` (i = 1), ``update_last``
    (i = N - 1), ``update_ratio`` (last over first; below 1 when the updates shrink as the
    context grows), ``norm_first``, ``norm_last``, and the figure ``dw/convergence`` of both
    curves against i.

    Args:
        per_token: also log every point of both curves, ``norm_i<i>`` and ``update_i<i>``
            (for reports that plot the curves over training or over seeds).
        **kwargs: as :class:`~icl_lightning.callbacks.Probe` (prompts need N >= 2 context
            points); ``batch_size`` defaults to 128 tasks, whose running sums stay in cache.

    Example::

        trainer = Trainer(callbacks=[DeltaWConvergence(every_n_steps=500)])
    """

    namespace = "dw"

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a :class:`ContextualBlock`."""
        check_block(model)

    def __init__(self, per_token: bool = False, batch_size: PositiveInt = 128, **kwargs) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.per_token = per_token

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        require(batch.num_context >= 2, "num_context", batch.num_context, ">= 2 for updates")
        block = check_block(model)
        A_seq = A_sequence(block, batch.context_x, batch.context_y, batch.query_x)
        norm, update = delta_W_sequence_norms(block.W, A_seq)
        return {"norm": norm.sum(0), "update": update.sum(0)}  # i = 1..N and 1..N-1

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        norm, update = results["norm"], results["update"]
        scalars = {
            "update_first": float(update[0]),
            "update_last": float(update[-1]),
            "update_ratio": float(update[-1] / update[0]),
            "norm_first": float(norm[0]),
            "norm_last": float(norm[-1]),
        }
        if self.per_token:
            scalars.update({f"norm_i{i}": float(v) for i, v in enumerate(norm, start=1)})
            scalars.update({f"update_i{i}": float(v) for i, v in enumerate(update, start=1)})
        return scalars

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        norm, update = results["norm"].cpu(), results["update"].cpu()
        i = range(1, len(norm) + 1)
        curves = {"||dW_i||": norm, "||dW_{i+1} - dW_i||": list(update) + [float("nan")]}
        title = "Proposition 3.1: convergence of dW_i"
        return {"convergence": line_figure(i, curves, "context points i", "norm", title, True)}
