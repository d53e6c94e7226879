"""Paper B's identities on random (untrained) float64 contextual blocks (K = 1), to 1e-10."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import linear_prompts
from references import delta_W_sequence, forward_with, gradient_steps, output_with, token_loss
from torch.func import grad, vmap

from icl_lightning.models import ContextualBlock
from icl_lightning.theory.delta_w import A_sequence, delta_W_split, equivalence, output_shift

TOL = 1e-10
B, N, d = 16, 7, 3
VARIANTS = list(itertools.product(["softmax", "linear"], [False, True], [False, True]))
IDS = [f"{a}-{'skip' if s else 'noskip'}-{'ln' if ln else 'noln'}" for a, s, ln in VARIANTS]


@pytest.fixture(params=VARIANTS, ids=IDS)
def block(request) -> ContextualBlock:
    attention, mlp_skip, layer_norm = request.param
    torch.manual_seed(0)
    model = ContextualBlock(
        d,
        num_heads=2,
        mlp_width=12,
        activation="gelu",
        attention=attention,
        mlp_skip=mlp_skip,
        layer_norm=layer_norm,
    ).double()
    if layer_norm:  # random affine LayerNorm parameters too, not the identity init
        for p in model.parameters():
            p.data.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture
def prompt():
    return linear_prompts(B, N, d)


def A(block, cx, cy, qx, keep=None) -> torch.Tensor:
    """``A(S, x)`` of the block's layer on the prompt's tokens (``keep`` selects S)."""
    return block.layers(1)[0](*block.tokens(cx, cy, qx), keep)


def random_Y(size: int) -> torch.Tensor:
    """A bool (B, N) mask with ``size`` random context points per prompt in Y."""
    order = torch.rand(B, N, generator=torch.Generator().manual_seed(2)).argsort(-1)
    return torch.zeros(B, N, dtype=torch.bool).scatter(1, order[:, :size], True)


def test_theorem_2_2_whole_context(block, prompt):
    cx, cy, qx = prompt
    e = equivalence(block, 1, cx, cy, qx)
    assert (block(cx, cy, qx) - e.implicit_prediction).abs().max() < TOL
    assert (e.output - e.implicit_output).abs().max() < TOL
    assert torch.equal(e.prediction, e.output[:, -1])
    # the identity is not vacuous: the context changes the output, and Delta W is not 0
    assert (block(cx, cy, qx) - block(cx[:, :0], cy[:, :0], qx)).abs().max() > 1e-3
    assert delta_W_split(block, 1, cx, cy, qx).delta_W.norm(dim=(-2, -1)).min() > 1e-6


def test_theorem_2_2_through_forward_with(block, prompt):
    """The same identity through the block's own forward pass with W replaced."""
    cx, cy, qx = prompt
    split = delta_W_split(block, 1, cx, cy, qx)
    implicit = forward_with(block, block.mlp.W + split.delta_W, cx[:, :0], cy[:, :0], qx)
    if block.mlp.skip:
        implicit = implicit + output_shift(split.A_C, split.A_rest)[:, -1]
    assert (block(cx, cy, qx) - implicit).abs().max() < TOL


@pytest.mark.parametrize("size", [1, 3, N - 1])
def test_theorem_2_2_partial_Y(block, prompt, size):
    cx, cy, qx = prompt
    Y = random_Y(size)
    e = equivalence(block, 1, cx, cy, qx, Y)
    assert (block(cx, cy, qx) - e.implicit_prediction).abs().max() < TOL
    # T_{W + Delta W(Y)}(C \ Y, x) on the physically shortened context C \ Y
    rest = (~Y).nonzero()[:, 1].reshape(B, N - size)
    rest_x, rest_y = cx.gather(1, rest.unsqueeze(-1).expand(-1, -1, d)), cy.gather(1, rest)
    split = delta_W_split(block, 1, cx, cy, qx, Y)
    assert (split.A_rest - A(block, rest_x, rest_y, qx)).abs().max() < TOL
    implicit = forward_with(block, block.mlp.W + split.delta_W, rest_x, rest_y, qx)
    if block.mlp.skip:
        implicit = implicit + output_shift(split.A_C, split.A_rest)[:, -1]
    assert (block(cx, cy, qx) - implicit).abs().max() < TOL


def test_delta_W_has_rank_one(block, prompt):
    cx, cy, qx = prompt
    for Y in (None, random_Y(3)):
        s = torch.linalg.svdvals(delta_W_split(block, 1, cx, cy, qx, Y).delta_W)
        assert (s[:, 0] > 1e-6).all()
        assert (s[:, 1:] < TOL * s[:, :1]).all()


def test_A_alone_is_the_empty_split(block, prompt):
    cx, cy, qx = prompt
    empty = torch.zeros(B, N, dtype=torch.bool)
    alone = block.layers(1)[0].alone(F.pad(qx, (0, 1)))
    assert (A(block, cx, cy, qx, empty) - alone).abs().max() < TOL


def test_proposition_3_1_sequence_and_recursion(block, prompt):
    cx, cy, qx = prompt
    W = block.mlp.W.detach()
    A_seq = A_sequence(block, 1, cx, cy, qx)
    dW = delta_W_sequence(W, A_seq)
    assert dW.shape == (B, N, *W.shape)
    for i in range(N + 1):  # the running sums == the physical prefixes c_1..c_i
        assert (A_seq[:, i] - A(block, cx[:, :i], cy[:, :i], qx)).abs().max() < TOL
    for i in range(1, N + 1):  # Delta W_i == Theorem 2.2 on the prefix, with Y = c_1..c_i
        split = delta_W_split(block, 1, cx[:, :i], cy[:, :i], qx)
        assert (dW[:, i - 1] - split.delta_W).abs().max() < TOL
    # W_i = W_{i-1} - h grad L_i(W_{i-1}), gradients by autograd, from W_0 = W
    h, Delta = gradient_steps(W, A_seq)
    W_i = W.expand(B, *W.shape)
    for i in range(N):
        g = vmap(grad(token_loss, argnums=1))(Delta[:, i], W_i)
        W_i = W_i - h[:, None, None] * g
        assert (W_i - (W + dW[:, i])).abs().max() < TOL
    # and T_{W + Delta W_i}(x) == T_W(c_1..c_i, x) (+ Delta A_i with the skip connection)
    A_0 = A_seq[:, :1].expand(-1, N, -1)
    implicit = output_with(block.mlp, A_0, W + dW)
    if block.mlp.skip:
        implicit = implicit + output_shift(A_seq[:, 1:], A_0)[..., -1]
    direct = torch.stack([block(cx[:, :i], cy[:, :i], qx) for i in range(1, N + 1)], 1)
    assert (implicit - direct).abs().max() < TOL


def test_update_vanishes_for_a_token_that_changes_nothing():
    """Proposition 3.1: a token that leaves A unchanged gives Delta_i = 0."""
    torch.manual_seed(0)
    block = ContextualBlock(d, attention="linear").double()
    g = torch.Generator().manual_seed(3)
    cx = torch.randn(B, N, d, generator=g, dtype=torch.float64)
    cy = torch.randn(B, N, generator=g, dtype=torch.float64)
    cx[:, 2], cy[:, 2] = 0.0, 0.0  # a zero token adds nothing to linear attention
    _, Delta = gradient_steps(block.mlp.W, A_sequence(block, 1, cx, cy, cx[:, 0]))
    assert Delta[:, 2].abs().max() < TOL
    assert Delta[:, 1].abs().max() > 1e-6
