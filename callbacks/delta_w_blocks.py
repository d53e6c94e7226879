"""The ``block`` option shared by the Delta-W probes: which blocks of a stack to measure."""

from typing import Literal

from torch import nn

from icl_lightning.checks import require
from icl_lightning.theory.delta_w import check_block

#: ``None``: the last block with the single-block tags; an int k (1-based) or ``"all"``: tags
#: ``dw/block<k>/...`` for block k or for every block.
BlockOption = int | Literal["all"] | None


def validate_block_option(block: BlockOption) -> None:
    """A clear error unless ``block`` is None, ``"all"`` or an integer >= 1."""
    require(
        block is None or block == "all" or (isinstance(block, int) and block >= 1),
        "block",
        block,
        "None (the last block), 'all' or a block index k >= 1",
    )


def block_prefixes(block: BlockOption, model: nn.Module) -> dict[int, str]:
    """The 1-based blocks ``block`` names in ``model``, each with its tag prefix: ``{}`` for
    None on a single block (the single-block path), ``{K: ""}`` for None on a stack of K,
    ``{k: "block<k>/"}`` otherwise; a clear error naming ``block`` when it is past K."""
    if block is None:
        K = getattr(model, "num_blocks", 1)
        return {} if K == 1 else {K: ""}
    K = check_block(model).num_blocks
    if block == "all":
        return {k: f"block{k}/" for k in range(1, K + 1)}
    model.layers(block)  # the check, naming the option and 1..K
    return {block: f"block{block}/"}
