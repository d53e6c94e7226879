"""GDBaselineProbe: the base of the probes that compare the model with tuned GD learners."""

from functools import partial
from typing import Literal

import lightning as L
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checks import require
from icl_lightning.theory.alignment import Learner
from icl_lightning.theory.gd import gd_predict
from icl_lightning.theory.step_sizes import StepSizes


class GDBaselineProbe(Probe):
    """A probe that compares the model with L steps of GD whose step sizes are tuned for the
    evaluation task (:class:`~icl_lightning.theory.step_sizes.StepSizes`), once per task, N,
    L and active input dimension (``size="current"``: the curriculum's), before each
    measurement; sizes tuned before (by any run with the same options and tuner version) come
    from the disk cache (:mod:`~icl_lightning.theory.tuning_cache`).

    L is ``num_steps``, or the model's ``num_layers``. Subclasses read :attr:`step_sizes` and
    :attr:`learner_steps`, or take GD itself from :meth:`gd_learner`; ``plus_plus = False``
    skips tuning GD++.

    Args:
        num_steps: GD steps of the baselines (default: the model's ``num_layers``).
        tuning_tasks: prompts used to tune the baselines' step sizes.
        tuning_seed: seed of the tuning prompts (the same default for every GD-baseline probe,
            so that they compare with the same GD).
        gd_plus_plus: GD++'s step sizes: ``"per_layer"`` (one ``(eta_l, gamma_l)`` per step,
            trained by gradient descent on the loss, as paper A's official code) or
            ``"shared"`` (one pair for all steps, grid search). Equal for L = 1.
        **kwargs: the options of :class:`~icl_lightning.callbacks.Probe`.

    Raises:
        ValueError: for an impossible option; the message names it.
    """

    #: whether the baselines include GD++ (its search costs more than GD's)
    plus_plus: bool = True

    def __init__(
        self,
        num_steps: PositiveInt | None = None,
        tuning_tasks: PositiveInt = 10_000,
        tuning_seed: NonNegativeInt = 0,
        gd_plus_plus: Literal["per_layer", "shared"] = "per_layer",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        require(
            gd_plus_plus in ("per_layer", "shared"),
            "gd_plus_plus",
            gd_plus_plus,
            "'per_layer' or 'shared'",
        )
        require(num_steps is None or num_steps >= 1, "num_steps", num_steps, "None or >= 1")
        require(tuning_tasks >= 2, "tuning_tasks", tuning_tasks, "an integer >= 2")
        self.num_steps = None if num_steps is None else int(num_steps)
        self.step_sizes = StepSizes(
            int(tuning_tasks), int(tuning_seed), self.plus_plus, gd_plus_plus
        )
        #: L, the baselines' number of GD steps at the current measurement
        self.learner_steps = 0

    @override
    def measure(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
        tasks = self.evaluation_set(trainer, pl_module.device)  # the base's clear error if no task
        task = self.task or trainer.datamodule.task
        self.learner_steps = self._steps_of(pl_module.model)
        size = self.current_size(trainer)  # size="current": tuned for the curriculum's dims, too
        self.step_sizes.tune(
            task,
            tasks.num_context,
            self.learner_steps,
            pl_module.device,
            active_dim=None if size is None else size[0],
        )
        return super().measure(trainer, pl_module)

    @override
    def state_dict(self) -> dict:
        """The base's state and the tuned step sizes: they depend only on the fixed tuning
        prompts (not on the model), so a resumed run takes them from its checkpoint."""
        return super().state_dict() | {"step_sizes": self.step_sizes.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "step_sizes" in state_dict:
            self.step_sizes.load_state_dict(state_dict["step_sizes"])

    @override
    def check_model(self, model: nn.Module) -> None:
        """The GD baselines take ``num_steps`` steps, or as many as the model has layers."""
        self._steps_of(model)

    def _steps_of(self, model: nn.Module) -> int:
        steps = self.num_steps or getattr(model, "num_layers", None)
        require(
            steps is not None,
            "num_steps",
            self.num_steps,
            "an integer >= 1 (the model has no num_layers to match)",
        )
        return int(steps)

    def gd_learner(self) -> Learner:
        """L steps of GD with the tuned ``eta``, as a learner
        ``fn(context_x, context_y, query_x) -> (B,)``."""
        return partial(gd_predict, eta=self.step_sizes.eta, num_steps=self.learner_steps)
