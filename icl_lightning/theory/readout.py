"""The best affine read-out of a target from hidden states, and its R^2, from moment sums."""

import torch


def readout_sums(states: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Moment sums of the least-squares fit ``y ~ beta^T z``, ``z = [h; 1]``, over all rows.

    ``states`` is ``(..., D)`` and ``target`` ``(...)``; returns ``{"zz": Z^T Z (D+1, D+1),
    "zy": Z^T y (D+1,), "yy": y^T y}``. Sums add up over chunks and processes.
    """
    z = torch.cat([states, torch.ones_like(states[..., :1])], dim=-1)
    z, y = z.reshape(-1, z.shape[-1]), target.reshape(-1)
    return {"zz": z.T @ z, "zy": z.T @ y, "yy": y @ y}


def readout_r2(sums: dict[str, torch.Tensor]) -> torch.Tensor:
    """``R^2 = 1 - |y - Z beta|^2 / |y - mean y|^2`` of the least-squares ``beta = Z^+ y``.

    From :func:`readout_sums`: ``beta = pinv(Z^T Z) Z^T y`` (rank-safe), the residual sum of
    squares is ``y^T y - beta^T Z^T y`` and the total one ``y^T y - (sum y)^2 / n``, where the
    constant column gives ``n`` and ``sum y`` (the last entries of ``Z^T Z`` and ``Z^T y``).
    """
    zz, zy, yy = sums["zz"], sums["zy"], sums["yy"]
    beta = torch.linalg.pinv(zz, hermitian=True) @ zy
    total = yy - zy[-1] ** 2 / zz[-1, -1]
    residual = (yy - beta @ zy).clamp_min(0)
    return 1 - residual / total
