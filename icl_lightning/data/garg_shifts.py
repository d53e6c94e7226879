"""Curve prompts and Garg et al. (2022)'s shifted prompts (their section 4, ``eval.py``).

A loss-against-k curve needs, for every prefix length k = 0..K, the first k points of a prompt
and a query: :class:`CurvePrompts` holds the points ``xs, ys`` and one query per k,
``qs, qys`` (the next point of the prompt, ``qs = xs``, unless a shift says otherwise).

Shifts (Garg et al.'s names in brackets), on the task's own inputs and targets:

- ``standard``: none;
- ``skewed`` (skewed): ``x <- S x``, ``S = U diag(lam) U^T`` with U a random rotation and
  ``lam_i = 1/i``, normalised to ``|lam|^2 = d``;
- ``half_subspace`` (half_subspace): as skewed with ``lam = (1, .., 1, 0, .., 0)`` (d/2 ones):
  the inputs live in a random d/2-dimensional subspace;
- ``scale_x`` (scale-x): ``x <- c x``; ``scale_y`` (scale-y): ``y <- c y``;
- ``noisy_outputs`` (noisyLR): ``y <- (y + eps) sqrt(m / (m + 1))``, ``eps ~ N(0, 1)``, m the mean
  ``y^2`` of the set (Garg et al. renormalise by the batch's std to the same end);
- ``random_quadrants``: the context inputs ``|x| * s`` with one random sign pattern s per
  prompt (one orthant), the queries the original ``x``;
- ``orthogonal_train_test``: the query ``q_k`` is ``x_k`` made orthogonal to ``x_1..x_k``'s
  span and rescaled to ``|x_k|`` (0 from k = d on, as their code);
- ``overlapping_train_test``: the query ``q_k`` is one of the k context inputs at random.

Input shifts need a task that draws its inputs by ``sample_inputs`` (every
:class:`~icl_lightning.data.LinearRegression` subclass).
"""

import copy
import math
from dataclasses import dataclass, fields
from typing import Literal

import torch

from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.seeding import drawn_by
from icl_lightning.data.tasks import TaskSampler

Shift = Literal[
    "standard",
    "skewed",
    "half_subspace",
    "scale_x",
    "scale_y",
    "noisy_outputs",
    "random_quadrants",
    "orthogonal_train_test",
    "overlapping_train_test",
]
SHIFTS: tuple[str, ...] = Shift.__args__
#: shifts whose queries are not the prompt's own next points
_OWN_QUERIES = ("random_quadrants", "orthogonal_train_test", "overlapping_train_test")


@dataclass
class CurvePrompts:
    """Prompts for a curve over k: points ``xs (B, K+1, d)``, ``ys (B, K+1)``; queries
    ``qs (B, K+1, d)``, ``qys (B, K+1)``: the prediction after k points is for ``qs[:, k]``."""

    xs: torch.Tensor
    ys: torch.Tensor
    qs: torch.Tensor
    qys: torch.Tensor

    @classmethod
    def from_batch(cls, batch: ICLBatch) -> "CurvePrompts":
        """The standard curve of a prompt batch: the query after k points is point k + 1."""
        xs = torch.cat([batch.context_x, batch.query_x[:, None]], 1)
        ys = torch.cat([batch.context_y, batch.query_y[:, None]], 1)
        return cls(xs, ys, xs, ys)

    @property
    def own_queries(self) -> bool:
        """Whether the queries differ from the prompt's next points."""
        return self.qs is not self.xs

    @property
    def query_y(self) -> torch.Tensor:  # the probe machinery reads the device from it
        return self.qys

    def __len__(self) -> int:
        return self.xs.shape[0]

    def _map(self, fn) -> "CurvePrompts":
        mapped = {f.name: fn(getattr(self, f.name)) for f in fields(self)}
        if not self.own_queries:  # keep qs is xs: the model's curve then takes one pass
            mapped["qs"], mapped["qys"] = mapped["xs"], mapped["ys"]
        return CurvePrompts(**mapped)

    def to(self, *args, **kwargs) -> "CurvePrompts":
        return self._map(lambda t: t.to(*args, **kwargs))

    def __getitem__(self, index) -> "CurvePrompts":
        return self._map(lambda t: t[index])

    def split(self, size: int) -> list["CurvePrompts"]:
        return [self[i : i + size] for i in range(0, len(self), size)]


def _rotation(d: int, generator, dtype) -> torch.Tensor:
    """A random orthogonal ``(d, d)`` matrix (Q of the QR of a Gaussian matrix)."""
    q, r = torch.linalg.qr(torch.randn(d, d, **drawn_by(generator, torch.float64)))
    return (q * r.diagonal().sign()).to(dtype)


def _transformation(shift: str, d: int, generator, dtype) -> torch.Tensor:
    """``S = U diag(lam) U^T`` of Garg et al.'s ``sample_transformation(normalize=True)``."""
    if shift == "skewed":
        lam = 1 / torch.arange(1, d + 1, dtype=torch.float64)
    else:
        lam = (torch.arange(d) < d // 2).double()
    lam = lam * math.sqrt(d / float((lam**2).sum()))
    U = _rotation(d, generator, torch.float64)
    return ((U * lam.to(U.device)) @ U.T).to(dtype)


def _queries(shift: str, x: torch.Tensor, generator) -> torch.Tensor:
    """``(B, K+1, d)`` inputs: the context points (first K+1) and their queries (last K+1)."""
    B, K1, d = x.shape
    if shift == "random_quadrants":
        signs = torch.randn(B, 1, d, **drawn_by(generator, x.dtype)).sign()
        return torch.cat([x.abs() * signs, x], 1)
    if shift == "orthogonal_train_test":
        q = torch.zeros_like(x)
        for k in range(min(K1, d)):
            u = x[:, k]
            if k > 0:  # minus its projection on the span of x_0..x_{k-1}
                basis = torch.linalg.qr(x[:, :k].mT.double()).Q.to(x.dtype)  # (B, d, k)
                u = u - (basis @ (basis.mT @ u[..., None]))[..., 0]
            q[:, k] = u * (x[:, k].norm(dim=-1) / u.norm(dim=-1))[:, None]
        return torch.cat([x, q], 1)
    # overlapping_train_test: q_k = x_j, j uniform in 0..k-1 (q_0 = x_0)
    k = torch.arange(K1, device=x.device).clamp_min(1)
    j = (torch.rand(B, K1, **drawn_by(generator, torch.float64)) * k).long()
    return torch.cat([x, x.gather(1, j[..., None].expand(-1, -1, d))], 1)


def shifted_prompts(
    task: TaskSampler,
    shift: Shift,
    num_tasks: int,
    num_context: int,
    generator: torch.Generator,
    scale: float = 2.0,
    dtype: torch.dtype = torch.float32,
) -> CurvePrompts:
    """``num_tasks`` curve prompts of ``num_context + 1`` points of ``task`` under ``shift``
    (module docstring); ``scale`` is c of ``scale_x`` and ``scale_y``."""
    require(shift in SHIFTS, "shift", shift, f"one of {', '.join(SHIFTS)}")
    K = num_context
    if shift in ("standard", "scale_y", "noisy_outputs"):
        prompts = CurvePrompts.from_batch(task.sample(num_tasks, K, generator, dtype))
        if shift == "scale_y":
            prompts = CurvePrompts(prompts.xs, scale * prompts.ys, prompts.xs, scale * prompts.ys)
        elif shift == "noisy_outputs":
            m = float(prompts.ys.square().mean())
            noisy = prompts.ys + torch.randn(prompts.ys.shape, **drawn_by(generator, dtype))
            noisy = noisy * math.sqrt(m / (m + 1))
            prompts = CurvePrompts(prompts.xs, noisy, prompts.xs, noisy)
        return prompts
    require(
        callable(getattr(task, "sample_inputs", None)),
        "shift",
        shift,
        f"'standard', 'scale_y' or 'noisy_outputs' for a {type(task).__name__}: input shifts "
        "need a task that draws its inputs by sample_inputs (a LinearRegression subclass)",
    )
    draw, d = task.sample_inputs, task.input_dim
    shifted = copy.copy(task)
    if shift in _OWN_QUERIES:
        shifted.sample_inputs = lambda shape, g, dt: _queries(
            shift, draw((shape[0], K + 1, d), g, dt), g
        )
        batch = shifted.sample(num_tasks, 2 * K + 1, generator, dtype)
        both = CurvePrompts.from_batch(batch)
        return CurvePrompts(
            both.xs[:, : K + 1], both.ys[:, : K + 1], both.xs[:, K + 1 :], both.ys[:, K + 1 :]
        )
    if shift == "scale_x":
        shifted.sample_inputs = lambda shape, g, dt: scale * draw(shape, g, dt)
    else:  # skewed, half_subspace: one transformation for the whole set
        S = _transformation(shift, d, generator, dtype)
        shifted.sample_inputs = lambda shape, g, dt: draw(shape, g, dt) @ S.to(dt)
    return CurvePrompts.from_batch(shifted.sample(num_tasks, K, generator, dtype))
