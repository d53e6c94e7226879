"""GPT-2's CPU fast path: its linear layers on oneDNN, causal attention and the tanh GELU as C
kernels, each in an autograd function.

At Garg et al.'s sizes (head size 32, 41 - 101 points) torch's CPU attention runs its small
per-head products at a fraction of the core's speed and its tanh GELU takes several passes;
:mod:`~icl_lightning.models.gpt2_kernels` computes both in one pass each way (the maths is
there). The linear layers' products ``x W^T`` and, backward, ``dy W`` go through oneDNN's
matrix product (``torch.ops.mkldnn._linear_pointwise``, which inductor uses on the CPU), 10 -
30 % faster here than the MKL product that ``F.linear`` calls; ``dW = dy^T x`` stays on MKL.
:class:`~icl_lightning.models.GPT2` calls :func:`linear`, :func:`attention` and
:func:`bias_gelu`, which take these where :func:`applies` (CPU tensors of float32, and float64
for the C kernels; a head size that is a multiple of 16 floats or 8 doubles; no autocast, no
``torch.func`` transform; kernels that compile, a oneDNN that runs) and torch's ``F.linear``,
``scaled_dot_product_attention`` and ``gelu`` otherwise; both paths compute the same function
(``tests/test_gpt2_kernels.py``). With several torch threads the C kernels split the prompts
(or rows) across that many threads (``ctypes`` releases the GIL in the kernels).
"""

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from icl_lightning.models import c_kernels
from icl_lightning.models.gpt2_kernels import SOURCE

_SCALAR = {torch.float32: "float", torch.float64: "double"}
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-std=c11", "-shared", "-fPIC"]
_LONG, _DOUBLE, _POINTER = ctypes.c_long, ctypes.c_double, ctypes.c_void_p
_SIGNATURES = {
    "attention_forward": [_POINTER] * 4 + [_LONG] * 4 + [_DOUBLE],
    "attention_backward": [_POINTER] * 6 + [_LONG] * 4 + [_DOUBLE],
    "bias_gelu_forward": [_POINTER] * 3 + [_LONG] * 2,
    "bias_gelu_backward": [_POINTER] * 5 + [_LONG] * 2,
}
_libraries: dict[tuple, ctypes.CDLL | None] = {}
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process, threads): pool


def library(dtype: torch.dtype, head_size: int) -> ctypes.CDLL | None:
    """The kernels for ``dtype`` and ``head_size``; ``None`` (one warning per process) when
    they cannot be compiled or loaded."""
    key = (dtype, head_size)
    if key not in _libraries:
        scalar = _SCALAR[dtype]
        flags = [*_FLAGS, f"-DSCALAR={scalar}", f"-DDH={head_size}"]
        stem = f"gpt2_{scalar}_DH{head_size}"
        _libraries[key] = c_kernels.load("GPT2", stem, SOURCE, flags, _SIGNATURES, ["-lm"])
    return _libraries[key]


def _lanes(x: torch.Tensor) -> int:
    """Elements of ``x``'s dtype in one 64-byte vector (16 floats, 8 doubles): the kernels'
    unit of a head's size, and the size the GELU kernels are compiled for."""
    return 64 // x.element_size()


def applies(x: torch.Tensor, head_size: int) -> bool:
    """Whether the C kernels run on ``x`` for heads of ``head_size`` (module docstring)."""
    if x.dtype not in _SCALAR or head_size % _lanes(x) or not c_kernels.eager_cpu(x):
        return False
    return library(x.dtype, head_size) is not None


def _parts(size: int) -> list[int]:
    """Bounds of ``range(size)`` cut into ``torch.get_num_threads()`` parts (fewer when
    ``size`` is smaller): part k is ``range(bounds[k], bounds[k + 1])``."""
    parts = max(1, min(torch.get_num_threads(), size))
    return [size * k // parts for k in range(parts + 1)]


def _in_parallel(call, bounds: list[int]) -> None:
    """``call(k, start, stop)`` for every part k of ``bounds`` (:func:`_parts`), each part on a
    thread of its own."""
    parts = len(bounds) - 1
    if parts == 1:
        call(0, bounds[0], bounds[1])
        return
    key = (os.getpid(), parts)  # a forked child makes its own threads
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(parts)
    futures = [_pools[key].submit(call, k, bounds[k], bounds[k + 1]) for k in range(parts)]
    for future in futures:
        future.result()


def _at(tensor: torch.Tensor, start: int) -> int:
    """Address of ``tensor[start]`` (a contiguous tensor)."""
    return tensor.data_ptr() + start * tensor.stride(0) * tensor.element_size()


@functools.cache
def _onednn() -> bool:
    """Whether oneDNN's linear product runs here (checked once: 1 x 1 times 1 x 1 is 1)."""
    try:
        one = torch.ones(1, 1)
        return torch.ops.mkldnn._linear_pointwise(one, one, None, "none", [], "").item() == 1.0
    except (AttributeError, RuntimeError):
        return False


def _product(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` of ``x`` ``(M, K)`` and ``W`` ``(N, K)`` by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, W, b, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` with ``x W^T`` and ``dx = dy W`` by oneDNN, ``dW = dy^T x`` and
    ``db = sum dy`` by torch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        ctx.save_for_backward(flat, W)
        ctx.has_bias = b is not None
        return _product(flat, W, b).view(*x.shape[:-1], W.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, W = ctx.saved_tensors
        dy = grad.reshape(-1, W.shape[0]).contiguous()
        dx = dW = db = None
        if ctx.needs_input_grad[0]:
            dx = _product(dy, W.t().contiguous(), None).view(*grad.shape[:-1], W.shape[1])
        if ctx.needs_input_grad[1]:
            dW = dy.t().mm(flat)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dW, db


class CausalAttention(torch.autograd.Function):
    """``out`` ``(B, Tq, H, DH)``: softmax attention of the queries at positions ``rows``
    (``(Tq,)``, int64) over the keys at or before them, from ``qkv`` ``(B, T, 3, H, DH)``
    (``q, k, v`` stacked as GPT-2's ``c_attn`` writes them), scale ``1 / sqrt(DH)``."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        qkv, rows = qkv.contiguous(), rows.to(torch.int64).contiguous()
        B, T, _, H, DH = qkv.shape
        Tq = len(rows)
        out = qkv.new_empty(B, Tq, H, DH)
        lse = qkv.new_empty(B, H, Tq)
        run = library(qkv.dtype, DH).attention_forward
        _in_parallel(
            lambda _, a, b: run(
                _at(qkv, a), _at(out, a), _at(lse, a), rows.data_ptr(), b - a, T, Tq, H, DH**-0.5
            ),
            _parts(B),
        )
        ctx.save_for_backward(qkv, rows, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qkv, rows, out, lse = ctx.saved_tensors
        grad = grad.contiguous()
        B, T, _, H, DH = qkv.shape
        dqkv = torch.empty_like(qkv)
        run = library(qkv.dtype, DH).attention_backward
        _in_parallel(
            lambda _, a, b: run(
                *(_at(t, a) for t in (qkv, out, grad, lse)),
                rows.data_ptr(),
                _at(dqkv, a),
                b - a,
                T,
                len(rows),
                H,
                DH**-0.5,
            ),
            _parts(B),
        )
        return dqkv, None


class BiasGelu(torch.autograd.Function):
    """``F.gelu(u + b, approximate="tanh")`` for ``u`` ``(..., C)`` and a bias ``b`` ``(C,)``."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        u, b = u.contiguous(), b.contiguous()
        rows, cols = u.numel() // len(b), len(b)
        y = torch.empty_like(u)
        run = library(u.dtype, _lanes(u)).bias_gelu_forward
        flat_u, flat_y = u.view(rows, cols), y.view(rows, cols)
        _in_parallel(
            lambda _, i, j: run(_at(flat_u, i), b.data_ptr(), _at(flat_y, i), j - i, cols),
            _parts(rows),
        )
        ctx.save_for_backward(u, b)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        u, b = ctx.saved_tensors
        rows, cols = u.numel() // len(b), len(b)
        flat_u, flat_g = u.view(rows, cols), grad.contiguous().view(rows, cols)
        du = torch.empty_like(flat_u)
        bounds = _parts(rows)
        db = u.new_zeros(len(bounds) - 1, cols)  # a sum per part of the rows
        run = library(u.dtype, _lanes(u)).bias_gelu_backward
        _in_parallel(
            lambda k, i, j: run(
                _at(flat_u, i), b.data_ptr(), _at(flat_g, i), _at(du, i), _at(db, k), j - i, cols
            ),
            bounds,
        )
        return du.view_as(u), db.sum(0)


def linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, b)``, by oneDNN for float32 on the CPU where oneDNN runs."""
    if x.dtype == torch.float32 and W.dtype == x.dtype and c_kernels.eager_cpu(x) and _onednn():
        return OneDNNLinear.apply(x, W, b)
    return F.linear(x, W, b)


def attention(qkv: torch.Tensor, read: slice) -> torch.Tensor:
    """``(B, T', H, DH)``: causal softmax attention of the queries at the positions ``read`` of
    ``qkv`` ``(B, T, 3, H, DH)`` over every key up to each (kernels where :func:`applies`,
    ``F.scaled_dot_product_attention`` otherwise)."""
    B, T, _, H, DH = qkv.shape
    if applies(qkv, DH):
        return CausalAttention.apply(qkv, torch.arange(T)[read])
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, DH)
    if read == slice(None):
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        t = torch.arange(T, device=qkv.device)
        causal = t[read, None] >= t  # position t[read][i] reads the positions <= it
        a = F.scaled_dot_product_attention(q[:, :, read], k, v, attn_mask=causal)
    return a.transpose(1, 2)


def bias_gelu(u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU of ``u + b`` (``u`` ``(..., C)``, ``b`` ``(C,)``),
    ``F.gelu(u + b, approximate="tanh")`` (kernels where :func:`applies`)."""
    if applies(u, _lanes(u)) and b.dtype == u.dtype and b.device == u.device:
        return BiasGelu.apply(u, b)
    return F.gelu(u + b, approximate="tanh")
