"""The prediction loss every model, learner and probe is scored with (paper A)."""

import torch


def prediction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-prompt squared error ``0.5 * (y - pred)^2``, elementwise (no reduction)."""
    return 0.5 * (target - pred) ** 2
