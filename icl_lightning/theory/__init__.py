"""The mathematics, once: pure functions over batched tensors (no loops over tasks or positions).

``loss`` the prediction loss; ``gd`` paper A's GD and GD++ learners, their LSA constructions and
step-size searches; ``step_sizes`` those step sizes tuned for a task; ``alignment`` paper A's
alignment metrics and weight interpolation; ``readout`` the R^2 of a least-squares read-out;
``delta_w`` paper B's implicit weight updates; ``finetune`` paper B's SGD on W,
one example at a time. ``docs/theory.md`` states the mathematics.
"""

from icl_lightning.theory.alignment import (
    alignment_sums,
    cosine,
    interpolate_lsa_layer,
    sensitivities,
)
from icl_lightning.theory.delta_w import (
    A_sequence,
    delta_W,
    delta_W_sequence_norms,
    delta_W_split,
    equivalence,
)
from icl_lightning.theory.gd import (
    best_eta,
    gd_loss_polynomial,
    gd_lsa_layer,
    gd_lsa_layers,
    gd_plus_plus_lsa_layer,
    gd_plus_plus_predict,
    gd_plus_plus_weights,
    gd_predict,
    gd_weights,
    grid_search,
    linear_kernel,
    one_step_gd,
    one_step_sums,
    optimal_eta,
    optimal_eta_gamma,
    spectral_form,
    spectral_predict,
)
from icl_lightning.theory.loss import prediction_loss
from icl_lightning.theory.readout import readout_r2, readout_sums
from icl_lightning.theory.step_sizes import StepSizes

__all__ = [
    "StepSizes",
    "alignment_sums",
    "best_eta",
    "cosine",
    "gd_lsa_layer",
    "gd_loss_polynomial",
    "gd_lsa_layers",
    "gd_plus_plus_lsa_layer",
    "gd_plus_plus_predict",
    "gd_plus_plus_weights",
    "gd_predict",
    "gd_weights",
    "grid_search",
    "interpolate_lsa_layer",
    "linear_kernel",
    "one_step_gd",
    "one_step_sums",
    "optimal_eta",
    "optimal_eta_gamma",
    "prediction_loss",
    "readout_r2",
    "readout_sums",
    "sensitivities",
    "spectral_form",
    "spectral_predict",
    "A_sequence",
    "delta_W",
    "delta_W_sequence_norms",
    "delta_W_split",
    "equivalence",
]
