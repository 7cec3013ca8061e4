/* Layer norm with a per-member affine map, forward and backward, one pass per row each way (rows in groups
 * of 4 side by side: each row's sums are chains of dependent adds, and four keep the CPU busy). Loaded by
 * models/native.py; used by models/layers.py:NativeLayerNorm on a CPU. Per row x of width d:
 *
 *   mean = sum(x) / d,  var = sum((x - mean)^2) / d,  rstd = 1 / sqrt(var + eps)
 *   xhat = (x - mean) * rstd,  y = xhat * w + b
 *   g = dy * w,  dx = (g - sum(g) / d - xhat * sum(g * xhat) / d) * rstd
 *   dw = sum over the member's rows of dy * xhat,  db = sum over its rows of dy
 *
 * Every sum runs in an order fixed by this source (vec.h): a row's bits depend on that row alone, a
 * member's dw and db on that member's rows alone (summed in blocks of 64 rows, then the blocks in order).
 * tests/test_native_layers.py compares it with torch and checks those invariances.
 *
 * Layouts (contiguous float32): x, y, dy, dx [E, R, d] (R rows per member); w, b, dw, db [E, d];
 * mean, rstd [E, R]. d a multiple of 8, d <= 4096.
 */
#include <math.h>

#include "vec.h"

#define DV_MAX 512 /* d <= 4096 */
#define BLOCK 64   /* rows per partial sum of dw, db */

int layer_norm_limits(int *d_max) {
    *d_max = 8 * DV_MAX;
    return 1;
}

/* rows r..r+G-1 of one member, side by side (G <= GROUP): each row's sums are a chain of dependent adds,
 * and G independent chains keep the CPU busy; each row's operations are those of a row alone */
#define GROUP 4
static inline __attribute__((always_inline)) void forward_rows(const float *restrict xr, float *restrict yr,
                                                              const float *restrict we, const float *restrict be,
                                                              float *restrict mean, float *restrict rstd,
                                                              const int G, int d, float eps) {
    const int n = d / 8;
    v8 s[GROUP], q[GROUP], m[GROUP];
    float rs[GROUP];
    for (int k = 0; k < G; k++) s[k] = loadu(xr + k * d);
    for (int u = 1; u < n; u++)
        for (int k = 0; k < G; k++) s[k] = s[k] + loadu(xr + k * d + 8 * u);
    for (int k = 0; k < G; k++) {
        m[k] = bcast(hsum(s[k]) / (float)d);
        q[k] = bcast(0.0f);
    }
    for (int u = 0; u < n; u++)
        for (int k = 0; k < G; k++) {
            v8 c = loadu(xr + k * d + 8 * u) - m[k];
            q[k] = q[k] + c * c;
        }
    for (int k = 0; k < G; k++) rs[k] = 1.0f / sqrtf(hsum(q[k]) / (float)d + eps);
    for (int u = 0; u < n; u++) {
        const v8 wu = loadu(we + 8 * u), bu = loadu(be + 8 * u);
        for (int k = 0; k < G; k++)
            storeu(yr + k * d + 8 * u, ((loadu(xr + k * d + 8 * u) - m[k]) * bcast(rs[k])) * wu + bu);
    }
    for (int k = 0; k < G; k++) {
        mean[k] = m[k][0];
        rstd[k] = rs[k];
    }
}

int layer_norm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                       int64_t E, int64_t R, int d, float eps) {
    if (d < 8 || d % 8 || d > 8 * DV_MAX) return -1;
    for (int64_t e = 0; e < E; e++) {
        const float *we = w + e * d, *be = b + e * d;
        int64_t r = 0;
        for (; r + GROUP <= R; r += GROUP) {
            const int64_t row = e * R + r;
            forward_rows(x + row * d, y + row * d, we, be, mean + row, rstd + row, GROUP, d, eps);
        }
        for (; r < R; r++) {
            const int64_t row = e * R + r;
            forward_rows(x + row * d, y + row * d, we, be, mean + row, rstd + row, 1, d, eps);
        }
    }
    return 0;
}

/* rows row..row+G-1 side by side (as forward_rows); dw_block and db_block gain the rows in order */
static inline __attribute__((always_inline)) void backward_rows(const float *restrict x, const float *restrict dy,
                                                               float *restrict dx, const float *restrict we,
                                                               const float *restrict mean,
                                                               const float *restrict rstd, int64_t row, const int G,
                                                               int d, v8 *restrict dw_block, v8 *restrict db_block) {
    const int n = d / 8;
    const v8 inv_d = bcast(1.0f / (float)d);
    const float *xr = x + row * d, *gr = dy + row * d;
    v8 m[GROUP], rs[GROUP], sg[GROUP], sgx[GROUP], mg[GROUP], mgx[GROUP];
    for (int k = 0; k < G; k++) {
        m[k] = bcast(mean[row + k]);
        rs[k] = bcast(rstd[row + k]);
        sg[k] = sgx[k] = bcast(0.0f);
    }
    for (int u = 0; u < n; u++) {
        const v8 wu = loadu(we + 8 * u);
        v8 dwu = dw_block[u], dbu = db_block[u];
        for (int k = 0; k < G; k++) {
            const v8 xhat = (loadu(xr + k * d + 8 * u) - m[k]) * rs[k], g = loadu(gr + k * d + 8 * u);
            const v8 gw = g * wu;
            sg[k] = sg[k] + gw;
            sgx[k] = sgx[k] + gw * xhat;
            dwu = dwu + g * xhat;
            dbu = dbu + g;
        }
        dw_block[u] = dwu;
        db_block[u] = dbu;
    }
    for (int k = 0; k < G; k++) {
        mg[k] = bcast(hsum(sg[k])) * inv_d;
        mgx[k] = bcast(hsum(sgx[k])) * inv_d;
    }
    for (int u = 0; u < n; u++) {
        const v8 wu = loadu(we + 8 * u);
        for (int k = 0; k < G; k++) {
            const v8 xhat = (loadu(xr + k * d + 8 * u) - m[k]) * rs[k];
            const v8 gw = loadu(gr + k * d + 8 * u) * wu;
            storeu(dx + (row + k) * d + 8 * u, ((gw - mg[k]) - xhat * mgx[k]) * rs[k]);
        }
    }
}

int layer_norm_backward(const float *x, const float *w, const float *mean, const float *rstd, const float *dy,
                        float *dx, float *dw, float *db, int64_t E, int64_t R, int d) {
    if (d < 8 || d % 8 || d > 8 * DV_MAX) return -1;
    const int n = d / 8;
    v8 dw_all[DV_MAX], db_all[DV_MAX], dw_block[DV_MAX], db_block[DV_MAX];
    for (int64_t e = 0; e < E; e++) {
        const float *we = w + e * d;
        for (int u = 0; u < n; u++) dw_all[u] = db_all[u] = bcast(0.0f);
        for (int64_t r0 = 0; r0 < R; r0 += BLOCK) {
            for (int u = 0; u < n; u++) dw_block[u] = db_block[u] = bcast(0.0f);
            const int64_t r1 = r0 + BLOCK < R ? r0 + BLOCK : R;
            int64_t r = r0;
            for (; r + GROUP <= r1; r += GROUP)
                backward_rows(x, dy, dx, we, mean, rstd, e * R + r, GROUP, d, dw_block, db_block);
            for (; r < r1; r++) backward_rows(x, dy, dx, we, mean, rstd, e * R + r, 1, d, dw_block, db_block);
            for (int u = 0; u < n; u++) {
                dw_all[u] = dw_all[u] + dw_block[u];
                db_all[u] = db_all[u] + db_block[u];
            }
        }
        for (int u = 0; u < n; u++) {
            storeu(dw + e * d + 8 * u, dw_all[u]);
            storeu(db + e * d + 8 * u, db_all[u]);
        }
    }
    return 0;
}
