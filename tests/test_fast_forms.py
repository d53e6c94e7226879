"""The fast forms (running sums, Gram-matrix norms, SGD on W by columns, query-only attention)
against their definitions, in float64 on random untrained weights, to 1e-10."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from references import delta_W_sequence, output_with

from icl_lightning.models import LSA, ContextualBlock
from icl_lightning.theory.delta_w import A_sequence, delta_W_sequence_norms, delta_W_split
from icl_lightning.theory.finetune import delta_W_predictions, sgd_on_W

TOL = 1e-10
B, N, d = 6, 9, 3
VARIANTS = list(itertools.product(["softmax", "linear"], [False, True], [False, True]))
IDS = [f"{a}-{'skip' if s else 'noskip'}-{'ln' if ln else 'noln'}" for a, s, ln in VARIANTS]


def random_block(attention="softmax", mlp_skip=False, layer_norm=False, activation="gelu"):
    torch.manual_seed(0)
    block = ContextualBlock(
        d,
        num_heads=3,
        key_size=2,
        mlp_width=10,
        activation=activation,
        attention=attention,
        mlp_skip=mlp_skip,
        layer_norm=layer_norm,
        init_scale=2.0,  # large scores: the softmax is far from uniform
    ).double()
    with torch.no_grad():  # random biases and LayerNorm parameters, not their zero/one init
        for name, p in block.named_parameters():
            if not name.endswith("W"):
                p.add_(0.3 * torch.randn_like(p))
    return block


def A(block, cx, cy, qx, keep=None) -> torch.Tensor:
    """``A(S, x)`` of the block's layer on the prompt's tokens (``keep`` selects S)."""
    return block.layers(1)[0](*block.tokens(cx, cy, qx), keep)


def A_alone(block, x) -> torch.Tensor:
    """``A(x)`` for inputs ``x`` ``(..., d)``: the token ``[x; 0]`` alone."""
    return block.layers(1)[0].alone(F.pad(x, (0, 1)).flatten(0, -2)).reshape(*x.shape[:-1], -1)


def prompts(batch=B, num_context=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, num_context + 1, d, generator=g, dtype=torch.float64)
    y = torch.randn(batch, num_context + 1, generator=g, dtype=torch.float64)
    return x[:, :num_context], y[:, :num_context], x[:, num_context], y[:, num_context]


@pytest.mark.parametrize(("attention", "mlp_skip", "layer_norm"), VARIANTS, ids=IDS)
def test_running_sums_equal_the_masked_passes(attention, mlp_skip, layer_norm):
    """A(c_1..c_i, x) from running sums == the masked definition, for every prefix i."""
    block = random_block(attention, mlp_skip, layer_norm)
    cx, cy, qx, _ = prompts()
    keep = torch.arange(N) < torch.arange(N + 1).unsqueeze(1)  # row i keeps c_1..c_i
    masked = A(block, cx, cy, qx, keep.expand(B, -1, -1))
    running = A_sequence(block, 1, cx, cy, qx)
    assert (running - masked).abs().max() < TOL
    assert (running[:, -1] - A(block, cx, cy, qx)).abs().max() < TOL
    assert (running[:, 0] - A_alone(block, qx)).abs().max() < TOL
    # and so the Delta W_i sequence: running sums == masked passes
    W = block.mlp.W.detach()
    dW_running, dW_masked = delta_W_sequence(W, running), delta_W_sequence(W, masked)
    assert (dW_running - dW_masked).abs().max() < TOL * dW_masked.abs().max()
    assert (running[:, 1:] - running[:, :-1]).abs().max() > 1e-3  # the prefixes differ


def test_running_sums_share_one_maximum_without_overflow():
    """Scores of ~1e3 overflow exp() without the shared stabiliser; the result stays exact."""
    block = random_block("softmax")
    cx, cy, qx, _ = prompts()
    cx = 300 * cx  # scores ~ |x|^2 * 300^2 / sqrt(k): far beyond exp's range
    running = A_sequence(block, 1, cx, cy, qx)
    keep = torch.arange(N) < torch.arange(N + 1).unsqueeze(1)
    masked = A(block, cx, cy, qx, keep.expand(B, -1, -1))
    assert torch.isfinite(running).all()
    assert (running - masked).abs().max() < TOL * masked.abs().max()


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_delta_W_is_the_hand_written_outer_product(attention):
    """Theorem 2.2's Delta W == outer(W dA, A_0) / |A_0|^2, written out here, per prompt."""
    block = random_block(attention)
    cx, cy, qx, _ = prompts()
    W = block.mlp.W.detach()
    split = delta_W_split(block, 1, cx, cy, qx)
    for b in range(B):
        A_0 = A(block, cx[b : b + 1, :0], cy[b : b + 1, :0], qx[b : b + 1])[0]  # A(x)
        dA = A(block, cx[b : b + 1], cy[b : b + 1], qx[b : b + 1])[0] - A_0
        expected = torch.outer(W @ dA, A_0) / A_0.dot(A_0)
        assert (split.delta_W[b] - expected).abs().max() < TOL
        assert expected.abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_norms_from_the_gram_matrix(attention):
    block = random_block(attention)
    cx, cy, qx, _ = prompts()
    A_seq = A_sequence(block, 1, cx, cy, qx)
    dW = delta_W_sequence(block.mlp.W, A_seq)  # (B, N, m, D), the definition
    norm, update = delta_W_sequence_norms(block.mlp.W, A_seq)
    assert (norm - dW.norm(dim=(-2, -1))).abs().max() < TOL
    assert (update - dW.diff(dim=1).norm(dim=(-2, -1))).abs().max() < TOL


@pytest.mark.parametrize("mlp_skip", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_delta_W_predictions_are_the_updated_block(mlp_skip, chunk):
    """M_{W + Delta W_i}(A_0)[-1] through the block's own head with W replaced, for all i."""
    block = random_block(mlp_skip=mlp_skip)
    cx, cy, qx, _ = prompts()
    A_seq = A_sequence(block, 1, cx, cy, qx)
    dW = delta_W_sequence(block.mlp.W, A_seq)
    expected = output_with(block.mlp, A_seq[:, :1].expand(-1, N, -1), block.mlp.W + dW)
    assert (delta_W_predictions(block.mlp, A_seq, chunk) - expected).abs().max() < TOL


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "identity"])
@pytest.mark.parametrize("mlp_skip", [False, True])
def test_sgd_on_W_equals_autograd_sgd_task_by_task(activation, mlp_skip):
    """The batched column-wise SGD == torch.optim.SGD on W of a copy of the block, per task."""
    block = random_block(mlp_skip=mlp_skip, activation=activation)
    cx, cy, qx, _ = prompts()
    with torch.no_grad():  # as the probe calls it
        examples, test = A_alone(block, cx), A_alone(block, qx)
        fast = sgd_on_W(block.mlp, examples, cy, test, lr=0.05)
    for b in range(B):
        W = block.mlp.W.detach().clone().requires_grad_()
        sgd = torch.optim.SGD([W], lr=0.05)
        for i in range(N):
            loss = 0.5 * (output_with(block.mlp, examples[b, i], W) - cy[b, i]) ** 2
            sgd.zero_grad()
            loss.backward()
            sgd.step()
            expected = output_with(block.mlp, test[b], W.detach())
            assert abs(fast[b, i] - expected) < TOL * max(1.0, abs(expected))
    assert (fast[:, -1] - block.mlp(test)[:, -1]).abs().max() > 1e-3  # W moved


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=1),
        dict(num_layers=2, num_heads=3, key_size=2),
        dict(num_layers=2, softmax=True),
        dict(num_layers=3, softmax=[False, True, True], num_heads=2, layer_norm=True),
    ],
    ids=["linear", "linear-heads", "softmax", "mixed-layernorm"],
)
def test_lsa_query_update_equals_every_token_update(kwargs):
    """The last layer's query-only, last-coordinate update == the full layer's query row."""
    torch.manual_seed(0)
    model = LSA(d, **kwargs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    cx, cy, qx, _ = prompts()
    h = model.tokens(cx, cy, qx)
    for i in range(model.num_layers - 1):
        h = h + model.layer(i)(h, N)
    last = model.layer(model.num_layers - 1)
    full = h[:, -1] + last(h, N)[:, -1]
    assert (last.query_update(h, N) - last(h, N)[:, -1]).abs().max() < TOL
    assert (model(cx, cy, qx) + full[:, -1]).abs().max() < TOL
    assert full.abs().max() > 1e-3


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "identity"])
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("buffers", [False, True])
def test_prediction_and_slope_in_any_grad_mode(activation, mode, buffers):
    """``M_W(z)[-1]`` and its u-gradient ``W_2[-1] * f'(u)`` match autograd through the whole
    readout, also under ``torch.no_grad`` and ``torch.inference_mode`` (Lightning's validate),
    with and without buffers for the hidden units and the slope."""
    mlp = random_block(activation=activation).mlp
    u = torch.randn(7, mlp.W.shape[0], dtype=torch.float64, requires_grad=True)
    z = torch.randn(7, mlp.W.shape[1], dtype=torch.float64)
    expected = mlp.prediction(u, z)
    (slope,) = torch.autograd.grad(expected.sum(), u)
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad}.get(mode, torch.inference_mode)
    with context():
        out = torch.full((2, *u.shape), torch.nan, dtype=u.dtype) if buffers else None
        prediction, got = mlp.prediction_and_slope(u.detach().clone(), z.clone(), out)
        again = mlp.prediction(u.detach().clone(), z.clone(), out[0] if buffers else None)
    torch.testing.assert_close(prediction, expected.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(again, expected.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(got, slope, rtol=0, atol=1e-12)
