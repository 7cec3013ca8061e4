/* Causal attention of short sequences and small heads, forward and backward, fused: one (sequence, head)
 * problem at a time, everything in registers and L1. Loaded by models/native.py (ctypes); used by
 * models/fast_attention.py:NativeCausalAttention in CPU training. The math, per problem:
 *
 *   s = q k^T * scale (causal: columns j <= i),  p = softmax(s),  z = p v
 *   dp = dz v^T,  ds = p * (dp - rowsum(p * dp)) * scale,  dq = ds k,  dk = ds^T q,  dv = p^T dz
 *
 * Written with vec8.h's vectors of 8 floats. Every sum runs in an order fixed by this source (no
 * -ffast-math, no FMA contraction: compile with -ffp-contract=off), so a problem's bits depend on nothing
 * but its own inputs (not on the batch, the ensemble or the thread count), and not on the vector ISA the
 * compiler targets: vector and scalar forms of an IEEE add or multiply round alike.
 * tests/test_native_attention.py compares it with the reference attention and checks those invariances.
 *
 * Layouts (contiguous float32): qkv [NB, T, 3, H, D]; z and dz [NB, T, H, D]; p [NB, H, T, TP] with
 * TP = 8 * ceil(T / 8) (row i holds columns 0..i, zeros after), or [NB, H, T, T] from the forward for hooks. D a multiple of 8, D <= 32; T <= 128.
 */
#include <string.h>

#include "vec8.h"

#define NC_MAX 16 /* chunks of 8 keys: T <= 128 */
#define T_MAX (8 * NC_MAX)
#define DV_MAX 4 /* vectors of 8 per head: D <= 32 (at D = 64 the torch form is as fast) */

int causal_attention_limits(int *t_max, int *d_max) {
    *t_max = T_MAX;
    *d_max = 8 * DV_MAX;
    return 1;
}

static inline __attribute__((always_inline)) void forward_problem(const float *restrict base, float *restrict z,
                                                                 float *restrict ph, int ps, int T, int H, int h,
                                                                 const int DV, float scale) {
    const int D = 8 * DV, NC = (T + 7) / 8, TP = 8 * NC;
    const int64_t row = 3 * (int64_t)H * D;
    v8 kT[8 * DV_MAX][NC_MAX]; /* kT[d][c][l] = k[8c + l][d] */
    v8 v[T_MAX][DV_MAX];
    memset(kT, 0, sizeof(v8) * NC_MAX * D);
    for (int j = 0; j < T; j++) {
        const float *kj = base + j * row + H * D + h * D, *vj = base + j * row + 2 * H * D + h * D;
        for (int d = 0; d < D; d++) kT[d][j / 8][j % 8] = kj[d];
        for (int u = 0; u < DV; u++) v[j][u] = loadu(vj + 8 * u);
    }
    for (int i = 0; i < T; i++) {
        const float *q = base + i * row + h * D;
        const int nc = i / 8 + 1; /* the chunks holding columns 0..i */
        v8 s[NC_MAX];
        for (int c = 0; c < nc; c++) {
            v8 a = bcast(q[0]) * kT[0][c];
            for (int d = 1; d < D; d++) a = a + bcast(q[d]) * kT[d][c];
            s[c] = a * bcast(scale);
        }
        v8i future; /* columns after i in the last chunk */
        for (int l = 0; l < 8; l++) future[l] = 8 * (nc - 1) + l > i ? -1 : 0;
        s[nc - 1] = select(future, bcast(-3.0e38f), s[nc - 1]);
        v8 m8 = s[0];
        for (int c = 1; c < nc; c++) m8 = select(s[c] > m8, s[c], m8);
        const v8 m = bcast(hmax(m8));
        v8 sum8 = bcast(0.0f);
        for (int c = 0; c < nc; c++) {
            s[c] = exp_nonpositive(s[c] - m);
            if (c == nc - 1) s[c] = select(future, bcast(0.0f), s[c]);
            sum8 = sum8 + s[c];
        }
        const v8 sum = bcast(hsum(sum8));
        float *pi = ph + i * ps;
        if (ps == TP) {
            for (int c = 0; c < nc; c++) storeu(pi + 8 * c, s[c] / sum);
            for (int c = nc; c < NC; c++) storeu(pi + 8 * c, bcast(0.0f));
        } else { /* rows of T: the same values, stored without the padding */
            float row[8 * NC_MAX];
            for (int c = 0; c < nc; c++) storeu(row + 8 * c, s[c] / sum);
            for (int j = 0; j <= i; j++) pi[j] = row[j];
            for (int j = i + 1; j < T; j++) pi[j] = 0.0f;
        }
        for (int u = 0; u < DV; u++) { /* z_i = sum_j p_ij v_j, four partial sums (fixed order) */
            v8 a0 = bcast(0.0f), a1 = a0, a2 = a0, a3 = a0;
            int j = 0;
            for (; j + 4 <= i + 1; j += 4) {
                a0 = a0 + bcast(pi[j]) * v[j][u];
                a1 = a1 + bcast(pi[j + 1]) * v[j + 1][u];
                a2 = a2 + bcast(pi[j + 2]) * v[j + 2][u];
                a3 = a3 + bcast(pi[j + 3]) * v[j + 3][u];
            }
            for (; j <= i; j++) a0 = a0 + bcast(pi[j]) * v[j][u];
            storeu(z + ((int64_t)i * H + h) * D + 8 * u, (a0 + a1) + (a2 + a3));
        }
    }
}

static inline __attribute__((always_inline)) void backward_problem(const float *restrict base,
                                                                  const float *restrict ph,
                                                                  const float *restrict dz, float *restrict dbase,
                                                                  int T, int H, int h, const int DV, float scale) {
    const int D = 8 * DV, NC = (T + 7) / 8, TP = 8 * NC;
    const int64_t row = 3 * (int64_t)H * D;
    v8 q[T_MAX][DV_MAX], k[T_MAX][DV_MAX], dk[T_MAX][DV_MAX], dv[T_MAX][DV_MAX];
    v8 vT[8 * DV_MAX][NC_MAX];
    memset(vT, 0, sizeof(v8) * NC_MAX * D);
    for (int j = 0; j < T; j++) {
        const float *vj = base + j * row + 2 * H * D + h * D;
        for (int u = 0; u < DV; u++) {
            q[j][u] = loadu(base + j * row + h * D + 8 * u);
            k[j][u] = loadu(base + j * row + H * D + h * D + 8 * u);
            dk[j][u] = dv[j][u] = bcast(0.0f);
        }
        for (int d = 0; d < D; d++) vT[d][j / 8][j % 8] = vj[d];
    }
    float ds[T_MAX];
    for (int i = 0; i < T; i++) {
        const int nc = i / 8 + 1;
        const float *pi = ph + i * TP, *gi = dz + ((int64_t)i * H + h) * D;
        v8 dp[NC_MAX], pr[NC_MAX];
        v8 dot8 = bcast(0.0f);
        for (int c = 0; c < nc; c++) {
            v8 a = bcast(gi[0]) * vT[0][c];
            for (int d = 1; d < D; d++) a = a + bcast(gi[d]) * vT[d][c];
            pr[c] = loadu(pi + 8 * c);
            dp[c] = a;
            dot8 = dot8 + pr[c] * a;
        }
        const v8 dot = bcast(hsum(dot8));
        for (int c = 0; c < nc; c++) storeu(ds + 8 * c, pr[c] * (dp[c] - dot) * bcast(scale));
        for (int u = 0; u < DV; u++) {
            v8 a0 = bcast(0.0f), a1 = a0, a2 = a0, a3 = a0;
            int j = 0;
            for (; j + 4 <= i + 1; j += 4) {
                a0 = a0 + bcast(ds[j]) * k[j][u];
                a1 = a1 + bcast(ds[j + 1]) * k[j + 1][u];
                a2 = a2 + bcast(ds[j + 2]) * k[j + 2][u];
                a3 = a3 + bcast(ds[j + 3]) * k[j + 3][u];
            }
            for (; j <= i; j++) a0 = a0 + bcast(ds[j]) * k[j][u];
            storeu(dbase + i * row + h * D + 8 * u, (a0 + a1) + (a2 + a3)); /* dq_i */
            const v8 qi = q[i][u], g = loadu(gi + 8 * u);
            for (j = 0; j <= i; j++) {
                dk[j][u] = dk[j][u] + bcast(ds[j]) * qi;
                dv[j][u] = dv[j][u] + bcast(pi[j]) * g;
            }
        }
    }
    for (int j = 0; j < T; j++)
        for (int u = 0; u < DV; u++) {
            storeu(dbase + j * row + H * D + h * D + 8 * u, dk[j][u]);
            storeu(dbase + j * row + 2 * H * D + h * D + 8 * u, dv[j][u]);
        }
}

/* qkv [NB, T, 3, H, D] -> z [NB, T, H, D], p [NB, H, T, ps] with rows of ps = TP (what the backward reads) or
 * ps = T (the pattern as hooks see it). Returns 0, or -1 for a shape out of range. */
int causal_attention_forward(const float *qkv, float *z, float *p, int64_t NB, int T, int H, int D, float scale,
                             int ps) {
    if (T < 1 || T > T_MAX || D % 8 || D < 8 || D > 8 * DV_MAX || H < 1) return -1;
    const int TP = 8 * ((T + 7) / 8);
    if (ps != TP && ps != T) return -1;
    for (int64_t nb = 0; nb < NB; nb++)
        for (int h = 0; h < H; h++) {
            const float *base = qkv + nb * T * 3 * H * D;
            float *zo = z + nb * T * H * D, *ph = p + (nb * H + h) * T * ps;
            if (D == 8) forward_problem(base, zo, ph, ps, T, H, h, 1, scale);
            else if (D == 16) forward_problem(base, zo, ph, ps, T, H, h, 2, scale);
            else forward_problem(base, zo, ph, ps, T, H, h, D / 8, scale);
        }
    return 0;
}

/* qkv, p (from the forward), dz [NB, T, H, D] -> dqkv [NB, T, 3, H, D]. Returns 0, or -1 (shape). */
int causal_attention_backward(const float *qkv, const float *p, const float *dz, float *dqkv, int64_t NB, int T,
                              int H, int D, float scale) {
    if (T < 1 || T > T_MAX || D % 8 || D < 8 || D > 8 * DV_MAX || H < 1) return -1;
    const int TP = 8 * ((T + 7) / 8);
    for (int64_t nb = 0; nb < NB; nb++)
        for (int h = 0; h < H; h++) {
            const float *base = qkv + nb * T * 3 * H * D, *ph = p + (nb * H + h) * T * TP;
            const float *g = dz + nb * T * H * D;
            float *dbase = dqkv + nb * T * 3 * H * D;
            if (D == 8) backward_problem(base, ph, g, dbase, T, H, h, 1, scale);
            else if (D == 16) backward_problem(base, ph, g, dbase, T, H, h, 2, scale);
            else backward_problem(base, ph, g, dbase, T, H, h, D / 8, scale);
        }
    return 0;
}
