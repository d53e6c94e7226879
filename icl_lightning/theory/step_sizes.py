"""The step sizes of the GD baselines for a task distribution, tuned once and cached."""

from typing import Literal

import torch

from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.tasks import TaskSampler
from icl_lightning.theory.gd import optimal_eta, optimal_eta_gamma
from icl_lightning.theory.gd_plus_plus_training import per_layer_eta_gamma


class StepSizes:
    """``eta`` of L-step GD and ``(eta_pp, gamma_pp)`` of L-step GD++ for a task distribution.

    Each minimises the mean query loss after L steps (:func:`~icl_lightning.theory.gd.optimal_eta`,
    :func:`~icl_lightning.theory.gd.optimal_eta_gamma`) on ``num_tasks`` tuning prompts drawn in
    float64 from the generator keyed ``(seed, 1)``, so every process finds the same values on its
    own. :meth:`tune` searches again only when the task, N, L, the active input dimension or
    the device change.

    Args:
        num_tasks: tuning prompts.
        seed: seed of the tuning prompts.
        plus_plus: tune GD++ as well (otherwise ``eta_pp = gamma_pp = 0``).
        gd_plus_plus: ``"per_layer"``: one ``(eta_l, gamma_l)`` per step, trained by gradient
            descent on the loss as paper A's official code does
            (:func:`~icl_lightning.theory.gd_plus_plus_training.per_layer_eta_gamma`; then
            ``eta_pp`` and ``gamma_pp`` are lists of L numbers); ``"shared"``: one pair for all
            steps, by grid search.
    """

    def __init__(
        self,
        num_tasks: int,
        seed: int,
        plus_plus: bool = True,
        gd_plus_plus: Literal["per_layer", "shared"] = "per_layer",
    ) -> None:
        self.num_tasks, self.seed, self.plus_plus = num_tasks, seed, plus_plus
        self.gd_plus_plus = gd_plus_plus
        self._key: tuple | None = None
        self.eta = self.eta_pp = self.gamma_pp = 0.0

    def tune(
        self,
        task: TaskSampler,
        num_context: int,
        num_steps: int,
        device,
        active_dim: int | None = None,
    ) -> "StepSizes":
        """The step sizes for ``num_steps`` steps on ``task`` prompts of ``num_context`` points,
        with inputs in the first ``active_dim`` coordinates (others 0;
        :meth:`~icl_lightning.data.tasks.TaskSampler.sample_in_subspace`; default: all)."""
        active_dim = task.input_dim if active_dim is None else active_dim
        key = (repr(task), num_context, num_steps, str(device), active_dim)
        if key != self._key:
            generator = seeded_generator(device, self.seed, 1)
            tuning = task.sample_in_subspace(
                self.num_tasks, num_context, active_dim, generator, dtype=torch.float64
            )
            args = (tuning.context_x, tuning.context_y, tuning.query_x, tuning.query_y)
            self.eta = optimal_eta(*args, num_steps=num_steps)
            if self.plus_plus and self.gd_plus_plus == "per_layer" and num_steps > 1:
                self.eta_pp, self.gamma_pp = per_layer_eta_gamma(*args, num_steps=num_steps)
            elif self.plus_plus:
                self.eta_pp, self.gamma_pp = optimal_eta_gamma(*args, num_steps=num_steps)
            self._key = key
        return self
