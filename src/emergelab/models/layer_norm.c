/* Layer norm with a per-member affine map, forward and backward, one pass per row each way. Loaded by
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

int layer_norm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                       int64_t E, int64_t R, int d, float eps) {
    if (d < 8 || d % 8 || d > 8 * DV_MAX) return -1;
    const int n = d / 8;
    for (int64_t e = 0; e < E; e++) {
        const float *we = w + e * d, *be = b + e * d;
        for (int64_t r = 0; r < R; r++) {
            const int64_t row = e * R + r;
            const float *xr = x + row * d;
            float *yr = y + row * d;
            v8 s = loadu(xr);
            for (int u = 1; u < n; u++) s = s + loadu(xr + 8 * u);
            const v8 m = bcast(hsum(s) / (float)d);
            v8 q = bcast(0.0f);
            for (int u = 0; u < n; u++) {
                v8 c = loadu(xr + 8 * u) - m;
                q = q + c * c;
            }
            const float rs = 1.0f / sqrtf(hsum(q) / (float)d + eps);
            for (int u = 0; u < n; u++)
                storeu(yr + 8 * u, ((loadu(xr + 8 * u) - m) * bcast(rs)) * loadu(we + 8 * u) + loadu(be + 8 * u));
            mean[row] = m[0];
            rstd[row] = rs;
        }
    }
    return 0;
}

int layer_norm_backward(const float *x, const float *w, const float *mean, const float *rstd, const float *dy,
                        float *dx, float *dw, float *db, int64_t E, int64_t R, int d) {
    if (d < 8 || d % 8 || d > 8 * DV_MAX) return -1;
    const int n = d / 8;
    v8 dw_all[DV_MAX], db_all[DV_MAX], dw_block[DV_MAX], db_block[DV_MAX];
    const v8 inv_d = bcast(1.0f / (float)d);
    for (int64_t e = 0; e < E; e++) {
        const float *we = w + e * d;
        for (int u = 0; u < n; u++) dw_all[u] = db_all[u] = bcast(0.0f);
        for (int64_t r0 = 0; r0 < R; r0 += BLOCK) {
            for (int u = 0; u < n; u++) dw_block[u] = db_block[u] = bcast(0.0f);
            const int64_t r1 = r0 + BLOCK < R ? r0 + BLOCK : R;
            for (int64_t r = r0; r < r1; r++) {
                const int64_t row = e * R + r;
                const float *xr = x + row * d, *gr = dy + row * d;
                const v8 m = bcast(mean[row]), rs = bcast(rstd[row]);
                v8 sg = bcast(0.0f), sgx = bcast(0.0f);
                for (int u = 0; u < n; u++) {
                    const v8 xhat = (loadu(xr + 8 * u) - m) * rs, g = loadu(gr + 8 * u);
                    const v8 gw = g * loadu(we + 8 * u);
                    sg = sg + gw;
                    sgx = sgx + gw * xhat;
                    dw_block[u] = dw_block[u] + g * xhat;
                    db_block[u] = db_block[u] + g;
                }
                const v8 mg = bcast(hsum(sg)) * inv_d, mgx = bcast(hsum(sgx)) * inv_d;
                float *dxr = dx + row * d;
                for (int u = 0; u < n; u++) {
                    const v8 xhat = (loadu(xr + 8 * u) - m) * rs;
                    const v8 gw = loadu(gr + 8 * u) * loadu(we + 8 * u);
                    storeu(dxr + 8 * u, ((gw - mg) - xhat * mgx) * rs);
                }
            }
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
