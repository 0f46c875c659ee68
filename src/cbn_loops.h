/*
 * The innermost loops of every kernel, vectorised, in two instruction sets.
 *
 * cbn_loops_impl.h holds the loops; it is instantiated here for float and
 * double, once for the build's baseline (SSE2 on x86-64: 16-byte vectors) and
 * once with target("avx2,fma") (32-byte vectors). cbn_loops_init() picks one
 * per process with __builtin_cpu_supports, so a portable wheel still uses AVX2
 * where the CPU has it (unless the environment sets CBN_LOOPS=baseline); the
 * wrappers (cbn_loops_wrap.h) branch on that choice,
 * a branch that is always predicted.
 *
 * Every loop takes a whole set of strided runs (channels-first) or block of
 * rows (channels-last), so calls and horizontal sums are per block, not per
 * run. Reductions use GCC/Clang vector extensions with four accumulator
 * chains: GCC will not reorder a floating-point sum without -ffast-math, and a
 * single chain is bound by the add latency. Sums of squares are flushed from
 * the lanes into float64 every CBN_ADDS_PER_LANE additions per lane: longer
 * float32 chains bias M2 measurably on quantised data (2e-7 relative with 32
 * additions per lane, 2e-9 with 8).
 */
#ifndef CBN_LOOPS_H
#define CBN_LOOPS_H

#if !defined(__GNUC__) && !defined(__clang__)
#error "cbn's kernels need GCC or Clang (vector extensions and target attributes)"
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CBN_UNROLL 4
#define CBN_ADDS_PER_LANE 8
#define CBN_LINE 64

/* flags of the normalising loops */
#define CBN_STREAM 1   /* non-temporal stores (see cbn_stream_threshold) */
#define CBN_RELU 2     /* write max(y, 0) */
#define CBN_FIXED 4    /* grad_input with fixed (eval) statistics: dx = g * k_dy, x only
                          gates a fused ReLU, so a NaN in x cannot reach dx through 0 * NaN */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CBN_X86 1
#else
#define CBN_X86 0
#endif

#if CBN_X86 && !defined(__AVX2__)
#define CBN_DISPATCH_AVX2 1
#else
#define CBN_DISPATCH_AVX2 0
#endif

#if defined(__AVX__)
#define CBN_BASE_BYTES 32
#else
#define CBN_BASE_BYTES 16
#endif

/* Non-temporal (streaming) vector stores: no read-for-ownership of the
 * destination and no eviction of the inputs from cache. */
#if CBN_X86
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

#define CBN_CAT3(a, b, c) a##b##c
#define CBN_NAME(name, suffix) CBN_CAT3(cbn_, name, suffix)

/* ---------------------------------------------------------------- instances */

#define T float
#define IT int32_t
#define VB CBN_BASE_BYTES
#define ATTR __attribute__((unused))
#define F(name) CBN_NAME(name, _f32_base)
#define STREAM CBN_STREAM_f32_base
#include "cbn_loops_impl.h"
#undef T
#undef IT
#undef F
#undef STREAM

#define T double
#define IT int64_t
#define F(name) CBN_NAME(name, _f64_base)
#define STREAM CBN_STREAM_f64_base
#include "cbn_loops_impl.h"
#undef T
#undef IT
#undef VB
#undef ATTR
#undef F
#undef STREAM

#if CBN_DISPATCH_AVX2
#define VB 32
#define ATTR __attribute__((target("avx2,fma"), unused))
#define T float
#define IT int32_t
#define F(name) CBN_NAME(name, _f32_avx2)
#define STREAM CBN_STREAM_f32_avx2
#include "cbn_loops_impl.h"
#undef T
#undef IT
#undef F
#undef STREAM

#define T double
#define IT int64_t
#define F(name) CBN_NAME(name, _f64_avx2)
#define STREAM CBN_STREAM_f64_avx2
#include "cbn_loops_impl.h"
#undef T
#undef IT
#undef VB
#undef ATTR
#undef F
#undef STREAM

static int cbn_use_avx2 = 0;

/* allow_avx2 = 0 keeps the baseline loops (CBN_LOOPS=baseline, see _loops.pxd) */
static void cbn_loops_init(int allow_avx2)
{
    __builtin_cpu_init();
    cbn_use_avx2 = allow_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define cbn_use_avx2 0
static void cbn_loops_init(int allow_avx2) { (void)allow_avx2; }
#endif

static const char *cbn_loops_isa(void)
{
#if defined(__AVX2__)
    return "avx2 (compile-time)";
#else
    return cbn_use_avx2 ? "avx2 (run-time dispatch)"
                        : (CBN_BASE_BYTES == 16 ? "baseline 16-byte vectors" : "baseline");
#endif
}

/* Outputs at least this large are written with streaming stores: the
 * environment variable CBN_STREAM_BYTES if set, else half the last-level
 * cache where the C library reports it, else 16 MiB. */
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
            cbn_stream_threshold_bytes =
                llc > (1L << 20) ? (ptrdiff_t)llc / 2 : (ptrdiff_t)16 << 20;
    }
    return cbn_stream_threshold_bytes;
}

/* ---------------------------------------------------------------- wrappers */

#define T float
#define G(name) CBN_NAME(name, _f32)
#define B(name) CBN_NAME(name, _f32_base)
#define A(name) CBN_NAME(name, _f32_avx2)
#include "cbn_loops_wrap.h"
#undef T
#undef G
#undef B
#undef A

#define T double
#define G(name) CBN_NAME(name, _f64)
#define B(name) CBN_NAME(name, _f64_base)
#define A(name) CBN_NAME(name, _f64_avx2)
#include "cbn_loops_wrap.h"
#undef T
#undef G
#undef B
#undef A

#endif /* CBN_LOOPS_H */
