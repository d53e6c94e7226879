"""OODProbe: the trained model and GD out of distribution (paper A's OOD experiment)."""

from functools import partial
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.gd_alignment import StepSizes, learner_steps
from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.tasks import TaskSampler
from icl_lightning.plotting import line_figure
from icl_lightning.theory.gd import gd_predict

_SHIFTS = ("inputs", "weights")


class OODProbe(Probe):
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
        every_n_steps: measure every this many optimizer steps (0: only at start and end).
        num_tasks: size of the fixed evaluation set (each is evaluated at every alpha).
        batch_size: prompts per chunk when evaluating (times ``2 len(alphas)`` in memory).
        seed: seed of the evaluation set.
        dtype: ``"float32"`` or ``"float64"``.
        task: task distribution at alpha = 1 (default: the datamodule's).
        num_context: context points per prompt (default: the datamodule's).
        log_figures: send figures to TensorBoard.
        alphas: the scales (paper A: 0.5 to 2).
        num_steps: GD steps (default: the model's ``num_layers``).
        tuning_tasks: prompts used to tune GD's eta in distribution.
        tuning_seed: seed of the tuning prompts (the same default as :class:`GDAlignment`'s,
            so both compare with the same GD).

    Raises:
        ValueError: for an impossible option; the message names it.

    Example::

        trainer = Trainer(callbacks=[OODProbe(every_n_steps=1000, alphas=[0.5, 1.0, 2.0])])
    """

    namespace = "ood"

    @override
    def check_model(self, model: nn.Module) -> None:
        """The GD baselines take ``num_steps`` steps, or as many as the model has layers."""
        learner_steps(model, self.num_steps)

    def __init__(
        self,
        every_n_steps: NonNegativeInt = 1000,
        num_tasks: PositiveInt = 4096,
        batch_size: PositiveInt = 512,
        seed: NonNegativeInt = 2025,
        dtype: Literal["float32", "float64"] = "float32",
        task: TaskSampler | None = None,
        num_context: PositiveInt | None = None,
        log_figures: bool = True,
        alphas: list[PositiveFloat] | None = None,
        num_steps: PositiveInt | None = None,
        tuning_tasks: PositiveInt = 10_000,
        tuning_seed: NonNegativeInt = 0,
    ) -> None:
        super().__init__(
            every_n_steps, num_tasks, batch_size, seed, dtype, task, num_context, log_figures
        )
        alphas = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0] if alphas is None else list(alphas)
        require(
            len(alphas) > 0 and all(a > 0 for a in alphas),
            "alphas",
            alphas,
            "a non-empty list of numbers > 0",
        )
        require(num_steps is None or num_steps >= 1, "num_steps", num_steps, "None or >= 1")
        require(tuning_tasks >= 2, "tuning_tasks", tuning_tasks, "an integer >= 2")
        self.alphas = [float(a) for a in alphas]
        self.num_steps = None if num_steps is None else int(num_steps)
        self.step_sizes = StepSizes(int(tuning_tasks), int(tuning_seed), plus_plus=False)

    @override
    def measure(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
        tasks = self.evaluation_set(trainer, pl_module.device)
        task = self.task or trainer.datamodule.task
        self._steps = learner_steps(pl_module.model, self.num_steps)
        self.step_sizes.tune(task, tasks.num_context, self._steps, pl_module.device)
        return super().measure(trainer, pl_module)

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
        gd = partial(gd_predict, eta=self.step_sizes.eta, num_steps=self._steps)
        preds = {"model": predict(model, big), "gd": gd(big.context_x, big.context_y, big.query_x)}
        sums = {}
        for who, pred in preds.items():
            loss = (0.5 * (big.query_y - pred) ** 2).view(2, len(self.alphas), len(batch))
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
        title = "OOD: inputs or weights scaled by alpha"
        return {"loss_vs_alpha": line_figure(self.alphas, curves, "alpha", "loss", title, True)}
