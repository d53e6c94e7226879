"""The LSA model of paper A against a naive token-by-token reference (float64, random weights)."""

from functools import partial

import pytest
import torch
from conftest import without_c_compiler
from torch.autograd import gradcheck

from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import LSA, batch_last
from icl_lightning.models.linear_attention import LinearAttentionReadout, LinearAttentionUpdate
from icl_lightning.modules import ICLRegressionModule
from icl_lightning.theory import prediction_loss
from icl_lightning.theory.alignment import sensitivities


def _prompts(B=5, N=7, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, N, d, generator=g, dtype=torch.float64),
        torch.randn(B, N, generator=g, dtype=torch.float64),
        torch.randn(B, d, generator=g, dtype=torch.float64),
    )


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _naive(model, cx, cy, qx):
    """Every token j updated by h_j += sum_h P_h sum_i (W_Q h_j . W_K h_i) W_V h_i, i in context,
    then every entry clamped to [-clip, clip] when the model clips."""
    N = cx.shape[1]
    h = model.tokens(cx, cy, qx)
    for layer_index in range(model.num_layers):
        layer = model.layer(layer_index)
        z = layer.norm(h)
        new = h.clone()
        for j in range(h.shape[1]):
            for head in range(layer.W_Q.shape[0]):
                q = z[:, j] @ layer.W_Q[head].T
                for i in range(N):
                    k, v = z[:, i] @ layer.W_K[head].T, z[:, i] @ layer.W_V[head].T
                    new[:, j] += ((q * k).sum(-1, keepdim=True) * v) @ layer.P[head].T
        h = new.clamp(-model.clip, model.clip) if model.clip > 0 else new
    return -h[:, N, -1]


#: the LSA variants every exactness test runs on
VARIANTS = [
    dict(num_layers=1),
    dict(num_layers=3),
    dict(num_layers=3, recurrent=True),
    dict(num_layers=2, num_heads=2, key_size=5),
    dict(num_layers=2, layer_norm=True),
    dict(num_layers=3, clip=1.5),
]
VARIANT_IDS = ["1-layer", "3-layer", "recurrent", "2-heads", "layernorm", "clip"]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=VARIANT_IDS)
def test_lsa_equals_naive_reference(kwargs):
    model = _randomise(LSA(input_dim=3, **kwargs).double())
    cx, cy, qx = _prompts()
    pred = model(cx, cy, qx)
    assert pred.shape == (5,)
    assert torch.allclose(pred, _naive(model, cx, cy, qx), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=VARIANT_IDS)
def test_lsa_gradients_equal_naive_reference(kwargs):
    """The hand-written backward passes of the linear-attention layers
    (:mod:`icl_lightning.models.linear_attention`) == autograd through the naive reference: the
    weights' gradients of a weighted sum of predictions, and the sensitivities d pred / d x_q
    in one backward pass, as GDAlignment takes them."""
    model = _randomise(LSA(input_dim=3, **kwargs).double())
    cx, cy, qx = _prompts()
    weights = torch.randn(len(qx), generator=torch.Generator().manual_seed(2), dtype=qx.dtype)
    params = list(model.parameters())
    fast = torch.autograd.grad((model(cx, cy, qx) * weights).sum(), params)
    naive = torch.autograd.grad((_naive(model, cx, cy, qx) * weights).sum(), params)
    for got, expected in zip(fast, naive, strict=True):
        assert torch.allclose(got, expected, atol=1e-10, rtol=1e-10)
    sens = sensitivities(model, cx, cy, qx)
    qx_leaf = qx.clone().requires_grad_()
    (naive_sens,) = torch.autograd.grad(_naive(model, cx, cy, qx_leaf).sum(), qx_leaf)
    assert torch.allclose(sens, naive_sens, atol=1e-10, rtol=1e-10)
    assert naive_sens.abs().max() > 1e-3


def _readout(h, K, U, num_context):
    return LinearAttentionReadout.apply(h, K, U, num_context)[0]


@pytest.mark.parametrize("num_heads", [1, 2])
def test_linear_attention_backward_passes_pass_gradcheck(num_heads):
    """Both autograd Functions against finite differences (float64), the readout also with a
    token between the context and the query (N < T - 1), which it must not read."""
    g = torch.Generator().manual_seed(3)
    B, T, D, H = 3, 5, 4, num_heads

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    h, K, V, U = rand(B, T, D), rand(D, H * D), rand(H * D, D), rand(D, H)
    assert gradcheck(lambda h, K, V: LinearAttentionUpdate.apply(h, K, V, T - 1)[0], (h, K, V))
    for N in (T - 1, T - 2):
        assert gradcheck(partial(_readout, num_context=N), (h, K, U))


def test_clipping_changes_only_what_exceeds_it():
    """The clip variant's prompts do exceed the clip (so the exactness tests above test it), and
    a clip above every activation changes nothing."""
    cx, cy, qx = _prompts()
    clipped = _randomise(LSA(input_dim=3, num_layers=3, clip=1.5).double())
    free = _randomise(LSA(input_dim=3, num_layers=3).double())
    assert not torch.allclose(clipped(cx, cy, qx), free(cx, cy, qx))
    free.clip = 1e6
    assert torch.equal(
        free(cx, cy, qx), _randomise(LSA(input_dim=3, num_layers=3).double())(cx, cy, qx)
    )


def test_recurrent_model_shares_one_layer():
    shared = LSA(input_dim=3, num_layers=4, recurrent=True)
    stacked = LSA(input_dim=3, num_layers=4)
    assert len(shared.layers) == 1 and len(stacked.layers) == 4
    n_params = sum(p.numel() for p in stacked.parameters())
    assert sum(p.numel() for p in shared.parameters()) * 4 == n_params


def test_tokens_and_readout():
    cx, cy, qx = _prompts(B=2, N=3, d=2)
    tokens = LSA.tokens(cx, cy, qx)
    assert tokens.shape == (2, 4, 3)
    assert torch.equal(tokens[:, :3, :2], cx) and torch.equal(tokens[:, :3, 2], cy)
    assert torch.equal(tokens[:, 3, :2], qx) and torch.all(tokens[:, 3, 2] == 0)
    model = LSA(input_dim=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert torch.all(model(cx, cy, qx) == 0)  # no attention: -h[query, -1] = -0


def test_query_token_is_not_a_key():
    """Keys/values come from the context only: the query's own content never attends to itself."""
    model = _randomise(LSA(input_dim=3).double())
    cx, cy, qx = _prompts()
    with torch.no_grad():
        model.layers[0].W_V[:, :, :3] = 0  # values read y only; query's y-entry is 0
    scaled = model(cx, cy, 2 * qx)
    assert torch.allclose(scaled, 2 * model(cx, cy, qx), atol=1e-12)  # linear in x_q


def test_softmax_layers_and_permutation_invariance():
    model = _randomise(LSA(input_dim=3, num_layers=2, softmax=[True, False]).double())
    cx, cy, qx = _prompts()
    perm = torch.randperm(cx.shape[1])
    assert torch.allclose(model(cx, cy, qx), model(cx[:, perm], cy[:, perm], qx), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        (dict(num_layers=0), "num_layers"),
        (dict(num_heads=0), "num_heads"),
        (dict(num_layers=2, softmax=[True]), "softmax"),
        (dict(key_size=0), "key_size"),
        (dict(init_scale=0.0), "init_scale"),
        (dict(clip=-1.0), "clip"),
    ],
)
def test_bad_model_options(kwargs, option):
    with pytest.raises(ValueError, match=option):
        LSA(input_dim=3, **kwargs)


def test_init_scale_is_variance_scaling_over_layers():
    torch.manual_seed(0)
    model = LSA(input_dim=10, num_layers=2, key_size=200)
    w = model.layers[0].W_Q
    assert w.var().item() == pytest.approx(0.002 / 2 / 11, rel=0.1)
    assert w.abs().max() <= 2 * (0.002 / 2 / 11) ** 0.5 / 0.8796 + 1e-9


def test_module_forward_and_loss_is_half_mse():
    module = ICLRegressionModule(LSA(input_dim=3))
    batch = LinearRegression(input_dim=3).sample(4, 7, seeded_generator("cpu", 0))
    pred = module(batch)
    assert torch.equal(pred, module.model(batch.context_x, batch.context_y, batch.query_x))
    expected = 0.5 * ((pred - batch.query_y) ** 2).mean()  # paper A's loss, written out
    assert torch.allclose(prediction_loss(pred, batch.query_y).mean(), expected)


def test_from_weights_holds_the_given_layers_and_leaves_the_rng_alone():
    layers = [
        _randomise(LSA(input_dim=3, num_heads=2, key_size=5), seed).double() for seed in (1, 2)
    ]
    weights = [model.layers[0].weights() for model in layers]
    state = torch.random.get_rng_state()
    stacked = LSA.from_weights(weights)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert stacked.num_layers == 2 and not stacked.recurrent
    for layer, expected in zip(stacked.layers, weights, strict=True):
        assert layer.W_Q.dtype == torch.float64
        assert all(torch.equal(layer.weights()[k], v) for k, v in expected.items())
    shared = LSA.from_weights(weights[:1], num_layers=3, recurrent=True)
    assert shared.num_layers == 3 and shared.shared_layer is shared.layers[0]
    assert stacked.shared_layer is None  # two distinct layers


@pytest.mark.parametrize(
    ("kwargs", "plain"),
    [
        (dict(), True),
        (dict(num_heads=2), False),
        (dict(softmax=True), False),
        (dict(layer_norm=True), False),
    ],
)
def test_plain_linear_layer_is_one_head_linear_without_layer_norm(kwargs, plain):
    assert LSA(input_dim=3, **kwargs).layers[0].is_plain_linear is plain


#: the variants the batch-last CPU kernels run (no LayerNorm, no softmax)
KERNEL_VARIANTS = [v for v in VARIANTS if not v.get("layer_norm")]


@pytest.mark.parametrize("kwargs", KERNEL_VARIANTS, ids=[str(v) for v in KERNEL_VARIANTS])
def test_batch_last_kernels_run_and_equal_the_per_layer_path(kwargs):
    """The exactness tests above run the kernels (float64 and float32 on the CPU): on 37
    prompts (two full tiles and a partial one) the predictions and every gradient, the
    prompts' included, equal the per-layer path's to 1e-10."""
    model = _randomise(LSA(input_dim=3, **kwargs).double())
    layers = [model.layer(i) for i in range(model.num_layers)]
    prompts = [x.requires_grad_() for x in _prompts(B=37)]
    assert batch_last.applies(layers, prompts[0])
    assert batch_last.applies([la.float() for la in layers], prompts[0].float())
    model.double()
    weights = torch.randn(37, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    leaves = [*prompts, *model.parameters()]
    fast = torch.autograd.grad((model(*prompts) * weights).sum(), leaves)
    with batch_last.disabled():
        assert not batch_last.applies(layers, prompts[0])
        reference = torch.autograd.grad((model(*prompts) * weights).sum(), leaves)
    for got, expected in zip(fast, reference, strict=True):
        assert torch.allclose(got, expected, atol=1e-10, rtol=1e-10)


def test_linear_attention_stack_passes_gradcheck():
    """The kernels' backward pass, the weight products' and the tokens' against finite
    differences (float64): two distinct layers of two heads, clipping active."""
    g = torch.Generator().manual_seed(4)
    model = LSA(input_dim=2, num_layers=3, num_heads=2, key_size=3)
    weights = [
        torch.randn(p.shape, generator=g, dtype=torch.float64, requires_grad=True)
        for p in model.parameters()
    ]
    prompts = [x.requires_grad_() for x in _prompts(B=3, N=4, d=2)]

    def stack(*inputs):
        return batch_last.LinearAttentionStack.apply(*inputs[:3], 2.0, (0, 1, 2), *inputs[3:])

    assert (stack(*prompts, *weights).abs() > 2).any()  # the final clip is outside: above it
    assert gradcheck(stack, (*prompts, *weights))


@pytest.mark.parametrize(
    "case", ["bfloat16", "autocast", "layer_norm", "softmax", "vmap", "no compiler"]
)
def test_where_the_kernels_do_not_apply_the_per_layer_path_runs(case, monkeypatch, tmp_path):
    """bf16 weights, autocast (bf16-mixed), LayerNorm or softmax layers, torch.func transforms,
    and a machine without a C compiler (one warning) take the per-layer path."""
    model = _randomise(LSA(input_dim=3, num_layers=2, layer_norm=case == "layer_norm"))
    model.layers[1].softmax = case == "softmax"
    dtype = torch.bfloat16 if case == "bfloat16" else torch.float32
    cx, cy, qx = (x.to(dtype) for x in _prompts())
    model.to(dtype)
    layers = list(model.layers)
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not batch_last.applies(layers, cx)
            assert model(cx, cy, qx).dtype == torch.bfloat16
        return
    elif case == "vmap":
        assert torch.func.vmap(lambda x: torch.tensor(batch_last.applies(layers, x)))(cx).sum() == 0
        return
    elif case == "no compiler":
        without_c_compiler(monkeypatch, tmp_path, batch_last)
        with pytest.warns(UserWarning, match="could not be built"):
            assert not batch_last.applies(layers, cx)
        assert not batch_last.applies(layers, cx)  # once per process
    else:
        assert not batch_last.applies(layers, cx)
    with batch_last.disabled():
        expected = model(cx, cy, qx)
    assert torch.equal(model(cx, cy, qx), expected)


def test_mismatched_prompts_are_named_not_read_out_of_bounds():
    model = LSA(input_dim=3, num_layers=2).double()
    cx, cy, qx = _prompts()
    with pytest.raises(ValueError, match=r"query_x of shape \(5, 2\)"):
        model(cx, cy, qx[:, :2])
    with pytest.raises(ValueError, match="context_y .* dtype torch.float32"):
        model(cx, cy.float(), qx)
    assert not batch_last.applies(list(model.layers), cx[..., :2])  # the per-layer path's error
