/* Vectors of 8 and 16 floats (GCC/Clang vector extensions) for the kernels native.py builds. Elementwise
 * IEEE operations round alike in every vector width, so with -ffp-contract=off and without -ffast-math a
 * kernel's bits are fixed by its source, whatever instruction set the compiler targets (and an elementwise
 * kernel gives the same bits in 8 or 16 lanes: the 16 only use AVX-512 where there is one). */
#ifndef EMERGELAB_VEC_H
#define EMERGELAB_VEC_H
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
/* The sum (in hsum's order) and the maximum of the 8 lanes, in every lane, by shuffles instead of a trip
 * through a scalar: hsum_all's lane 0 adds in hsum's order and every other lane the same pairs swapped (IEEE
 * addition commutes exactly), so all give hsum's bits; a maximum does not depend on the order (no NaNs) */
#if defined(__clang__)
#define SHUFFLE8(x, a, b, c, d, e, f, g, h) __builtin_shufflevector(x, x, a, b, c, d, e, f, g, h)
#else /* GCC (__builtin_shufflevector only from GCC 12) */
#define SHUFFLE8(x, a, b, c, d, e, f, g, h) __builtin_shuffle(x, (v8i){a, b, c, d, e, f, g, h})
#endif
static inline v8 max8(v8 a, v8 b) { return select(b > a, b, a); }
static inline v8 hsum_all(v8 x) {
    x = x + SHUFFLE8(x, 1, 0, 3, 2, 5, 4, 7, 6);
    x = x + SHUFFLE8(x, 2, 3, 0, 1, 6, 7, 4, 5);
    return x + SHUFFLE8(x, 4, 5, 6, 7, 0, 1, 2, 3);
}
static inline v8 hmax_all(v8 x) {
    x = max8(x, SHUFFLE8(x, 1, 0, 3, 2, 5, 4, 7, 6));
    x = max8(x, SHUFFLE8(x, 2, 3, 0, 1, 6, 7, 4, 5));
    return max8(x, SHUFFLE8(x, 4, 5, 6, 7, 0, 1, 2, 3));
}

typedef float v16 __attribute__((vector_size(64), aligned(64)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

static inline v16 bcast16(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline v16i bcast16_i(int32_t x) { return (v16i){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline v16 loadu16(const float *p) { return (v16)(*(const v16u *)p); }
static inline void storeu16(float *p, v16 x) { *(v16u *)p = (v16u)x; }
static inline v16 select16(v16i mask, v16 a, v16 b) { return (v16)(((v16i)a & mask) | ((v16i)b & ~mask)); }

/* exp(v) for v <= 0 (Cephes' expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp); exactly 0 below
 * -87 (where expf is subnormal or 0). One body for both widths. */
#define DEFINE_EXP_NONPOSITIVE(name, V, VI, BC, SEL)                                                        \
    static inline V name(V v) {                                                                            \
        VI tiny = v < BC(-87.0f);                                                                          \
        v = SEL(tiny, BC(-87.0f), v);                                                                      \
        V fn = (v * BC(1.44269504088896341f) + BC(12582912.0f)) - BC(12582912.0f); /* round(v / ln 2) */    \
        V r = v - fn * BC(0.693359375f);                                                                   \
        r = r - fn * BC(-2.12194440e-4f);                                                                  \
        V p = BC(1.9875691500E-4f);                                                                        \
        p = p * r + BC(1.3981999507E-3f);                                                                  \
        p = p * r + BC(8.3334519073E-3f);                                                                  \
        p = p * r + BC(4.1665795894E-2f);                                                                  \
        p = p * r + BC(1.6666665459E-1f);                                                                  \
        p = p * r + BC(5.0000001201E-1f);                                                                  \
        p = p * (r * r) + r;                                                                               \
        p = p + BC(1.0f);                                                                                  \
        VI two_n = (__builtin_convertvector(fn, VI) + 127) << 23;                                          \
        return SEL(tiny, BC(0.0f), p * (V)two_n);                                                          \
    }
DEFINE_EXP_NONPOSITIVE(exp_nonpositive, v8, v8i, bcast, select)
DEFINE_EXP_NONPOSITIVE(exp16_nonpositive, v16, v16i, bcast16, select16)
#endif
