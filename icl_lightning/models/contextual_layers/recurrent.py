"""Recurrent contextual layers on torch's fused modules: Elman RNN (tanh), GRU and LSTM.

With normalised tokens ``e^ = LN_1(e)`` and the state ``h_t`` of size S from ``h_0 = 0``::

    Elman:  h_t = tanh(W_ih e^_t + b_ih + W_hh h_{t-1} + b_hh)                  (nn.RNN)
    GRU:    nn.GRU's gated update of h_t                                       (nn.GRU)
    LSTM:   nn.LSTM's (h_t, c_t), c_t = f_t * c_{t-1} + i_t * g_t               (nn.LSTM)
    a(c_1..c_i, x) = W_out h' + b_out,   h' = step(h_i, e^_q)                 (read at the query)

so ``A(C, x)`` is one fused pass over ``[c_1, ..., c_N, x]`` read at its last token, and the
prefix outputs come from one fused pass over C (every ``h_i``) and one step of all N + 1 states
on x (the LSTM's fused; the RNN's and GRU's written out, with the input's part once per
prompt). nn.LSTM returns only ``h_t`` at every t; ``c_t`` follows exactly from the gates at the
known ``h_{t-1}`` by a chunked scan of ``c_t = f_t c_{t-1} + i_t g_t``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from icl_lightning.models.contextual_layers.base import RecurrentLayer
from icl_lightning.models.contextual_layers.scan import linear_scan
from icl_lightning.models.init import variance_scaling_


class ElmanRNN(RecurrentLayer):
    """Elman's RNN, ``h_t = tanh(W_ih e^_t + b_ih + W_hh h_{t-1} + b_hh)`` (``nn.RNN``); a
    subclass names another fused ``module`` with the state h (``nn.GRU``).

    Args:
        token_dim: D.
        state_size: S, the size of h (default D).
        residual, layer_norm: as :class:`~icl_lightning.models.contextual_layers.ContextualLayer`.
        init_scale: variance-scaling (fan-in) factor of the read-out ``W_out``; the cell keeps
            torch's initialisation.
    """

    module = nn.RNN

    def __init__(
        self,
        token_dim: int,
        state_size: int | None = None,
        residual: bool = True,
        layer_norm: bool = False,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__(token_dim, residual, layer_norm)
        S = state_size or token_dim
        self.cell = self.module(token_dim, S, batch_first=True)
        self.W_out = nn.Parameter(variance_scaling_(torch.empty(token_dim, S), init_scale, S))
        self.b_out = nn.Parameter(torch.zeros(token_dim))

    def _zeros(self, tokens: torch.Tensor) -> torch.Tensor:
        """``h_0 = 0`` of every prompt, ``(B, 1, S)``."""
        return tokens.new_zeros(len(tokens), 1, self.cell.hidden_size)

    def _scan(self, tokens: torch.Tensor) -> torch.Tensor:
        """``h_0..h_N`` ``(B, N + 1, S)``: one fused pass over the tokens."""
        if tokens.shape[1] == 0:
            return self._zeros(tokens)
        return torch.cat([self._zeros(tokens), self.cell(tokens)[0]], 1)

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._scan(tokens)

    def _gates(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``(W_hh h + b_hh, W_ih e^ + b_ih)`` of the cell for states ``(B, T, S)`` and tokens
        ``(B, 1, D)``: the input's part once per prompt, not once per state."""
        cell = self.cell
        hidden = F.linear(states, cell.weight_hh_l0, cell.bias_hh_l0)
        return hidden, F.linear(tokens, cell.weight_ih_l0, cell.bias_ih_l0)

    def _step(self, states, tokens: torch.Tensor) -> torch.Tensor:
        """``h' = tanh(W_ih e^ + b_ih + W_hh h + b_hh)`` ``(B, T, S)`` for every state h (nn.RNN's
        step, written out: the input's part is shared by a prompt's T states)."""
        hidden, inputs = self._gates(states, tokens)
        return torch.tanh(hidden + inputs)

    def read(self, states, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(self._step(states, tokens), self.W_out, self.b_out)

    def outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(self.cell(tokens)[0], self.W_out, self.b_out)

    def last_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """``W_out h_T + b_out``: the read-out of the last state alone."""
        return F.linear(self.cell(tokens)[0][:, -1], self.W_out, self.b_out)


class GRU(ElmanRNN):
    """The gated recurrent unit (``nn.GRU``); the options of :class:`ElmanRNN`."""

    module = nn.GRU

    def _step(self, states, tokens: torch.Tensor) -> torch.Tensor:
        """nn.GRU's step, written out for every state h (the input's part shared as in
        :meth:`ElmanRNN._step`): with gates ``[r, z, n]`` of ``W_ih e^ + b_ih`` (x) and of
        ``W_hh h + b_hh`` (y), ``r, z = sigmoid(x_rz + y_rz)``, ``n = tanh(x_n + r y_n)``,
        ``h' = (1 - z) n + z h``."""
        y, x = self._gates(states, tokens)
        S = states.shape[-1]
        r, z = torch.sigmoid(x[..., : 2 * S] + y[..., : 2 * S]).chunk(2, dim=-1)
        n = torch.tanh(torch.addcmul(x[..., 2 * S :], r, y[..., 2 * S :]))
        return torch.lerp(n, states, z)  # n + z (h - n)


class LSTM(ElmanRNN):
    """The LSTM (``nn.LSTM``), state ``(h_t, c_t)``; the options of :class:`ElmanRNN`."""

    module = nn.LSTM

    def states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_0..h_N, c_0..c_N)``: h from one fused pass; c from the gates
        ``[i, f, g] = W_ih e^_t + b_ih + W_hh h_{t-1} + b_hh`` (the output gate o is not
        needed) by the scan of ``c_t = sigmoid(f_t) c_{t-1} + sigmoid(i_t) tanh(g_t)``."""
        h = self._scan(tokens)
        cell, ifg = self.cell, slice(0, 3 * self.cell.hidden_size)
        weight = torch.cat([cell.weight_ih_l0[ifg], cell.weight_hh_l0[ifg]], 1)  # one product
        bias = cell.bias_ih_l0[ifg] + cell.bias_hh_l0[ifg]
        gates = F.linear(torch.cat([tokens, h[:, :-1]], -1), weight, bias)
        i, f, g = gates.chunk(3, dim=-1)
        c = linear_scan(torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g))
        return h, torch.cat([self._zeros(tokens), c], 1)

    def _step(self, states, tokens: torch.Tensor) -> torch.Tensor:
        """``h' = step((h, c), e^)`` ``(B, T, S)``: one fused step of the B T states (torch's
        LSTM kernel is faster than the step written out, although it repeats the input's
        part for every state)."""
        h, c = states
        B, T, S = h.shape
        u = tokens.expand(B, T, -1).reshape(B * T, 1, -1)
        initial = (h.reshape(1, B * T, S), c.reshape(1, B * T, S))
        return self.cell(u, initial)[0].reshape(B, T, S)
