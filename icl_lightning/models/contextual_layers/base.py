"""The contextual-layer interface of paper B (Dherin et al., 2025) and its recurrent form.

A contextual layer maps context tokens ``C = [c_1, ..., c_N]`` and a query token ``x`` to
``A(C, x)`` in R^D, read at the query (the last token). Everything the Delta-W theory
(:mod:`icl_lightning.theory.delta_w`) needs is three readings of it:

- ``A(C, x)``: ``layer(context, query)``, and ``A(S, x)`` for a part S of C
  (``layer(context, query, keep)``);
- ``A(x)``: ``layer.alone(query)``, the layer on the query alone, from its initial state;
- ``A(c_1..c_i, x)`` for every i = 0..N in one pass, linear in N: ``layer.prefixes``.

A K-block stack also reads every context token as a query over the context alone
(``layer.context_only``). A subclass of :class:`ContextualLayer` writes :meth:`prefixes`
(and, where it has a cheaper pass, ``forward``); the rest follows. A recurrence reads the
query last, so ``A(c_1..c_i, x) = out(step(h_i, x))`` with ``h_i`` the state after i context
tokens: :class:`RecurrentLayer` gets every ``h_i`` from one scan over C, then steps all of them
on x at once.
"""

import torch
from torch import nn


class ContextualLayer(nn.Module):
    """``A(S, x) = LN_2(e_q + a(S, x))`` (``e_q`` with ``residual``; ``LN_2`` and the input
    LayerNorm ``LN_1`` on every token with ``layer_norm``), where a subclass computes the mixing
    ``a``.

    Args:
        token_dim: D, the size of every token and of ``A``.
        residual: add the query token ``e_q`` to the layer's output.
        layer_norm: LayerNorm ``norm_in`` on the tokens before the layer and ``norm_out`` on
            its output.
    """

    def __init__(self, token_dim: int, residual: bool = True, layer_norm: bool = False) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.residual = residual
        self.norm_in = nn.LayerNorm(token_dim) if layer_norm else nn.Identity()
        self.norm_out = nn.LayerNorm(token_dim) if layer_norm else nn.Identity()

    def _finish(self, h: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``LN_2(e_q + h)`` (without ``e_q`` when the residual is off)."""
        return self.norm_out(h + query if self.residual else h)

    def prefixes(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``A(c_1..c_i, x)`` for i = 0..N, ``(B, N + 1, D)``, from ``context`` ``(B, N, D)`` and
        ``query`` ``(B, D)``, in one pass whose cost is linear in N."""
        raise NotImplementedError(f"{type(self).__name__} must define prefixes(context, query)")

    def forward(
        self, context: torch.Tensor, query: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A(S, x)`` ``(B, D)``: S = all of C (``keep`` None), or the tokens a bool ``keep``
        ``(B, N)`` marks; ``keep`` ``(B, S, N)`` gives S subsets at once, ``(B, S, D)``.

        A subset is read as the prefix of its tokens moved to the front in their order
        (:meth:`prefixes` on the compacted context): exact for any layer, O(N) per subset.
        """
        if keep is None:
            return self.prefixes(context, query)[:, -1]
        masks = keep if keep.ndim == 3 else keep.unsqueeze(1)  # (B, S, N)
        B, S, N = masks.shape
        order = (~masks).to(torch.uint8).argsort(dim=-1, stable=True)  # kept tokens first
        D = context.shape[-1]
        kept = (
            context.unsqueeze(1)
            .expand(B, S, N, D)
            .gather(2, order.unsqueeze(-1).expand(-1, -1, -1, D))
        )
        out = self.prefixes(kept.flatten(0, 1), query.repeat_interleave(S, 0))  # (B S, N + 1, D)
        count = masks.sum(-1).flatten()[:, None, None].expand(-1, 1, D)
        out = out.gather(1, count).reshape(B, S, D)
        return out if keep.ndim == 3 else out.squeeze(1)

    def alone(self, query: torch.Tensor) -> torch.Tensor:
        """``A(x)`` ``(B, D)``: the layer on the query alone (prefix i = 0)."""
        return self.prefixes(query.new_zeros(len(query), 0, query.shape[-1]), query)[:, 0]

    def context_only(self, context: torch.Tensor) -> torch.Tensor:
        """Every context token read as a query over the context alone, ``(B, N, D)`` (blocks
        1..K-1 of a stack map the context tokens with it; the query is never seen)."""
        raise NotImplementedError(
            f"{type(self).__name__} defines no context_only(context): a stack of num_blocks > 1 "
            "needs it; use num_blocks=1 or define it"
        )


class RecurrentLayer(ContextualLayer):
    """A causal recurrence ``h_t = step(h_{t-1}, e^_t)``, ``h_0`` its initial state, read
    through ``a = out(h, e^)`` at the token it has just consumed (``e^ = LN_1(e)``)::

        A(c_1..c_i, x) = LN_2(e_q + out(step(h_i, e^_q), e^_q))

    A subclass defines :meth:`states` (``h_0..h_N`` from one scan over C: a fused torch module
    or a chunked scan), :meth:`read` (one step from a batch of states on a token, then
    ``out``) and :meth:`outputs` (``out`` after every token of a sequence, one fused pass).
    Context token i of a stack reads ``A(c_1..c_{i-1}, c_i)``, the recurrence's own output.
    """

    def states(self, tokens: torch.Tensor):
        """``h_0..h_N`` ``(B, N + 1, ...)`` (a tensor, or a tuple of them) for normalised
        context tokens ``(B, N, D)``."""
        raise NotImplementedError

    def read(self, states, tokens: torch.Tensor) -> torch.Tensor:
        """``out(step(h, e^), e^)`` ``(B, T, D)`` for states ``(B, T, ...)`` and normalised
        tokens ``(B, 1, D)`` (or ``(B, T, D)``)."""
        raise NotImplementedError

    def outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``out(h_t, e^_t)`` after every token of a sequence ``(B, T, D)`` -> ``(B, T, D)``."""
        raise NotImplementedError

    def last_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """``out(h_T, e^_T)`` at the last token of a sequence ``(B, T, D)`` -> ``(B, D)`` (a
        subclass with a closed form for the last state alone overrides it)."""
        return self.outputs(tokens)[:, -1]

    def forward(
        self, context: torch.Tensor, query: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A(S, x)`` as :meth:`ContextualLayer.forward`; for all of C one pass over the
        sequence ``[c_1, ..., c_N, x]``, read at its last token (:meth:`last_output`)."""
        if keep is not None:
            return super().forward(context, query, keep)
        tokens = self.norm_in(torch.cat([context, query.unsqueeze(1)], dim=1))
        return self._finish(self.last_output(tokens), query)

    def prefixes(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``A(c_1..c_i, x)`` for i = 0..N: the states ``h_0..h_N`` from one scan over C, then
        one batched step of all N + 1 of them on x, ``(B, N + 1, D)``."""
        states = self.states(self.norm_in(context))
        return self._finish(self.read(states, self.norm_in(query).unsqueeze(1)), query.unsqueeze(1))

    def context_only(self, context: torch.Tensor) -> torch.Tensor:
        """``A(c_1..c_{i-1}, c_i)`` for every i, ``(B, N, D)``: the recurrence's outputs."""
        if context.shape[1] == 0:  # nothing to read (torch's RNNs refuse empty sequences)
            return context
        return self._finish(self.outputs(self.norm_in(context)), context)
