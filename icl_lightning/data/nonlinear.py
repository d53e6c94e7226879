"""Tasks beyond linear regression (paper A, "beyond linear"; Garg et al. 2022).

Each sampler is a small :class:`TaskSampler` subclass: draw the task parameters per prompt, draw
N + 1 inputs, evaluate the task, split off the last point as the query. Everything is batched
over tasks and drawn on ``generator.device`` from ``generator`` alone.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat, PositiveInt

from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.seeding import drawn_by
from icl_lightning.data.tasks import LinearRegression, TaskSampler


def _split(x: torch.Tensor, y: torch.Tensor) -> ICLBatch:
    """``(B, N+1, d)`` inputs and ``(B, N+1)`` targets -> a prompt batch (last point = query)."""
    return ICLBatch(x[:, :-1], y[:, :-1], x[:, -1], y[:, -1])


class Sine(TaskSampler):
    """Paper A's sine task: ``y = a sin(x + phi)``, one-dimensional.

    Per task ``a ~ U(amplitude_min, amplitude_max)`` and ``phi ~ U(0, phase_max)``; inputs
    ``x ~ U(-r/2, r/2)`` with ``r = input_range``. Paper A: ``a ~ U(0.1, 0.5)``,
    ``phi ~ U(0, pi)``, ``x ~ U(-5, 5)``, N = 10.

    Args:
        amplitude_min: lower end of the amplitude range.
        amplitude_max: upper end of the amplitude range.
        phase_max: phases are ``U(0, phase_max)``.
        input_range: r, the width of the input interval centred on 0.
    """

    def __init__(
        self,
        amplitude_min: PositiveFloat = 0.1,
        amplitude_max: PositiveFloat = 0.5,
        phase_max: PositiveFloat = math.pi,
        input_range: PositiveFloat = 10.0,
    ) -> None:
        super().__init__(input_dim=1)
        require(
            0 < amplitude_min <= amplitude_max,
            "amplitude_max",
            amplitude_max,
            f"a number >= amplitude_min={amplitude_min} > 0",
        )
        require(phase_max > 0, "phase_max", phase_max, "a number > 0")
        require(input_range > 0, "input_range", input_range, "a number > 0")
        self.amplitude_min = float(amplitude_min)
        self.amplitude_max = float(amplitude_max)
        self.phase_max = float(phase_max)
        self.input_range = float(input_range)

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        kw = drawn_by(generator, dtype)
        low, high = self.amplitude_min, self.amplitude_max
        a = low + (high - low) * torch.rand(batch_size, 1, **kw)
        phi = self.phase_max * torch.rand(batch_size, 1, **kw)
        x = self.input_range * (torch.rand(batch_size, num_context + 1, 1, **kw) - 0.5)
        return _split(x, a * torch.sin(x[..., 0] + phi))


class ReLUNetwork(TaskSampler):
    """Garg et al.'s two-layer ReLU network task: ``y = sum_j a_j relu(<w_j, x>)``.

    Per task ``w_j ~ N(0, I_d)`` and ``a_j ~ N(0, 2 / hidden_dim)`` for ``j = 1..hidden_dim``;
    inputs ``x ~ N(0, I_d)``. Then ``E y = 0`` and ``E y^2 = d``.

    Args:
        input_dim: d.
        hidden_dim: width of the random network (Garg et al.: 100).
    """

    def __init__(self, input_dim: PositiveInt = 10, hidden_dim: PositiveInt = 100) -> None:
        super().__init__(input_dim)
        require(hidden_dim >= 1, "hidden_dim", hidden_dim, "an integer >= 1")
        self.hidden_dim = int(hidden_dim)

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        B, N, d, k = batch_size, num_context, self.input_dim, self.hidden_dim
        kw = drawn_by(generator, dtype)
        w = torch.randn(B, k, d, **kw)
        a = math.sqrt(2 / k) * torch.randn(B, k, **kw)
        x = torch.randn(B, N + 1, d, **kw)
        return _split(x, torch.einsum("bnk,bk->bn", F.relu(x @ w.transpose(1, 2)), a))


class SparseLinear(LinearRegression):
    """Sparse linear tasks ``y = <w, x> + eps`` with exactly k non-zero weights.

    Per task, k of the d positions are chosen uniformly without replacement and hold
    ``N(0, weight_scale^2)`` entries; the others are 0. Inputs and noise as
    :class:`LinearRegression`, but normal inputs by default (Garg et al.).

    Args:
        input_dim: d.
        num_nonzero: k, non-zero weights per task (``1 <= k <= d``).
        input_distribution: as :class:`LinearRegression`, but ``"normal"`` by default.
        **options: :class:`LinearRegression`'s ``input_range``, ``weight_scale``, ``noise_std``.
    """

    def __init__(
        self,
        input_dim: PositiveInt = 10,
        num_nonzero: PositiveInt = 3,
        input_distribution: Literal["uniform", "normal"] = "normal",
        **options,
    ) -> None:
        super().__init__(input_dim, input_distribution, **options)
        require(1 <= num_nonzero <= input_dim, "num_nonzero", num_nonzero, f"1..{input_dim}")
        self.num_nonzero = int(num_nonzero)

    def sample_weights(self, batch_size: int, generator, dtype=torch.float32) -> torch.Tensor:
        """``(B, d)`` weights: k random positions (the k smallest of d uniforms) kept."""
        kw = drawn_by(generator, dtype)
        w = self.weight_scale * torch.randn(batch_size, self.input_dim, **kw)
        ranks = torch.rand(batch_size, self.input_dim, **kw).argsort(-1).argsort(-1)
        return w * (ranks < self.num_nonzero)

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        x = self.sample_inputs((batch_size, num_context + 1, self.input_dim), generator, dtype)
        y = torch.einsum("bnd,bd->bn", x, self.sample_weights(batch_size, generator, dtype))
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, **drawn_by(generator, dtype))
        return _split(x, y)
