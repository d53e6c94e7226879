"""Paper B's contextual block (Dherin et al., 2025): ``T_W(C, x) = M_W(A(C, x))``, the
:class:`~icl_lightning.models.ContextualTransformer` of one block (equations in
:mod:`icl_lightning.models.contextual_transformer`)."""

from icl_lightning.models.contextual_transformer import ContextualTransformer


class ContextualBlock(ContextualTransformer):
    """One contextual block read at the query: the prediction ``M_W(A(C, x))[-1]``.

    Args:
        input_dim: d; tokens have size D = d + 1.
        num_blocks: K = 1. A larger K builds the stack of
            :class:`~icl_lightning.models.ContextualTransformer` (configs and checkpoints that
            name it ``ContextualBlock`` keep loading).
        **kwargs: the other options of :class:`~icl_lightning.models.ContextualTransformer`.

    Example::

        block = ContextualBlock(input_dim=4, num_heads=4)
        pred = block(context_x, context_y, query_x)      # T_W(C, x)[-1], (B,)
        A, M = block.layers(1)                            # A and M_W, W = M.W
    """

    def __init__(self, input_dim: int, num_blocks: int = 1, **kwargs) -> None:
        super().__init__(input_dim, num_blocks=num_blocks, **kwargs)
