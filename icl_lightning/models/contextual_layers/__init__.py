"""Contextual layers ``A(C, x)`` of paper B's block: attention, recurrent and state-space kinds
behind one interface (:class:`ContextualLayer`), and :func:`build_layer`, which makes one from a
kind's name or a user's class."""

import importlib

from icl_lightning.checks import require
from icl_lightning.models.contextual_layers.attention import Attention
from icl_lightning.models.contextual_layers.base import ContextualLayer, RecurrentLayer
from icl_lightning.models.contextual_layers.recurrent import GRU, LSTM, ElmanRNN
from icl_lightning.models.contextual_layers.scan import linear_scan
from icl_lightning.models.contextual_layers.state_space import DiagonalSSM, SelectiveSSM

#: the kinds of contextual layer, by the name a config gives ``contextual_layer``
KINDS: dict[str, type[ContextualLayer]] = {
    "attention": Attention,
    "rnn": ElmanRNN,
    "gru": GRU,
    "lstm": LSTM,
    "diagonal": DiagonalSSM,
    "selective": SelectiveSSM,
}


def layer_class(name: str) -> type[ContextualLayer]:
    """The class of a kind in :data:`KINDS`, or of a dotted import path ``package.module.Class``
    to a :class:`ContextualLayer` subclass; a clear error naming ``contextual_layer``
    otherwise."""
    if name in KINDS:
        return KINDS[name]
    allowed = f"one of {list(KINDS)} or an import path 'package.module.Class' of a ContextualLayer"
    module, _, attribute = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute) if module else None
    except (ImportError, AttributeError):
        cls = None
    ok = isinstance(cls, type) and issubclass(cls, ContextualLayer)
    require(ok, "contextual_layer", name, allowed + " subclass")
    return cls


def build_layer(
    name: str,
    token_dim: int,
    residual: bool,
    layer_norm: bool,
    init_scale: float,
    state_size: int | None,
    **attention,
) -> ContextualLayer:
    """A new layer of kind ``name`` (:func:`layer_class`) for tokens of size ``token_dim``:
    attention takes ``**attention`` (``num_heads``, ``key_size``, ``attention``), the recurrent
    and state-space kinds ``state_size`` and ``init_scale``; a user's class is called as
    ``cls(token_dim, residual=..., layer_norm=...)``."""
    cls = layer_class(name)
    if cls is Attention:
        return Attention(
            token_dim, **attention, residual=residual, layer_norm=layer_norm, init_scale=init_scale
        )
    if name in KINDS:
        return cls(token_dim, state_size, residual, layer_norm, init_scale)
    return cls(token_dim, residual=residual, layer_norm=layer_norm)


__all__ = [
    "KINDS",
    "GRU",
    "LSTM",
    "Attention",
    "ContextualLayer",
    "DiagonalSSM",
    "ElmanRNN",
    "RecurrentLayer",
    "SelectiveSSM",
    "build_layer",
    "layer_class",
    "linear_scan",
]
