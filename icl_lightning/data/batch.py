"""The prompt batch every model, module and probe exchanges."""

from dataclasses import dataclass, fields

import torch


@dataclass
class ICLBatch:
    """A batch of B regression prompts with N context points of input dimension d.

    Attributes:
        context_x: ``(B, N, d)`` context inputs ``x_i``.
        context_y: ``(B, N)`` context targets ``y_i``.
        query_x: ``(B, d)`` query input ``x_q``.
        query_y: ``(B,)`` query target ``y_q``.
    """

    context_x: torch.Tensor
    context_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        B, N, d = self.context_x.shape
        expected = {"context_y": (B, N), "query_x": (B, d), "query_y": (B,)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(
                    f"ICLBatch.{name} has shape {got}; expected {shape} "
                    f"for context_x of shape {(B, N, d)}."
                )

    def __len__(self) -> int:
        return self.context_x.shape[0]

    @property
    def num_context(self) -> int:
        return self.context_x.shape[1]

    @property
    def input_dim(self) -> int:
        return self.context_x.shape[2]

    def _map(self, fn) -> "ICLBatch":
        return ICLBatch(*(fn(getattr(self, f.name)) for f in fields(self)))

    def to(self, *args, **kwargs) -> "ICLBatch":
        """Move or cast every tensor, as ``torch.Tensor.to``."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def __getitem__(self, index) -> "ICLBatch":
        """Select tasks: ``batch[a:b]`` keeps prompts a..b-1."""
        return self._map(lambda t: t[index])

    def split(self, size: int) -> list["ICLBatch"]:
        """Chunks of at most ``size`` prompts."""
        return [self[i : i + size] for i in range(0, len(self), size)]

    def prefix(self, n: int) -> "ICLBatch":
        """The same prompts with only their first ``n`` context points."""
        return ICLBatch(self.context_x[:, :n], self.context_y[:, :n], self.query_x, self.query_y)
