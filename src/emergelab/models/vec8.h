/* Vectors of 8 floats (GCC/Clang vector extensions) for the kernels native.py builds. Elementwise IEEE
 * operations round alike in every vector width, so with -ffp-contract=off and without -ffast-math a kernel's
 * bits are fixed by its source, whatever instruction set the compiler targets. */
#ifndef EMERGELAB_VEC8_H
#define EMERGELAB_VEC8_H
#include <stdint.h>

typedef float v8 __attribute__((vector_size(32), aligned(32)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4))); /* for unaligned loads and stores */

static inline v8 bcast(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline v8i bcast_i(int32_t x) { return (v8i){x, x, x, x, x, x, x, x}; }
static inline v8 loadu(const float *p) { return (v8)(*(const v8u *)p); }
static inline void storeu(float *p, v8 x) { *(v8u *)p = (v8u)x; }
static inline v8 select(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }
static inline float hsum(v8 x) { return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7])); }
static inline float hmax(v8 x) {
    float m = x[0];
    for (int l = 1; l < 8; l++) m = x[l] > m ? x[l] : m;
    return m;
}

/* exp(v) for v <= 0 (Cephes' expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp); exactly 0 below
 * -87 (where expf is subnormal or 0). */
static inline v8 exp_nonpositive(v8 v) {
    v8i tiny = v < bcast(-87.0f);
    v = select(tiny, bcast(-87.0f), v);
    v8 fn = (v * bcast(1.44269504088896341f) + bcast(12582912.0f)) - bcast(12582912.0f); /* round(v/ln2) */
    v8 r = v - fn * bcast(0.693359375f);
    r = r - fn * bcast(-2.12194440e-4f);
    v8 p = bcast(1.9875691500E-4f);
    p = p * r + bcast(1.3981999507E-3f);
    p = p * r + bcast(8.3334519073E-3f);
    p = p * r + bcast(4.1665795894E-2f);
    p = p * r + bcast(1.6666665459E-1f);
    p = p * r + bcast(5.0000001201E-1f);
    p = p * (r * r) + r;
    p = p + bcast(1.0f);
    v8i two_n = (__builtin_convertvector(fn, v8i) + 127) << 23;
    return select(tiny, bcast(0.0f), p * (v8)two_n);
}
#endif
