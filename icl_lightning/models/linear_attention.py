"""The residual update of every token by one linear-attention layer, with its backward pass
written out.

For tokens ``h`` ``(B, T, D)`` whose first N rows are the context ``C`` ``(B, N, D)``, a layer
of H heads of linear attention (no LayerNorm) maps, in row form::

    h' = h + sum_h (h KQ_h^T) S PV_h^T,        S = C^T C = sum_i h_i h_i^T        (one per prompt)

with ``KQ_h = W_K,h^T W_Q,h`` and ``PV_h = P_h W_V,h``
(:mod:`~icl_lightning.models.products`). Stacking the heads, ``K = [KQ_1^T ... KQ_H^T]``
``(D, H D)`` and ``V = [PV_1^T; ...; PV_H^T]`` ``(H D, D)``::

    a = h K,   b_h = a_h S,   h' = h + b V

Autograd would differentiate ``S = C^T C`` as two products and scatter the gradient of the
slice ``C`` through a zero-filled copy of ``h``; the backward below uses ``S = S^T``::

    db = g V^T,  dV = b^T g,  dS = sum_h a_h^T db_h,  da_h = db_h S,  dK = h^T da,
    dh = g + da K^T + [C (dS + dS^T); 0]

so one layer costs five products per prompt (three when ``h`` needs no gradient, as in the
first layer) besides the products with the shared ``K`` and ``V``, which are flattened over
prompts into single matrix products.

Under autocast (``--trainer.precision bf16-mixed``) the backward pass runs in the forward's
autocast state, as ``torch.amp.custom_fwd``/``custom_bwd`` would arrange for a function whose
``forward`` takes ``ctx`` (these take none, so that ``torch.func`` applies to them).
"""

import functools

import torch


def _keep_for_backward(ctx, inputs, output) -> None:
    """``setup_context`` of both functions: keep the three tensor inputs and the forward's
    intermediates (``output[1:]``, not differentiable) for ``backward``, and N."""
    *tensors, num_context = inputs
    intermediates = output[1:]
    ctx.mark_non_differentiable(*intermediates)
    ctx.set_materialize_grads(False)
    ctx.num_context = num_context
    ctx.save_for_backward(*tensors, *intermediates)
    device_type = tensors[0].device.type
    ctx.autocast = {
        "device_type": device_type,
        "enabled": torch.is_autocast_enabled(device_type),
        "dtype": torch.get_autocast_dtype(device_type),
    }


def _in_forward_autocast(backward):
    """``backward`` under the autocast state its forward ran in (``torch.amp.custom_bwd``):
    otherwise its products would mix the forward's low-precision intermediates with
    full-precision gradients."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        with torch.autocast(**ctx.autocast):
            return backward(ctx, *grads)

    return wrapped


class LinearAttentionUpdate(torch.autograd.Function):
    """``h + (h K S) V`` with ``S = C^T C`` (module docstring), differentiable in ``h``, ``K``
    and ``V``; ``torch.func`` transforms (``vmap``, ``grad``) apply to it.

    ``apply(h, K, V, num_context)`` returns ``(h', S, a, b)``; only ``h'`` carries a gradient,
    the others are the intermediates saved for the backward pass.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(h, K, V, num_context: int):
        B, T, D = h.shape
        context = h[:, :num_context]
        S = context.transpose(1, 2) @ context
        a = (h.reshape(B * T, D) @ K).view(B, -1, D)  # (B, T H, D): row (t, h) is a_h at t
        b = a @ S
        out = (b.view(B * T, -1) @ V).view(B, T, D)
        out += h
        return out, S, a, b

    setup_context = staticmethod(_keep_for_backward)

    @staticmethod
    @_in_forward_autocast
    def backward(ctx, grad, *_):
        h, K, V, S, a, b = ctx.saved_tensors
        need_h, need_K, need_V = ctx.needs_input_grad[:3]
        dh = dK = dV = None
        if grad is None:
            return dh, dK, dV, None
        B, T, D = h.shape
        g = grad.reshape(B * T, D)
        if need_V:
            dV = b.view(B * T, -1).T @ g
        db = (g @ V.T).view(B, -1, D)
        da = (db @ S).view(B * T, -1)
        if need_K:
            dK = h.reshape(B * T, D).T @ da
        if need_h:
            dS = a.transpose(1, 2) @ db
            dh = (da @ K.T).view(B, T, D)
            dh += grad
            context = h[:, : ctx.num_context]
            dh[:, : ctx.num_context] += context @ (dS + dS.transpose(1, 2))
        return dh, dK, dV, None


class LinearAttentionReadout(torch.autograd.Function):
    """The last coordinate of the query token after one linear-attention layer (no LayerNorm),
    ``(B,)``: the last layer of the model, which needs nothing else.

    With the query token ``z_q = h[:, -1]``, ``q'_h = KQ_h z_q`` (``q' = z_q K``, K as in
    :class:`LinearAttentionUpdate`), ``u_h = (P_h W_V,h)[-1]`` (``U = [u_1 ... u_H]``,
    ``(D, H)``), the scores ``r_th = h_t . q'_h`` and values ``v_th = h_t . u_h`` of every
    token, the values zeroed outside the context (t >= N)::

        out = h[:, -1, -1] + sum_t sum_h r_th v_th

    O(T D H) per prompt. ``apply(h, K, U, num_context)`` returns ``(out, q', r, v)``; only
    ``out`` carries a gradient. The backward pass, for ``g = d loss / d out``::

        dr = g v,  dv = g r (0 for t >= N),  dq'_h = sum_t dr_th h_t,  dK = z_q^T dq',
        dU = h^T dv,  dh_t = sum_h (dr_th q'_h + dv_th u_h) (+ dq' K^T at the query,
        + g at its last coordinate)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(h, K, U, num_context: int):
        B, T, D = h.shape
        q = (h[:, -1] @ K).view(B, -1, D)  # (B, H, D): q'_h
        r = h @ q.transpose(1, 2)  # (B, T, H)
        v = (h.reshape(B * T, D) @ U).view(B, T, -1)
        v[:, num_context:] = 0
        out = (r * v).sum((1, 2)) + h[:, -1, -1]
        return out, q, r, v

    setup_context = staticmethod(_keep_for_backward)

    @staticmethod
    @_in_forward_autocast
    def backward(ctx, grad, *_):
        h, K, U, q, r, v = ctx.saved_tensors
        need_h, need_K, need_U = ctx.needs_input_grad[:3]
        dh = dK = dU = None
        if grad is None:
            return dh, dK, dU, None
        B, T, D = h.shape
        g = grad.view(B, 1, 1)
        dr, dv = g * v, g * r
        dv[:, ctx.num_context :] = 0
        dq = (dr.unsqueeze(-1) * h.unsqueeze(2)).sum(1).view(B, -1)  # (B, H D)
        if need_K:
            dK = h[:, -1].T @ dq
        if need_U:
            dU = h.reshape(B * T, D).T @ dv.view(B * T, -1)
        if need_h:
            if q.shape[1] == 1:  # one head: outer products as broadcasts, not (T, 1, D) bmm's
                dh = torch.addcmul(dr * q, dv, U.T)
            else:
                dh = torch.baddbmm(dv @ U.T, dr, q)
            dh[:, -1] += dq @ K.T
            dh[:, -1, -1] += grad
        return dh, dK, dU, None
