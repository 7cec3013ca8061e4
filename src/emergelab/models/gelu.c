/* GELU (the exact form, x * Phi(x)), forward with its derivative, and the backward as one multiply. Loaded
 * by models/native.py; used by models/layers.py:NativeGelu on a CPU. Per element:
 *
 *   e = exp(-x^2 / 2),  erf(x / sqrt 2) by Abramowitz & Stegun 7.1.26 from e (|error| <= 1.5e-7; torch's
 *   vectorised CPU erf is the same formula),  cdf = (1 + erf) / 2
 *   y = x * cdf,  y' = cdf + x * e / sqrt(2 pi),  dx = dy * y'
 *
 * The forward keeps y' (one exp serves erf and the density), so the backward reads two arrays and writes
 * one where torch's recomputes erf and exp. In vectors of 16 (AVX-512 where there is one; an 8-lane version
 * was slower than torch's forward). Elementwise: an element's bits depend on its value alone (a tail
 * shorter than 16 goes through the same vector code), and not on the vector width.
 * tests/test_native_layers.py.
 */
#include <string.h>

#include "vec.h"

static inline void gelu16(v16 x, v16 *y, v16 *dydx) {
    const v16 a = x * bcast16(0.70710678118654752f); /* x / sqrt 2 */
    const v16i negative = a < bcast16(0.0f);
    const v16 abs = (v16)((v16i)a & bcast16_i(0x7fffffff));
    const v16 t = bcast16(1.0f) / (bcast16(0.3275911f) * abs + bcast16(1.0f));
    v16 r = bcast16(1.061405429f);
    r = r * t + bcast16(-1.453152027f);
    r = r * t + bcast16(1.421413741f);
    r = r * t + bcast16(-0.284496736f);
    r = r * t + bcast16(0.254829592f);
    const v16 e = exp16_nonpositive(bcast16(0.0f) - a * a);
    const v16 erf_abs = bcast16(1.0f) - (r * t) * e;
    const v16 erf = select16(negative, bcast16(0.0f) - erf_abs, erf_abs);
    const v16 cdf = bcast16(0.5f) * (bcast16(1.0f) + erf);
    *y = x * cdf;
    *dydx = cdf + x * (e * bcast16(0.39894228040143268f)); /* 1 / sqrt(2 pi) */
}

/* x [n] -> y [n], dydx [n] (NULL: not kept, e.g. without gradients) */
void gelu_forward(const float *x, float *y, float *dydx, int64_t n) {
    int64_t i = 0;
    v16 a, b;
    for (; i + 16 <= n; i += 16) {
        gelu16(loadu16(x + i), &a, &b);
        storeu16(y + i, a);
        if (dydx) storeu16(dydx + i, b);
    }
    if (i < n) {
        float in[16] = {0}, out[16], d[16];
        memcpy(in, x + i, sizeof(float) * (n - i));
        gelu16(loadu16(in), &a, &b);
        storeu16(out, a);
        storeu16(d, b);
        memcpy(y + i, out, sizeof(float) * (n - i));
        if (dydx) memcpy(dydx + i, d, sizeof(float) * (n - i));
    }
}

/* dy [n], dydx [n] -> dx [n] */
void gelu_backward(const float *dy, const float *dydx, float *dx, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) storeu16(dx + i, loadu16(dy + i) * loadu16(dydx + i));
    for (; i < n; i++) dx[i] = dy[i] * dydx[i];
}
