"""Garg et al. (2022)'s function classes, beside paper A's linear regression.

Inputs are ``N(0, r^2 I_d)`` by default (Garg et al.), or paper A's ``U(-r/2, r/2)^d``
(``input_distribution="uniform"``); task weights ``w ~ N(0, s^2 I_d)``. Every sampler draws
N + 1 points per task on ``generator.device`` from ``generator`` alone and splits off the last
as the query. Sparse linear regression and the two-layer ReLU network are
:class:`~icl_lightning.data.SparseLinear` and :class:`~icl_lightning.data.ReLUNetwork`.
"""

import math
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt

from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.seeding import drawn_by
from icl_lightning.data.tasks import LinearRegression

Distribution = Literal["uniform", "normal"]


def _split(x: torch.Tensor, y: torch.Tensor) -> ICLBatch:
    return ICLBatch(x[:, :-1], y[:, :-1], x[:, -1], y[:, -1])


class _GargTask(LinearRegression):
    """A task of Garg et al.: normal inputs by default, ``y = f_w(x)`` from per-task weights."""

    def __init__(
        self,
        input_dim: PositiveInt = 20,
        input_distribution: Distribution = "normal",
        input_range: PositiveFloat = 1.0,
        weight_scale: PositiveFloat = 1.0,
        noise_std: NonNegativeFloat = 0.0,
    ) -> None:
        super().__init__(input_dim, input_distribution, input_range, weight_scale, noise_std)

    def targets(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(B, N+1)`` noiseless targets of inputs ``(B, N+1, d)`` for weights ``(B, d)``."""
        raise NotImplementedError

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        kw = drawn_by(generator, dtype)
        x = self.sample_inputs((batch_size, num_context + 1, self.input_dim), generator, dtype)
        w = self.weight_scale * torch.randn(batch_size, self.input_dim, **kw)
        y = self.targets(x, w)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, **kw)
        return _split(x, y)


class NoisyLinearRegression(_GargTask):
    """Garg et al.'s noisy linear regression: ``y = c (<w, x> + eps)``, ``eps ~ N(0, sigma^2)``.

    ``c = 1``, or with ``renormalize`` ``c = sqrt(d / E (<w, x> + eps)^2)`` so that
    ``E y^2 = d`` as for noiseless linear regression (Garg et al. divide by the batch's sample
    std instead; the expectation makes a prompt independent of the others in its batch).

    Args:
        input_dim: d.
        input_distribution: ``"normal"`` (Garg et al.) or ``"uniform"`` (paper A).
        input_range: r (the std of normal inputs, the width of uniform ones).
        weight_scale: s, the std of the weights.
        noise_std: sigma (Garg et al.'s shifted prompt: 1).
        renormalize: rescale the targets to ``E y^2 = d``.
    """

    def __init__(
        self,
        input_dim: PositiveInt = 20,
        input_distribution: Distribution = "normal",
        input_range: PositiveFloat = 1.0,
        weight_scale: PositiveFloat = 1.0,
        noise_std: NonNegativeFloat = 1.0,
        renormalize: bool = False,
    ) -> None:
        super().__init__(input_dim, input_distribution, input_range, weight_scale, noise_std)
        self.renormalize = bool(renormalize)

    @property
    def output_scale(self) -> float:
        """c: 1, or ``sqrt(d / (d s^2 v + sigma^2))`` with v the variance of an input coordinate."""
        if not self.renormalize:
            return 1.0
        d, s, v = self.input_dim, self.weight_scale, self.input_variance
        return math.sqrt(d / (d * s**2 * v + self.noise_std**2))

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        batch = super().sample(batch_size, num_context, generator, dtype)
        c = self.output_scale
        return (
            batch
            if c == 1.0
            else ICLBatch(batch.context_x, c * batch.context_y, batch.query_x, c * batch.query_y)
        )

    def targets(self, x, w):
        return torch.einsum("bnd,bd->bn", x, w)


class LinearClassification(_GargTask):
    """Garg et al.'s linear classification: ``y = sign(<w, x>)`` in {-1, +1} (trained here, as
    every task, on the squared error; Garg et al. train it on the logistic loss)."""

    def targets(self, x, w):
        return torch.einsum("bnd,bd->bn", x, w).sign()


class QuadraticRegression(_GargTask):
    """Garg et al.'s quadratic regression: ``y = <w, x * x> / sqrt(3)`` (elementwise square;
    for ``x ~ N(0, I)``, ``E y^2 = d`` as for linear regression)."""

    def targets(self, x, w):
        return torch.einsum("bnd,bd->bn", x * x, w) / math.sqrt(3)


class DecisionTree(_GargTask):
    """Garg et al.'s decision trees: a full binary tree of depth D per task; each inner node
    splits on the sign of one coordinate ``x_j`` (j uniform in 1..d, drawn per node: right
    when ``x_j > 0``), each of the ``2^D`` leaves holds a value ``~ N(0, s^2)``.

    Nodes are numbered as a heap (root 0, children of node n are ``2n + 1`` and ``2n + 2``);
    an input walks D levels, ``n <- 2n + 1 + [x_{j_n} > 0]``, and ``y`` is the value of its leaf.

    Args:
        input_dim: d.
        depth: D (Garg et al.: 4).
        input_distribution: ``"normal"`` (Garg et al.) or ``"uniform"`` (paper A).
        input_range: r.
        weight_scale: s, the std of the leaf values (Garg et al.: 1).
    """

    def __init__(
        self,
        input_dim: PositiveInt = 20,
        depth: PositiveInt = 4,
        input_distribution: Distribution = "normal",
        input_range: PositiveFloat = 1.0,
        weight_scale: PositiveFloat = 1.0,
    ) -> None:
        super().__init__(input_dim, input_distribution, input_range, weight_scale)
        require(1 <= depth <= 16, "depth", depth, "an integer in 1..16")
        self.depth = int(depth)

    def sample(self, batch_size, num_context, generator, dtype=torch.float32) -> ICLBatch:
        B, D = batch_size, self.depth
        x = self.sample_inputs((B, num_context + 1, self.input_dim), generator, dtype)
        inner, leaves = 2**D - 1, 2**D
        coords = torch.randint(0, self.input_dim, (B, inner), generator=generator, device=x.device)
        values = self.weight_scale * torch.randn(B, leaves, **drawn_by(generator, dtype))
        right = x > 0  # (B, N+1, d)
        node = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        for _ in range(D):
            j = coords.gather(1, node)  # (B, N+1): the coordinate each point's node splits on
            node = 2 * node + 1 + right.gather(2, j[..., None])[..., 0].long()
        return _split(x, values.gather(1, node - inner))
