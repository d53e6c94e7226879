"""BaselineCurves: the loss against the number of in-context examples k, model and baselines."""

import math
from pathlib import Path

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from matplotlib.figure import Figure
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.data.garg_shifts import CurvePrompts
from icl_lightning.data.nonlinear import SparseLinear
from icl_lightning.data.seeding import seeded_generator
from icl_lightning.loggers import tensorboard_loggers
from icl_lightning.plotting import line_figure
from icl_lightning.theory import baselines as bl
from icl_lightning.theory.tree_baselines import fitted_predictions, tree_learners


def model_curve(model: nn.Module, prompts: CurvePrompts) -> torch.Tensor:
    """``(B, K+1)`` predictions of ``model`` after k = 0..K points: one pass of its
    ``prefix_predictions`` for the standard curve, else one call per k (k = 0, an empty
    context, only for a model with ``prefix_predictions``; NaN for other models)."""
    xs, ys, qs = prompts.xs, prompts.ys, prompts.qs
    K = xs.shape[1] - 1
    prefix = callable(getattr(model, "prefix_predictions", None))
    if prefix and not prompts.own_queries:
        return model.prefix_predictions(xs[:, :K], ys[:, :K], xs[:, K])
    columns = [model(xs[:, :k], ys[:, :k], qs[:, k]) for k in range(0 if prefix else 1, K + 1)]
    if not prefix:
        columns.insert(0, torch.full_like(ys[:, 0], math.nan))
    return torch.stack(columns, 1)


class BaselineCurves(Probe):
    """Garg et al.'s figure: squared error / d of the prediction after k = 0..N in-context
    examples, for the model and the classic learners on the same prompts.

    Learners (:mod:`icl_lightning.theory.baselines`): ``least_squares`` (minimum norm),
    ``nn_3`` (3 nearest neighbours), ``averaging``, ``gd_L<L>`` and ``gd++_L<L>`` (paper A's
    L-step GD and GD++, step sizes tuned for each k on ``tuning_tasks`` prompts of the task),
    ``ridge`` at the Bayes-optimal ``lambda = sigma^2 / s^2`` when the task has output noise,
    ``lasso_<alpha>`` for a :class:`~icl_lightning.data.SparseLinear` task, and on request
    ``net`` (Garg et al.'s 2-layer network trained by Adam, ``trained_net``) and the tree
    learners (``trees``: the optional extra ``[trees]``). The learners do not depend on the
    model: they are computed once per evaluation chunk and kept.

    Logs ``baselines/loss_<learner>`` (and ``loss_model``) at k = N as scalars over training,
    and at every measurement the whole curve against k (k on the x axis) under the one tag
    ``baselines/loss_vs_k``, written by one TensorBoard run per learner and measurement beside
    the version folder (``<version>_curves/baselines/step_<step>/<learner>``): TensorBoard's
    Scalars tab overlays them in distinct colours with the run names as the legend (filter the
    runs by ``step_<step>`` to see one measurement); at the end the same curves as the figure
    ``baselines/loss_vs_k``.

    Args:
        neighbours: n of the nearest-neighbour learner.
        gd_steps: L of the GD and GD++ learners (0: none; GD++ only from L = 2, where it
            differs from GD).
        tuning_tasks: prompts that tune their step sizes.
        tuning_seed: seed of those prompts.
        lasso_alphas: the lasso's penalties (default 0.1, 0.01, 0.001; Garg et al.: 1, 0.1,
            0.01, 0.001, 0.0001).
        trained_net: also Garg et al.'s 2-layer network trained by GD (slow: 100 Adam steps for
            every k).
        trees: also a depth-4 decision tree and gradient boosting (needs ``[trees]``; slow).
        **kwargs: the options of :class:`~icl_lightning.callbacks.Probe`.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: icl_lightning.callbacks.BaselineCurves
              init_args: {every_n_steps: 1000, num_tasks: 1024}
    """

    namespace = "baselines"
    charts = {"loss at k = N": "loss_.*"}

    def __init__(
        self,
        neighbours: PositiveInt = 3,
        gd_steps: NonNegativeInt = 2,
        tuning_tasks: PositiveInt = 1024,
        tuning_seed: NonNegativeInt = 0,
        lasso_alphas: list[PositiveFloat] | None = None,
        trained_net: bool = False,
        trees: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        require(neighbours >= 1, "neighbours", neighbours, "an integer >= 1")
        require(gd_steps >= 0, "gd_steps", gd_steps, "an integer >= 0")
        require(tuning_tasks >= 2, "tuning_tasks", tuning_tasks, "an integer >= 2")
        lasso_alphas = [0.1, 0.01, 0.001] if lasso_alphas is None else lasso_alphas
        require(all(a > 0 for a in lasso_alphas), "lasso_alphas", lasso_alphas, "numbers > 0")
        if trees:
            tree_learners()  # the extra's ImportError now, not after training
        self.neighbours, self.gd_steps = int(neighbours), int(gd_steps)
        self.tuning_tasks, self.tuning_seed = int(tuning_tasks), int(tuning_seed)
        self.lasso_alphas = [float(a) for a in lasso_alphas]
        self.trained_net, self.trees = bool(trained_net), bool(trees)
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._step_sizes: dict[tuple, tuple] = {}
        self._writers: dict[str, SummaryWriter] = {}
        self._input_dim = 1

    # ------------------------------------------------------------------ what is measured
    def prompts(self, trainer: "L.Trainer", device: torch.device) -> CurvePrompts:
        """The fixed evaluation prompts as curve prompts (the base's set, queries = points)."""
        return CurvePrompts.from_batch(super().evaluation_set(trainer, device))

    @override
    def evaluation_set(self, trainer: "L.Trainer", device: torch.device) -> CurvePrompts:
        prompts = self.prompts(trainer, device)
        self._task = self.task or trainer.datamodule.task
        self._input_dim = prompts.xs.shape[-1]
        return prompts

    def learners(self, prompts: CurvePrompts) -> dict[str, torch.Tensor]:
        """``{name: (B, K+1) predictions}`` of every baseline learner on ``prompts``."""
        xs, ys, qs = prompts.xs, prompts.ys, prompts.qs
        task = self._task
        out = {
            "least_squares": bl.least_squares(xs, ys, qs),
            f"nn_{self.neighbours}": bl.nearest_neighbours(xs, ys, qs, self.neighbours),
            "averaging": bl.averaging(xs, ys, qs),
        }
        noise = float(getattr(task, "noise_std", 0.0))
        if noise > 0:
            out["ridge"] = bl.least_squares(xs, ys, qs, ridge=(noise / task.weight_scale) ** 2)
        if isinstance(task, SparseLinear):
            for alpha in self.lasso_alphas:
                out[f"lasso_{alpha:g}"] = bl.lasso(xs, ys, qs, alpha)
        kinds = [False, True][: min(self.gd_steps, 2)]  # GD, and GD++ from L = 2
        for plus_plus in kinds:
            etas, gammas = self.step_sizes(xs.shape[1] - 1, plus_plus, xs.device)
            name = f"gd{'++' if plus_plus else ''}_L{self.gd_steps}"
            out[name] = bl.gd_curve(xs, ys, qs, etas, self.gd_steps, gammas if plus_plus else None)
        if self.trained_net:
            generator = seeded_generator(xs.device, self.seed, 3)
            out["net"] = bl.two_layer_net(xs, ys, qs, generator=generator)
        if self.trees:
            for name, factory in tree_learners().items():
                out[name] = fitted_predictions(factory, xs, ys, qs)
        return out

    def step_sizes(self, K: int, plus_plus: bool, device) -> tuple[list, list]:
        """GD's (or GD++'s) step sizes per k, tuned once per task, K, L and device."""
        key = (repr(self._task), K, self.gd_steps, plus_plus, str(device))
        if key not in self._step_sizes:
            generator = seeded_generator(device, self.tuning_seed, 1)
            batch = self._task.sample(self.tuning_tasks, K, generator, torch.float64)
            tuning = CurvePrompts.from_batch(batch)
            self._step_sizes[key] = bl.tuned_step_sizes(
                tuning.xs, tuning.ys, self.gd_steps, plus_plus
            )
        return self._step_sizes[key]

    @override
    def compute(self, model: nn.Module, batch: CurvePrompts) -> dict[str, torch.Tensor]:
        def errors(pred):  # sum over prompts of the squared error after k points
            return (pred - batch.qys).square().sum(0)

        key = (tuple(batch.xs.shape), float(batch.xs.sum()), float(batch.qys.sum()))
        if key not in self._cache:
            self._cache[key] = {n: errors(p) for n, p in self.learners(batch).items()}
        return {"model": errors(model_curve(model, batch))} | self._cache[key]

    @override
    def finalize(self, sums, count):
        return {name: v / count / self._input_dim for name, v in sums.items()}

    @override
    def scalars(self, results):
        return {f"loss_{name}": float(curve[-1]) for name, curve in results.items()}

    @override
    def figures(self, results) -> dict[str, Figure]:
        curves = {name: curve.cpu() for name, curve in results.items()}
        k = range(len(curves["model"]))
        title = f"{self.prefix.rstrip('/')}: loss vs in-context examples"
        return {"loss_vs_k": line_figure(k, curves, "in-context examples k", "loss / d", title)}

    # ------------------------------------------------------------- curves in TensorBoard
    @override
    def run(self, trainer: "L.Trainer", pl_module: "L.LightningModule", figures=True) -> None:
        super().run(trainer, pl_module, figures)
        if trainer.is_global_zero and self._results is not None:
            self.write_curves(trainer, self._results, trainer.global_step)

    def write_curves(self, trainer: "L.Trainer", results: dict, step: int) -> None:
        """Each learner's curve against k (k on the x axis) into its own TensorBoard run
        ``<version>_curves/<namespace>/step_<step>/<learner>``, one fixed tag
        ``<namespace>/loss_vs_k``: TensorBoard overlays the runs in one chart. Beside the
        version folder, not in it: whatever reads the run's scalars (the reproduction report,
        the tests) reads one value per tag and step, and these runs share their tag."""
        for board in tensorboard_loggers(trainer):
            for name, curve in results.items():
                run = Path(board.log_dir)
                folder = run.parent / f"{run.name}_curves" / self.prefix / f"step_{step:07d}" / name
                writer = self._writers.get(str(folder))
                if writer is None:
                    writer = self._writers[str(folder)] = SummaryWriter(str(folder))
                for k, value in enumerate(curve.tolist()):
                    if math.isfinite(value):
                        writer.add_scalar(f"{self.prefix}loss_vs_k", value, k)
                writer.flush()

    @override
    def teardown(self, trainer, pl_module, stage: str) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
