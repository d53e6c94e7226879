"""BlockProbe: the base of the Delta-W probes, which measure one or every block of a
contextual transformer (K = 1: paper B's block)."""

import re
from typing import Literal

import lightning as L
import torch
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.theory.delta_w import check_model

#: ``None``: the last block, tags ``<namespace>/<name>``; an int k (1-based) or ``"all"``: tags
#: ``<namespace>/block<k>/<name>`` for block k or for every block.
BlockOption = int | Literal["all"] | None


class BlockProbe(Probe):
    """A probe of the blocks ``block`` names in a :class:`~icl_lightning.models.ContextualBlock`
    or :class:`~icl_lightning.models.ContextualTransformer`.

    A subclass implements :meth:`block_sums` (the sums of one block k; :meth:`compute` puts
    them under the block's tag prefix, ``""`` or ``"block<k>/"``), names in
    :attr:`maxima_per_block` its maxima, and in :attr:`marker` one name every block's results
    hold.

    Args:
        block: ``None`` (the last block, tags ``<namespace>/<name>``), ``"all"`` or a block
            index k (1-based, at most num_blocks): tags ``<namespace>/block<k>/<name>``.
        **kwargs: as :class:`~icl_lightning.callbacks.Probe`.
    """

    #: names of :meth:`compute` outputs, per block, that are maxima over prompts
    maxima_per_block: tuple[str, ...] = ()
    #: a name every measured block's results hold (finds the blocks in the results)
    marker: str = ""

    def __init__(self, block: BlockOption = None, **kwargs) -> None:
        super().__init__(**kwargs)
        require(
            block is None or block == "all" or (isinstance(block, int) and block >= 1),
            "block",
            block,
            "None (the last block), 'all' or a block index k >= 1",
        )
        self.block = block

    def blocks(self, model: nn.Module) -> dict[int, str]:
        """The 1-based blocks ``block`` names in ``model``, each with its tag prefix:
        ``{K: ""}`` for None, ``{k: "block<k>/"}`` otherwise; a clear error naming ``block``
        when it is past K."""
        K = check_model(model).num_blocks
        if self.block is None:
            return {K: ""}
        if self.block == "all":
            return {k: f"block{k}/" for k in range(1, K + 1)}
        model.layers(self.block)  # the check, naming the option and 1..K
        return {self.block: f"block{self.block}/"}

    def block_sums(self, model: nn.Module, batch: ICLBatch, k: int) -> dict[str, torch.Tensor]:
        """The sums over the prompts of ``batch`` for block k (1-based), as :meth:`compute`."""
        raise NotImplementedError

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        """:meth:`block_sums` of every block ``block`` names, under its tag prefix."""
        return {
            f"{prefix}{name}": value
            for k, prefix in self.blocks(model).items()
            for name, value in self.block_sums(model, batch, k).items()
        }

    @override
    def check_model(self, model: nn.Module) -> None:
        """The Delta-W theory needs a contextual block or transformer, with ``block`` in 1..K."""
        self.blocks(model)

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        """Declares :attr:`maxima` for this run's network: :attr:`maxima_per_block` under
        every measured block's prefix."""
        super().setup(trainer, pl_module, stage)
        prefixes = self.blocks(self._network(pl_module)).values()
        self.maxima = tuple(f"{p}{name}" for p in prefixes for name in self.maxima_per_block)

    def prefixes(self, results: dict) -> list[str]:
        """The tag prefixes of the blocks measured in ``results``."""
        pattern = re.compile(rf"(block\d+/)?{re.escape(self.marker)}")
        return [m.group(1) or "" for name in results if (m := pattern.fullmatch(name))]

    @staticmethod
    def where(prefix: str) -> str:
        """The figure-title suffix of a block's prefix: ``""`` or ``" (block<k>)"``."""
        return f" ({prefix.rstrip('/')})" if prefix else ""

    @staticmethod
    def per_i(name: str, values) -> dict[str, float]:
        """``{<name>_i<i>: values[i - 1]}`` for i = 1..len(values): a curve as scalars."""
        return {f"{name}_i{i}": float(v) for i, v in enumerate(values, start=1)}
