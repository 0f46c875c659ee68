/*
 * The innermost loops of every kernel, vectorised, in two instruction sets.
 *
 * cbn_loops_impl.h holds the loops; it is instantiated here for each data
 * type (float32, float64, and float16 and bfloat16 computed in float32), once
 * for the build's baseline (SSE2 on x86-64: 16-byte vectors) and once with
 * target("avx2,fma,f16c") (32-byte vectors). cbn_loops_init() picks one per
 * process from the CPU's features, so a portable wheel still uses AVX2 where
 * the CPU has it (unless the environment sets CBN_LOOPS=baseline); the entry
 * points at the end (cbn_runs_sum, ...) branch on that choice and on the data
 * type, branches that are always predicted.
 *
 * Every loop takes a cbn_block: a whole set of strided runs (channels-first)
 * or block of rows (channels-last), so calls and horizontal sums are per
 * block, not per run. Reductions use GCC/Clang vector extensions with four accumulator
 * chains: GCC will not reorder a floating-point sum without -ffast-math, and a
 * single chain is bound by the add latency. Sums of squares are flushed from
 * the lanes into float64 every CBN_ADDS_PER_LANE additions per lane: longer
 * float32 chains bias M2 measurably on quantised data (2e-7 relative with 32
 * additions per lane, 2e-9 with 8).
 */
#ifndef CBN_LOOPS_H
#define CBN_LOOPS_H

/* the vector loops need GCC/Clang vector extensions and target attributes;
 * elsewhere (MSVC) only the reference loops of cbn_loops_scalar.h are built */
#if defined(__GNUC__) || defined(__clang__)
#define CBN_VECTOR_LOOPS 1
#else
#define CBN_VECTOR_LOOPS 0
#endif

/* pointers a loop's arguments never alias (the vectoriser need not check) */
#if defined(__GNUC__) || defined(__clang__)
#define CBN_RESTRICT __restrict__
#else
#define CBN_RESTRICT __restrict
#endif

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if !defined(_WIN32)
#include <unistd.h>
#endif

#define CBN_UNROLL 4
#define CBN_ADDS_PER_LANE 8
#define CBN_LINE 64
/* prefetching far runs (cbn_loops_impl.h, prefetch_next): the first
 * CBN_PREFETCH_BYTES of each run up to CBN_PREFETCH_AHEAD bytes ahead (at
 * least the next), in blocks of runs spanning at least CBN_PREFETCH_SPAN */
#define CBN_PREFETCH_BYTES 1024
#define CBN_PREFETCH_AHEAD 4096
#define CBN_PREFETCH_SPAN ((ptrdiff_t)1 << 20)

/* flags of the normalising loops */
#define CBN_STREAM 1   /* non-temporal stores (see cbn_stream_threshold) */
#define CBN_RELU 2     /* write max(y, 0) */
#define CBN_FIXED 4    /* grad_input with fixed (eval) statistics: dx = g * k_dy, x only
                          gates a fused ReLU, so a NaN in x cannot reach dx through 0 * NaN */
#define CBN_ROWS4 8    /* the channels-last output loops may take four rows per load of the
                          coefficients (_plan.interleaves_rows: outputs of a few MB at most) */

#include "cbn_half.h"

/* data types (cbn_block.kind) */
#define CBN_F64 0
#define CBN_F32 1
#define CBN_F16 2
#define CBN_BF16 3

/* a loop instance's name, e.g. cbn_runs_sum_f16_avx2 (arguments expanded first) */
#define CBN_LOOP_NAME_(name, kind, isa) cbn_##name##_##kind##_##isa
#define CBN_LOOP_NAME(name, kind, isa) CBN_LOOP_NAME_(name, kind, isa)

/* a flag any thread may raise: relaxed atomic stores where the compiler has them */
#if defined(__GNUC__) || defined(__clang__)
#define CBN_SET_FLAG(p) __atomic_store_n((p), 1, __ATOMIC_RELAXED)
#else
#define CBN_SET_FLAG(p) (*(volatile int *)(p) = 1)
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#if defined(__GNUC__) || defined(__clang__)
#include <cpuid.h>
#endif
#define CBN_X86 1
#else
#define CBN_X86 0
#endif

#if CBN_VECTOR_LOOPS && CBN_X86 && !defined(__AVX2__)
#define CBN_DISPATCH_AVX2 1
#else
#define CBN_DISPATCH_AVX2 0
#endif

#if defined(__AVX__)
#define CBN_BASE_BYTES 32
#else
#define CBN_BASE_BYTES 16
#endif

#if CBN_X86
#define CBN_SFENCE() _mm_sfence()
#else
#define CBN_SFENCE() ((void)0)
#endif

/* A block of runs (channels-first) or rows (channels-last) that a loop
 * walks: run or row k of each operand at its base + k * its stride (in
 * elements), length values each; operands a loop does not use may be NULL. */
typedef struct {
    const void *x;
    ptrdiff_t x_stride;
    const void *dy;
    ptrdiff_t dy_stride;
    void *out;
    ptrdiff_t out_stride;
    ptrdiff_t count;         /* runs or rows */
    ptrdiff_t length;        /* values per run, or channels per row */
    ptrdiff_t table_stride;  /* entry j of a coefficient table at coef[j * table_stride] */
    ptrdiff_t table_step;    /* runs: coefficients of run r at coef + r * table_step (0: all
                                runs of one channel; 1: runs of consecutive channels) */
    int flags;               /* CBN_STREAM, CBN_RELU, CBN_FIXED */
    int kind;                /* the data type: CBN_F32, CBN_F64, CBN_F16, CBN_BF16 */
    int *overflow;           /* 2-byte outputs: set to 1 when a value stored is +-inf though
                                the values it was computed from elementwise are finite
                                (cbn_loops_impl.h); may be NULL */
} cbn_block;

/* ---------------------------------------------------------------- instances */

/* the reference loops, then cbn_loops_impl.h once per instruction set
 * (CBN_IMPL_AVX2), each for every data type */
#define CBN_TEMPLATE "cbn_loops_scalar.h"
#include "cbn_loops_types.h"
#undef CBN_TEMPLATE

#define CBN_TEMPLATE "cbn_loops_impl.h"
#if CBN_VECTOR_LOOPS
#define CBN_IMPL_AVX2 0
#include "cbn_loops_types.h"
#undef CBN_IMPL_AVX2
#endif
#if CBN_DISPATCH_AVX2
#define CBN_IMPL_AVX2 1
#include "cbn_loops_types.h"
#undef CBN_IMPL_AVX2
#endif
#undef CBN_TEMPLATE

/* Which loops run: the reference (scalar) ones, the baseline vector ones, or
 * the AVX2 ones; chosen once per process by cbn_loops_init. */
enum { CBN_LOOPS_SCALAR = 0, CBN_LOOPS_BASELINE = 1, CBN_LOOPS_AUTO = 2 };
static int cbn_loops_kind = CBN_VECTOR_LOOPS ? CBN_LOOPS_BASELINE : CBN_LOOPS_SCALAR;

#if CBN_DISPATCH_AVX2
/* F16C (float16 conversions), which every AVX2 CPU has but a virtual machine
 * may hide: CPUID leaf 1, ECX bit 29 */
static int cbn_cpu_has_f16c(void)
{
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
}
#endif

/* request: CBN_LOOPS_SCALAR, CBN_LOOPS_BASELINE, or CBN_LOOPS_AUTO (AVX2
 * where the CPU has it; see _loops.pxd) */
static void cbn_loops_init(int request)
{
    if (!CBN_VECTOR_LOOPS || request == CBN_LOOPS_SCALAR) {
        cbn_loops_kind = CBN_LOOPS_SCALAR;
        return;
    }
    cbn_loops_kind = CBN_LOOPS_BASELINE;
#if CBN_DISPATCH_AVX2
    __builtin_cpu_init();
    if (request == CBN_LOOPS_AUTO && __builtin_cpu_supports("avx2")
            && __builtin_cpu_supports("fma") && cbn_cpu_has_f16c())
        cbn_loops_kind = CBN_LOOPS_AUTO;
#endif
}

static const char *cbn_loops_isa(void)
{
    if (cbn_loops_kind == CBN_LOOPS_SCALAR)
        return "scalar (portable C reference)";
#if defined(__AVX2__)
    return "avx2 (compile-time)";
#else
    return cbn_loops_kind == CBN_LOOPS_AUTO ? "avx2 (run-time dispatch)"
           : (CBN_BASE_BYTES == 16 ? "baseline 16-byte vectors" : "baseline");
#endif
}

/* Outputs at least this large are written with streaming stores: the
 * environment variable CBN_STREAM_BYTES if set, else half the last-level
 * cache the C library reports, that cache taken as at most CBN_LLC_BOUND
 * (so the threshold is at most 16 MiB; the bound itself when nothing is
 * reported).
 *
 * The bound is a sanity check, not a tuning knob: virtual machines report
 * the host's cache, or a made-up one (320 MiB on a 2-CPU AMD EPYC VM whose
 * L3 is 32 MiB, 480 MiB on a 2-CPU Intel Xeon VM), and with half of that as
 * the threshold nothing ever streams: float64 32x64x56x56 NCHW took 3.1x a
 * copy on the Intel VM, 1.0x with streaming. 32 MiB is the most L3 one core
 * reaches on the CPUs measured (an AMD core complex; an Intel core shares
 * its L3 with every other tenant of the socket), so a larger report is not
 * believed. See asv_bench/NOTES.md section 11. */
#define CBN_LLC_BOUND ((ptrdiff_t)32 << 20)
static ptrdiff_t cbn_stream_threshold_bytes = -1;

static ptrdiff_t cbn_stream_threshold(void)
{
    if (cbn_stream_threshold_bytes < 0) {
        const char *env = getenv("CBN_STREAM_BYTES");
        ptrdiff_t llc = CBN_LLC_BOUND;
#if defined(_SC_LEVEL3_CACHE_SIZE)
        long reported = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (reported > (1L << 20) && (ptrdiff_t)reported < llc)
            llc = (ptrdiff_t)reported;
#endif
        if (env != NULL && *env != '\0')
            cbn_stream_threshold_bytes = (ptrdiff_t)strtoll(env, NULL, 10);
        else
            cbn_stream_threshold_bytes = llc / 2;
    }
    return cbn_stream_threshold_bytes;
}

/* ---------------------------------------------------------------- entry points */

/* Each loop as one function: the block's data type picks the instance,
 * cbn_loops_init's choice the instruction set (both branches always
 * predicted). Pointers to per-channel values (coefficient tables,
 * accumulators) have the type computed in: double for float64 data, float
 * for the others. */
#if CBN_DISPATCH_AVX2
#define CBN_PICK(name, elem)                                                                   \
    (cbn_loops_kind == CBN_LOOPS_AUTO ? cbn_##name##_##elem##_avx2                             \
     : cbn_loops_kind == CBN_LOOPS_BASELINE ? cbn_##name##_##elem##_base                      \
     : cbn_##name##_##elem##_scalar)
#elif CBN_VECTOR_LOOPS
#define CBN_PICK(name, elem)                                                                   \
    (cbn_loops_kind == CBN_LOOPS_SCALAR ? cbn_##name##_##elem##_scalar                         \
     : cbn_##name##_##elem##_base)
#else
#define CBN_PICK(name, elem) cbn_##name##_##elem##_scalar
#endif
#define CBN_CALL(name, b, ...)                                                                 \
    ((b)->kind == CBN_F32 ? CBN_PICK(name, f32)(__VA_ARGS__)                                   \
     : (b)->kind == CBN_F64 ? CBN_PICK(name, f64)(__VA_ARGS__)                                 \
     : (b)->kind == CBN_F16 ? CBN_PICK(name, f16)(__VA_ARGS__)                                 \
     : CBN_PICK(name, bf16)(__VA_ARGS__))

static inline double cbn_runs_sum(const cbn_block *b) { return CBN_CALL(runs_sum, b, b); }

/* m: a value of the type computed in (converted exactly) */
static inline void cbn_runs_centered(const cbn_block *b, double m, double *s1, double *s2)
{
    CBN_CALL(runs_centered, b, b, m, s1, s2);
}

/* shift: a value of the type computed in (converted exactly) */
static inline void cbn_runs_grad_sums(const cbn_block *b, double shift, const void *relu,
                                      double *s1, double *s2)
{
    CBN_CALL(runs_grad_sums, b, b, shift, relu, s1, s2);
}

static inline void cbn_runs_affine(const cbn_block *b, const void *k)
{
    CBN_CALL(runs_affine, b, b, k);
}

static inline void cbn_runs_grad_input(const cbn_block *b, const void *k, const void *relu)
{
    CBN_CALL(runs_grad_input, b, b, k, relu);
}

static inline void cbn_rows_affine(const cbn_block *b, const void *k)
{
    CBN_CALL(rows_affine, b, b, k);
}

static inline void cbn_rows_grad_input(const cbn_block *b, const void *k, const void *relu)
{
    CBN_CALL(rows_grad_input, b, b, k, relu);
}

static inline void cbn_rows_centered(const cbn_block *b, const void *m, void *s1, void *s2)
{
    CBN_CALL(rows_centered, b, b, m, s1, s2);
}

static inline void cbn_rows_grad_sums(const cbn_block *b, const void *shift, const void *relu,
                                      void *s1, void *s2)
{
    CBN_CALL(rows_grad_sums, b, b, shift, relu, s1, s2);
}

/* s1, s2, shift: C values of the type computed in (f32: float, else double) */
static inline int cbn_rows_block_flags(int f32, ptrdiff_t C, const void *s1, const void *s2,
                                       double nb, double amplification)
{
    return f32 ? CBN_PICK(rows_block_flags, f32)(C, s1, s2, nb, amplification)
               : CBN_PICK(rows_block_flags, f64)(C, s1, s2, nb, amplification);
}

static inline void cbn_rows_block_merge(int f32, ptrdiff_t C, const void *shift, const void *s1,
                                        const void *s2, double nb, double w, double v,
                                        double *mean, double *m2)
{
    if (f32)
        CBN_PICK(rows_block_merge, f32)(C, shift, s1, s2, nb, w, v, mean, m2);
    else
        CBN_PICK(rows_block_merge, f64)(C, shift, s1, s2, nb, w, v, mean, m2);
}

/* The per-channel work of cbn_per_channel.h; weight, bias (NULL: none),
 * coef and the running statistics of the type computed in (f32: float,
 * else double) */
#define CBN_PICK_TYPE(f32, name, ...)                                                          \
    ((f32) ? CBN_PICK(name, f32)(__VA_ARGS__) : CBN_PICK(name, f64)(__VA_ARGS__))

static inline void cbn_train_coefficients(int f32, ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1,
                                          const double *mean, const double *m2, double count,
                                          double eps, const void *weight, const void *bias,
                                          double *stats, void *coef)
{
    CBN_PICK_TYPE(f32, train_coefficients, C, c0, c1, mean, m2, count, eps, weight, bias, stats,
                  coef);
}

static inline void cbn_given_coefficients(int f32, ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1,
                                          const double *stats, double count, double eps,
                                          const void *weight, const void *bias, void *coef)
{
    CBN_PICK_TYPE(f32, given_coefficients, C, c0, c1, stats, count, eps, weight, bias, coef);
}

static inline void cbn_grad_input_coefficients(int f32, ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1,
                                               const double *stats, const double *sums,
                                               double count, const void *weight, void *coef)
{
    CBN_PICK_TYPE(f32, grad_input_coefficients, C, c0, c1, stats, sums, count, weight, coef);
}

static inline ptrdiff_t cbn_moved_running(int f32, ptrdiff_t C, void *running_mean,
                                          void *running_var, const double *mean,
                                          const double *var, double var_scale, double momentum,
                                          unsigned char *kept)
{
    return CBN_PICK_TYPE(f32, moved_running, C, running_mean, running_var, mean, var, var_scale,
                         momentum, kept);
}

/* s1, s2: copies * C * S values of the type computed in */
static inline void cbn_position_totals(int f32, ptrdiff_t C, ptrdiff_t S, ptrdiff_t copies,
                                       const void *s1, const void *s2, double *t1, double *t2,
                                       ptrdiff_t stride)
{
    CBN_PICK_TYPE(f32, position_totals, C, S, copies, s1, s2, t1, t2, stride);
}

#undef CBN_PICK_TYPE
#undef CBN_CALL
#undef CBN_PICK

#endif /* CBN_LOOPS_H */
