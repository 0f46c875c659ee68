/*
 * The innermost loops of every kernel, vectorised, in two instruction sets.
 *
 * Each loop is instantiated for float and double, once for the build's
 * baseline (SSE2 on x86-64: 16-byte vectors) and once with
 * target("avx2,fma") (32-byte vectors); cbn_loops_init() picks one per process
 * with __builtin_cpu_supports, so a portable wheel still uses AVX2 where the CPU
 * has it. The wrappers at the end branch on that choice; the branch is always
 * predicted.
 *
 * Every loop takes a whole set of strided runs (channels-first) or block of
 * rows (channels-last), so calls and horizontal sums are per block, not per
 * run. Reductions use GCC/Clang vector extensions with four accumulator chains:
 * GCC will not reorder a floating-point sum without -ffast-math, and a single
 * chain is bound by the add latency. Sums of squares are flushed from the
 * lanes into float64 every CBN_ADDS_PER_LANE additions per lane: longer
 * float32 chains bias M2 measurably on quantised data (2e-7 relative with 32
 * additions per lane, 2e-9 with 8).
 */
#ifndef CBN_LOOPS_H
#define CBN_LOOPS_H

#include <stddef.h>
#include <string.h>

#define CBN_UNROLL 4
#define CBN_ADDS_PER_LANE 8

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) \
    && !defined(__AVX2__)
#define CBN_DISPATCH_AVX2 1
#define CBN_AVX2_ATTR __attribute__((target("avx2,fma"), unused))
#else
#define CBN_DISPATCH_AVX2 0
#endif

#if defined(__AVX__)
#define CBN_BASE_BYTES 32
#else
#define CBN_BASE_BYTES 16
#endif

#define CBN_NOATTR __attribute__((unused))

/* Non-temporal (streaming) vector stores: no read-for-ownership of the
 * destination and no eviction of the inputs from cache. Only for outputs too
 * large to be read back from cache anyway. */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#if CBN_BASE_BYTES == 32
#define CBN_STREAM_f32_base(p, v) _mm256_stream_ps((p), (__m256)(v))
#define CBN_STREAM_f64_base(p, v) _mm256_stream_pd((p), (__m256d)(v))
#else
#define CBN_STREAM_f32_base(p, v) _mm_stream_ps((p), (__m128)(v))
#define CBN_STREAM_f64_base(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif
#define CBN_STREAM_f32_avx2(p, v) _mm256_stream_ps((p), (__m256)(v))
#define CBN_STREAM_f64_avx2(p, v) _mm256_stream_pd((p), (__m256d)(v))
#define CBN_SFENCE() _mm_sfence()
#else
#define CBN_STREAM_f32_base(p, v) memcpy((p), &(v), sizeof(v))
#define CBN_STREAM_f64_base(p, v) memcpy((p), &(v), sizeof(v))
#define CBN_SFENCE() ((void)0)
#endif

/* ---------------------------------------------------------------- templates */

#if defined(__GNUC__) || defined(__clang__)

#define CBN_DEFINE_REDUCTIONS(T, S, VB, ATTR)                                               \
typedef T cbn_vec_##S __attribute__((vector_size(VB)));                                     \
                                                                                            \
ATTR static inline cbn_vec_##S cbn_load_##S(const T *p)                                     \
{                                                                                           \
    cbn_vec_##S v;                                                                          \
    memcpy(&v, p, sizeof(v));                                                               \
    return v;                                                                               \
}                                                                                           \
                                                                                            \
ATTR static inline void cbn_store_##S(T *p, cbn_vec_##S v)                                   \
{                                                                                           \
    memcpy(p, &v, sizeof(v));                                                               \
}                                                                                           \
                                                                                            \
ATTR static inline cbn_vec_##S cbn_splat_##S(T value)                                       \
{                                                                                           \
    cbn_vec_##S v;                                                                          \
    for (size_t j = 0; j < sizeof(v) / sizeof(T); j++) v[j] = value;                        \
    return v;                                                                               \
}                                                                                           \
                                                                                            \
ATTR static inline double cbn_hsum_##S(cbn_vec_##S v)                                       \
{                                                                                           \
    T total = 0;                                                                            \
    for (size_t j = 0; j < sizeof(v) / sizeof(T); j++) total += v[j];                       \
    return (double)total;                                                                   \
}                                                                                           \
                                                                                            \
/* Reductions over nruns runs of n values, run k at p + k * stride; the lanes               \
 * carry on from one run to the next, so short runs cost little more than                   \
 * one long run. */                                                                         \
                                                                                            \
/* sum of all values, in the input type (it only centres the next pass) */                  \
ATTR static T cbn_runs_sum_##S(const T *p, ptrdiff_t stride, ptrdiff_t nruns, ptrdiff_t n)  \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T), step = CBN_UNROLL * W;                              \
    cbn_vec_##S a = cbn_splat_##S(0), b = a, c = a, d = a;                                  \
    T tail = 0;                                                                             \
    for (ptrdiff_t r = 0; r < nruns; r++) {                                                 \
        const T *q = p + r * stride;                                                        \
        ptrdiff_t i = 0;                                                                    \
        for (; i + step <= n; i += step) {                                                  \
            a += cbn_load_##S(q + i);                                                       \
            b += cbn_load_##S(q + i + W);                                                   \
            c += cbn_load_##S(q + i + 2 * W);                                               \
            d += cbn_load_##S(q + i + 3 * W);                                               \
        }                                                                                   \
        for (; i + W <= n; i += W) a += cbn_load_##S(q + i);                                \
        for (; i < n; i++) tail += q[i];                                                    \
    }                                                                                       \
    return (T)cbn_hsum_##S((a + b) + (c + d)) + tail;                                       \
}                                                                                           \
                                                                                            \
/* *s1 += sum(p - m), *s2 += sum((p - m)^2) over the runs */                                \
ATTR static void cbn_runs_centered_##S(const T *p, ptrdiff_t stride, ptrdiff_t nruns,       \
                                       ptrdiff_t n, T m, double *s1, double *s2)            \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T), step = CBN_UNROLL * W;                              \
    const cbn_vec_##S mv = cbn_splat_##S(m), zero = cbn_splat_##S(0);                       \
    cbn_vec_##S a1 = zero, b1 = zero, c1 = zero, e1 = zero;                                 \
    cbn_vec_##S a2 = zero, b2 = zero, c2 = zero, e2 = zero;                                 \
    double d1 = 0.0, d2 = 0.0;                                                              \
    int adds = 0;                                                                           \
    for (ptrdiff_t r = 0; r < nruns; r++) {                                                 \
        const T *q = p + r * stride;                                                        \
        ptrdiff_t i = 0;                                                                    \
        for (; i + step <= n; i += step) {                                                  \
            cbn_vec_##S u = cbn_load_##S(q + i) - mv;                                       \
            cbn_vec_##S v = cbn_load_##S(q + i + W) - mv;                                   \
            cbn_vec_##S w = cbn_load_##S(q + i + 2 * W) - mv;                               \
            cbn_vec_##S z = cbn_load_##S(q + i + 3 * W) - mv;                               \
            a1 += u; a2 += u * u;                                                           \
            b1 += v; b2 += v * v;                                                           \
            c1 += w; c2 += w * w;                                                           \
            e1 += z; e2 += z * z;                                                           \
            if (++adds == CBN_ADDS_PER_LANE) {                                              \
                d1 += cbn_hsum_##S((a1 + b1) + (c1 + e1));                                  \
                d2 += cbn_hsum_##S((a2 + b2) + (c2 + e2));                                  \
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;                               \
                adds = 0;                                                                   \
            }                                                                               \
        }                                                                                   \
        for (; i + W <= n; i += W) {                                                        \
            cbn_vec_##S u = cbn_load_##S(q + i) - mv;                                       \
            a1 += u; a2 += u * u;                                                           \
            if (++adds == CBN_ADDS_PER_LANE) {                                              \
                d1 += cbn_hsum_##S((a1 + b1) + (c1 + e1));                                  \
                d2 += cbn_hsum_##S((a2 + b2) + (c2 + e2));                                  \
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;                               \
                adds = 0;                                                                   \
            }                                                                               \
        }                                                                                   \
        for (; i < n; i++) {                                                                \
            T u = q[i] - m;                                                                 \
            d1 += (double)u;                                                                \
            d2 += (double)(u * u);                                                          \
        }                                                                                   \
    }                                                                                       \
    *s1 += d1 + cbn_hsum_##S((a1 + b1) + (c1 + e1));                                        \
    *s2 += d2 + cbn_hsum_##S((a2 + b2) + (c2 + e2));                                        \
}                                                                                           \
                                                                                            \
/* *s1 += sum(dy), *s2 += sum(dy * (x - shift)) over matching runs of dy and x */           \
ATTR static void cbn_runs_grad_sums_##S(const T *dy, ptrdiff_t dstride, const T *x,         \
                                        ptrdiff_t xstride, ptrdiff_t nruns, ptrdiff_t n,    \
                                        T shift, double *s1, double *s2)                    \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T), step = CBN_UNROLL * W;                              \
    const cbn_vec_##S sv = cbn_splat_##S(shift), zero = cbn_splat_##S(0);                   \
    cbn_vec_##S a1 = zero, b1 = zero, c1 = zero, e1 = zero;                                 \
    cbn_vec_##S a2 = zero, b2 = zero, c2 = zero, e2 = zero;                                 \
    double d1 = 0.0, d2 = 0.0;                                                              \
    int adds = 0;                                                                           \
    for (ptrdiff_t r = 0; r < nruns; r++) {                                                 \
        const T *g = dy + r * dstride, *q = x + r * xstride;                                \
        ptrdiff_t i = 0;                                                                    \
        for (; i + step <= n; i += step) {                                                  \
            cbn_vec_##S g0 = cbn_load_##S(g + i), g1 = cbn_load_##S(g + i + W);             \
            cbn_vec_##S g2 = cbn_load_##S(g + i + 2 * W), g3 = cbn_load_##S(g + i + 3 * W); \
            a1 += g0; a2 += g0 * (cbn_load_##S(q + i) - sv);                                \
            b1 += g1; b2 += g1 * (cbn_load_##S(q + i + W) - sv);                            \
            c1 += g2; c2 += g2 * (cbn_load_##S(q + i + 2 * W) - sv);                        \
            e1 += g3; e2 += g3 * (cbn_load_##S(q + i + 3 * W) - sv);                        \
            if (++adds == CBN_ADDS_PER_LANE) {                                              \
                d1 += cbn_hsum_##S((a1 + b1) + (c1 + e1));                                  \
                d2 += cbn_hsum_##S((a2 + b2) + (c2 + e2));                                  \
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;                               \
                adds = 0;                                                                   \
            }                                                                               \
        }                                                                                   \
        for (; i + W <= n; i += W) {                                                        \
            cbn_vec_##S g0 = cbn_load_##S(g + i);                                           \
            a1 += g0; a2 += g0 * (cbn_load_##S(q + i) - sv);                                \
            if (++adds == CBN_ADDS_PER_LANE) {                                              \
                d1 += cbn_hsum_##S((a1 + b1) + (c1 + e1));                                  \
                d2 += cbn_hsum_##S((a2 + b2) + (c2 + e2));                                  \
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;                               \
                adds = 0;                                                                   \
            }                                                                               \
        }                                                                                   \
        for (; i < n; i++) {                                                                \
            d1 += (double)g[i];                                                             \
            d2 += (double)(g[i] * (q[i] - shift));                                          \
        }                                                                                   \
    }                                                                                       \
    *s1 += d1 + cbn_hsum_##S((a1 + b1) + (c1 + e1));                                        \
    *s2 += d2 + cbn_hsum_##S((a2 + b2) + (c2 + e2));                                        \
}

#else
#error "cbn's kernels need GCC or Clang (vector extensions and target attributes)"
#endif

/* Elementwise loops. Plain loops are vectorised by the compiler at the
 * instantiation's width (restrict removes its run-time aliasing checks).
 * With stream != 0, whole 64-byte lines of the output are written with
 * non-temporal vector stores and partial lines at either end with ordinary
 * stores: a line written both ways is read and written back, which costs
 * more than not streaming at all. A store fence ends every streaming call. */
#define CBN_LINE 64
/* first index >= i whose address is line-aligned, and the end of the whole lines */
#define CBN_LINE_SPAN(o, i, n, T, head, body_end)                                           \
    ptrdiff_t head = (ptrdiff_t)(((CBN_LINE - ((size_t)(o) % CBN_LINE)) % CBN_LINE)          \
                                 / sizeof(T));                                              \
    if (head > (n)) head = (n);                                                             \
    ptrdiff_t body_end = head + ((n) - head) / (CBN_LINE / sizeof(T)) * (CBN_LINE / sizeof(T));
#define CBN_DEFINE_ELEMENTWISE(T, S, VB, ATTR)                                              \
/* y = (x - shift) * scale + offset over n values; not x * a + b': when |mean| >> std,      \
 * x * a and b' are huge and cancel, while x - shift is exact near the mean */              \
ATTR static inline void cbn_affine_run_##S(const T *restrict q, T *restrict o, ptrdiff_t n, \
                                           T shift, T scale, T offset, int stream)          \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T);                                                     \
    const cbn_vec_##S sv = cbn_splat_##S(shift), av = cbn_splat_##S(scale);                 \
    const cbn_vec_##S bv = cbn_splat_##S(offset);                                           \
    ptrdiff_t i = 0;                                                                        \
    if (stream) {                                                                           \
        CBN_LINE_SPAN(o, i, n, T, head, body_end)                                           \
        for (; i < head; i++) o[i] = (q[i] - shift) * scale + offset;                       \
        for (; i < body_end; i += W) {                                                      \
            cbn_vec_##S v = (cbn_load_##S(q + i) - sv) * av + bv;                           \
            CBN_STREAM_##S(o + i, v);                                                       \
        }                                                                                   \
    }                                                                                       \
    for (; i + 2 * W <= n; i += 2 * W) {                                                    \
        cbn_vec_##S u = (cbn_load_##S(q + i) - sv) * av + bv;                               \
        cbn_vec_##S v = (cbn_load_##S(q + i + W) - sv) * av + bv;                           \
        cbn_store_##S(o + i, u);                                                            \
        cbn_store_##S(o + i + W, v);                                                        \
    }                                                                                       \
    for (; i < n; i++) o[i] = (q[i] - shift) * scale + offset;                              \
}                                                                                           \
ATTR static void cbn_runs_affine_##S(const T *restrict x, ptrdiff_t xstride,                \
                                     T *restrict y, ptrdiff_t ystride, ptrdiff_t nruns,     \
                                     ptrdiff_t n, T shift, T scale, T offset, int stream)   \
{                                                                                           \
    for (ptrdiff_t r = 0; r < nruns; r++)                                                   \
        cbn_affine_run_##S(x + r * xstride, y + r * ystride, n, shift, scale, offset,       \
                           stream);                                                         \
    if (stream) CBN_SFENCE();                                                               \
}                                                                                           \
/* dx = dy * k_dy + (x - shift) * k_x + k_0 over n values */                                \
ATTR static inline void cbn_grad_input_run_##S(const T *restrict g, const T *restrict q,    \
                                               T *restrict o, ptrdiff_t n, T shift, T k_dy, \
                                               T k_x, T k_0, int stream)                    \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T);                                                     \
    const cbn_vec_##S sv = cbn_splat_##S(shift), dv = cbn_splat_##S(k_dy);                  \
    const cbn_vec_##S xv = cbn_splat_##S(k_x), zv = cbn_splat_##S(k_0);                     \
    ptrdiff_t i = 0;                                                                        \
    if (stream) {                                                                           \
        CBN_LINE_SPAN(o, i, n, T, head, body_end)                                           \
        for (; i < head; i++) o[i] = g[i] * k_dy + (q[i] - shift) * k_x + k_0;              \
        for (; i < body_end; i += W) {                                                      \
            cbn_vec_##S v = cbn_load_##S(g + i) * dv + (cbn_load_##S(q + i) - sv) * xv + zv; \
            CBN_STREAM_##S(o + i, v);                                                       \
        }                                                                                   \
    }                                                                                       \
    for (; i + 2 * W <= n; i += 2 * W) {                                                    \
        cbn_vec_##S u = cbn_load_##S(g + i) * dv + (cbn_load_##S(q + i) - sv) * xv + zv;   \
        cbn_vec_##S v = cbn_load_##S(g + i + W) * dv + (cbn_load_##S(q + i + W) - sv) * xv  \
                        + zv;                                                               \
        cbn_store_##S(o + i, u);                                                            \
        cbn_store_##S(o + i + W, v);                                                        \
    }                                                                                       \
    for (; i < n; i++) o[i] = g[i] * k_dy + (q[i] - shift) * k_x + k_0;                     \
}                                                                                           \
ATTR static void cbn_runs_grad_input_##S(const T *restrict dy, ptrdiff_t dstride,           \
                                         const T *restrict x, ptrdiff_t xstride,            \
                                         T *restrict dx, ptrdiff_t gstride, ptrdiff_t nruns, \
                                         ptrdiff_t n, T shift, T k_dy, T k_x, T k_0,        \
                                         int stream)                                        \
{                                                                                           \
    for (ptrdiff_t r = 0; r < nruns; r++)                                                   \
        cbn_grad_input_run_##S(dy + r * dstride, x + r * xstride, dx + r * gstride, n,      \
                               shift, k_dy, k_x, k_0, stream);                              \
    if (stream) CBN_SFENCE();                                                               \
}                                                                                           \
/* Row loops: nrows rows of C channels, row k at x + k * stride. */                         \
/* y[c] = (x[c] - shift[c]) * scale[c] + offset[c] */                                       \
ATTR static void cbn_rows_affine_##S(const T *restrict x, ptrdiff_t xstride,                \
                                     T *restrict y, ptrdiff_t ystride, ptrdiff_t nrows,     \
                                     ptrdiff_t C, const T *restrict shift,                  \
                                     const T *restrict scale, const T *restrict offset,     \
                                     int stream)                                            \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T);                                                     \
    for (ptrdiff_t r = 0; r < nrows; r++) {                                                 \
        const T *restrict q = x + r * xstride;                                              \
        T *restrict o = y + r * ystride;                                                    \
        ptrdiff_t c = 0;                                                                    \
        if (stream) {                                                                       \
            CBN_LINE_SPAN(o, c, C, T, head, body_end)                                       \
            for (; c < head; c++) o[c] = (q[c] - shift[c]) * scale[c] + offset[c];          \
            for (; c < body_end; c += W) {                                                  \
                cbn_vec_##S v = (cbn_load_##S(q + c) - cbn_load_##S(shift + c))             \
                                * cbn_load_##S(scale + c) + cbn_load_##S(offset + c);       \
                CBN_STREAM_##S(o + c, v);                                                   \
            }                                                                               \
        }                                                                                   \
        for (; c < C; c++) o[c] = (q[c] - shift[c]) * scale[c] + offset[c];                 \
    }                                                                                       \
    if (stream) CBN_SFENCE();                                                               \
}                                                                                           \
/* dx[c] = dy[c] * k_dy[c] + (x[c] - shift[c]) * k_x[c] + k_0[c] */                         \
ATTR static void cbn_rows_grad_input_##S(const T *restrict dy, ptrdiff_t dstride,           \
                                         const T *restrict x, ptrdiff_t xstride,            \
                                         T *restrict dx, ptrdiff_t gstride, ptrdiff_t nrows, \
                                         ptrdiff_t C, const T *restrict shift,              \
                                         const T *restrict k_dy, const T *restrict k_x,     \
                                         const T *restrict k_0, int stream)                 \
{                                                                                           \
    const ptrdiff_t W = VB / sizeof(T);                                                     \
    for (ptrdiff_t r = 0; r < nrows; r++) {                                                 \
        const T *restrict g = dy + r * dstride, *restrict q = x + r * xstride;              \
        T *restrict o = dx + r * gstride;                                                   \
        ptrdiff_t c = 0;                                                                    \
        if (stream) {                                                                       \
            CBN_LINE_SPAN(o, c, C, T, head, body_end)                                       \
            for (; c < head; c++) o[c] = g[c] * k_dy[c] + (q[c] - shift[c]) * k_x[c] + k_0[c]; \
            for (; c < body_end; c += W) {                                                  \
                cbn_vec_##S v = cbn_load_##S(g + c) * cbn_load_##S(k_dy + c)                \
                                + (cbn_load_##S(q + c) - cbn_load_##S(shift + c))           \
                                  * cbn_load_##S(k_x + c) + cbn_load_##S(k_0 + c);          \
                CBN_STREAM_##S(o + c, v);                                                   \
            }                                                                               \
        }                                                                                   \
        for (; c < C; c++) o[c] = g[c] * k_dy[c] + (q[c] - shift[c]) * k_x[c] + k_0[c];     \
    }                                                                                       \
    if (stream) CBN_SFENCE();                                                               \
}                                                                                           \
/* Row reductions into per-channel accumulators of the input type. Four rows \
 * are combined before an accumulator is touched: its load and store, not   \
 * the arithmetic, bound a one-row-at-a-time loop. */                       \
/* acc[c] += sum over rows of x[c] */                                                       \
ATTR static void cbn_rows_sum_##S(T *restrict acc, const T *restrict x, ptrdiff_t stride,   \
                                  ptrdiff_t nrows, ptrdiff_t C)                             \
{                                                                                           \
    ptrdiff_t r = 0;                                                                        \
    for (; r + 4 <= nrows; r += 4) {                                                        \
        const T *restrict q0 = x + r * stride, *restrict q1 = q0 + stride;                  \
        const T *restrict q2 = q1 + stride, *restrict q3 = q2 + stride;                     \
        for (ptrdiff_t c = 0; c < C; c++) acc[c] += (q0[c] + q1[c]) + (q2[c] + q3[c]);      \
    }                                                                                       \
    for (; r < nrows; r++) {                                                                \
        const T *restrict q = x + r * stride;                                               \
        for (ptrdiff_t c = 0; c < C; c++) acc[c] += q[c];                                   \
    }                                                                                       \
}                                                                                           \
/* s1[c] += sum(x[c] - m[c]), s2[c] += sum((x[c] - m[c])^2) over rows */                    \
ATTR static void cbn_rows_centered_##S(T *restrict s1, T *restrict s2, const T *restrict x, \
                                       ptrdiff_t stride, ptrdiff_t nrows, ptrdiff_t C,      \
                                       const T *restrict m)                                 \
{                                                                                           \
    ptrdiff_t r = 0;                                                                        \
    for (; r + 4 <= nrows; r += 4) {                                                        \
        const T *restrict q0 = x + r * stride, *restrict q1 = q0 + stride;                  \
        const T *restrict q2 = q1 + stride, *restrict q3 = q2 + stride;                     \
        for (ptrdiff_t c = 0; c < C; c++) {                                                 \
            T u0 = q0[c] - m[c], u1 = q1[c] - m[c], u2 = q2[c] - m[c], u3 = q3[c] - m[c];   \
            s1[c] += (u0 + u1) + (u2 + u3);                                                 \
            s2[c] += (u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3);                             \
        }                                                                                   \
    }                                                                                       \
    for (; r < nrows; r++) {                                                                \
        const T *restrict q = x + r * stride;                                               \
        for (ptrdiff_t c = 0; c < C; c++) {                                                 \
            T u = q[c] - m[c];                                                              \
            s1[c] += u;                                                                     \
            s2[c] += u * u;                                                                 \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
/* s1[c] += sum(dy[c]), s2[c] += sum(dy[c] * (x[c] - shift[c])) over rows */                \
ATTR static void cbn_rows_grad_sums_##S(T *restrict s1, T *restrict s2,                     \
                                        const T *restrict dy, ptrdiff_t dstride,            \
                                        const T *restrict x, ptrdiff_t xstride,             \
                                        ptrdiff_t nrows, ptrdiff_t C,                       \
                                        const T *restrict shift)                            \
{                                                                                           \
    ptrdiff_t r = 0;                                                                        \
    for (; r + 4 <= nrows; r += 4) {                                                        \
        const T *restrict g0 = dy + r * dstride, *restrict g1 = g0 + dstride;               \
        const T *restrict g2 = g1 + dstride, *restrict g3 = g2 + dstride;                   \
        const T *restrict q0 = x + r * xstride, *restrict q1 = q0 + xstride;                \
        const T *restrict q2 = q1 + xstride, *restrict q3 = q2 + xstride;                   \
        for (ptrdiff_t c = 0; c < C; c++) {                                                 \
            T h = shift[c];                                                                 \
            s1[c] += (g0[c] + g1[c]) + (g2[c] + g3[c]);                                     \
            s2[c] += (g0[c] * (q0[c] - h) + g1[c] * (q1[c] - h))                            \
                     + (g2[c] * (q2[c] - h) + g3[c] * (q3[c] - h));                         \
        }                                                                                   \
    }                                                                                       \
    for (; r < nrows; r++) {                                                                \
        const T *restrict g = dy + r * dstride, *restrict q = x + r * xstride;              \
        for (ptrdiff_t c = 0; c < C; c++) {                                                 \
            s1[c] += g[c];                                                                  \
            s2[c] += g[c] * (q[c] - shift[c]);                                              \
        }                                                                                   \
    }                                                                                       \
}

/* ---------------------------------------------------------------- instances */

CBN_DEFINE_REDUCTIONS(float, f32_base, CBN_BASE_BYTES, CBN_NOATTR)
CBN_DEFINE_REDUCTIONS(double, f64_base, CBN_BASE_BYTES, CBN_NOATTR)
CBN_DEFINE_ELEMENTWISE(float, f32_base, CBN_BASE_BYTES, CBN_NOATTR)
CBN_DEFINE_ELEMENTWISE(double, f64_base, CBN_BASE_BYTES, CBN_NOATTR)

#if CBN_DISPATCH_AVX2
CBN_DEFINE_REDUCTIONS(float, f32_avx2, 32, CBN_AVX2_ATTR)
CBN_DEFINE_REDUCTIONS(double, f64_avx2, 32, CBN_AVX2_ATTR)
CBN_DEFINE_ELEMENTWISE(float, f32_avx2, 32, CBN_AVX2_ATTR)
CBN_DEFINE_ELEMENTWISE(double, f64_avx2, 32, CBN_AVX2_ATTR)

static int cbn_use_avx2 = 0;

static void cbn_loops_init(void)
{
    __builtin_cpu_init();
    cbn_use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#define CBN_PICK(name, S, ...)                                                              \
    (cbn_use_avx2 ? cbn_##name##_##S##_avx2(__VA_ARGS__) : cbn_##name##_##S##_base(__VA_ARGS__))
#else
static const int cbn_use_avx2 = 0;
static void cbn_loops_init(void) {}
#define CBN_PICK(name, S, ...) cbn_##name##_##S##_base(__VA_ARGS__)
#endif

/* Outputs at least this large are written with streaming stores: the
 * environment variable CBN_STREAM_BYTES if set, else half the last-level
 * cache where the C library reports it, else 16 MiB. */
#include <stdlib.h>
#include <unistd.h>
static ptrdiff_t cbn_stream_threshold_bytes = -1;

static ptrdiff_t cbn_stream_threshold(void)
{
    if (cbn_stream_threshold_bytes < 0) {
        const char *env = getenv("CBN_STREAM_BYTES");
        long llc = -1;
#if defined(_SC_LEVEL3_CACHE_SIZE)
        llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
        if (env != NULL && *env != '\0')
            cbn_stream_threshold_bytes = (ptrdiff_t)strtoll(env, NULL, 10);
        else
            cbn_stream_threshold_bytes = llc > (1L << 20) ? (ptrdiff_t)llc / 2 : (ptrdiff_t)16 << 20;
    }
    return cbn_stream_threshold_bytes;
}

static const char *cbn_loops_isa(void)
{
#if defined(__AVX2__)
    return "avx2 (compile-time)";
#else
    return cbn_use_avx2 ? "avx2 (run-time dispatch)" : (CBN_BASE_BYTES == 16 ? "baseline 16-byte vectors" : "baseline");
#endif
}

/* ---------------------------------------------------------------- wrappers */

#define CBN_DEFINE_WRAPPERS(T, S)                                                           \
static inline T cbn_runs_sum_##S(const T *p, ptrdiff_t stride, ptrdiff_t nruns, ptrdiff_t n) \
{ return CBN_PICK(runs_sum, S, p, stride, nruns, n); }                                      \
static inline void cbn_runs_centered_##S(const T *p, ptrdiff_t stride, ptrdiff_t nruns,     \
                                         ptrdiff_t n, T m, double *s1, double *s2)          \
{ CBN_PICK(runs_centered, S, p, stride, nruns, n, m, s1, s2); }                             \
static inline void cbn_runs_grad_sums_##S(const T *dy, ptrdiff_t ds, const T *x,            \
                                          ptrdiff_t xs, ptrdiff_t nruns, ptrdiff_t n,       \
                                          T shift, double *s1, double *s2)                  \
{ CBN_PICK(runs_grad_sums, S, dy, ds, x, xs, nruns, n, shift, s1, s2); }                    \
static inline void cbn_runs_affine_##S(const T *x, ptrdiff_t xs, T *y, ptrdiff_t ys,        \
                                       ptrdiff_t nruns, ptrdiff_t n, T shift, T scale,      \
                                       T offset, int stream)                                \
{ CBN_PICK(runs_affine, S, x, xs, y, ys, nruns, n, shift, scale, offset, stream); }         \
static inline void cbn_runs_grad_input_##S(const T *dy, ptrdiff_t ds, const T *x,           \
                                           ptrdiff_t xs, T *dx, ptrdiff_t gs,               \
                                           ptrdiff_t nruns, ptrdiff_t n, T shift, T k_dy,   \
                                           T k_x, T k_0, int stream)                        \
{ CBN_PICK(runs_grad_input, S, dy, ds, x, xs, dx, gs, nruns, n, shift, k_dy, k_x, k_0,      \
           stream); }                                                                       \
static inline void cbn_rows_affine_##S(const T *x, ptrdiff_t xs, T *y, ptrdiff_t ys,        \
                                       ptrdiff_t nrows, ptrdiff_t C, const T *shift,        \
                                       const T *scale, const T *offset, int stream)         \
{ CBN_PICK(rows_affine, S, x, xs, y, ys, nrows, C, shift, scale, offset, stream); }         \
static inline void cbn_rows_grad_input_##S(const T *dy, ptrdiff_t ds, const T *x,           \
                                           ptrdiff_t xs, T *dx, ptrdiff_t gs,               \
                                           ptrdiff_t nrows, ptrdiff_t C, const T *shift,    \
                                           const T *k_dy, const T *k_x, const T *k_0,       \
                                           int stream)                                      \
{ CBN_PICK(rows_grad_input, S, dy, ds, x, xs, dx, gs, nrows, C, shift, k_dy, k_x, k_0,      \
           stream); }                                                                       \
static inline void cbn_rows_sum_##S(T *acc, const T *x, ptrdiff_t stride, ptrdiff_t nrows,  \
                                    ptrdiff_t C)                                            \
{ CBN_PICK(rows_sum, S, acc, x, stride, nrows, C); }                                        \
static inline void cbn_rows_centered_##S(T *s1, T *s2, const T *x, ptrdiff_t stride,        \
                                         ptrdiff_t nrows, ptrdiff_t C, const T *m)          \
{ CBN_PICK(rows_centered, S, s1, s2, x, stride, nrows, C, m); }                             \
static inline void cbn_rows_grad_sums_##S(T *s1, T *s2, const T *dy, ptrdiff_t ds,          \
                                          const T *x, ptrdiff_t xs, ptrdiff_t nrows,        \
                                          ptrdiff_t C, const T *shift)                      \
{ CBN_PICK(rows_grad_sums, S, s1, s2, dy, ds, x, xs, nrows, C, shift); }

CBN_DEFINE_WRAPPERS(float, f32)
CBN_DEFINE_WRAPPERS(double, f64)

#endif /* CBN_LOOPS_H */
