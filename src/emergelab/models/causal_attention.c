/* Causal attention of short sequences and small heads, forward and backward, fused: one (sequence, head)
 * problem at a time, everything in registers and L1. Loaded by models/native.py (ctypes); used by
 * models/fast_attention.py:NativeCausalAttention in CPU training. The math, per problem:
 *
 *   s = q k^T * scale (causal: columns j <= i),  p = softmax(s),  z = p v
 *   dp = dz v^T,  ds = p * (dp - rowsum(p * dp)) * scale,  dq = ds k,  dk = ds^T q,  dv = p^T dz
 *
 * Written with vec.h's vectors of 8 floats. Every sum runs in an order fixed by this source (no
 * -ffast-math, no FMA contraction: compile with -ffp-contract=off), so a problem's bits depend on nothing
 * but its own inputs (not on the batch, the ensemble or the thread count), and not on the vector ISA the
 * compiler targets: vector and scalar forms of an IEEE add or multiply round alike.
 * tests/test_native_attention.py compares it with the reference attention and checks those invariances.
 *
 * Layouts (contiguous float32): qkv [NB, T, 3, H, D]; z and dz [NB, T, H, D]; p [NB, H, T, TP] with
 * TP = 8 * ceil(T / 8) (row i holds columns 0..i, zeros after), or [NB, H, T, T] from the forward for hooks. D a multiple of 8, D <= 32; T <= 128.
 */
#include <string.h>

#include "vec.h"

#define NC_MAX 16 /* chunks of 8 keys: T <= 128 */
#define T_MAX (8 * NC_MAX)
#define DV_MAX 4 /* vectors of 8 per head: D <= 32 (at D = 64 the torch form is as fast) */

#define BAD_SHAPE(T, D, H) ((T) < 1 || (T) > T_MAX || (D) % 8 || (D) < 8 || (D) > 8 * DV_MAX || (H) < 1)

int causal_attention_limits(int *t_max, int *d_max) {
    *t_max = T_MAX;
    *d_max = 8 * DV_MAX;
    return 1;
}

/* The forward's three steps, shared by the fused forward and the split forms the hooks need (scores,
 * softmax + pv, pv): each is the same code in both, so a problem's bits are the same whichever way it is
 * computed, as long as the values between the steps are the ones the fused forward would have had. */

static inline __attribute__((always_inline)) void gather_kv(const float *restrict base, int T, int H, int h,
                                                           const int DV, v8 kT[][NC_MAX], v8 v[][DV_MAX]) {
    const int D = 8 * DV;
    const int64_t row = 3 * (int64_t)H * D;
    memset(kT, 0, sizeof(v8) * NC_MAX * D);
    for (int j = 0; j < T; j++) {
        const float *kj = base + j * row + H * D + h * D, *vj = base + j * row + 2 * H * D + h * D;
        for (int d = 0; d < D; d++) kT[d][j / 8][j % 8] = kj[d];
        for (int u = 0; u < DV; u++) v[j][u] = loadu(vj + 8 * u);
    }
}

/* s[0..i/8] = q k^T * scale for row i; columns after i: -inf */
static inline __attribute__((always_inline)) void scores_row(const float *restrict q, v8 kT[][NC_MAX], int i,
                                                            const int DV, float scale, v8 *s) {
    const int nc = i / 8 + 1;
    for (int c = 0; c < nc; c++) {
        v8 a = bcast(q[0]) * kT[0][c];
        for (int d = 1; d < 8 * DV; d++) a = a + bcast(q[d]) * kT[d][c];
        s[c] = a * bcast(scale);
    }
    const v8i future = (v8i){0, 1, 2, 3, 4, 5, 6, 7} + bcast_i(8 * (nc - 1)) > bcast_i(i);
    s[nc - 1] = select(future, bcast(-__builtin_inff()), s[nc - 1]);
}

/* softmax over chunks 0..n-1 in place (-inf -> exactly 0); chunks that are all -inf add exact zeros, so
 * n = i/8 + 1 and n = NC give the same bits for a causal row */
static inline void softmax_chunks(v8 *s, int n) {
    v8 m8 = s[0];
    for (int c = 1; c < n; c++) m8 = select(s[c] > m8, s[c], m8);
    const v8 m = hmax_all(m8);
    v8 sum8 = bcast(0.0f);
    for (int c = 0; c < n; c++) {
        s[c] = exp_nonpositive(s[c] - m);
        sum8 = sum8 + s[c];
    }
    const v8 sum = hsum_all(sum8);
    for (int c = 0; c < n; c++) s[c] = s[c] / sum;
}

/* softmax_chunks of rows 0..T-1 of a causal s (row i: chunks 0..i/8), step by step over all rows: the same
 * operations on each element as softmax_chunks, in the same order, so the same bits; the rows' exps are
 * independent of each other, which a row-at-a-time loop hides behind each row's max */
static inline void softmax_causal_rows(v8 s[][NC_MAX], int T) {
    v8 m[T], sum[T];
    for (int i = 0; i < T; i++) {
        v8 m8 = s[i][0];
        for (int c = 1; c <= i / 8; c++) m8 = select(s[i][c] > m8, s[i][c], m8);
        m[i] = hmax_all(m8);
    }
    for (int i = 0; i < T; i++)
        for (int c = 0; c <= i / 8; c++) s[i][c] = exp_nonpositive(s[i][c] - m[i]);
    for (int i = 0; i < T; i++) {
        v8 sum8 = bcast(0.0f);
        for (int c = 0; c <= i / 8; c++) sum8 = sum8 + s[i][c];
        sum[i] = hsum_all(sum8);
    }
    for (int i = 0; i < T; i++)
        for (int c = 0; c <= i / 8; c++) s[i][c] = s[i][c] / sum[i];
}

/* out = sum_j p_j v_j over j <= i in four partial sums (fixed order), then j = i+1..last (zeros above the
 * diagonal add exact zeros) */
static inline __attribute__((always_inline)) void pv_row(const float *restrict pi, v8 v[][DV_MAX], int i, int last,
                                                        const int DV, float *restrict out) {
    for (int u = 0; u < DV; u++) {
        v8 a0 = bcast(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int j = 0;
        for (; j + 4 <= i + 1; j += 4) {
            a0 = a0 + bcast(pi[j]) * v[j][u];
            a1 = a1 + bcast(pi[j + 1]) * v[j + 1][u];
            a2 = a2 + bcast(pi[j + 2]) * v[j + 2][u];
            a3 = a3 + bcast(pi[j + 3]) * v[j + 3][u];
        }
        for (; j <= last; j++) a0 = a0 + bcast(pi[j]) * v[j][u];
        storeu(out + 8 * u, (a0 + a1) + (a2 + a3));
    }
}

/* Scores, softmax and p v each over all rows in turn (not row by row): a row's softmax is a chain of
 * dependent steps (max, exp, sum, divide), and rows side by side let the CPU overlap those chains. */
static inline __attribute__((always_inline)) void forward_problem(const float *restrict base, float *restrict z,
                                                                 float *restrict ph, int ps, int T, int H, int h,
                                                                 const int DV, float scale) {
    const int D = 8 * DV, NC = (T + 7) / 8, TP = 8 * NC;
    const int64_t row = 3 * (int64_t)H * D;
    v8 kT[8 * DV_MAX][NC_MAX]; /* kT[d][c][l] = k[8c + l][d] */
    v8 v[T_MAX][DV_MAX];
    v8 s[T][NC_MAX]; /* sized by T: the stack holds only what this problem uses */
    gather_kv(base, T, H, h, DV, kT, v);
    for (int i = 0; i < T; i++) scores_row(base + i * row + h * D, kT, i, DV, scale, s[i]);
    softmax_causal_rows(s, T);
    for (int i = 0; i < T; i++) {
        const int nc = i / 8 + 1;
        float *pi = ph + i * ps;
        if (ps == TP) {
            for (int c = 0; c < nc; c++) storeu(pi + 8 * c, s[i][c]);
            for (int c = nc; c < NC; c++) storeu(pi + 8 * c, bcast(0.0f));
        } else { /* rows of T: the same values, stored without the padding */
            float buf[8 * NC_MAX];
            for (int c = 0; c < nc; c++) storeu(buf + 8 * c, s[i][c]);
            for (int j = 0; j <= i; j++) pi[j] = buf[j];
            for (int j = i + 1; j < T; j++) pi[j] = 0.0f;
        }
        pv_row(pi, v, i, i, DV, z + ((int64_t)i * H + h) * D);
    }
}

/* Passes over the rows i (dp_i and its dot with p_i; then ds_i and dq_i = sum_j ds_ij k_j), then over the keys
 * j: dk_j = sum_i ds_ij q_i and dv_j = sum_i p_ij dz_i, each over i = j..T-1 in increasing order and so in
 * registers (the order a row-by-row accumulation gives, and so its bits). ds is kept for the key pass:
 * T x TP floats (4 KB at T = 31). */
static inline __attribute__((always_inline)) void backward_problem(const float *restrict base,
                                                                  const float *restrict ph,
                                                                  const float *restrict dz, float *restrict dbase,
                                                                  int T, int H, int h, const int DV, float scale) {
    const int D = 8 * DV, NC = (T + 7) / 8, TP = 8 * NC;
    const int64_t row = 3 * (int64_t)H * D, zrow = (int64_t)H * D;
    v8 q[T_MAX][DV_MAX], k[T_MAX][DV_MAX];
    v8 vT[8 * DV_MAX][NC_MAX];
    float ds[T * TP];
    memset(vT, 0, sizeof(v8) * NC_MAX * D);
    for (int j = 0; j < T; j++) {
        const float *vj = base + j * row + 2 * H * D + h * D;
        for (int u = 0; u < DV; u++) {
            q[j][u] = loadu(base + j * row + h * D + 8 * u);
            k[j][u] = loadu(base + j * row + H * D + h * D + 8 * u);
        }
        for (int d = 0; d < D; d++) vT[d][j / 8][j % 8] = vj[d];
    }
    v8 dot[T];
    for (int i = 0; i < T; i++) { /* dp_i = dz_i v^T into ds (scaled below), and rowsum(p_i * dp_i) */
        const float *pi = ph + i * TP, *gi = dz + i * zrow + h * D;
        float *dsi = ds + i * TP;
        v8 dot8 = bcast(0.0f);
        for (int c = 0; c <= i / 8; c++) {
            v8 a = bcast(gi[0]) * vT[0][c];
            for (int d = 1; d < D; d++) a = a + bcast(gi[d]) * vT[d][c];
            storeu(dsi + 8 * c, a);
            dot8 = dot8 + loadu(pi + 8 * c) * a;
        }
        dot[i] = hsum_all(dot8);
    }
    for (int i = 0; i < T; i++) { /* ds_i = p_i (dp_i - dot_i) scale, then dq_i = sum_j ds_ij k_j: p v's sum */
        const float *pi = ph + i * TP;
        float *dsi = ds + i * TP;
        for (int c = 0; c <= i / 8; c++)
            storeu(dsi + 8 * c, loadu(pi + 8 * c) * (loadu(dsi + 8 * c) - dot[i]) * bcast(scale));
        pv_row(dsi, k, i, i, DV, dbase + i * row + h * D);
    }
    for (int j = 0; j < T; j++) {
        v8 dk[DV_MAX], dv[DV_MAX];
        for (int u = 0; u < DV; u++) dk[u] = dv[u] = bcast(0.0f);
        for (int i = j; i < T; i++) {
            const v8 s = bcast(ds[i * TP + j]), pij = bcast(ph[i * TP + j]);
            const float *gi = dz + i * zrow + h * D;
            for (int u = 0; u < DV; u++) {
                dk[u] = dk[u] + s * q[i][u];
                dv[u] = dv[u] + pij * loadu(gi + 8 * u);
            }
        }
        for (int u = 0; u < DV; u++) {
            storeu(dbase + j * row + H * D + h * D + 8 * u, dk[u]);
            storeu(dbase + j * row + 2 * H * D + h * D + 8 * u, dv[u]);
        }
    }
}

/* qkv [NB, T, 3, H, D] -> z [NB, T, H, D], p [NB, H, T, ps] with rows of ps = TP (what the backward reads) or
 * ps = T (the pattern as hooks see it). Returns 0, or -1 for a shape out of range. */
int causal_attention_forward(const float *qkv, float *z, float *p, int64_t NB, int T, int H, int D, float scale,
                             int ps) {
    if (BAD_SHAPE(T, D, H)) return -1;
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
    if (BAD_SHAPE(T, D, H)) return -1;
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

/* The split forms for hooks (models/fast_attention.py:_observed_native). Rows of T, [NB, H, T, T]. */

/* qkv -> S: scores, -inf above the diagonal */
int causal_attention_scores(const float *qkv, float *S, int64_t NB, int T, int H, int D, float scale) {
    if (BAD_SHAPE(T, D, H)) return -1;
    const int DV = D / 8;
    const int64_t row = 3 * (int64_t)H * D;
    v8 kT[8 * DV_MAX][NC_MAX], v[T_MAX][DV_MAX];
    for (int64_t nb = 0; nb < NB; nb++)
        for (int h = 0; h < H; h++) {
            const float *base = qkv + nb * T * row;
            float *Sh = S + (nb * H + h) * T * T;
            gather_kv(base, T, H, h, DV, kT, v);
            for (int i = 0; i < T; i++) {
                v8 s[NC_MAX];
                float buf[8 * NC_MAX];
                scores_row(base + i * row + h * D, kT, i, DV, scale, s);
                for (int c = 0; c <= i / 8; c++) storeu(buf + 8 * c, s[c]);
                for (int j = 0; j <= i; j++) Sh[i * T + j] = buf[j];
                for (int j = i + 1; j < T; j++) Sh[i * T + j] = -__builtin_inff();
            }
        }
    return 0;
}

/* S, qkv -> P = softmax(S) over whole rows and z = P v (v from qkv); with S NULL, P is given: z = P v */
int causal_attention_softmax_pv(const float *S, const float *qkv, float *P, float *z, int64_t NB, int T, int H,
                                int D) {
    if (BAD_SHAPE(T, D, H)) return -1;
    const int DV = D / 8, NC = (T + 7) / 8;
    const int64_t row = 3 * (int64_t)H * D;
    v8 kT[8 * DV_MAX][NC_MAX], v[T_MAX][DV_MAX];
    for (int64_t nb = 0; nb < NB; nb++)
        for (int h = 0; h < H; h++) {
            gather_kv(qkv + nb * T * row, T, H, h, DV, kT, v);
            float *Ph = P + (nb * H + h) * T * T;
            for (int i = 0; i < T; i++) {
                if (S) {
                    const float *Si = S + ((nb * H + h) * T + i) * T;
                    float buf[8 * NC_MAX];
                    v8 s[NC_MAX];
                    for (int j = 0; j < 8 * NC; j++) buf[j] = j < T ? Si[j] : -__builtin_inff();
                    for (int c = 0; c < NC; c++) s[c] = loadu(buf + 8 * c);
                    softmax_chunks(s, NC);
                    for (int c = 0; c < NC; c++) storeu(buf + 8 * c, s[c]);
                    memcpy(Ph + i * T, buf, sizeof(float) * T);
                }
                pv_row(Ph + i * T, v, i, T - 1, DV, z + ((nb * T + i) * (int64_t)H + h) * D);
            }
        }
    return 0;
}
