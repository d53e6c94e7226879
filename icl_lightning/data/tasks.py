"""Task samplers: each draws a batch of tasks and one prompt per task.

A new task is a small subclass of :class:`TaskSampler` that implements :meth:`sample`; name it
by ``class_path`` in a config's ``data.init_args.task``.
"""

import copy
from abc import ABC, abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt

from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.seeding import drawn_by


class TaskSampler(ABC):
    """Draws regression prompts; subclasses define the task distribution.

    Args:
        input_dim: dimension d of every input x.
    """

    def __init__(self, input_dim: PositiveInt = 10) -> None:
        require(input_dim >= 1, "input_dim", input_dim, "an integer >= 1")
        self.input_dim = int(input_dim)  # plain int: it is linked into saved hparams

    @abstractmethod
    def sample(
        self,
        batch_size: int,
        num_context: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> ICLBatch:
        """Draw ``batch_size`` tasks and for each a prompt of ``num_context`` points and a query.

        All tensors are created on ``generator.device`` from ``generator`` alone, so the batch is
        a pure function of the generator's state.
        """

    def sample_in_subspace(
        self,
        batch_size: int,
        num_context: int,
        active_dim: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> ICLBatch:
        """Prompts whose inputs live in the first ``active_dim`` coordinates (curriculum).

        The task is drawn at dimension ``active_dim`` and its inputs are padded with zeros to
        ``input_dim``: ``x = (x_1..x_k, 0..0)``, as Garg et al. (2022) truncate the dimension.
        For ``active_dim == input_dim`` this is :meth:`sample`.
        """
        if active_dim == self.input_dim:
            return self.sample(batch_size, num_context, generator, dtype)
        task = copy.copy(self)
        task.input_dim = active_dim
        batch = task.sample(batch_size, num_context, generator, dtype)
        pad = (0, self.input_dim - active_dim)
        return ICLBatch(
            F.pad(batch.context_x, pad), batch.context_y, F.pad(batch.query_x, pad), batch.query_y
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearRegression(TaskSampler):
    """Noisy linear tasks ``y = <w, x> + eps``.

    ``w ~ N(0, weight_scale^2 I_d)`` per task; ``eps ~ N(0, noise_std^2)``. Inputs are
    ``U(-r/2, r/2)^d`` with ``r = input_range`` (paper A's code) or ``N(0, input_range^2 I_d)``
    (paper B, ``input_distribution="normal"``).

    Args:
        input_dim: dimension d of x.
        input_distribution: ``"uniform"`` (paper A) or ``"normal"`` (paper B).
        input_range: r, the width of the uniform box (or the std of the normal inputs).
        weight_scale: std s of the task weights.
        noise_std: std of the output noise (0: noiseless, as both papers).
    """

    def __init__(
        self,
        input_dim: PositiveInt = 10,
        input_distribution: Literal["uniform", "normal"] = "uniform",
        input_range: PositiveFloat = 1.0,
        weight_scale: PositiveFloat = 1.0,
        noise_std: NonNegativeFloat = 0.0,
    ) -> None:
        super().__init__(input_dim)
        require(
            input_distribution in ("uniform", "normal"),
            "input_distribution",
            input_distribution,
            "'uniform' or 'normal'",
        )
        require(input_range > 0, "input_range", input_range, "a number > 0")
        require(weight_scale > 0, "weight_scale", weight_scale, "a number > 0")
        require(noise_std >= 0, "noise_std", noise_std, "a number >= 0")
        self.input_distribution = input_distribution
        self.input_range = input_range
        self.weight_scale = weight_scale
        self.noise_std = noise_std

    @property
    def input_variance(self) -> float:
        """The variance of one input coordinate: ``r^2 / 12`` (uniform) or ``r^2`` (normal)."""
        r2 = self.input_range**2
        return r2 / 12 if self.input_distribution == "uniform" else r2

    def sample_inputs(self, shape: tuple[int, ...], generator, dtype) -> torch.Tensor:
        """Inputs of the given shape: ``U(-r/2, r/2)`` or ``N(0, r^2)``, drawn in place."""
        x = torch.empty(shape, device=generator.device, dtype=dtype)
        if self.input_distribution == "uniform":
            return x.uniform_(-self.input_range / 2, self.input_range / 2, generator=generator)
        return x.normal_(0.0, self.input_range, generator=generator)

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        B, N, d = batch_size, num_context, self.input_dim
        kw = drawn_by(generator, dtype)
        x = self.sample_inputs((B, N + 1, d), generator, dtype)
        w = torch.randn(B, d, 1, **kw).mul_(self.weight_scale)
        y = (x @ w).squeeze(-1)  # <w, x_i> for all N + 1 points, (B, N + 1)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(B, N + 1, **kw)
        return ICLBatch(x[:, :N], y[:, :N], x[:, N], y[:, N])
