"""OODProbe: the trained model and GD out of distribution (paper A's OOD experiment)."""

import torch
from jsonargparse.typing import PositiveFloat
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.gd_baseline import GDBaselineProbe
from icl_lightning.callbacks.probe import predict
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.plotting import line_figure
from icl_lightning.theory.loss import prediction_loss

_SHIFTS = ("inputs", "weights")


class OODProbe(GDBaselineProbe):
    """Loss of the trained model T and of GD when test prompts are scaled by alpha.

    Two shifts of the evaluation prompts, for every alpha: ``inputs`` (``x -> alpha x``: input
    range ``alpha r``; a linear task's targets follow, ``y -> alpha y``) and ``weights``
    (``w -> alpha w``, so ``y -> alpha y``). Both are exact rescalings of the drawn prompts for
    the noiseless linear tasks of paper A (with ``noise_std > 0`` the noise is scaled too). GD
    takes the model's number of layers as steps and keeps the eta that is optimal in
    distribution (alpha = 1), so the two curves show whether T degrades as GD does.

    Logs ``ood/loss_{model,gd}_{inputs,weights}_a<alpha>`` (alpha with two decimals, e.g.
    ``ood/loss_model_inputs_a0.50``) and the figure ``ood/loss_vs_alpha``.

    Args:
        alphas: the scales (paper A: 0.5 to 2).
        **kwargs: the options of :class:`~icl_lightning.callbacks.gd_baseline.GDBaselineProbe`
            (GD's ``num_steps``, ``tuning_tasks``, ``tuning_seed``) and of
            :class:`~icl_lightning.callbacks.Probe` (its evaluation set is scaled by every
            alpha: ``2 len(alphas) batch_size`` prompts in memory at once).

    Raises:
        ValueError: for an impossible option; the message names it.

    Example::

        trainer = Trainer(callbacks=[OODProbe(every_n_steps=1000, alphas=[0.5, 1.0, 2.0])])
    """

    namespace = "ood"
    plus_plus = False  # the OOD curves compare with GD only

    def __init__(self, alphas: list[PositiveFloat] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        alphas = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0] if alphas is None else list(alphas)
        require(
            len(alphas) > 0 and all(a > 0 for a in alphas),
            "alphas",
            alphas,
            "a non-empty list of numbers > 0",
        )
        self.alphas = [float(a) for a in alphas]

    def shifted(self, batch: ICLBatch) -> ICLBatch:
        """``2 K B`` prompts: the batch under each shift (outer) and each of K alphas (inner)."""
        alpha = torch.tensor(self.alphas, dtype=batch.query_y.dtype, device=batch.query_y.device)
        K, ones = len(self.alphas), torch.ones_like(alpha)
        x_scale = torch.cat([alpha, ones])  # inputs: x -> alpha x; weights: x unchanged
        y_scale = torch.cat([alpha, alpha])  # y -> alpha y under both shifts

        def scaled(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return (scale.view(2 * K, *[1] * t.ndim) * t).flatten(0, 1)

        return ICLBatch(
            scaled(batch.context_x, x_scale),
            scaled(batch.context_y, y_scale),
            scaled(batch.query_x, x_scale),
            scaled(batch.query_y, y_scale),
        )

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        big = self.shifted(batch)
        gd = self.gd_learner()
        preds = {"model": predict(model, big), "gd": gd(big.context_x, big.context_y, big.query_x)}
        sums = {}
        for who, pred in preds.items():
            loss = prediction_loss(pred, big.query_y).view(2, len(self.alphas), len(batch))
            for i, shift in enumerate(_SHIFTS):
                sums[f"loss_{who}_{shift}"] = loss[i].sum(-1)
        return sums

    @override
    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            f"{name}_a{alpha:.2f}": float(value)
            for name, values in results.items()
            for alpha, value in zip(self.alphas, values, strict=True)
        }

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        curves = {
            f"{who} ({shift})": results[f"loss_{who}_{shift}"].cpu()
            for shift in _SHIFTS
            for who in ("model", "gd")
        }
        title = "Paper A: out of distribution (inputs or weights scaled by alpha)"
        return {"loss_vs_alpha": line_figure(self.alphas, curves, "alpha", "loss", title, True)}
