"""CopyScore: does layer 1 copy each y_i next to its x_i (paper A, normal token construction)?"""

import torch
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.probe import Probe, predict
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.theory.gd import best_eta, linear_kernel, one_step_gd, one_step_sums
from icl_lightning.theory.loss import prediction_loss
from icl_lightning.theory.readout import readout_r2, readout_sums


def attention_figure(attention: torch.Tensor, title: str) -> Figure:
    """Heat map of a ``(2N+1, 2N)`` attention map; rows: tokens ``x1 y1 .. xN yN xq``,
    columns: the context tokens they attend to."""
    rows, cols = attention.shape
    labels = [f"{kind}{i + 1}" for i in range(cols // 2) for kind in "xy"] + ["xq"]
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(attention.detach().float().numpy(), cmap="viridis", vmin=0)
    axes.set_xticks(range(cols), labels[:cols], fontsize=7, rotation=90)
    axes.set_yticks(range(rows), labels[:rows], fontsize=7)
    axes.set(xlabel="key token", ylabel="query token", title=title)
    figure.colorbar(image, ax=axes)
    return figure


class CopyScore(Probe):
    """Copying of ``y_i`` into the ``x_i``-token by layer 1, and the final loss against GD.

    For a model with separate x and y tokens that exposes
    ``first_layer(context_x, context_y, query_x) -> (h_1, A)`` (a
    :class:`~icl_lightning.models.TokenTransformer`), logs under ``copy/``:

    - ``attention_mass``: the layer-1 attention weight from the ``x_i``-token to the ``y_i``-token,
      averaged over heads, i = 1..N and prompts (1: perfect copy; 1/(2N): uniform attention).
    - ``r2``: R^2 of the best affine readout of ``y_i`` from the ``x_i``-token state ``h_1``
      after layer 1, one least-squares fit over all x-tokens of the set (from all-reduced
      moment sums). Before layer 1 an x-token holds no information about ``y_i`` (R^2 = 0);
      uniform attention mixes ``y_i`` into it as one of N averaged values (R^2 about 1/N);
      a perfect copy gives 1.
    - ``model_loss``: the model's query loss ``0.5 E (y_q - pred)^2``.
    - ``gd_loss`` / ``gd_eta``: one GD step on the raw inputs from ``w0 = 0`` with the best
      ``eta`` (closed form), on the same prompts.

    and the figure ``copy/attention_map``: layer 1's attention averaged over heads and prompts.

    Args: as :class:`~icl_lightning.callbacks.Probe`.

    Raises:
        ValueError: when the model has no ``first_layer`` (not a token-construction model).

    Example::

        trainer = Trainer(callbacks=[CopyScore(every_n_steps=500)])
    """

    namespace = "copy"
    figure_only = ("attention_map",)

    @override
    def check_model(self, model: nn.Module) -> None:
        """Needs the first layer's tokens and attention: ``model.first_layer``."""
        require(
            callable(getattr(model, "first_layer", None)),
            f"{type(model).__name__}.first_layer",
            None,
            "a method returning layer 1's tokens and attention (a TokenTransformer)",
        )

    @override
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        self.check_model(model)
        x, y, xq, yq = batch.context_x, batch.context_y, batch.query_x, batch.query_y
        h1, attention = model.first_layer(x, y, xq)
        attention = attention.mean(dim=1)  # (B, 2N+1, 2N), mean over heads
        N = batch.num_context
        to_own_y = attention[:, 0 : 2 * N : 2, 1 : 2 * N : 2].diagonal(dim1=1, dim2=2)
        readout = readout_sums(h1[:, 0 : 2 * N : 2], y)  # x_i-token states (B, N, D) -> y_i
        gd = one_step_sums(one_step_gd(linear_kernel(x, xq), y), yq)
        return {
            "attention_mass": to_own_y.mean(dim=1).sum(),
            "attention_map": attention.sum(dim=0),
            "model_loss": prediction_loss(predict(model, batch), yq).sum(),
            **{f"readout_{k}": v for k, v in readout.items()},
            **{f"gd_{k}": v for k, v in gd.items()},
        }

    @override
    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        readout = {k: sums[f"readout_{k}"] for k in ("zz", "zy", "yy")}
        gd_eta, gd_loss = best_eta({k: sums[f"gd_{k}"] for k in ("py", "pp", "yy")}, count)
        return {
            "attention_mass": sums["attention_mass"] / count,
            "r2": readout_r2(readout),
            "model_loss": sums["model_loss"] / count,
            "gd_loss": gd_loss,
            "gd_eta": gd_eta,
            "attention_map": sums["attention_map"] / count,
        }

    @override
    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        mass = float(results["attention_mass"])
        title = f"Paper A, token construction: layer-1 attention (copy mass {mass:.2f})"
        return {"attention_map": attention_figure(results["attention_map"].cpu(), title)}
