"""The step sizes of the GD baselines for a task distribution, tuned once and cached."""

import torch

from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.tasks import TaskSampler
from icl_lightning.theory.gd import optimal_eta, optimal_eta_gamma


class StepSizes:
    """``eta`` of L-step GD and ``(eta_pp, gamma_pp)`` of L-step GD++ for a task distribution.

    Each minimises the mean query loss after L steps (:func:`~icl_lightning.theory.gd.optimal_eta`,
    :func:`~icl_lightning.theory.gd.optimal_eta_gamma`) on ``num_tasks`` tuning prompts drawn in
    float64 from the generator keyed ``(seed, 1)``, so every process finds the same values on its
    own. :meth:`tune` searches again only when the task, N, L or device change.

    Args:
        num_tasks: tuning prompts.
        seed: seed of the tuning prompts.
        plus_plus: tune GD++ as well (otherwise ``eta_pp = gamma_pp = 0``).
    """

    def __init__(self, num_tasks: int, seed: int, plus_plus: bool = True) -> None:
        self.num_tasks, self.seed, self.plus_plus = num_tasks, seed, plus_plus
        self._key: tuple | None = None
        self.eta = self.eta_pp = self.gamma_pp = 0.0

    def tune(self, task: TaskSampler, num_context: int, num_steps: int, device) -> "StepSizes":
        """The step sizes for ``num_steps`` steps on ``task`` prompts of ``num_context`` points."""
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
