/* GELU (the exact form, x * Phi(x)), forward with its derivative, and the backward as one multiply. Loaded
 * by models/native.py; used by models/layers.py:NativeGelu on a CPU. Per element:
 *
 *   e = exp(-x^2 / 2),  erf(x / sqrt 2) by Abramowitz & Stegun 7.1.26 from e (|error| <= 1.5e-7; torch's
 *   vectorised CPU erf is the same formula),  cdf = (1 + erf) / 2
 *   y = x * cdf,  y' = cdf + x * e / sqrt(2 pi),  dx = dy * y'
 *
 * The forward keeps y' (one exp serves erf and the density), so the backward reads two arrays and writes
 * one, where torch's recomputes erf and exp. Elementwise: an element's bits depend on its value alone (a
 * tail shorter than 8 goes through the same vector code). tests/test_native_gelu.py.
 */
#include <string.h>

#include "vec8.h"

static inline void gelu8(v8 x, v8 *y, v8 *dydx) {
    const v8 a = x * bcast(0.70710678118654752f); /* x / sqrt 2 */
    const v8i negative = a < bcast(0.0f);
    const v8 abs = (v8)((v8i)a & bcast_i(0x7fffffff));
    const v8 t = bcast(1.0f) / (bcast(0.3275911f) * abs + bcast(1.0f));
    v8 r = bcast(1.061405429f);
    r = r * t + bcast(-1.453152027f);
    r = r * t + bcast(1.421413741f);
    r = r * t + bcast(-0.284496736f);
    r = r * t + bcast(0.254829592f);
    const v8 e = exp_nonpositive(bcast(0.0f) - a * a);
    const v8 erf_abs = bcast(1.0f) - (r * t) * e;
    const v8 erf = select(negative, bcast(0.0f) - erf_abs, erf_abs);
    const v8 cdf = bcast(0.5f) * (bcast(1.0f) + erf);
    *y = x * cdf;
    *dydx = cdf + x * (e * bcast(0.39894228040143268f)); /* 1 / sqrt(2 pi) */
}

/* x [n] -> y [n], dydx [n] */
void gelu_forward(const float *x, float *y, float *dydx, int64_t n) {
    int64_t i = 0;
    v8 a, b;
    for (; i + 8 <= n; i += 8) {
        gelu8(loadu(x + i), &a, &b);
        storeu(y + i, a);
        storeu(dydx + i, b);
    }
    if (i < n) {
        float in[8] = {0}, out[8], d[8];
        memcpy(in, x + i, sizeof(float) * (n - i));
        gelu8(loadu(in), &a, &b);
        storeu(out, a);
        storeu(d, b);
        memcpy(y + i, out, sizeof(float) * (n - i));
        memcpy(dydx + i, d, sizeof(float) * (n - i));
    }
}

/* dy [n], dydx [n] -> dx [n] */
void gelu_backward(const float *dy, const float *dydx, float *dx, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) storeu(dx + i, loadu(dy + i) * loadu(dydx + i));
    for (; i < n; i++) dx[i] = dy[i] * dydx[i];
}
