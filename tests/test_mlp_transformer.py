"""MLP transformer, GD on learned features, and the DeepFeatureGD probe."""

import pytest
import torch
from conftest import CONFIGS, read_scalars, run_cli, tiny_args

from icl_lightning.callbacks import DeepFeatureGD
from icl_lightning.data import LinearRegression, Sine, seeded_generator
from icl_lightning.models import LSA, FeatureGD, MLPTransformer
from icl_lightning.theory.gd import gd_predict

SINE = str(CONFIGS / "mlp_sine.yaml")
RELU = str(CONFIGS / "relu_net.yaml")


def prompts(d=3, batch_size=16, num_context=7, seed=0, dtype=torch.float64):
    return LinearRegression(d).sample(batch_size, num_context, seeded_generator("cpu", seed), dtype)


MODELS = {
    "one_linear_layer": dict(),
    "softmax_then_linear_with_mlp_blocks": dict(
        num_layers=2, softmax=[True, False], mlp_blocks=True
    ),
    "two_heads_no_input_mlp": dict(num_layers=2, num_heads=2, key_size=5, mlp_layers=0),
}


@pytest.mark.parametrize("options", MODELS.values(), ids=MODELS.keys())
def test_shapes_and_invariance_to_context_order(options):
    torch.manual_seed(0)
    model = MLPTransformer(3, feature_dim=8, mlp_width=16, init_scale=1.0, **options).double()
    batch = prompts()
    pred = model(batch.context_x, batch.context_y, batch.query_x)
    assert pred.shape == (16,) and pred.dtype == torch.float64
    order = torch.randperm(7)
    permuted = model(batch.context_x[:, order], batch.context_y[:, order], batch.query_x)
    torch.testing.assert_close(permuted, pred, rtol=1e-12, atol=1e-12)
    assert pred.std() > 1e-3  # not trivially constant
    other = model(batch.context_x, batch.context_y.flip(0), batch.query_x)
    assert not torch.allclose(other, pred)  # and it does read the context


def test_feature_gd_is_the_theorys_one_step_gd_on_its_features():
    """FeatureGD writes the GD step out (models import no theory); it is theory's one_step_gd."""
    from icl_lightning.theory.gd import linear_kernel, one_step_gd

    torch.manual_seed(0)
    model, batch = FeatureGD(3, eta=0.7).double(), prompts(3)
    phi = model.features
    kernel = linear_kernel(phi(batch.context_x), phi(batch.query_x))
    expected = one_step_gd(kernel, batch.context_y, 0.7)
    assert (model(batch.context_x, batch.context_y, batch.query_x) - expected).abs().max() < 1e-12


def test_feature_gd_with_identity_features_is_one_plain_gd_step_exactly():
    d, eta = 4, 0.1
    model = FeatureGD(d, feature_dim=d, mlp_layers=0, eta=eta).double()
    with torch.no_grad():
        model.features.embedding.weight.copy_(torch.eye(d))
        model.features.embedding.bias.zero_()
    batch = prompts(d)
    N = batch.num_context

    def loss(w, x, y):  # L(w) = 1/(2N) sum_i (<w, x_i> - y_i)^2
        return ((x @ w - y) ** 2).sum() / (2 * N)

    grad = torch.func.vmap(torch.func.grad(loss))(
        torch.zeros(16, d, dtype=torch.float64), batch.context_x, batch.context_y
    )
    plain_gd = torch.einsum("bd,bd->b", -eta * grad, batch.query_x)  # w1 = w0 - eta grad, w0 = 0
    pred = model(batch.context_x, batch.context_y, batch.query_x)
    torch.testing.assert_close(pred, plain_gd, rtol=1e-13, atol=1e-15)
    theory = gd_predict(batch.context_x, batch.context_y, batch.query_x, eta)  # issue 4's learner
    torch.testing.assert_close(pred, theory, rtol=1e-13, atol=1e-15)


def test_feature_gd_trains_only_features_unless_eta_is_learned():
    fixed = FeatureGD(1)
    assert {n for n, p in fixed.named_parameters() if p.requires_grad} == {
        "features.mlp.0.0.weight",
        "features.mlp.0.0.bias",
        "features.embedding.weight",
        "features.embedding.bias",
    }
    learned = FeatureGD(1, eta=0.3, learn_eta=True)
    assert learned.eta.requires_grad and "eta" in dict(learned.named_parameters())


def one_step(kernel, context_y):
    """One GD step at eta = 1 written out: ``(1 / N) sum_i y_i k_i``."""
    return (context_y * kernel).mean(-1)


def best_one_step_loss(p, target):
    """The smallest ``0.5 E (y - eta p)^2`` over a fine grid of eta."""
    etas = torch.linspace(-5, 5, 20_001, dtype=torch.float64)
    return ((0.5 * (target - etas[:, None] * p) ** 2).mean(1)).min()


def test_deep_feature_probe_sums_match_direct_computation():
    torch.manual_seed(1)
    model = MLPTransformer(1, feature_dim=6, mlp_width=8, num_heads=2, init_scale=1.0).double()
    batch = Sine().sample(64, 10, seeded_generator("cpu", 2), torch.float64)
    probe = DeepFeatureGD()
    results = probe.finalize(probe.compute(model, batch), len(batch))
    cx, cy, qx, qy = batch.context_x, batch.context_y, batch.query_x, batch.query_y
    pred = model(cx, cy, qx)
    torch.testing.assert_close(results["model_loss"], (0.5 * (pred - qy) ** 2).mean())
    phi = model.features
    feature_kernel = torch.einsum("bnf,bf->bn", phi(cx), phi(qx))
    layer = model.layers[0]  # sum over heads of <W_Q [phi_q, 0], W_K [phi_i, 0]>
    tokens = lambda x: torch.cat([phi(x), torch.zeros_like(x[..., :1])], -1)  # noqa: E731
    q = torch.einsum("hkD,bD->bhk", layer.W_Q, tokens(qx))
    k = torch.einsum("hkD,bnD->bhnk", layer.W_K, tokens(cx))
    attention_kernel = (q.unsqueeze(2) * k).sum((1, 3))
    kernels = {"feature": feature_kernel, "linear": torch.einsum("bnd,bd->bn", cx, qx)}
    for name, kernel in {**kernels, "attention": attention_kernel}.items():
        best = best_one_step_loss(one_step(kernel, cy), qy)
        assert best - 1e-6 < results[f"{name}_gd_loss"] <= best + 1e-12, name
    assert results["linear_gd_loss"] <= results["zero_loss"]
    two_layers = MLPTransformer(1, feature_dim=6, mlp_width=8, num_layers=2).double()
    assert "attention_gd_loss" not in probe.finalize(probe.compute(two_layers, batch), 64)
    with pytest.raises(ValueError, match="features"):
        probe.compute(LSA(1), batch)


def test_sine_fit_runs_the_probe_and_logs_its_scalars(tmp_path):
    args = ["fit", f"--config={SINE}", *tiny_args(tmp_path, steps=4)]
    cli = run_cli([*args, "--trainer.callbacks.init_args.num_tasks=100"])
    (probe,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, DeepFeatureGD)]
    assert probe.last_step == 4
    names = {"model_loss", "feature_gd_loss", "linear_gd_loss", "zero_loss"}
    assert {f"deep/{n}" for n in names} <= set(probe.last_results)
    scalars = read_scalars(next((tmp_path / "mlp_sine").iterdir()))
    assert set(scalars["deep/model_loss"]) == {0, 4}  # at the start and at the end


@pytest.mark.parametrize(
    "model", ["icl_lightning.models.FeatureGD", "icl_lightning.models.MLPTransformer"]
)
def test_relu_config_and_feature_gd_baseline_fit(tmp_path, model):
    args = ["fit", f"--config={RELU}", *tiny_args(tmp_path, steps=3), f"--model.model={model}"]
    cli = run_cli(args)
    assert type(cli.model.model).__name__ == model.rsplit(".", 1)[1]
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


@pytest.mark.parametrize(
    ("model", "kwargs", "option"),
    [
        (MLPTransformer, dict(feature_dim=0), "feature_dim"),
        (MLPTransformer, dict(mlp_layers=-1), "mlp_layers"),
        (MLPTransformer, dict(widening_factor=0), "widening_factor"),
        (MLPTransformer, dict(num_layers=2, softmax=[True]), "softmax"),
        (FeatureGD, dict(mlp_width=0), "mlp_width"),
        (FeatureGD, dict(eta=0.0), "eta"),
    ],
)
def test_bad_model_options_name_themselves(model, kwargs, option):
    with pytest.raises(ValueError, match=option):
        model(2, **kwargs)
