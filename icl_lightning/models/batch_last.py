"""A stack of linear-attention layers on the CPU in one autograd function, tokens batch-last.

For the deep LSA of paper A each prompt's work is a few 11 x 11 products per layer
(``h' = h + (h K S) V``, ``S = sum_{i<N} h_i h_i^T``; :mod:`~icl_lightning.models.linear_attention`
has the maths): as batched matrix products they run at a few percent of what the core does on a
large matrix product. Laid out batch-last in tiles of W prompts, ``(B / W, T, D, W)``, every
entry of those products is one vector operation over a tile
(:mod:`~icl_lightning.models.batch_last_kernels`, C compiled once per dtype, token size D and
head count H with the system's C compiler and loaded with :mod:`ctypes`).
:class:`LinearAttentionStack` takes each tile through every layer and the readout in one
forward call, keeps each layer's output tokens, and in its backward call takes each tile
through the layers in reverse; the activation clip (``clamp(h_l, -c, c)``) is applied inside
the kernels.

Where the kernels do not apply (:func:`applies`: CUDA, a dtype other than float32/float64,
autocast, ``torch.func`` transforms, softmax or LayerNorm layers, or no working C compiler) the
model takes the per-layer path of :mod:`~icl_lightning.models.linear_attention`.
"""

import ctypes

import torch

from icl_lightning.models import c_kernels
from icl_lightning.models.batch_last_kernels import SOURCE

_SCALAR = {torch.float32: "float", torch.float64: "double"}
_FLAGS = ["-O3", "-march=native", "-std=c11", "-shared", "-fPIC"]
_TILES = [ctypes.c_long, ctypes.c_int]  # tiles, T
_STACK = [ctypes.c_int, ctypes.c_int, ctypes.c_double]  # N, layers, clip
_SIGNATURES = {
    "stack_forward": [ctypes.c_void_p] * 7 + _TILES + _STACK,
    "stack_backward": [ctypes.c_void_p] * 12 + _TILES + _STACK,
    "pack_tokens": [ctypes.c_void_p] * 4 + _TILES,
}
_NAMES = ("W_Q", "W_K", "W_V", "P")
_libraries: dict[tuple, ctypes.CDLL | None] = {}
#: inside, every model takes the per-layer path (the reference formulation)
disabled = c_kernels.disabled


def library(dtype: torch.dtype, D: int, H: int) -> ctypes.CDLL | None:
    """The loaded kernels for tokens of size D, H heads and ``dtype``; ``None`` (with one
    warning per process) when they cannot be compiled or loaded."""
    key = (dtype, D, H)
    if key not in _libraries:
        scalar = _SCALAR[dtype]
        flags = [*_FLAGS, f"-DSCALAR={scalar}", f"-DD={D}", f"-DH={H}"]
        stem = f"lsa_{scalar}_D{D}_H{H}"
        _libraries[key] = c_kernels.load("LSA (batch-last)", stem, SOURCE, flags, _SIGNATURES)
    return _libraries[key]


def applies(layers, tensor: torch.Tensor) -> bool:
    """Whether :class:`LinearAttentionStack` runs ``layers`` on inputs like ``tensor``: linear
    attention without LayerNorm on the CPU, float32 or float64 weights and inputs, no autocast,
    no ``torch.func`` transform, and kernels that compile."""
    weight = layers[0].W_Q
    if not c_kernels.eager_cpu(tensor, weight):
        return False
    if tensor.dtype not in _SCALAR or weight.dtype != tensor.dtype:
        return False
    if any(layer.softmax or not isinstance(layer.norm, torch.nn.Identity) for layer in layers):
        return False
    H, _, D = weight.shape
    if tensor.dim() != 3 or tensor.shape[-1] + 1 != D:
        return False  # the per-layer path names the mismatch
    return library(tensor.dtype, D, H) is not None


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class LinearAttentionStack(torch.autograd.Function):
    """``h_L[query, -1]`` before the last clamp, ``(B,)``, of the prompts ``context_x``
    ``(B, N, d)``, ``context_y`` ``(B, N)``, ``query_x`` ``(B, d)`` through the layers
    ``weights`` (``W_Q, W_K, W_V, P`` of each distinct layer, in turn) applied in the order
    ``depths`` (one index into them per depth; a recurrent model repeats one).

    Tokens batch-last, ``h_{l+1} = clamp(h_l + (h_l K_l S_l) V_l)`` below the last layer and
    the readout of :class:`~icl_lightning.models.linear_attention.LinearAttentionReadout` at
    the last, with ``K = [KQ_1^T ... KQ_H^T]``, ``KQ_h = W_K,h^T W_Q,h``, ``V = [PV_1^T; ...]``,
    ``PV_h = P_h W_V,h`` and ``U = [(PV_h)[-1]]_h``. The backward pass takes the products'
    gradients from the kernels and maps them to the weights::

        dKQ_h = (dK[:, h])^T,  dW_Q,h = W_K,h dKQ_h,  dW_K,h = W_Q,h dKQ_h^T,
        dPV_h = (dV[h])^T (last layer: row -1 = dU[:, h]),  dP_h = dPV_h W_V,h^T,
        dW_V,h = P_h^T dPV_h

    summed over the depths that apply each layer.
    """

    @staticmethod
    def forward(ctx, context_x, context_y, query_x, clip: float, depths, *weights):
        B, N, d = context_x.shape
        T, D = N + 1, d + 1
        for name, x, shape in (("context_y", context_y, (B, N)), ("query_x", query_x, (B, d))):
            if x.shape != shape or x.dtype != context_x.dtype:
                raise ValueError(
                    f"LSA: {name} of shape {tuple(x.shape)} and dtype {x.dtype}, expected "
                    f"{shape} and {context_x.dtype} for context_x of shape {(B, N, d)}"
                )
        W_Q, W_K, W_V, P = (torch.stack(weights[i::4]) for i in range(4))  # (M, H, k, D)
        H = W_Q.shape[1]
        lib = library(context_x.dtype, D, H)
        index = torch.tensor(depths)
        Ks = _stacked(W_K.transpose(-1, -2) @ W_Q)[index].contiguous()  # (L, D, H D)
        PV = P @ W_V  # (M, H, D, D)
        Vs = PV.transpose(-1, -2).reshape(-1, H * D, D)[index[:-1]].contiguous()
        U = PV[depths[-1], :, -1].T.contiguous()  # (D, H)
        inputs = [x.contiguous() for x in (context_x, context_y, query_x)]
        W = 64 // context_x.element_size()
        tiles = -(-B // W)
        h0 = context_x.new_empty(tiles, T, D, W)
        lib.pack_tokens(*map(_address, (*inputs, h0)), B, N)
        hs = context_x.new_empty(len(Vs), tiles, T, D, W)  # every layer's output
        last = context_x.new_empty(tiles * W)
        addresses = map(_address, (h0, Ks, Vs, Ks[-1], U, hs, last))
        lib.stack_forward(*addresses, tiles, T, N, len(Vs), clip)
        ctx.save_for_backward(h0, hs, Ks, Vs, U, W_Q, W_K, W_V, P, index)
        ctx.clip, ctx.batch_size = clip, B
        return last[:B]

    @staticmethod
    def backward(ctx, grad):
        h0, hs, Ks, Vs, U, W_Q, W_K, W_V, P, index = ctx.saved_tensors
        tiles, T, D, W = h0.shape
        L, N, H, B = len(Ks), T - 1, W_Q.shape[1], ctx.batch_size
        lib = library(h0.dtype, D, H)
        dKs, dVs, dU = map(torch.zeros_like, (Ks, Vs, U))
        dh = torch.empty_like(h0) if any(ctx.needs_input_grad[:3]) else None
        padded = grad.new_zeros(tiles * W)
        padded[:B] = grad
        addresses = (h0, hs, Ks, Vs, Ks[-1], U, padded, dh, dKs, dVs, dKs[-1], dU)
        lib.stack_backward(*map(_address, addresses), tiles, T, N, L - 1, ctx.clip)
        dKQ = dKs.view(L, D, H, D).permute(0, 2, 3, 1)  # (L, H, D, D): dKQ_h per depth
        dPV = torch.zeros_like(dKQ)
        dPV[:-1] = dVs.view(L - 1, H, D, D).transpose(-1, -2)
        dPV[-1, :, -1] = dU.T
        dKQ, dPV = (W_Q.new_zeros(len(W_Q), H, D, D).index_add_(0, index, x) for x in (dKQ, dPV))
        dW_Q, dW_K = W_K @ dKQ, W_Q @ dKQ.transpose(-1, -2)
        dP, dW_V = dPV @ W_V.transpose(-1, -2), P.transpose(-1, -2) @ dPV
        dweights = [w[m] for m in range(len(W_Q)) for w in (dW_Q, dW_K, dW_V, dP)]
        dx = dy = dq = None
        if dh is not None:
            dh = dh.permute(0, 3, 1, 2).reshape(tiles * W, T, D)[:B]
            dx, dy, dq = dh[:, :N, :-1], dh[:, :N, -1], dh[:, N, :-1]
        return dx, dy, dq, None, None, *dweights


def _stacked(KQ: torch.Tensor) -> torch.Tensor:
    """``K = [KQ_1^T ... KQ_H^T]`` ``(..., D, H D)`` of ``KQ`` ``(..., H, D, D)``
    (:func:`~icl_lightning.models.products.stacked_key_query`)."""
    *lead, H, D, _ = KQ.shape
    return KQ.permute(*range(len(lead)), -1, -3, -2).reshape(*lead, D, H * D)


def predict(layers, context_x, context_y, query_x, clip: float) -> torch.Tensor:
    """``-clamp(h_L[query, -1])``, ``(B,)``: :func:`~icl_lightning.models.lsa.predict_query`
    through :class:`LinearAttentionStack` (``layers`` as applied, a recurrent layer repeated)."""
    distinct = list(dict.fromkeys(layers))
    depths = tuple(distinct.index(layer) for layer in layers)
    weights = [layer.weights()[name] for layer in distinct for name in _NAMES]
    last = LinearAttentionStack.apply(context_x, context_y, query_x, clip, depths, *weights)
    return -(last.clamp(-clip, clip) if clip > 0 else last)
