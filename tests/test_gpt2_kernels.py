"""GPT-2's CPU kernels (causal attention, tanh GELU): the same function as torch's path, in
float64 to 1e-12 and float32 to rounding, gradients included, and every fallback."""

import pytest
import torch
import torch.nn.functional as F
from conftest import without_c_compiler
from test_garg_gpt2 import naive_forward, prompts

from icl_lightning.models import GPT2, c_kernels, gpt2_cpu

READS = {"every token": slice(None), "x tokens": slice(0, None, 2), "query": slice(-1, None)}


def _qkv(B=3, T=11, H=2, DH=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, H, DH, generator=g, dtype=dtype).requires_grad_()


def _attention_and_grad(qkv, read, weights):
    out = gpt2_cpu.attention(qkv, read)
    (grad,) = torch.autograd.grad((out * weights).sum(), qkv)
    return out, grad


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
@pytest.mark.parametrize("DH", [8, 16])
def test_attention_kernel_equals_torch_in_float64(read, DH):
    qkv = _qkv(DH=DH)
    assert gpt2_cpu.applies(qkv, DH)
    weights = torch.randn_like(gpt2_cpu.attention(qkv, read))
    out, grad = _attention_and_grad(qkv, read, weights)
    with c_kernels.disabled():
        assert not gpt2_cpu.applies(qkv, DH)
        expected, expected_grad = _attention_and_grad(qkv, read, weights)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_attention_kernel_passes_gradcheck():
    qkv = _qkv(B=2, T=5, DH=8)
    rows = torch.arange(5)[0::2]
    assert torch.autograd.gradcheck(lambda x: gpt2_cpu.CausalAttention.apply(x, rows), (qkv,))


def _gelu_and_grads(u, b, weights):
    y = gpt2_cpu.bias_gelu(u, b)
    return y, *torch.autograd.grad((y * weights).sum(), (u, b))


def test_bias_gelu_kernel_equals_torch():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50, 3, 8, generator=g, dtype=torch.float64) * 4
    u[0, 0, :3] = torch.tensor([0.0, 40.0, -40.0])  # exp overflows: gelu = z, 0
    b = torch.randn(8, generator=g, dtype=torch.float64).requires_grad_()
    u.requires_grad_()
    weights = torch.randn(50, 3, 8, generator=g, dtype=torch.float64)
    assert gpt2_cpu.applies(u, 8)
    got = _gelu_and_grads(u, b, weights)
    with c_kernels.disabled():
        expected = _gelu_and_grads(u, b, weights)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
    u32, b32 = u.detach().float(), b.detach().float()
    expected32 = F.gelu(u32 + b32, approximate="tanh")
    torch.testing.assert_close(gpt2_cpu.bias_gelu(u32, b32), expected32)


def _linear_and_grads(x, W, b, weights):
    y = gpt2_cpu.linear(x, W, b)
    return y, *torch.autograd.grad((y * weights).sum(), (x, W, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_on_onednn_equals_f_linear(dtype, monkeypatch):
    """float32 through oneDNN (where it runs) within float rounding of ``F.linear``; float64,
    which oneDNN does not take, and a oneDNN that does not run are ``F.linear`` itself."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 24, generator=g, dtype=dtype).requires_grad_()
    W = torch.randn(40, 24, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(40, generator=g, dtype=dtype).requires_grad_()
    weights = torch.randn(3, 7, 40, generator=g, dtype=dtype)
    got = _linear_and_grads(x, W, b, weights)
    expected = [
        F.linear(x, W, b),
        *torch.autograd.grad((F.linear(x, W, b) * weights).sum(), (x, W, b)),
    ]
    if dtype == torch.float32:
        assert gpt2_cpu._onednn()
        assert got[0].grad_fn.name().startswith("OneDNNLinear")
        for a, e in zip(got, expected, strict=True):
            torch.testing.assert_close(a, e)
        monkeypatch.setattr(gpt2_cpu, "_onednn", lambda: False)
        got = _linear_and_grads(x, W, b, weights)
    assert all(torch.equal(a, e) for a, e in zip(got, expected, strict=True))


def _predictions_and_grads(model, cx, cy, qx):
    out = model.prefix_predictions(cx, cy, qx)
    weights = torch.linspace(-1, 1, out.shape[1], dtype=out.dtype)
    return out, torch.autograd.grad((out @ weights).sum(), list(model.parameters()))


def test_gpt2_on_the_kernels_equals_the_written_out_equations_in_float64():
    torch.manual_seed(0)
    model = GPT2(input_dim=4, num_positions=8, embed_dim=16, num_layers=2, num_heads=2).double()
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    cx, cy, qx = prompts()
    assert gpt2_cpu.applies(cx, 8)
    torch.testing.assert_close(
        model.prefix_predictions(cx, cy, qx), naive_forward(model, cx, cy, qx), rtol=0, atol=1e-10
    )
    out, grads = _predictions_and_grads(model, cx, cy, qx)
    with c_kernels.disabled():
        expected, expected_grads = _predictions_and_grads(model, cx, cy, qx)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_gpt2_in_float32_on_the_kernels_matches_torch():
    torch.manual_seed(1)
    model = GPT2(input_dim=5, num_positions=11, embed_dim=64, num_layers=2, num_heads=2)
    cx, cy, qx = (t.float() for t in prompts(B=7, N=10, d=5))
    assert gpt2_cpu.applies(cx, 32)
    out, grads = _predictions_and_grads(model, cx, cy, qx)
    with c_kernels.disabled():
        expected, expected_grads = _predictions_and_grads(model, cx, cy, qx)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_the_kernels_split_over_threads_give_the_same_numbers():
    """Each prompt (GELU: each row) is computed alone, so the split changes no bit of the
    outputs and gradients; the bias gradient is summed per part, then over the parts."""
    qkv = _qkv(B=7, T=9, DH=32, dtype=torch.float32)
    weights = torch.randn(7, 5, 2, 32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):  # 7 prompts in parts of 2, 2 and 3
            torch.set_num_threads(n)
            out, grad = _attention_and_grad(qkv, slice(0, None, 2), weights)
            u = qkv.detach().view(-1, 32).requires_grad_()
            b = torch.linspace(-1, 1, 32).requires_grad_()
            gelu = _gelu_and_grads(u, b, u.detach())  # 378 rows in parts of 126
            results.append((out, grad, *gelu))
    finally:
        torch.set_num_threads(threads)
    (*one, db_one), (*split, db_split) = results
    assert all(torch.equal(a, b) for a, b in zip(one, split, strict=True))
    torch.testing.assert_close(db_one, db_split)


def test_a_nan_reaches_every_output_that_reads_it():
    qkv = _qkv(DH=8).detach()
    qkv[0, 4, 1] = float("nan")  # the key of position 4 in prompt 0
    out = gpt2_cpu.attention(qkv, slice(None))
    assert out[0, 4:].isnan().all() and not out[0, :4].isnan().any()
    assert not out[1:].isnan().any()
    u = torch.tensor([[1.0, float("nan")]] * 8, dtype=torch.float64)
    assert gpt2_cpu.bias_gelu(u, torch.zeros(2, dtype=torch.float64)).isnan()[:, 1].all()
    assert not gpt2_cpu.bias_gelu(u, torch.zeros(2, dtype=torch.float64)).isnan()[:, 0].any()


@pytest.mark.parametrize("case", ["head size", "bfloat16", "autocast", "vmap", "no compiler"])
def test_where_the_kernels_do_not_apply_torch_computes_the_same(case, monkeypatch, tmp_path):
    torch.manual_seed(0)
    heads = 4 if case == "head size" else 2  # head size 4: not a multiple of 8 doubles
    model = GPT2(input_dim=4, num_positions=8, embed_dim=16, num_layers=2, num_heads=heads)
    cx, cy, qx = prompts()
    dtype = {"bfloat16": torch.bfloat16, "autocast": torch.float32}.get(case, torch.float64)
    model, cx, cy, qx = (t.to(dtype) for t in (model, cx, cy, qx))
    head_size = 16 // heads
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not gpt2_cpu.applies(cx, head_size)
            assert model(cx, cy, qx).dtype == torch.bfloat16
        return
    if case == "vmap":
        applies = torch.func.vmap(lambda x: torch.tensor(gpt2_cpu.applies(x, head_size)))(cx)
        assert applies.sum() == 0
        return
    if case == "no compiler":
        without_c_compiler(monkeypatch, tmp_path, gpt2_cpu)
        with pytest.warns(UserWarning, match="GPT2: the CPU kernels could not be built"):
            assert not gpt2_cpu.applies(cx, head_size)
        assert not gpt2_cpu.applies(cx, head_size)  # warned once per process
    assert not gpt2_cpu.applies(cx, head_size)
    with c_kernels.disabled():
        expected = model.prefix_predictions(cx, cy, qx)
    # torch's attention; the GELU kernel still runs at head size 4 (it has no heads)
    atol = 1e-12 if case == "head size" else 0
    torch.testing.assert_close(model.prefix_predictions(cx, cy, qx), expected, rtol=0, atol=atol)
