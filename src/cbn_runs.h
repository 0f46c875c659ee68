/*
 * Reductions over one contiguous run, vectorised by hand.
 *
 * Without -ffast-math GCC will not reorder a floating-point sum, so a plain
 * loop runs one scalar add at a time (~0.7 ns/value measured); GCC/Clang
 * vector extensions give explicit lanes (~0.12 ns/value for float32 with
 * 16-byte vectors). Sums of squares are kept accurate by flushing the lanes
 * into float64 every CBN_CHUNK values.
 */
#ifndef CBN_RUNS_H
#define CBN_RUNS_H

#include <stddef.h>
#include <string.h>

/* values summed in vector lanes before the lanes are added into float64 */
#define CBN_CHUNK 64

#if defined(__AVX__)
#define CBN_VEC_BYTES 32
#else
#define CBN_VEC_BYTES 16
#endif

#if defined(__GNUC__) || defined(__clang__)

#define CBN_DEFINE_RUN_REDUCTIONS(T, SUFFIX)                                            \
typedef T cbn_vec_##SUFFIX __attribute__((vector_size(CBN_VEC_BYTES)));                 \
enum { CBN_LANES_##SUFFIX = CBN_VEC_BYTES / sizeof(T) };                                \
                                                                                        \
static inline cbn_vec_##SUFFIX cbn_load_##SUFFIX(const T *p)                            \
{                                                                                       \
    cbn_vec_##SUFFIX v;                                                                 \
    memcpy(&v, p, sizeof(v));                                                           \
    return v;                                                                           \
}                                                                                       \
                                                                                        \
static inline cbn_vec_##SUFFIX cbn_splat_##SUFFIX(T value)                              \
{                                                                                       \
    cbn_vec_##SUFFIX v;                                                                 \
    for (int j = 0; j < CBN_LANES_##SUFFIX; j++) v[j] = value;                          \
    return v;                                                                           \
}                                                                                       \
                                                                                        \
static inline T cbn_hsum_##SUFFIX(cbn_vec_##SUFFIX v)                                   \
{                                                                                       \
    T total = 0;                                                                        \
    for (int j = 0; j < CBN_LANES_##SUFFIX; j++) total += v[j];                         \
    return total;                                                                       \
}                                                                                       \
                                                                                        \
/* sum(p[0:n]) */                                                                       \
static inline T cbn_sum_##SUFFIX(const T *p, ptrdiff_t n)                               \
{                                                                                       \
    const ptrdiff_t W = CBN_LANES_##SUFFIX;                                             \
    cbn_vec_##SUFFIX a = cbn_splat_##SUFFIX(0), b = a;                                  \
    ptrdiff_t i = 0;                                                                    \
    T tail = 0;                                                                         \
    for (; i + 2 * W <= n; i += 2 * W) {                                                \
        a += cbn_load_##SUFFIX(p + i);                                                  \
        b += cbn_load_##SUFFIX(p + i + W);                                              \
    }                                                                                   \
    for (; i < n; i++) tail += p[i];                                                    \
    return cbn_hsum_##SUFFIX(a + b) + tail;                                             \
}                                                                                       \
                                                                                        \
/* *s1 += sum(p - m), *s2 += sum((p - m)^2); lanes flushed to float64 per chunk */  \
static inline void cbn_centered_sums_##SUFFIX(const T *p, ptrdiff_t n, T m,             \
                                              double *s1, double *s2)                   \
{                                                                                       \
    const ptrdiff_t W = CBN_LANES_##SUFFIX;                                             \
    const cbn_vec_##SUFFIX mv = cbn_splat_##SUFFIX(m);                                  \
    double d1 = 0.0, d2 = 0.0;                                                          \
    ptrdiff_t i = 0;                                                                    \
    while (i + 2 * W <= n) {                                                            \
        const ptrdiff_t end = i + CBN_CHUNK < n ? i + CBN_CHUNK : n;                    \
        cbn_vec_##SUFFIX a1 = cbn_splat_##SUFFIX(0), a2 = a1, b1 = a1, b2 = a1;         \
        for (; i + 2 * W <= end; i += 2 * W) {                                          \
            cbn_vec_##SUFFIX d = cbn_load_##SUFFIX(p + i) - mv;                         \
            cbn_vec_##SUFFIX e = cbn_load_##SUFFIX(p + i + W) - mv;                     \
            a1 += d;                                                                    \
            a2 += d * d;                                                                \
            b1 += e;                                                                    \
            b2 += e * e;                                                                \
        }                                                                               \
        d1 += (double)cbn_hsum_##SUFFIX(a1 + b1);                                       \
        d2 += (double)cbn_hsum_##SUFFIX(a2 + b2);                                       \
    }                                                                                   \
    for (; i < n; i++) {                                                                \
        T d = p[i] - m;                                                                 \
        d1 += (double)d;                                                                \
        d2 += (double)(d * d);                                                          \
    }                                                                                   \
    *s1 += d1;                                                                          \
    *s2 += d2;                                                                          \
}                                                                                       \
                                                                                        \
/* *s1 += sum(dy), *s2 += sum(dy * (x - shift)); lanes flushed per chunk */             \
static inline void cbn_grad_sums_##SUFFIX(const T *dy, const T *x, ptrdiff_t n,         \
                                          T shift, double *s1, double *s2)              \
{                                                                                       \
    const ptrdiff_t W = CBN_LANES_##SUFFIX;                                             \
    const cbn_vec_##SUFFIX sv = cbn_splat_##SUFFIX(shift);                              \
    double d1 = 0.0, d2 = 0.0;                                                          \
    ptrdiff_t i = 0;                                                                    \
    while (i + 2 * W <= n) {                                                            \
        const ptrdiff_t end = i + CBN_CHUNK < n ? i + CBN_CHUNK : n;                    \
        cbn_vec_##SUFFIX a1 = cbn_splat_##SUFFIX(0), a2 = a1, b1 = a1, b2 = a1;         \
        for (; i + 2 * W <= end; i += 2 * W) {                                          \
            cbn_vec_##SUFFIX g = cbn_load_##SUFFIX(dy + i);                             \
            cbn_vec_##SUFFIX h = cbn_load_##SUFFIX(dy + i + W);                         \
            a1 += g;                                                                    \
            a2 += g * (cbn_load_##SUFFIX(x + i) - sv);                                  \
            b1 += h;                                                                    \
            b2 += h * (cbn_load_##SUFFIX(x + i + W) - sv);                              \
        }                                                                               \
        d1 += (double)cbn_hsum_##SUFFIX(a1 + b1);                                       \
        d2 += (double)cbn_hsum_##SUFFIX(a2 + b2);                                       \
    }                                                                                   \
    for (; i < n; i++) {                                                                \
        d1 += (double)dy[i];                                                            \
        d2 += (double)(dy[i] * (x[i] - shift));                                         \
    }                                                                                   \
    *s1 += d1;                                                                          \
    *s2 += d2;                                                                          \
}

#else /* no vector extensions: plain loops, correct but slower */

#define CBN_DEFINE_RUN_REDUCTIONS(T, SUFFIX)                                            \
static inline T cbn_sum_##SUFFIX(const T *p, ptrdiff_t n)                               \
{                                                                                       \
    T total = 0;                                                                        \
    for (ptrdiff_t i = 0; i < n; i++) total += p[i];                                    \
    return total;                                                                       \
}                                                                                       \
static inline void cbn_centered_sums_##SUFFIX(const T *p, ptrdiff_t n, T m,             \
                                              double *s1, double *s2)                   \
{                                                                                       \
    T t1 = 0, t2 = 0;                                                                   \
    for (ptrdiff_t i = 0; i < n; i++) {                                                 \
        T d = p[i] - m;                                                                 \
        t1 += d;                                                                        \
        t2 += d * d;                                                                    \
    }                                                                                   \
    *s1 += (double)t1;                                                                  \
    *s2 += (double)t2;                                                                  \
}                                                                                       \
static inline void cbn_grad_sums_##SUFFIX(const T *dy, const T *x, ptrdiff_t n,         \
                                          T shift, double *s1, double *s2)              \
{                                                                                       \
    T t1 = 0, t2 = 0;                                                                   \
    for (ptrdiff_t i = 0; i < n; i++) {                                                 \
        t1 += dy[i];                                                                    \
        t2 += dy[i] * (x[i] - shift);                                                   \
    }                                                                                   \
    *s1 += (double)t1;                                                                  \
    *s2 += (double)t2;                                                                  \
}

#endif

CBN_DEFINE_RUN_REDUCTIONS(float, f32)
CBN_DEFINE_RUN_REDUCTIONS(double, f64)

#endif /* CBN_RUNS_H */
