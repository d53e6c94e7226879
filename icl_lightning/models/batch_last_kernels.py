"""C source of the batch-last linear-attention kernels (:mod:`~icl_lightning.models.batch_last`).

Tokens are laid out in tiles of W prompts, ``(B / W, T, D, W)`` (W = 16 in float32, 8 in
float64: 64 bytes, zero prompts past B): one vector holds entry ``(t, e)`` of a tile's W
prompts, so each small per-prompt product (11 x 11 at d = 10) becomes W-wide fused
multiply-adds, one prompt per vector lane, with a row of D accumulators in registers (D and H
are compile-time constants). Each tile goes through every layer before the next tile.

- ``pack_tokens``: the prompts' tokens ``[x_i, y_i]``, ``[x_q, 0]``, tiled;
- ``stack_forward``: per layer ``h' = clamp(h + (h K S) V)`` with ``S = sum_{i<N} h_i h_i^T``
  (no clamp for ``clip = 0``), each layer's output kept, then the readout
  ``h_{T-1,D-1} + sum_{t<N} sum_h (h_t . q_h) (h_t . u_h)`` with ``q = h_{T-1} K``;
- ``stack_backward``: the readout's gradients, then per layer in reverse: recompute the tile's
  ``S``, ``a = h K``, ``b_h = a_h S`` (cheaper than storing them), zero the output gradient
  where the clamp was active (``torch.clamp``'s rule), then ``db = g V^T``, ``dV += b^T g``,
  ``da_h = db_h S``, ``dK += h^T da``, ``dS = sum_h a_h^T db_h``,
  ``dh = g + da K^T + [C (dS + dS^T); 0]``.

Weight gradients are summed per lane across tiles and over the lanes at the end.
"""

SOURCE = r"""
#include <stdlib.h>
#include <string.h>

#define W (64 / (int)sizeof(SCALAR))
#define HD (H * D)
#define UNROLL _Pragma("GCC unroll 64")
typedef SCALAR vec __attribute__((vector_size(64)));

/* weight gradients: the lanes' sums */
static void reduce(SCALAR *dst, const vec *acc, int rows) {
    for (int r = 0; r < rows; r++) {
        SCALAR s = 0;
        for (int w = 0; w < W; w++) s += acc[r][w];
        dst[r] += s;
    }
}

/* acc[e] += sum_k A[k * astride] Bm[k * bstride + e] (e < D): a row of D accumulators; Bm
   holds vectors (lanes) or scalars (weights, broadcast over the lanes) */
#define ROW_TIMES(acc, A, astride, K_, Bm, bstride)                      \
    for (int k = 0; k < K_; k++) {                                      \
        vec s_ = (A)[k * (astride)];                                    \
        UNROLL for (int e = 0; e < D; e++) acc[e] += s_ * (Bm)[k * (bstride) + e]; \
    }
#define ROW_TIMES_LANES(acc, A, astride, K_, Bm) ROW_TIMES(acc, A, astride, K_, Bm, D)
#define ROW_TIMES_SCALARS ROW_TIMES

/* S = sum_{i<N} x_i x_i^T, a = x K, b_h = a_h S of one tile */
static void forward_tile(const vec *x, const SCALAR *K, vec *S, vec *a, vec *b, int T, int N) {
    for (int f = 0; f < D; f++) {
        vec acc[D] = {0};
        ROW_TIMES_LANES(acc, x + f, D, N, x);
        memcpy(S + f * D, acc, sizeof acc);
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            vec acc[D] = {0};
            ROW_TIMES_SCALARS(acc, x + t * D, 1, D, K + h * D, HD);
            memcpy(a + (t * H + h) * D, acc, sizeof acc);
            vec acc2[D] = {0};
            ROW_TIMES_LANES(acc2, a + (t * H + h) * D, 1, D, S);
            memcpy(b + (t * H + h) * D, acc2, sizeof acc2);
        }
}

/* torch.clamp(v, -c, c), NaN kept */
static void clamp(vec *v, SCALAR c) {
    UNROLL for (int e = 0; e < D; e++)
        for (int w = 0; w < W; w++) {
            SCALAR s = v[e][w];
            v[e][w] = s < -c ? -c : s > c ? c : s;
        }
}

static void *buffer(size_t n) { return aligned_alloc(64, n * sizeof(vec)); }

/* y = clamp(x + (x K S) V) of one tile (no clamp for c = 0) */
static void update_tile(const vec *x, const SCALAR *K, const SCALAR *V, vec *y, int T, int N,
                        SCALAR c, vec *S, vec *a, vec *b) {
    forward_tile(x, K, S, a, b, T, N);
    for (int t = 0; t < T; t++) {
        vec acc[D];
        memcpy(acc, x + t * D, sizeof acc);
        ROW_TIMES_SCALARS(acc, b + t * HD, 1, HD, V, D);
        if (c > 0) clamp(acc, c);
        memcpy(y + t * D, acc, sizeof acc);
    }
}

/* the gradients of update_tile for the output gradient g of one tile: dK, dV added to the
   per-lane accumulators, and (when dh != NULL) dh, which may be g itself */
static void update_tile_backward(const vec *x, const SCALAR *K, const SCALAR *V, vec *g, vec *dh,
                                 vec *dKacc, vec *dVacc, int T, int N, SCALAR c, vec *S, vec *a,
                                 vec *b, vec *db, vec *da, vec *M) {
    forward_tile(x, K, S, a, b, T, N);
    if (c > 0)
        for (int t = 0; t < T; t++) { /* g = 0 where the output was clipped */
            vec acc[D];
            memcpy(acc, x + t * D, sizeof acc);
            ROW_TIMES_SCALARS(acc, b + t * HD, 1, HD, V, D);
            UNROLL for (int e = 0; e < D; e++)
                for (int w = 0; w < W; w++)
                    if (!(acc[e][w] >= -c && acc[e][w] <= c)) g[t * D + e][w] = 0;
        }
    for (int t = 0; t < T; t++) /* db = g V^T: row (t, h) = sum_e g_te PV_h[e] */
        for (int hh = 0; hh < H; hh++) {
            vec acc[D] = {0};
            for (int e = 0; e < D; e++) {
                vec s = g[t * D + e];
                UNROLL for (int f = 0; f < D; f++) acc[f] += s * V[(hh * D + f) * D + e];
            }
            memcpy(db + t * HD + hh * D, acc, sizeof acc);
        }
    for (int j = 0; j < HD; j++) { /* dV += b^T g */
        vec acc[D];
        memcpy(acc, dVacc + j * D, sizeof acc);
        ROW_TIMES_LANES(acc, b + j, HD, T, g);
        memcpy(dVacc + j * D, acc, sizeof acc);
    }
    for (int t = 0; t < T * H; t++) { /* da_h = db_h S */
        vec acc[D] = {0};
        ROW_TIMES_LANES(acc, db + t * D, 1, D, S);
        memcpy(da + t * D, acc, sizeof acc);
    }
    for (int f = 0; f < D; f++) /* dK += x^T da, per head */
        for (int hh = 0; hh < H; hh++) {
            vec acc[D];
            memcpy(acc, dKacc + f * HD + hh * D, sizeof acc);
            for (int t = 0; t < T; t++) {
                vec s = x[t * D + f];
                UNROLL for (int e = 0; e < D; e++) acc[e] += s * da[t * HD + hh * D + e];
            }
            memcpy(dKacc + f * HD + hh * D, acc, sizeof acc);
        }
    if (!dh) return;
    for (int f = 0; f < D; f++) { /* dS = sum_h a_h^T db_h */
        vec acc[D] = {0};
        ROW_TIMES_LANES(acc, a + f, D, T * H, db);
        memcpy(M + f * D, acc, sizeof acc);
    }
    for (int f = 0; f < D; f++) /* M = dS + dS^T */
        for (int e = f; e < D; e++) {
            vec s = M[f * D + e] + M[e * D + f];
            M[f * D + e] = s;
            M[e * D + f] = s;
        }
    for (int t = 0; t < T; t++) { /* dh = g + da K^T + [x M; 0], row by row (dh may be g) */
        vec acc[D];
        memcpy(acc, g + t * D, sizeof acc);
        for (int j = 0; j < HD; j++) {
            vec s = da[t * HD + j];
            UNROLL for (int f = 0; f < D; f++) acc[f] += s * K[f * HD + j];
        }
        if (t < N) ROW_TIMES_LANES(acc, x + t * D, 1, D, M);
        memcpy(dh + t * D, acc, sizeof acc);
    }
}

/* q = z_q K (z_q = x_{T-1}), r_th = x_t . q_h, v_th = x_t . u_h (t < N) of one tile */
static void readout_tile(const vec *x, const SCALAR *K, const SCALAR *U, vec *q, vec *r, vec *v,
                         int T, int N) {
    const vec *zq = x + (T - 1) * D;
    for (int hh = 0; hh < H; hh++) {
        vec acc[D] = {0};
        ROW_TIMES_SCALARS(acc, zq, 1, D, K + hh * D, HD);
        memcpy(q + hh * D, acc, sizeof acc);
    }
    for (int t = 0; t < N; t++)
        for (int hh = 0; hh < H; hh++) {
            vec rs = {0}, vs = {0};
            UNROLL for (int f = 0; f < D; f++) {
                rs += x[t * D + f] * q[hh * D + f];
                vs += x[t * D + f] * U[f * H + hh];
            }
            r[t * H + hh] = rs;
            v[t * H + hh] = vs;
        }
}

/* the gradients of the readout for its output gradient g of one tile: dK, dU added to the
   per-lane accumulators, dh (when not NULL) written */
static void readout_tile_backward(const vec *x, const SCALAR *K, const SCALAR *U, vec g, vec *dh,
                                  vec *dKacc, vec *dUacc, int T, int N, vec *q, vec *r, vec *v,
                                  vec *dq) {
    readout_tile(x, K, U, q, r, v, T, N);
    for (int t = 0; t < N * H; t++) { /* r <- dr = g v, v <- dv = g r */
        vec rs = r[t];
        r[t] = g * v[t];
        v[t] = g * rs;
    }
    for (int hh = 0; hh < H; hh++) { /* dq_h = sum_t dr_th x_t */
        vec acc[D] = {0};
        ROW_TIMES_LANES(acc, r + hh, H, N, x);
        memcpy(dq + hh * D, acc, sizeof acc);
    }
    for (int t = 0; t < N; t++) /* dU += x^T dv */
        for (int f = 0; f < D; f++)
            for (int hh = 0; hh < H; hh++) dUacc[f * H + hh] += v[t * H + hh] * x[t * D + f];
    const vec *zq = x + (T - 1) * D;
    for (int e = 0; e < D; e++) /* dK += z_q^T dq */
        for (int j = 0; j < HD; j++) dKacc[e * HD + j] += zq[e] * dq[j];
    if (!dh) return;
    for (int t = 0; t < T - 1; t++) { /* dh_t = sum_h dr_th q_h + dv_th u_h (0 for t >= N) */
        vec acc[D] = {0};
        if (t < N)
            for (int hh = 0; hh < H; hh++) {
                vec sr = r[t * H + hh], sv = v[t * H + hh];
                UNROLL for (int f = 0; f < D; f++)
                    acc[f] += sr * q[hh * D + f] + sv * U[f * H + hh];
            }
        memcpy(dh + t * D, acc, sizeof acc);
    }
    vec acc[D] = {0}; /* the query: dq K^T, and g at its last coordinate */
    for (int j = 0; j < HD; j++) {
        vec s = dq[j];
        UNROLL for (int e = 0; e < D; e++) acc[e] += s * K[e * HD + j];
    }
    acc[D - 1] += g;
    memcpy(dh + (T - 1) * D, acc, sizeof acc);
}

/* L - 1 update layers (Ks, Vs: (L - 1, D, H D), (L - 1, H D, D)) then the readout (K, U) of
   the tiled tokens h0 (tiles, T, D, W), tile by tile through every layer: each layer's output
   into hs (L - 1, tiles, T, D, W), the readout into out (tiles W) */
void stack_forward(const SCALAR *h0, const SCALAR *Ks, const SCALAR *Vs, const SCALAR *K,
                   const SCALAR *U, SCALAR *hs, SCALAR *out, long tiles, int T, int N, int layers,
                   double clip) {
    const long size = T * D; /* vectors per tile */
    vec *S = buffer(D * D), *a = buffer(T * HD), *b = buffer(T * HD);
    vec *q = buffer(HD), *r = buffer(T * H), *v = buffer(T * H);
    for (long i = 0; i < tiles; i++) {
        const vec *x = (const vec *)h0 + i * size;
        for (int l = 0; l < layers; l++) {
            vec *y = (vec *)hs + (l * tiles + i) * size;
            update_tile(x, Ks + l * D * HD, Vs + l * HD * D, y, T, N, clip, S, a, b);
            x = y;
        }
        readout_tile(x, K, U, q, r, v, T, N);
        vec acc = x[T * D - 1];
        for (int t = 0; t < N * H; t++) acc += r[t] * v[t];
        memcpy((vec *)out + i, &acc, sizeof acc);
    }
    free(S); free(a); free(b); free(q); free(r); free(v);
}

/* the gradients of stack_forward for the readout's gradient grad (tiles W): dKs, dVs, dK, dU
   added to, dh0 (when not NULL) the tokens' */
void stack_backward(const SCALAR *h0, const SCALAR *hs, const SCALAR *Ks, const SCALAR *Vs,
                    const SCALAR *K, const SCALAR *U, const SCALAR *grad, SCALAR *dh0, SCALAR *dKs,
                    SCALAR *dVs, SCALAR *dK, SCALAR *dU, long tiles, int T, int N, int layers,
                    double clip) {
    const long size = T * D;
    vec *S = buffer(D * D), *a = buffer(T * HD), *b = buffer(T * HD), *g = buffer(size);
    vec *db = buffer(T * HD), *da = buffer(T * HD), *M = buffer(D * D);
    vec *q = buffer(HD), *r = buffer(T * H), *v = buffer(T * H), *dq = buffer(HD);
    vec *dKsacc = buffer(layers * D * HD + 1), *dVsacc = buffer(layers * HD * D + 1);
    vec *dKacc = buffer(D * HD), *dUacc = buffer(D * H);
    memset(dKsacc, 0, layers * D * HD * sizeof(vec));
    memset(dVsacc, 0, layers * HD * D * sizeof(vec));
    memset(dKacc, 0, D * HD * sizeof(vec));
    memset(dUacc, 0, D * H * sizeof(vec));
    for (long i = 0; i < tiles; i++) {
        const vec *x0 = (const vec *)h0 + i * size;
#define INPUT(l) ((l) == 0 ? x0 : (const vec *)hs + ((long)((l) - 1) * tiles + i) * size)
        vec gi;
        memcpy(&gi, (const vec *)grad + i, sizeof gi);
        vec *dh = layers > 0 || dh0 ? g : NULL;
        readout_tile_backward(INPUT(layers), K, U, gi, dh, dKacc, dUacc, T, N, q, r, v, dq);
        for (int l = layers - 1; l >= 0; l--) {
            vec *dx = l > 0 || dh0 ? g : NULL;
            update_tile_backward(INPUT(l), Ks + l * D * HD, Vs + l * HD * D, g, dx,
                                 dKsacc + l * D * HD, dVsacc + l * HD * D, T, N, clip, S, a, b,
                                 db, da, M);
        }
        if (dh0) memcpy((vec *)dh0 + i * size, g, size * sizeof(vec));
#undef INPUT
    }
    reduce(dKs, dKsacc, layers * D * HD);
    reduce(dVs, dVsacc, layers * HD * D);
    reduce(dK, dKacc, D * HD);
    reduce(dU, dUacc, D * H);
    free(S); free(a); free(b); free(g); free(db); free(da); free(M); free(q); free(r); free(v);
    free(dq); free(dKsacc); free(dVsacc); free(dKacc); free(dUacc);
}

/* tokens, tiled: h[i, :] = [x_i, y_i] (i < N), h[N, :] = [x_q, 0] of every prompt, 0 in the
   lanes past B */
void pack_tokens(const SCALAR *cx, const SCALAR *cy, const SCALAR *qx, SCALAR *h, long B, int N) {
    const int T = N + 1;
    for (long p0 = 0; p0 < B; p0 += W) {
        vec *x = (vec *)h + p0 / W * T * D;
        memset(x, 0, T * D * sizeof(vec));
        for (int w = 0; w < W && p0 + w < B; w++) {
            long p = p0 + w;
            for (int i = 0; i < N; i++) {
                for (int e = 0; e < D - 1; e++) x[i * D + e][w] = cx[(p * N + i) * (D - 1) + e];
                x[i * D + D - 1][w] = cy[p * N + i];
            }
            for (int e = 0; e < D - 1; e++) x[N * D + e][w] = qx[p * (D - 1) + e];
        }
    }
}
"""
