/* Entropy of probability rows, -sum_j p_j log p_j, in one pass (the attention probes' attn_entropy). Loaded by
 * models/native.py; used by train/measure.py:row_entropy on a CPU. log is Cephes' logf (frexp by bit
 * operations, degree-8 polynomial; ~1 ulp); a p below 1e-30 (0, subnormal) adds nothing (its term is below
 * 7e-29). A row's bits depend on that row alone. tests/test_native_layers.py.
 *
 * p [rows, n] contiguous float32 -> out [rows].
 */
#include <string.h>

#include "vec.h"

static inline v8 log_positive(v8 x) { /* x >= 1e-30, normal */
    const v8i bits = (v8i)x;
    v8 e = __builtin_convertvector(((bits >> 23) & bcast_i(0xff)) - bcast_i(126), v8);
    v8 m = (v8)((bits & bcast_i((int32_t)0x807fffff)) | bcast_i(0x3f000000)); /* [0.5, 1) */
    const v8i small = m < bcast(0.707106781186547524f);
    e = select(small, e - bcast(1.0f), e);
    m = select(small, m + m, m) - bcast(1.0f);
    const v8 z = m * m;
    v8 y = bcast(7.0376836292E-2f);
    y = y * m + bcast(-1.1514610310E-1f);
    y = y * m + bcast(1.1676998740E-1f);
    y = y * m + bcast(-1.2420140846E-1f);
    y = y * m + bcast(1.4249322787E-1f);
    y = y * m + bcast(-1.6668057665E-1f);
    y = y * m + bcast(2.0000714765E-1f);
    y = y * m + bcast(-2.4999993993E-1f);
    y = y * m + bcast(3.3333331174E-1f);
    y = (y * m) * z;
    y = y + e * bcast(-2.12194440e-4f);
    y = y - bcast(0.5f) * z;
    return (m + y) + e * bcast(0.693359375f);
}

static inline v8 neg_p_log_p(v8 p) {
    const v8i tiny = p < bcast(1e-30f);
    const v8 safe = select(tiny, bcast(1.0f), p);
    return select(tiny, bcast(0.0f), bcast(0.0f) - p * log_positive(safe));
}

static inline int all_tiny(v8 p) { /* a chunk of zeros (e.g. above an attention pattern's diagonal) adds 0 */
    const v8i tiny = p < bcast(1e-30f);
    int all = 1;
    for (int l = 0; l < 8; l++) all &= tiny[l] != 0;
    return all;
}

void row_entropy(const float *p, float *out, int64_t rows, int n) {
    v8i tail_lanes; /* rows of n >= 8 end with an overlapping load of their last 8; lanes already summed: off */
    for (int l = 0; l < 8; l++) tail_lanes[l] = l >= 8 - n % 8 ? -1 : 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = p + r * n;
        v8 acc = bcast(0.0f);
        int j = 0;
        for (; j + 8 <= n; j += 8) {
            const v8 x = loadu(row + j);
            if (!all_tiny(x)) acc = acc + neg_p_log_p(x);
        }
        if (j < n && n >= 8) {
            const v8 x = (v8)((v8i)loadu(row + n - 8) & tail_lanes);
            if (!all_tiny(x)) acc = acc + neg_p_log_p(x);
        } else if (j < n) {
            float tail[8] = {0};
            memcpy(tail, row, sizeof(float) * n);
            acc = acc + neg_p_log_p(loadu(tail));
        }
        out[r] = hsum(acc);
    }
}
