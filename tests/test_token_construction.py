"""Normal token construction: separate x / y tokens, softmax copy layer, the CopyScore probe."""

import math

import pytest
import torch
from conftest import (
    CONFIGS,
    cpu_validate_args,
    image_tags,
    read_scalars,
    run_cli,
    run_cli_subprocess,
    tiny_args,
)

from icl_lightning.callbacks import CopyScore, DeepFeatureGD
from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import TokenTransformer
from icl_lightning.models.token_transformer import sinusoidal_encoding

TOKENS = str(CONFIGS / "token_construction.yaml")
SINE = str(CONFIGS / "mlp_sine.yaml")
d, N, P = 3, 6, 16


@torch.no_grad()
def measure(probe, model, batch):
    """What the probe reports for ``model`` on ``batch`` (one process)."""
    return probe.finalize(probe.compute(model, batch), len(batch))


def one_step_gd(batch, eta=1.0):
    """Paper A's one GD step from w0 = 0 written out: ``(eta / N) sum_i y_i <x_i, x_q>``."""
    return eta / N * torch.einsum("bn,bnd,bd->b", batch.context_y, batch.context_x, batch.query_x)


def prompts(batch_size=32, seed=0):
    return LinearRegression(d).sample(batch_size, N, seeded_generator("cpu", seed), torch.float64)


def test_token_layout_shapes_and_attention():
    torch.manual_seed(0)
    model = TokenTransformer(d, pe_size=P, init_scale=1.0).double()
    batch = prompts()
    h = model.tokens(batch.context_x, batch.context_y, batch.query_x)
    assert h.shape == (32, 2 * N + 1, P + d + 1)
    torch.testing.assert_close(h[0, :, :P], sinusoidal_encoding(2 * N + 1, P, torch.float64))
    torch.testing.assert_close(h[:, 2 * 2, P : P + d], batch.context_x[:, 2])  # x_3-token
    torch.testing.assert_close(h[:, 2 * 2 + 1, -1], batch.context_y[:, 2])  # y_3-token
    assert (h[:, 0 : 2 * N : 2, -1] == 0).all() and (h[:, 1 : 2 * N : 2, P:-1] == 0).all()
    torch.testing.assert_close(h[:, -1, P:-1], batch.query_x)
    h1, attention = model.first_layer(batch.context_x, batch.context_y, batch.query_x)
    assert h1.shape == h.shape and attention.shape == (32, 1, 2 * N + 1, 2 * N)
    torch.testing.assert_close(attention.sum(-1), torch.ones(32, 1, 2 * N + 1, dtype=h.dtype))
    # the returned map is the one layer 1 uses: softmax(q k / sqrt(key)) V P reproduces h1 - h
    layer = model.layers[0]
    v = torch.einsum("hkD,btD->bhtk", layer.W_V, h[:, : 2 * N])
    update = torch.einsum("hDk,bhtk->btD", layer.P, attention @ v)
    torch.testing.assert_close(h + update, h1)
    # and forward = layer 2 on top of layer 1, read at the query
    layer2 = model.layers[1]
    pred = -(h1[:, 2 * N :] + layer2(h1, 2 * N, slice(2 * N, None)))[:, -1, -1]
    torch.testing.assert_close(model(batch.context_x, batch.context_y, batch.query_x), pred)


def test_positions_matter_but_swapping_whole_pairs_only_moves_encodings():
    torch.manual_seed(0)
    model = TokenTransformer(d, pe_size=P, init_scale=1.0).double()
    batch = prompts()
    pred = model(batch.context_x, batch.context_y, batch.query_x)
    order = torch.randperm(N)
    permuted = model(batch.context_x[:, order], batch.context_y[:, order], batch.query_x)
    assert not torch.allclose(pred, permuted)  # positional encodings break the symmetry
    no_softmax = TokenTransformer(d, pe_size=P, init_scale=1.0, first_layer_softmax=False)
    assert not no_softmax.layers[0].softmax


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        (dict(num_layers=1), "num_layers"),
        (dict(pe_size=3), "pe_size"),
        (dict(num_heads=0), "num_heads"),
        (dict(init_scale=0.0), "init_scale"),
    ],
)
def test_bad_model_options_name_themselves(kwargs, option):
    with pytest.raises(ValueError, match=option):
        TokenTransformer(d, **kwargs)


def copying_construction(eta: float, sharpness: float = 200.0) -> TokenTransformer:
    """Hand-set weights: layer 1 makes every token t attend to token t + 1 and copies its y slot
    (``W_Q`` = sharpness * the rotation taking p_t to p_{t+1}, ``W_K`` = id on the encoding);
    layer 2 is paper A's GD step on the x block with the copied y."""
    model = TokenTransformer(d, pe_size=P).double()
    D = P + d + 1
    one, two = model.layers
    omega = 10000 ** (-torch.arange(0, P, 2, dtype=torch.float64) / P)
    c, s = torch.cos(omega), torch.sin(omega)
    rotation = torch.block_diag(
        *[
            torch.stack([torch.stack([a, b]), torch.stack([-b, a])])
            for a, b in zip(c, s, strict=True)
        ]
    )
    with torch.no_grad():
        for weight in (one.W_Q, one.W_K, one.W_V, one.P, two.W_Q, two.W_K, two.W_V, two.P):
            weight.zero_()
        one.W_Q[0, :P, :P] = sharpness * rotation  # q_t = sharpness p_{t+1}
        one.W_K[0, :P, :P] = torch.eye(P)
        one.W_V[0, -1, -1] = 1.0  # value: the y slot
        one.P[0] = torch.eye(D)
        two.W_Q[0, P:-1, P:-1] = torch.eye(d)
        two.W_K[0, P:-1, P:-1] = torch.eye(d)
        two.W_V[0, -1, -1] = -1.0
        two.P[0] = eta / N * torch.eye(D)
    return model


def test_copy_score_is_one_for_the_copying_construction_and_low_at_init():
    batch = prompts(batch_size=256)
    probe = CopyScore()
    model = copying_construction(eta=0.7)
    results = measure(probe, model, batch)
    assert results["attention_mass"] > 0.999
    assert results["r2"] > 0.999
    # layer 2 then does one GD step with eta = 0.7, read at the query; the query token itself
    # also picked up some y_j in layer 1 (its right neighbour is not a key), which shifts pred
    pred = model(batch.context_x, batch.context_y, batch.query_x)
    gd = one_step_gd(batch, 0.7)
    _, attention = model.first_layer(batch.context_x, batch.context_y, batch.query_x)
    picked_up = (attention[:, 0, -1, 1::2] * batch.context_y).sum(-1)
    torch.testing.assert_close(pred + picked_up, gd, rtol=1e-6, atol=1e-8)
    assert results["attention_map"].shape == (2 * N + 1, 2 * N)
    torch.manual_seed(0)
    untrained = TokenTransformer(d, pe_size=P).double()
    results = measure(probe, untrained, batch)
    assert abs(float(results["attention_mass"]) - 1 / (2 * N)) < 0.01
    # uniform attention averages all values, y_i among N: R^2 of about 1/N, not 1
    assert results["r2"] < 1.5 / N
    assert "attention_map" in probe.figures(results)


def test_gd_loss_of_the_copy_probe_is_the_best_one_step_gd():
    batch = prompts(batch_size=256, seed=3)
    probe = CopyScore()
    results = measure(probe, copying_construction(eta=1.0), batch)
    gd = one_step_gd(batch)
    etas = torch.linspace(0, 20, 20_001, dtype=torch.float64)
    losses = (0.5 * (batch.query_y - etas[:, None] * gd) ** 2).mean(1)
    assert float(results["gd_loss"]) == pytest.approx(float(losses.min()), rel=1e-6)
    assert float(results["gd_eta"]) == pytest.approx(float(etas[losses.argmin()]), abs=2e-3)
    with pytest.raises(ValueError, match="first_layer"):
        probe.compute(torch.nn.Linear(1, 1), batch)


def test_token_construction_fit_logs_copy_scalars_and_attention_map(tmp_path):
    args = ["fit", f"--config={TOKENS}", *tiny_args(tmp_path, steps=4)]
    cli = run_cli([*args, "--trainer.callbacks.init_args.num_tasks=64"])
    (probe,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, CopyScore)]
    names = {"attention_mass", "r2", "model_loss", "gd_loss", "gd_eta"}
    assert set(probe.last_results) == {f"copy/{n}" for n in names}
    assert all(math.isfinite(v) for v in probe.last_results.values())
    run_dir = next((tmp_path / "token_construction").iterdir())
    assert "copy/attention_map" in image_tags(run_dir)
    assert set(read_scalars(run_dir)["copy/r2"]) == {0, 4}


PROBES = {"copy": (TOKENS, CopyScore), "deep": (SINE, DeepFeatureGD)}


@pytest.mark.parametrize("namespace", PROBES)
def test_probe_scalars_agree_on_one_and_two_ddp_processes(tmp_path, namespace):
    """101 evaluation tasks (uneven shares, chunks of 16) on 1 process and on 2 (gloo)."""
    config, probe_class = PROBES[namespace]
    results = {}
    for devices in (1, 2):
        save_dir = tmp_path / f"devices{devices}"
        args = [
            *cpu_validate_args(devices, save_dir),
            f"--config={config}",
            "--trainer.callbacks.init_args.num_tasks=101",
            "--trainer.callbacks.init_args.batch_size=16",
            "--data.init_args.num_val_tasks=16",
        ]
        if devices == 1:
            cli = run_cli(args)
            (probe,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, probe_class)]
            assert probe.last_results  # the in-process run's own record
        else:  # DDP re-launches the command, so it needs a process of its own
            run_cli_subprocess(args, cwd=tmp_path)
        scalars = read_scalars(save_dir)
        results[devices] = {t: v[0] for t, v in scalars.items() if t.startswith(namespace + "/")}
    assert len(results[1]) >= 5 and results[1].keys() == results[2].keys()
    for tag, value in results[1].items():
        assert results[2][tag] == pytest.approx(value, rel=1e-5, abs=1e-7), tag
