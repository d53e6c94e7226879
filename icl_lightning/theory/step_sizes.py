"""The step sizes of the GD baselines for a task distribution, tuned once and cached (in the
process, in checkpoints, and on disk: :mod:`~icl_lightning.theory.tuning_cache`)."""

import dataclasses
from functools import partial
from typing import Literal

import torch

from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.tasks import TaskSampler
from icl_lightning.theory import tuning_cache
from icl_lightning.theory.gd import optimal_eta
from icl_lightning.theory.gd_plus_plus_training import (
    TUNER_VERSION,
    GDPlusPlusFit,
    per_layer_eta_gamma_fit,
    shared_eta_gamma_fit,
)
from icl_lightning.theory.population import draw_population, supports_population

#: selection prompts per tuning prompt for GD++'s choice among its polished starts (tasks
#: without a population loss)
SELECTION_FACTOR = 10
#: population draws per tuning prompt (tuning and selection each; paper A's tasks)
POPULATION_FACTOR = 4


class StepSizes:
    """``eta`` of L-step GD and ``(eta_pp, gamma_pp)`` of L-step GD++ for a task distribution.

    GD's eta minimises the mean query loss after L steps
    (:func:`~icl_lightning.theory.gd.optimal_eta`) on ``num_tasks`` tuning prompts drawn in
    float64 from the generator keyed ``(seed, 1)``, so every process finds the same values on
    its own. GD++'s sizes (L > 1) are polished to convergence from several starts
    (:mod:`~icl_lightning.theory.gd_plus_plus_training`) on the *tuning* set and the start is
    chosen on a disjoint *selection* set keyed ``(seed, 2)``: on paper A's tasks
    (:func:`~icl_lightning.theory.population.supports_population`) both are
    ``POPULATION_FACTOR * num_tasks`` importance-sampled contexts and the loss is the
    population loss on the support (the stability criterion,
    :mod:`~icl_lightning.theory.population`); on other tasks they are ``num_tasks`` and
    ``SELECTION_FACTOR * num_tasks`` prompts. The *test* set, on which baselines are reported,
    is neither (``scripts/deep_baselines.py``). :attr:`plus_plus_fit` keeps both losses.
    :meth:`tune` searches again only when the task, N, L, the active input dimension or the
    device change, and takes sizes tuned before from the disk cache
    (:mod:`~icl_lightning.theory.tuning_cache`, keyed by those, the options and
    ``TUNER_VERSION``).

    Args:
        num_tasks: tuning prompts.
        seed: seed of the tuning prompts.
        plus_plus: tune GD++ as well (otherwise ``eta_pp = gamma_pp = 0``).
        gd_plus_plus: ``"per_layer"``: one ``(eta_l, gamma_l)`` per step, trained by gradient
            descent on the loss as paper A's official code does
            (:func:`~icl_lightning.theory.gd_plus_plus_training.per_layer_eta_gamma_fit`; then
            ``eta_pp`` and ``gamma_pp`` are lists of L numbers); ``"shared"``: one pair for all
            steps, by grid search then polished
            (:func:`~icl_lightning.theory.gd_plus_plus_training.shared_eta_gamma_fit`).
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
        #: GD++'s tuned sizes with their tuning and selection losses (None without GD++)
        self.plus_plus_fit: GDPlusPlusFit | None = None

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
        if key == self._key:
            return self
        disk_key = {"tuner": TUNER_VERSION, "key": list(key), "options": self._options()}
        cached = tuning_cache.load(disk_key)
        if cached is not None:
            self.load_state_dict(cached)
            return self
        prompts = partial(self.prompts, task, num_context, active_dim, device)
        tuning = prompts(1)
        self.eta = optimal_eta(*tuning, num_steps=num_steps)
        if self.plus_plus:
            per_layer = self.gd_plus_plus == "per_layer"
            tune = per_layer_eta_gamma_fit if per_layer else shared_eta_gamma_fit
            if num_steps > 1 and supports_population(task):
                draws = POPULATION_FACTOR * self.num_tasks
                tuning, selection = (
                    draw_population(
                        task, num_context, active_dim, draws, seeded_generator("cpu", self.seed, k)
                    )
                    for k in (1, 2)
                )
            else:  # the selection set chooses among polished starts, which one step lacks
                factor = SELECTION_FACTOR if num_steps > 1 else 1
                selection = prompts(2, factor * self.num_tasks)
            self.plus_plus_fit = fit = tune(tuning, selection, num_steps)
            if per_layer and num_steps > 1:
                self.eta_pp, self.gamma_pp = fit.etas, fit.gammas
            else:
                self.eta_pp, self.gamma_pp = fit.etas[0], fit.gammas[0]
        self._key = key
        tuning_cache.store(disk_key, self.state_dict())
        return self

    def _options(self) -> list:
        return [self.num_tasks, self.seed, self.plus_plus, self.gd_plus_plus, TUNER_VERSION]

    def state_dict(self) -> dict:
        """The tuned sizes with what they were tuned for (the options and :meth:`tune`'s key):
        a checkpoint keeps them, so that a resumed run does not tune again."""
        fit = self.plus_plus_fit
        return {
            "options": self._options(),
            "key": None if self._key is None else list(self._key),
            "eta": self.eta,
            "eta_pp": self.eta_pp,
            "gamma_pp": self.gamma_pp,
            "plus_plus_fit": None if fit is None else dataclasses.asdict(fit),
        }

    def load_state_dict(self, state: dict) -> None:
        """Take the sizes of :meth:`state_dict` when they were tuned with the same options
        (otherwise :meth:`tune` searches again)."""
        if state.get("options") != self._options() or state.get("key") is None:
            return
        self._key = tuple(state["key"])
        self.eta, self.eta_pp, self.gamma_pp = state["eta"], state["eta_pp"], state["gamma_pp"]
        fit = state["plus_plus_fit"]
        self.plus_plus_fit = None if fit is None else GDPlusPlusFit(**fit)

    def prompts(
        self, task, num_context, active_dim, device, part, count=None
    ) -> tuple[torch.Tensor, ...]:
        """``(context_x, context_y, query_x, query_y)`` of ``count`` (default ``num_tasks``)
        float64 prompts from the generator keyed ``(seed, part)``: part 1 is the tuning set,
        part 2 the selection set."""
        batch = task.sample_in_subspace(
            count or self.num_tasks,
            num_context,
            active_dim,
            seeded_generator(device, self.seed, part),
            dtype=torch.float64,
        )
        return batch.context_x, batch.context_y, batch.query_x, batch.query_y
