"""GDAlignment: how closely the trained model matches gradient descent (paper A, Figure 2)."""

from functools import partial
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.tasks import TaskSampler
from icl_lightning.models.lsa import LSA
from icl_lightning.plotting import line_figure
from icl_lightning.theory.alignment import alignment_sums, interpolate_lsa_layer, sensitivities
from icl_lightning.theory.gd import (
    constructed_lsa,
    gd_lsa_layer,
    gd_plus_plus_predict,
    gd_predict,
    optimal_eta,
    optimal_eta_gamma,
)

_CURVES = {
    "loss_vs_step": ["loss_model", "loss_gd", "loss_gd_pp", "loss_interp"],
    "alignment_vs_step": ["model_cos", "model_cos_pp"],
}


class StepSizes:
    """The GD baselines' step sizes for a task distribution, searched once and cached.

    ``eta`` (GD) and ``(eta_pp, gamma_pp)`` (GD++) minimise the mean query loss after
    ``num_steps`` steps on ``num_tasks`` tuning prompts drawn from ``(seed, 1)`` in float64;
    every DDP rank finds the same values on its own (no communication).
    """

    def __init__(self, num_tasks: int, seed: int, plus_plus: bool = True) -> None:
        self.num_tasks, self.seed, self.plus_plus = num_tasks, seed, plus_plus
        self._key: tuple | None = None
        self.eta = self.eta_pp = self.gamma_pp = 0.0

    def tune(self, task: TaskSampler, num_context: int, num_steps: int, device) -> "StepSizes":
        key = (repr(task), num_context, num_steps, str(device))
        if key != self._key:
            generator = seeded_generator(device, self.seed, 1)
            tuning = task.sample(self.num_tasks, num_context, generator, dtype=torch.float64)
            args = (tuning.context_x, tuning.context_y, tuning.query_x, tuning.query_y)
            self.eta = optimal_eta(*args, num_steps=num_steps)
            if self.plus_plus:
                self.eta_pp, self.gamma_pp = optimal_eta_gamma(*args, num_steps=num_steps)
            self._key = key
        return self


def learner_steps(model: nn.Module, num_steps: int | None) -> int:
    """GD steps of the baselines: ``num_steps`` if given, else the model's ``num_layers``."""
    steps = num_steps or getattr(model, "num_layers", None)
    require(
        steps is not None,
        "num_steps",
        num_steps,
        "an integer >= 1 (the model has no num_layers to match)",
    )
    return int(steps)


class GDAlignment(Probe):
    """Trained model T vs GD and GD++ on fixed evaluation tasks (paper A's alignment metrics).

    Baselines, with the model's number of layers L as their number of steps: GD with the
    optimal eta (closed form for L = 1, vectorised search otherwise) and GD++ with optimal
    ``(eta, gamma)`` shared by its L steps, both tuned once on separate prompts. Logged under
    ``gd/``, means over the evaluation set:

    - ``loss_model``, ``loss_gd``, ``loss_gd_pp``: ``0.5 (y_q - pred)^2``; ``loss_ratio`` =
      ``loss_model / loss_gd``;
    - ``preds_diff``: ``|T - G|``; ``model_cos``: cosine of the sensitivities ``dT/dx_q`` and
      ``dG/dx_q`` (``torch.func``); ``model_diff``: ``|dT/dx_q - dG/dx_q|``; the same against
      GD++ with suffix ``_pp``;
    - ``loss_interp`` when T is a one-head linear LSA with one (possibly recurrent) layer: the
      loss of the layer halfway between T's (normalised) weights and the GD construction,
      applied L times;
    - ``eta``, ``eta_pp``, ``gamma_pp``: the baselines' step sizes.

    Figures: ``gd/loss_vs_step`` and ``gd/alignment_vs_step`` over the run so far.

    Args:
        every_n_steps: measure every this many optimizer steps (0: only at start and end).
        num_tasks: size of the fixed evaluation set (paper A: 10,000).
        batch_size: prompts per chunk when evaluating.
        seed: seed of the evaluation set.
        dtype: ``"float32"`` or ``"float64"``.
        task: task distribution (default: the datamodule's).
        num_context: context points per prompt (default: the datamodule's).
        log_figures: send figures to TensorBoard.
        num_steps: GD steps of the baselines (default: the model's ``num_layers``).
        tuning_tasks: prompts used to tune the baselines' step sizes.
        tuning_seed: seed of the tuning prompts (shared by default with the other GD probes,
            so that they compare with the same GD).

    Raises:
        ValueError: for an impossible option; the message names it.

    Example::

        trainer = Trainer(callbacks=[GDAlignment(every_n_steps=500, num_tasks=10_000)])
    """

    namespace = "gd"

    @override
    def check_model(self, model: nn.Module) -> None:
        """The GD baselines take ``num_steps`` steps, or as many as the model has layers."""
        learner_steps(model, self.num_steps)

    def __init__(
        self,
        every_n_steps: NonNegativeInt = 500,
        num_tasks: PositiveInt = 10_000,
        batch_size: PositiveInt = 2048,
        seed: NonNegativeInt = 2024,
        dtype: Literal["float32", "float64"] = "float32",
        task: TaskSampler | None = None,
        num_context: PositiveInt | None = None,
        log_figures: bool = True,
        num_steps: PositiveInt | None = None,
        tuning_tasks: PositiveInt = 10_000,
        tuning_seed: NonNegativeInt = 0,
    ) -> None:
        super().__init__(
            every_n_steps, num_tasks, batch_size, seed, dtype, task, num_context, log_figures
        )
        require(num_steps is None or num_steps >= 1, "num_steps", num_steps, "None or >= 1")
        require(tuning_tasks >= 2, "tuning_tasks", tuning_tasks, "an integer >= 2")
        self.num_steps = None if num_steps is None else int(num_steps)
        self.step_sizes = StepSizes(int(tuning_tasks), int(tuning_seed))

    @override
    def measure(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
        tasks = self.evaluation_set(trainer, pl_module.device)
        task = self.task or trainer.datamodule.task
        self._steps = learner_steps(pl_module.model, self.num_steps)
        self.step_sizes.tune(task, tasks.num_context, self._steps, pl_module.device)
        return super().measure(trainer, pl_module)

    def _interpolated(self, model: nn.Module, num_context: int) -> nn.Module | None:
        """T's layer halfway to the GD construction, or None where that is not defined."""
        if not isinstance(model, LSA) or not (model.recurrent or model.num_layers == 1):
            return None
        layer = model.layer(0)
        if layer.W_Q.shape[0] != 1 or layer.softmax or not isinstance(layer.norm, nn.Identity):
            return None
        W = {name: getattr(layer, name) for name in ("W_Q", "W_K", "W_V", "P")}
        like = dict(dtype=layer.W_Q.dtype, device=layer.W_Q.device)
        gd = gd_lsa_layer(model.input_dim, num_context, self.step_sizes.eta, **like)
        mid = interpolate_lsa_layer(W, gd, model.input_dim)
        return constructed_lsa(model.input_dim, [mid], model.num_layers, recurrent=True)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        inputs = (batch.context_x, batch.context_y, batch.query_x)
        sizes = self.step_sizes
        learners = {
            "": partial(gd_predict, eta=sizes.eta, num_steps=self._steps),
            "_pp": partial(
                gd_plus_plus_predict, eta=sizes.eta_pp, gamma=sizes.gamma_pp, num_steps=self._steps
            ),
        }
        pred_T, sens_T = predict(model, batch), sensitivities(model, *inputs)
        sums = {"loss_model": self._loss(pred_T, batch)}
        for suffix, learner in learners.items():
            pred_G = learner(*inputs)
            sums[f"loss_gd{suffix}"] = self._loss(pred_G, batch)
            metrics = alignment_sums(pred_T, sens_T, pred_G, sensitivities(learner, *inputs))
            sums.update({f"{name}{suffix}": value for name, value in metrics.items()})
        interpolated = self._interpolated(model, batch.num_context)
        if interpolated is not None:
            sums["loss_interp"] = self._loss(predict(interpolated, batch), batch)
        return sums

    @staticmethod
    def _loss(pred: torch.Tensor, batch: ICLBatch) -> torch.Tensor:
        return (0.5 * (batch.query_y - pred) ** 2).sum()

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = super().finalize(sums, count)
        results["loss_ratio"] = results["loss_model"] / results["loss_gd"]
        sizes = self.step_sizes
        for name in ("eta", "eta_pp", "gamma_pp"):
            results[name] = torch.tensor(getattr(sizes, name), dtype=torch.float64)
        return results

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        steps = sorted(self.history)
        figures = {}
        for tag, names in _CURVES.items():
            curves = {n: [self.history[s][n] for s in steps] for n in names if n in results}
            ylabel, logy = ("loss", True) if tag.startswith("loss") else ("model cos", False)
            figures[tag] = line_figure(steps, curves, "step", ylabel, "T vs GD", logy=logy)
        return figures
