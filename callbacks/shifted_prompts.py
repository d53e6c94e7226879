"""ShiftedPromptCurves: BaselineCurves on Garg et al.'s shifted prompts (their section 4)."""

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat
from typing_extensions import override

from icl_lightning.callbacks.baselines import BaselineCurves
from icl_lightning.checks import require
from icl_lightning.data.garg_shifts import SHIFTS, CurvePrompts, Shift, shifted_prompts
from icl_lightning.data.seeding import seeded_generator


class ShiftedPromptCurves(BaselineCurves):
    """The loss against k for the model and the baselines on prompts that differ from training
    (:mod:`icl_lightning.data.garg_shifts`): skewed covariance, inputs in half a subspace,
    scaled x or y, noisy outputs, context in one orthant, queries orthogonal to the context or
    among its points. One probe per shift; its scalars and curves go to ``shifted/<shift>/``
    (``tag`` defaults to the shift's name).

    Args:
        shift: one of ``standard``, ``skewed``, ``half_subspace``, ``scale_x``, ``scale_y``,
            ``noisy_outputs``, ``random_quadrants``, ``orthogonal_train_test``,
            ``overlapping_train_test``.
        scale: c of ``scale_x`` / ``scale_y`` (Garg et al.: 1/3, 1/2, 2, 3).
        **kwargs: the options of :class:`~icl_lightning.callbacks.BaselineCurves`.

    Example (YAML)::

        - class_path: icl_lightning.callbacks.ShiftedPromptCurves
          init_args: {shift: skewed, every_n_steps: 0}
    """

    namespace = "shifted"

    def __init__(self, shift: Shift = "skewed", scale: PositiveFloat = 2.0, **kwargs) -> None:
        require(shift in SHIFTS, "shift", shift, f"one of {', '.join(SHIFTS)}")
        require(scale > 0, "scale", scale, "a number > 0")
        if kwargs.get("tag") is None:
            kwargs["tag"] = shift if shift not in ("scale_x", "scale_y") else f"{shift}={scale:g}"
        require(kwargs.get("size", "full") == "full", "size", kwargs.get("size"), "'full'")
        super().__init__(**kwargs)
        self.shift, self.scale = shift, float(scale)
        self._shifted: dict[str, CurvePrompts] = {}

    @override
    def prompts(self, trainer: "L.Trainer", device: torch.device) -> CurvePrompts:
        """The probe's prompts under its shift, drawn once per device from its seed."""
        if str(device) not in self._shifted:
            task, num_context = self.task_and_context(trainer)
            generator = seeded_generator(device, self.seed)
            prompts = shifted_prompts(
                task, self.shift, self.num_tasks, num_context, generator, self.scale
            )
            self._shifted = {str(device): prompts}
        return self._shifted[str(device)]
