"""GDAlignment: how closely the trained model matches gradient descent (paper A, Figure 2)."""

import torch
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.gd_baseline import GDBaselineProbe
from icl_lightning.callbacks.probe import predict
from icl_lightning.data.batch import ICLBatch
from icl_lightning.models.lsa import LSA
from icl_lightning.plotting import weights_figure
from icl_lightning.theory.alignment import (
    alignment_sums,
    interpolate_lsa_layer,
    matched_products,
    predictions_and_sensitivities,
)
from icl_lightning.theory.gd import (
    gd_lsa_layer,
    gd_plus_plus_lsa_layer,
    gd_plus_plus_weights,
    gd_weights,
    per_step,
)
from icl_lightning.theory.loss import prediction_loss


class GDAlignment(GDBaselineProbe):
    """Trained model T vs GD and GD++ on fixed evaluation tasks (paper A's alignment metrics).

    Baselines, with the model's number of layers L as their number of steps: GD with the
    optimal eta (closed form for L = 1, vectorised search otherwise) and GD++ with one tuned
    ``(eta_l, gamma_l)`` per step (``gd_plus_plus="shared"``: one pair for all L steps), both
    tuned once per run on their own prompts (kept in the checkpoint). Logged under ``gd/``,
    means over the evaluation set:

    - ``loss_model``, ``loss_gd``, ``loss_gd_pp``: ``0.5 (y_q - pred)^2``; ``loss_ratio`` =
      ``loss_model / loss_gd``;
    - ``preds_diff``: ``|T - G|``; ``model_cos``: cosine of the sensitivities ``dT/dx_q`` and
      ``dG/dx_q`` (one backward pass); ``model_diff``: ``|dT/dx_q - dG/dx_q|``; the same against
      GD++ with suffix ``_pp``;
    - ``loss_interp`` when T is a one-head linear LSA with one (possibly recurrent) layer: the
      loss of the layer halfway between T's (normalised) weights and the GD construction,
      applied L times;
    - ``eta``, ``eta_pp``, ``gamma_pp``: the baselines' step sizes (per-layer GD++ with L > 1:
      ``eta_pp_l<l>``, ``gamma_pp_l<l>`` for each step l); ``gd_pp_tuning_loss`` and
      ``gd_pp_selection_loss``: GD++'s loss with those sizes on the tuning set and on the
      selection set that chose them (population losses on paper A's tasks), and there
      ``gd_pp_contraction``: ``max |E(lam)|`` on the support, the stability criterion
      (:mod:`~icl_lightning.theory.population`).

    Paper A's Figure 2 (the losses and the model cos against the training step) is the Custom
    Scalars charts "Fig. 2: ..." (TensorBoard draws them live from the scalars). The figure, for
    a one-head linear LSA: ``gd/weights`` (``gd/weights_l<l>`` per layer of a deep model): the
    trained ``W_K^T W_Q`` and ``P W_V`` beside the GD construction (GD++ step l for layer l of
    a deep model), normalised as in the interpolation (:func:`~icl_lightning.theory.alignment.
    matched_products`), on one colour scale.

    Args: as :class:`~icl_lightning.callbacks.gd_baseline.GDBaselineProbe` (``num_steps``,
    ``tuning_tasks``, ``tuning_seed``) and :class:`~icl_lightning.callbacks.Probe`.

    Raises:
        ValueError: for an impossible option; the message names it.

    Example::

        trainer = Trainer(callbacks=[GDAlignment(every_n_steps=500, num_tasks=10_000)])
    """

    namespace = "gd"
    charts = {
        "Fig. 2: loss of T vs GD and GD++": r"loss_(model|gd|gd_pp)",
        # on its own chart: thousands at step 0, where the interpolation means nothing yet
        "Fig. 2: loss of the interpolated weights": r"loss_interp",
        "loss of T / loss of GD": r"loss_ratio",
        "Fig. 2: model cos of T with GD, GD++": r"model_cos(_pp)?",
        "model diff": r"model_diff(_pp)?",
        "preds diff": r"preds_diff(_pp)?",
        "step sizes of GD, GD++": r"(eta|gamma).*",
        "GD++ sizes: loss on the tuning and selection sets": r"gd_pp_(tuning|selection)_loss",
    }
    #: per distinct layer of the latest measured model, its products beside the construction's
    #: (:meth:`_matched_layers`), for the weights figures
    _layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
    #: whether :attr:`_interpolation` is built for the measurement under way (at its first
    #: chunk, once the step sizes are tuned)
    _interpolation_built: bool = False
    #: the interpolated model of the measurement under way (:meth:`_interpolate`)
    _interpolation: nn.Module | None = None

    @override
    def measure(self, trainer, pl_module) -> dict:
        self._interpolation_built = False
        results = super().measure(trainer, pl_module)
        num_context = self.evaluation_set(trainer, pl_module.device).num_context
        self._layers = self._matched_layers(self._network(pl_module), num_context)
        return results

    def _matched_layers(
        self, model: nn.Module, num_context: int
    ) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """For each distinct layer of a one-head linear LSA, its ``W_K^T W_Q`` and ``P W_V``
        beside the construction's (:func:`matched_products`): GD with the tuned eta for a layer
        applied at every depth, GD++ step l (``eta_pp_l``, ``gamma_pp_l``) for layer l of a deep
        model; empty for any other model."""
        layers = getattr(model, "layers", None)
        if not isinstance(model, LSA) or not all(layer.is_plain_linear for layer in layers):
            return []
        d, sizes, like = model.input_dim, self.step_sizes, dict(dtype=torch.float64)
        if model.shared_layer is not None:
            constructions = [gd_lsa_layer(d, num_context, sizes.eta, **like)]
        else:
            L = model.num_layers
            steps = zip(per_step(sizes.eta_pp, L), per_step(sizes.gamma_pp, L), strict=True)
            constructions = [gd_plus_plus_lsa_layer(d, num_context, e, g, **like) for e, g in steps]
        trained = [
            {name: w.detach().double().cpu() for name, w in layer.weights().items()}
            for layer in layers
        ]
        return [matched_products(t, c, d) for t, c in zip(trained, constructions, strict=True)]

    def _interpolated(self, model: nn.Module, num_context: int) -> nn.Module | None:
        """:meth:`_interpolate`, built once per measurement."""
        if not self._interpolation_built:
            self._interpolation = self._interpolate(model, num_context)
            self._interpolation_built = True
        return self._interpolation

    def _interpolate(self, model: nn.Module, num_context: int) -> nn.Module | None:
        """T's layer halfway to the GD construction, applied L times; None unless T applies one
        plain one-head linear layer at every depth (``LSA.shared_layer``, ``is_plain_linear``)."""
        layer = getattr(model, "shared_layer", None)
        if layer is None or not layer.is_plain_linear:
            return None
        like = dict(dtype=layer.W_Q.dtype, device=layer.W_Q.device)
        gd = gd_lsa_layer(model.input_dim, num_context, self.step_sizes.eta, **like)
        mid = interpolate_lsa_layer(layer.weights(), gd, model.input_dim)
        return LSA.from_weights([mid], model.num_layers, recurrent=True)

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        inputs = (batch.context_x, batch.context_y, batch.query_x)
        sizes, L = self.step_sizes, self.learner_steps
        # GD and GD++ are linear in the query: pred = <w, x_q>, and w is their sensitivity
        weights = {
            "": gd_weights(batch.context_x, batch.context_y, sizes.eta, L),
            "_pp": gd_plus_plus_weights(
                batch.context_x, batch.context_y, sizes.eta_pp, sizes.gamma_pp, L
            ),
        }
        pred_T, sens_T = predictions_and_sensitivities(model, *inputs)
        sums = {"loss_model": self._loss(pred_T, batch)}
        for suffix, w in weights.items():
            pred_G = (w * batch.query_x).sum(-1)
            sums[f"loss_gd{suffix}"] = self._loss(pred_G, batch)
            metrics = alignment_sums(pred_T, sens_T, pred_G, w)
            sums.update({f"{name}{suffix}": value for name, value in metrics.items()})
        interpolated = self._interpolated(model, batch.num_context)
        if interpolated is not None:
            sums["loss_interp"] = self._loss(predict(interpolated, batch), batch)
        return sums

    @staticmethod
    def _loss(pred: torch.Tensor, batch: ICLBatch) -> torch.Tensor:
        return prediction_loss(pred, batch.query_y).sum()

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        results = super().finalize(sums, count)
        results["loss_ratio"] = results["loss_model"] / results["loss_gd"]
        sizes = self.step_sizes
        if sizes.plus_plus_fit is not None:  # GD++'s sizes: their loss where tuned and chosen
            fit = sizes.plus_plus_fit
            names = ("tuning_loss", "selection_loss") + (("contraction",) if fit.support else ())
            for name in names:
                results[f"gd_pp_{name}"] = torch.tensor(getattr(fit, name), dtype=torch.float64)
        for name in ("eta", "eta_pp", "gamma_pp"):
            value = getattr(sizes, name)
            if isinstance(value, list):  # per-layer GD++: one scalar per step l
                results.update(
                    {
                        f"{name}_l{step}": torch.tensor(v, dtype=torch.float64)
                        for step, v in enumerate(value, 1)
                    }
                )
            else:
                results[name] = torch.tensor(value, dtype=torch.float64)
        return results

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        figures = {}
        for layer, products in enumerate(self._layers, 1):
            one = len(self._layers) == 1
            against = "the GD construction" if one else f"GD++ step {layer}"
            title = f"Paper A: trained weights{'' if one else f' of layer {layer}'} vs {against}"
            tag = "weights" if one else f"weights_l{layer}"
            figures[tag] = weights_figure(products, ("trained (normalised)", against), title)
        return figures
