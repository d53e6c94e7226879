"""The trained LSA layer's products beside the GD construction (paper A's weights picture)."""

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, image_tags, run_cli, tiny_args

from icl_lightning.plotting import weights_figure
from icl_lightning.theory.alignment import matched_products
from icl_lightning.theory.gd import gd_lsa_layer


def test_rescaled_construction_matches_itself_exactly():
    """A GD layer with W_Q scaled by a and P by 1/a computes the same function; normalised, its
    products equal the construction's (float64, to rounding)."""
    d, N, eta, a = 4, 7, 0.8, 3.7
    gd = gd_lsa_layer(d, N, eta)
    scaled = {**gd, "W_Q": a * gd["W_Q"], "P": gd["P"] / a}
    for trained, constructed in matched_products(scaled, gd, d).values():
        torch.testing.assert_close(trained, constructed, rtol=0, atol=1e-12)


def test_products_of_random_weights():
    """``W_K^T W_Q / c`` and ``c P W_V`` with c the mean of the first d diagonal entries, against
    an independent einsum, for random one-head weights (key size 3, token size d + 1 = 5)."""
    torch.manual_seed(0)
    d = 4
    w = {n: torch.randn(1, 3, d + 1, dtype=torch.float64) for n in ("W_Q", "W_K", "W_V")}
    w["P"] = torch.randn(1, d + 1, 3, dtype=torch.float64)
    KQ = torch.einsum("kE,kF->EF", w["W_K"][0], w["W_Q"][0])
    c = KQ.diagonal()[:d].mean()
    PV = torch.einsum("Rk,kE->RE", w["P"][0], w["W_V"][0])
    got = matched_products(w, gd_lsa_layer(d, 10, 1.0), d)
    torch.testing.assert_close(got["W_K^T W_Q"][0], KQ / c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["P W_V"][0], c * PV, rtol=1e-12, atol=1e-12)


def test_weights_figure_shares_one_scale_per_row():
    a, b = torch.eye(3), -2 * torch.eye(3)
    figure = weights_figure({"W_K^T W_Q": (a, b), "P W_V": (b, a)}, title="Paper A")
    images = [image for axes in figure.axes for image in axes.get_images()]
    assert len(images) == 4
    assert all(image.get_clim() == (-2.0, 2.0) for image in images)


@pytest.mark.parametrize(
    ("config", "extra", "tags"),
    [
        ("lsa_linear.yaml", [], {"gd/weights"}),
        ("lsa_deep.yaml", ["--model.model.num_layers=2"], {"gd/weights_l1", "gd/weights_l2"}),
    ],
)
def test_gd_alignment_draws_the_weights_beside_the_construction(
    config, extra, tags, tmp_path, monkeypatch
):
    """GDAlignment sends the weights figure of a one-layer LSA, and one per layer of a deep one,
    to TensorBoard with its other figures."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / config), *tiny_args(Path("logs")), *extra]
    args += ["--trainer.callbacks=[]", "--trainer.callbacks+=icl_lightning.callbacks.GDAlignment"]
    args += ["--trainer.callbacks.num_tasks=64", "--trainer.callbacks.tuning_tasks=256"]
    cli = run_cli(args)
    assert tags <= image_tags(cli.trainer.logger.log_dir)
