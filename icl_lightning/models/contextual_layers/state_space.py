"""State-space contextual layers: a diagonal linear recurrence (S4D / LRU style) and its
selective, input-dependent (Mamba-style) variant. Both scan the context with
:func:`~icl_lightning.models.contextual_layers.scan.linear_scan` (no Python loop over tokens).

Diagonal (time-invariant), state ``h_t`` in R^S, normalised tokens ``e^ = LN_1(e)`` in R^D::

    h_t = Lambda * h_{t-1} + gamma * (B e^_t),    Lambda = exp(-exp(nu)) in (0, 1)^S,
    y_t = C h_t + E * e^_t,                        gamma = sqrt(1 - Lambda^2)

(Lambda stable for any nu; gamma keeps ``h`` of the inputs' size, as the LRU's normalisation).

Selective (per channel j = 1..D a state ``h_t[j]`` in R^S, with input-dependent step, input and
read-out maps)::

    Delta_t = softplus(W_Delta e^_t + b_Delta),  B_t = W_B e^_t,  C_t = W_C e^_t
    h_t[j] = exp(Delta_t[j] A[j]) * h_{t-1}[j] + Delta_t[j] e^_t[j] B_t,   A = -exp(A_log)
    y_t[j] = C_t . h_t[j] + E[j] e^_t[j]

Both are read at the query: ``a(c_1..c_i, x) = y`` after the step from ``h_i`` on ``e^_q``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from icl_lightning.models.contextual_layers.base import RecurrentLayer
from icl_lightning.models.contextual_layers.scan import linear_scan
from icl_lightning.models.init import variance_scaling_


class DiagonalSSM(RecurrentLayer):
    """The diagonal linear recurrence (module doc).

    Args:
        token_dim: D.
        state_size: S (default 16).
        residual, layer_norm: as :class:`~icl_lightning.models.contextual_layers.ContextualLayer`.
        init_scale: variance-scaling (fan-in) factor of B and C.
        decay: the range of the initial Lambda (uniform in it; the LRU's ring 0.9..0.999).
    """

    def __init__(
        self,
        token_dim: int,
        state_size: int | None = None,
        residual: bool = True,
        layer_norm: bool = False,
        init_scale: float = 1.0,
        decay: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__(token_dim, residual, layer_norm)
        S = state_size or 16
        Lambda = torch.empty(S).uniform_(*decay)
        self.nu = nn.Parameter(torch.log(-torch.log(Lambda)))
        self.B = nn.Parameter(variance_scaling_(torch.empty(S, token_dim), init_scale, token_dim))
        self.C = nn.Parameter(variance_scaling_(torch.empty(token_dim, S), init_scale, S))
        self.E = nn.Parameter(torch.zeros(token_dim))

    def _inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Lambda, gamma * B e^_t)``, shapes ``(S,)`` and ``(B, T, S)``."""
        Lambda = torch.exp(-torch.exp(self.nu))
        return Lambda, F.linear(tokens, self.B) * torch.sqrt(1 - Lambda**2)

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        Lambda, b = self._inputs(tokens)
        return F.pad(linear_scan(Lambda, b), (0, 0, 1, 0))  # h_0 = 0 first

    def _out(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.C) + self.E * tokens

    def read(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        Lambda, b = self._inputs(tokens)
        return self._out(torch.addcmul(b, Lambda, states), tokens)

    def outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._out(linear_scan(*self._inputs(tokens)), tokens)

    def last_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """``y_T`` from ``h_T = gamma * sum_t Lambda^(T - t) B e^_t`` with no scan and no
        ``(B, T, S)`` tensor: ``h_T[s] = gamma_s sum_D B[s, D] M[s, D]``, where
        ``M[s, D] = sum_t Lambda_s^(T - t) e^_t[D]`` is one product ``(S, T) @ (T, D)`` per
        prompt."""
        T = tokens.shape[1]
        powers = torch.arange(T - 1, -1, -1, dtype=tokens.dtype, device=tokens.device)
        Lambda, log_Lambda = torch.exp(-torch.exp(self.nu)), -torch.exp(self.nu)
        M = torch.exp(log_Lambda[:, None] * powers) @ tokens  # (B, S, D)
        h = (M * self.B).sum(-1) * torch.sqrt(1 - Lambda**2)  # gamma * (B M)
        return self._out(h, tokens[:, -1])


class SelectiveSSM(RecurrentLayer):
    """The selective (input-dependent) diagonal recurrence (module doc).

    Args:
        token_dim: D, the channels.
        state_size: S per channel (default 16).
        residual, layer_norm: as :class:`~icl_lightning.models.contextual_layers.ContextualLayer`.
        init_scale: variance-scaling (fan-in) factor of ``W_Delta``, ``W_B`` and ``W_C``.
        step: the range of the initial step ``Delta`` (log-uniform in it, as Mamba's).
    """

    def __init__(
        self,
        token_dim: int,
        state_size: int | None = None,
        residual: bool = True,
        layer_norm: bool = False,
        init_scale: float = 1.0,
        step: tuple[float, float] = (0.001, 0.1),
    ) -> None:
        super().__init__(token_dim, residual, layer_norm)
        S, D = state_size or 16, token_dim
        self.A_log = nn.Parameter(torch.log(torch.arange(1, S + 1.0)).repeat(D, 1))  # A = -(1..S)
        self.W_Delta = nn.Parameter(variance_scaling_(torch.empty(D, D), 0.01 * init_scale, D))
        Delta = torch.exp(torch.empty(D).uniform_(math.log(step[0]), math.log(step[1])))
        self.b_Delta = nn.Parameter(Delta + torch.log(-torch.expm1(-Delta)))  # softplus^-1
        self.W_B = nn.Parameter(variance_scaling_(torch.empty(S, D), init_scale, D))
        self.W_C = nn.Parameter(variance_scaling_(torch.empty(S, D), init_scale, D))
        self.E = nn.Parameter(torch.ones(D))

    def _inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(exp(Delta_t A), Delta_t e^_t B_t, C_t)``: ``(B, T, D, S)`` twice and ``(B, T, S)``."""
        Delta = F.softplus(F.linear(tokens, self.W_Delta, self.b_Delta))  # (B, T, D)
        a = torch.exp(-Delta.unsqueeze(-1) * torch.exp(self.A_log))
        b = (Delta * tokens).unsqueeze(-1) * F.linear(tokens, self.W_B).unsqueeze(-2)
        return a, b, F.linear(tokens, self.W_C)

    def _out(self, h: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``y[j] = C . h[j] + E[j] e^[j]``, ``(B, T, D)``."""
        return (h @ C.unsqueeze(-1)).squeeze(-1) + self.E * tokens

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        a, b, _ = self._inputs(tokens)
        return F.pad(linear_scan(a, b), (0, 0, 0, 0, 1, 0))  # h_0 = 0 first, (B, N + 1, D, S)

    def read(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        a, b, C = self._inputs(tokens)
        return self._out(torch.addcmul(b, a, states), C, tokens)

    def outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        a, b, C = self._inputs(tokens)
        return self._out(linear_scan(a, b), C, tokens)

    def last_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """``y_T`` from ``h_T[j] = sum_t exp(L_t[j] A[j]) B_t Delta_t[j] e^_t[j]`` with
        ``L_t = sum_{r > t} Delta_r`` (the exponents are <= 0: no overflow): the suffix sums run
        over ``(B, T, D)``, then per prompt and channel j one exponential of ``(S, T)``, times
        ``B_t``, applied to the vector ``Delta_t[j] e^_t[j]`` over t (no scan)."""
        Delta = F.softplus(F.linear(tokens, self.W_Delta, self.b_Delta))  # (B, T, D)
        later = F.pad(Delta[:, 1:].flip(1).cumsum(1).flip(1), (0, 0, 0, 1))  # L_t, L_T = 0
        A = -torch.exp(self.A_log).unsqueeze(-1)  # (D, S, 1)
        decay = torch.mul(later.transpose(1, 2).unsqueeze(2), A).exp_()  # (B, D, S, T)
        B_t = F.linear(tokens, self.W_B).transpose(1, 2).unsqueeze(1)  # (B, 1, S, T)
        u = (Delta * tokens).transpose(1, 2).unsqueeze(-1)  # (B, D, T, 1)
        h = ((decay * B_t) @ u).squeeze(-1)  # (B, D, S)
        return self._out(h, F.linear(tokens[:, -1], self.W_C), tokens[:, -1])
