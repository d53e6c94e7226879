"""C source of GPT-2's CPU kernels (:mod:`~icl_lightning.models.gpt2_cpu`): causal softmax
attention and the tanh-approximated GELU, forward and backward, in float32 or float64 (``SCALAR``)
for a head size ``DH`` that is a multiple of one 64-byte vector (16 floats, 8 doubles).

Attention reads the projected tokens ``qkv`` ``(B, T, 3, H, DH)`` as ``nn.Linear`` writes them
and writes ``out`` ``(B, Tq, H, DH)``, the layout the output projection reads: no copies. Query
``i`` sits at position ``rows[i]`` and attends to the keys ``j <= rows[i]``:

    s_ij = scale q_i . k_j,   l_i = logsumexp_j s_ij,   o_i = sum_j exp(s_ij - l_i) v_j.

Per (prompt, head), ``K^T`` (backward: and ``V^T``) is gathered once, rows of ``s`` are
computed R = 8 queries at a time as vectors over j (``rows_times``), and ``o`` with R x DH
accumulators in registers (``weights_times``). The backward pass recomputes
``p_ij = exp(s_ij - l_i)`` from the saved ``l`` and, with ``D_i = do_i . o_i``,

    ds_ij = scale p_ij (do_i . v_j - D_i),   dq_i = sum_j ds_ij k_j,
    dk_j = sum_i ds_ij q_i,   dv_j = sum_i p_ij do_i,

written into ``dqkv`` (same layout as ``qkv``; ``dq`` is 0 at the positions no query reads).

GELU of the MLP's first layer and its bias, ``y = gelu(u + b)`` (``u = x W^T`` from a product
without bias, so no pass copies the bias into it), ``gelu(z) = z (1 + tanh(a)) / 2 = z
sigmoid(2a)``, ``a = sqrt(2/pi) (z + 0.044715 z^3)``, and backward ``du = g gelu'(z)``,
``gelu'(z) = s + z s (1 - s) 2a'``, ``s = sigmoid(2a)``, with the bias gradient ``db = sum_i
du_i`` summed in the same pass.

Compiled with ``-ffast-math``, which lets GCC call glibc's vector ``exp`` (libmvec); the results
stay within float rounding of torch's (``tests/test_gpt2_kernels.py``) and NaN inputs still give
NaN outputs.
"""

SOURCE = r"""
#include <tgmath.h>  /* exp, log of SCALAR */
#include <stdlib.h>
#include <string.h>
/* -DSCALAR=float|double -DDH=head size (a multiple of VL). */
typedef SCALAR vec __attribute__((vector_size(64)));
typedef SCALAR uvec __attribute__((vector_size(64), aligned(sizeof(SCALAR))));
#define VL ((long)(64 / sizeof(SCALAR)))
#define NC (DH / VL)
#define R 8

static inline vec load(const SCALAR *p) { return *(const uvec *)p; }
static inline void store(SCALAR *p, vec v) { *(uvec *)p = v; }

/* S[r][j] = sum_d A[r][d] MT[d][j] for j < nv * VL (MT: DH x Tp) */
static void rows_times(const SCALAR A[R][DH], const SCALAR *MT, long Tp, long nv, SCALAR *S) {
  for (long jv = 0; jv < nv; jv++) {
    vec acc[R] = {0};
    for (int d = 0; d < DH; d++) {
      const vec m = load(MT + d * Tp + jv * VL);
      for (int r = 0; r < R; r++) acc[r] += A[r][d] * m;
    }
    for (int r = 0; r < R; r++) store(S + r * Tp + jv * VL, acc[r]);
  }
}

/* O[r] = sum_{j < n} W[r][j] X_j (X_j rows of DH at stride ld) */
static void weights_times(const SCALAR *W, long Tp, const SCALAR *X, long ld, long n,
                          SCALAR O[R][DH]) {
  vec acc[R][NC] = {{0}};
  for (long j = 0; j < n; j++) {
    vec x[NC];
    for (int c = 0; c < NC; c++) x[c] = load(X + j * ld + c * VL);
    for (int r = 0; r < R; r++) {
      const SCALAR w = W[r * Tp + j];
      for (int c = 0; c < NC; c++) acc[r][c] += w * x[c];
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < NC; c++) store(O[r] + c * VL, acc[r][c]);
}

static void transpose(const SCALAR *X, long ld, long T, long Tp, SCALAR *XT) {
  for (int d = 0; d < DH; d++) {
    for (long j = 0; j < T; j++) XT[d * Tp + j] = X[j * ld + d];
    for (long j = T; j < Tp; j++) XT[d * Tp + j] = 0;
  }
}

void attention_forward(const SCALAR *qkv, SCALAR *out, SCALAR *lse, const long *rows,
                       long B, long T, long Tq, long H, double scale_) {
  const SCALAR scale = (SCALAR)scale_;
  const long Tp = (T + VL - 1) / VL * VL, tok = 3 * H * DH;
  SCALAR *KT = malloc(sizeof(SCALAR) * DH * Tp), *S = malloc(sizeof(SCALAR) * R * Tp);
  SCALAR Q[R][DH], O[R][DH];
  for (long b = 0; b < B; b++)
    for (long h = 0; h < H; h++) {
      const SCALAR *base = qkv + b * T * tok + h * DH;
      transpose(base + H * DH, tok, T, Tp, KT);
      for (long i0 = 0; i0 < Tq; i0 += R) {
        long n[R], nmax = 0;
        for (int r = 0; r < R; r++) {
          n[r] = i0 + r < Tq ? rows[i0 + r] + 1 : 0;
          nmax = n[r] > nmax ? n[r] : nmax;
          for (int d = 0; d < DH; d++) Q[r][d] = n[r] ? scale * base[(n[r] - 1) * tok + d] : 0;
        }
        const long nv = (nmax + VL - 1) / VL;
        rows_times(Q, KT, Tp, nv, S);
        SCALAR L[R];
        for (int r = 0; r < R; r++) {
          SCALAR *s = S + r * Tp, m = s[0], l = 0;
          for (long j = 1; j < n[r]; j++) m = s[j] > m ? s[j] : m;
          for (long j = 0; j < n[r]; j++) { s[j] = exp(s[j] - m); l += s[j]; }
          for (long j = n[r]; j < nmax; j++) s[j] = 0;
          const SCALAR inv = n[r] ? 1 / l : 0;
          for (long j = 0; j < n[r]; j++) s[j] *= inv;
          L[r] = m + log(l);
        }
        weights_times(S, Tp, base + 2 * H * DH, tok, nmax, O);
        for (int r = 0; r < R && i0 + r < Tq; r++) {
          memcpy(out + ((b * Tq + i0 + r) * H + h) * DH, O[r], sizeof(SCALAR) * DH);
          lse[(b * H + h) * Tq + i0 + r] = L[r];
        }
      }
    }
  free(KT); free(S);
}

/* every entry of dqkv written */
void attention_backward(const SCALAR *qkv, const SCALAR *out, const SCALAR *dout,
                        const SCALAR *lse, const long *rows, SCALAR *dqkv,
                        long B, long T, long Tq, long H, double scale_) {
  const SCALAR scale = (SCALAR)scale_;
  const long Tp = (T + VL - 1) / VL * VL, tok = 3 * H * DH;
  SCALAR *KT = malloc(sizeof(SCALAR) * DH * Tp), *VT = malloc(sizeof(SCALAR) * DH * Tp);
  SCALAR *P = malloc(sizeof(SCALAR) * R * Tp), *dS = malloc(sizeof(SCALAR) * R * Tp);
  SCALAR *dK = malloc(sizeof(SCALAR) * DH * T), *dV = malloc(sizeof(SCALAR) * DH * T);
  SCALAR Qs[R][DH], Q[R][DH], G[R][DH], dQ[R][DH];
  for (long b = 0; b < B; b++)
    for (long h = 0; h < H; h++) {
      const SCALAR *base = qkv + b * T * tok + h * DH;
      SCALAR *dbase = dqkv + b * T * tok + h * DH;
      transpose(base + H * DH, tok, T, Tp, KT);
      transpose(base + 2 * H * DH, tok, T, Tp, VT);
      memset(dK, 0, sizeof(SCALAR) * DH * T);
      memset(dV, 0, sizeof(SCALAR) * DH * T);
      for (long j = 0; j < T; j++) memset(dbase + j * tok, 0, sizeof(SCALAR) * DH);  /* dq */
      for (long i0 = 0; i0 < Tq; i0 += R) {
        long n[R], nmax = 0;
        SCALAR D[R], L[R];
        for (int r = 0; r < R; r++) {
          const int here = i0 + r < Tq;
          n[r] = here ? rows[i0 + r] + 1 : 0;
          nmax = n[r] > nmax ? n[r] : nmax;
          const SCALAR *o = out + ((b * Tq + i0 + r) * H + h) * DH;
          const SCALAR *g = dout + ((b * Tq + i0 + r) * H + h) * DH;
          D[r] = 0;
          for (int d = 0; d < DH; d++) {
            Q[r][d] = here ? base[(n[r] - 1) * tok + d] : 0;
            Qs[r][d] = scale * Q[r][d];
            G[r][d] = here ? g[d] : 0;
            D[r] += here ? g[d] * o[d] : 0;
          }
          L[r] = here ? lse[(b * H + h) * Tq + i0 + r] : 0;
        }
        const long nv = (nmax + VL - 1) / VL;
        rows_times(Qs, KT, Tp, nv, P);
        rows_times(G, VT, Tp, nv, dS);
        for (int r = 0; r < R; r++) {
          SCALAR *p = P + r * Tp, *ds = dS + r * Tp;
          for (long j = 0; j < n[r]; j++) {
            p[j] = exp(p[j] - L[r]);
            ds[j] = p[j] * (ds[j] - D[r]) * scale;
          }
          for (long j = n[r]; j < nmax; j++) p[j] = ds[j] = 0;
        }
        weights_times(dS, Tp, base + H * DH, tok, nmax, dQ);
        for (long j = 0; j < nmax; j++) {
          SCALAR *dk = dK + j * DH, *dv = dV + j * DH;
          for (int c = 0; c < NC; c++) {
            vec ak = load(dk + c * VL), av = load(dv + c * VL);
            for (int r = 0; r < R; r++) {
              ak += dS[r * Tp + j] * load(Q[r] + c * VL);
              av += P[r * Tp + j] * load(G[r] + c * VL);
            }
            store(dk + c * VL, ak);
            store(dv + c * VL, av);
          }
        }
        for (int r = 0; r < R && i0 + r < Tq; r++)
          memcpy(dbase + (n[r] - 1) * tok, dQ[r], sizeof(SCALAR) * DH);
      }
      for (long j = 0; j < T; j++) {
        memcpy(dbase + j * tok + H * DH, dK + j * DH, sizeof(SCALAR) * DH);
        memcpy(dbase + j * tok + 2 * H * DH, dV + j * DH, sizeof(SCALAR) * DH);
      }
    }
  free(KT); free(VT); free(P); free(dS); free(dK); free(dV);
}
#define GELU_A ((SCALAR)1.5957691216057308)   /* 2 sqrt(2/pi) */
#define GELU_B ((SCALAR)0.0713548162726009)   /* 2 sqrt(2/pi) 0.044715 */
/* gelu_tanh(z) = z sigmoid(z (A + B z^2)) */
/* exponents kept finite (exp(ZMAX) is): -ffast-math assumes no infinity */
#define ZMAX ((SCALAR)(sizeof(SCALAR) == 4 ? 80 : 700))
static inline SCALAR exp_clamped(SCALAR z) { return exp(z > ZMAX ? ZMAX : z < -ZMAX ? -ZMAX : z); }

/* y = gelu(u + b), u: rows x cols, b: cols */
void bias_gelu_forward(const SCALAR *u, const SCALAR *b, SCALAR *y, long rows, long cols) {
  for (long i = 0; i < rows; i++)
    for (long c = 0; c < cols; c++) {
      const SCALAR z = u[i * cols + c] + b[c];
      y[i * cols + c] = z / (1 + exp_clamped(-z * (GELU_A + GELU_B * z * z)));
    }
}
/* du = g gelu'(z) = g (s + z s (1 - s) (A + 3 B z^2)), s = sigmoid(z (A + B z^2)), z = u + b;
   db = sum_i du_i (db: cols, zeroed by the caller) */
void bias_gelu_backward(const SCALAR *u, const SCALAR *b, const SCALAR *g, SCALAR *du,
                        SCALAR *db, long rows, long cols) {
  for (long i = 0; i < rows; i++)
    for (long c = 0; c < cols; c++) {
      const SCALAR z = u[i * cols + c] + b[c], z2 = z * z;
      const SCALAR s = 1 / (1 + exp_clamped(-z * (GELU_A + GELU_B * z2)));
      const SCALAR d = g[i * cols + c] * (s + z * s * (1 - s) * (GELU_A + 3 * GELU_B * z2));
      du[i * cols + c] = d;
      db[c] += d;
    }
}
"""
