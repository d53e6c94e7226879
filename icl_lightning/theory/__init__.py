"""The mathematics, once: pure functions over batched tensors (no loops over tasks or positions)."""

from icl_lightning.theory.alignment import (
    alignment_sums,
    cosine,
    interpolate_lsa_layer,
    sensitivities,
)
from icl_lightning.theory.delta_w import (
    A_sequence,
    delta_W,
    delta_W_sequence,
    delta_W_split,
    gradient_steps,
    implicit_prediction,
)
from icl_lightning.theory.gd import (
    constructed_lsa,
    gd_lsa_layer,
    gd_lsa_layers,
    gd_plus_plus_lsa_layer,
    gd_plus_plus_predict,
    gd_predict,
    gd_weights,
    grid_search,
    one_step_eta,
    optimal_eta,
    optimal_eta_gamma,
    spectral_form,
    spectral_predict,
)

__all__ = [
    "alignment_sums",
    "constructed_lsa",
    "cosine",
    "gd_lsa_layer",
    "gd_lsa_layers",
    "gd_plus_plus_lsa_layer",
    "gd_plus_plus_predict",
    "gd_predict",
    "gd_weights",
    "grid_search",
    "interpolate_lsa_layer",
    "one_step_eta",
    "optimal_eta",
    "optimal_eta_gamma",
    "sensitivities",
    "spectral_form",
    "spectral_predict",
    "A_sequence",
    "delta_W",
    "delta_W_sequence",
    "delta_W_split",
    "gradient_steps",
    "implicit_prediction",
]
