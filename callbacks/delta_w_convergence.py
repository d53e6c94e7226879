"""DeltaWConvergence: paper B's Fig. 2, the token-by-token updates ``Delta W_i`` converge."""

import torch
from jsonargparse.typing import PositiveInt
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
from icl_lightning.theory.delta_w import (
    A_sequence,
    block_A_sequence,
    check_block,
    delta_W_sequence_norms,
)


class DeltaWConvergence(Probe):
    """``||Delta W_i||`` and ``||Delta W_{i+1} - Delta W_i||`` (Frobenius) against i.

    ``Delta W_i = W (A_i - A_0) A_0^T / ||A_0||^2`` (Proposition 3.1) for the first i context
    points, all i from running sums over the context (O(N) per task); being rank 1,
    ``||Delta W_{i+1} - Delta W_i|| = ||W (A_{i+1} - A_i)|| / ||A_0||``. Both are averaged
    over the evaluation tasks. Logs under ``dw/``: ``update_first`` (i = 1), ``update_last``
    (i = N - 1), ``update_ratio`` (last over first; below 1 when the updates shrink as the
    context grows), ``norm_first``, ``norm_last``, and the figure ``dw/convergence`` of both
    curves against i.

    ``block`` (a stack of K blocks): an index k (1-based) or ``"all"`` logs the same names
    under ``dw/block<k>/`` for block k's ``Delta W_k,i = W_k (A_k,i - A_k,0) A_k,0^T /
    ||A_k,0||^2`` with ``A_k,i = A_k(c^k_1..c^k_i, x^k)`` on the block's own input tokens, and
    one figure ``dw/block<k>/convergence`` per block; ``None`` (default): the last block with
    the tags above.

    Args:
        batch_size: tasks per chunk (default 128, whose running sums stay in cache).
        block: ``None`` (the last block, tags ``dw/<name>``), ``"all"`` or a block index k
            (1-based, at most num_blocks): tags ``dw/block<k>/<name>``.
        per_token: also log every point of both curves, ``norm_i<i>`` and ``update_i<i>``
            (for reports that plot the curves over training or over seeds).
        **kwargs: as :class:`~icl_lightning.callbacks.Probe` (prompts need N >= 2 context
            points).

    Example::

        trainer = Trainer(callbacks=[DeltaWConvergence(every_n_steps=500)])
    """

    namespace = "dw"

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        block: BlockOption = None,
        per_token: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        validate_block_option(block)
        self.block = block
        self.per_token = per_token

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a :class:`ContextualBlock`, with ``block`` in 1..K."""
        check_block(model)
        block_prefixes(self.block, model)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        require(batch.num_context >= 2, "num_context", batch.num_context, ">= 2 for updates")
        prompt = (batch.context_x, batch.context_y, batch.query_x)
        blocks = block_prefixes(self.block, model)
        if not blocks:
            block = check_block(model)
            return self._sums(block.W, A_sequence(block, *prompt), prefix="")
        sums = {}
        for k, prefix in blocks.items():
            A_seq = block_A_sequence(model, k, *prompt)
            sums |= self._sums(model.layers(k)[1].W, A_seq, prefix)
        return sums

    @staticmethod
    def _sums(W: torch.Tensor, A_seq: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        """Sums over tasks of both norms, i = 1..N and 1..N-1, named ``<prefix>norm|update``."""
        norm, update = delta_W_sequence_norms(W, A_seq)
        return {f"{prefix}norm": norm.sum(0), f"{prefix}update": update.sum(0)}

    @staticmethod
    def _prefixes(results: dict) -> list[str]:
        return [name.removesuffix("norm") for name in results if name.endswith("norm")]

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        scalars = {}
        for p in self._prefixes(results):
            norm, update = results[f"{p}norm"], results[f"{p}update"]
            scalars |= {
                f"{p}update_first": float(update[0]),
                f"{p}update_last": float(update[-1]),
                f"{p}update_ratio": float(update[-1] / update[0]),
                f"{p}norm_first": float(norm[0]),
                f"{p}norm_last": float(norm[-1]),
            }
            if self.per_token:
                scalars |= {f"{p}norm_i{i}": float(v) for i, v in enumerate(norm, start=1)}
                scalars |= {f"{p}update_i{i}": float(v) for i, v in enumerate(update, start=1)}
        return scalars

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        figures = {}
        for p in self._prefixes(results):
            norm, update = results[f"{p}norm"].cpu(), results[f"{p}update"].cpu()
            i = range(1, len(norm) + 1)
            curves = {"||dW_i||": norm, "||dW_{i+1} - dW_i||": list(update) + [float("nan")]}
            where = f" ({p.rstrip('/')})" if p else ""
            title = f"Proposition 3.1{where}: convergence of dW_i"
            figures[f"{p}convergence"] = line_figure(
                i, curves, "context points i", "norm", title, True
            )
        return figures
