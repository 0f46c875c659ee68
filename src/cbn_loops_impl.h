/*
 * The loops of cbn_loops.h for one data type and instruction set, included
 * once per instance with CBN_IMPL_KIND (CBN_F32, CBN_F64, CBN_F16 or
 * CBN_BF16: the type of x, dy and the outputs) and CBN_IMPL_AVX2 (32-byte
 * AVX2 vectors, else the build's baseline) set. Within it:
 *   DATA          the data's storage type  ELEM  the type computed in: float,
 *                 (float, double, cbn_f16,       or double for float64 data;
 *                 cbn_bf16)                      coefficient tables and row
 *                                                accumulators have it
 *   ELEM_INT      the integer type of ELEM's size
 *   VEC_BYTES     vector bytes (16, 32)  TARGET_ATTRS  function attributes (target ISA)
 *   FN(name)      the instance's name for a loop, e.g. cbn_runs_sum_f16_avx2
 *   FN(load), FN(store)  LANES values of DATA as a vector of ELEM and back;
 *   FN(get), FN(put)     one value (FN(loadc), FN(storec): vectors of a table)
 *
 * 2-byte data are widened to float32 as they are loaded and each output
 * value is rounded once, to nearest even, as it is stored (cbn_half.h): the
 * arithmetic between is the float32 loops' own. F16C converts float16 in the
 * AVX2 loops (and in baseline ones built for a CPU that has it); elsewhere
 * the same steps as cbn_half.h run on whole vectors in integer operations.
 *
 * Channels-first loops take a cbn_block of runs (run k of each operand at
 * its base + k * stride, length values each); channels-last loops a block of
 * rows of length = C channels. Coefficient tables are read with the block's
 * table_stride: entry j of a run's channel at coef[j * table_stride] (the
 * caller points coef at the channel), of channel c of a row at
 * coef[j * table_stride + c].
 *
 * ReLU fused after batch norm (relu != NULL or flags & CBN_RELU): the forward
 * writes max(z, 0) with z = (x - shift) * scale + offset; the backward does
 * not store a mask but recomputes z from x with the forward's coefficients
 * (relu, a table {shift, scale, offset} as coef) and counts dy only where
 * z > 0, the same arithmetic as the forward, so the same decision. NaN passes
 * through the forward (as torch.relu) and stops the gradient (as its backward).
 *
 * Outputs of 2-byte data that are +-inf once stored though the values they
 * were computed from elementwise are finite (past the type's range) are
 * counted per loop (FN(out_*) keep the tally) and reported through the
 * block's overflow flag.
 */
#if CBN_IMPL_KIND == CBN_F32
#define ELEM float
#define DATA float
#define KIND_NAME f32
#elif CBN_IMPL_KIND == CBN_F64
#define ELEM double
#define DATA double
#define KIND_NAME f64
#elif CBN_IMPL_KIND == CBN_F16
#define ELEM float
#define DATA cbn_f16
#define KIND_NAME f16
#else
#define ELEM float
#define DATA cbn_bf16
#define KIND_NAME bf16
#endif
#define HALF (CBN_IMPL_KIND == CBN_F16 || CBN_IMPL_KIND == CBN_BF16)
#if CBN_IMPL_KIND == CBN_F64
#define ELEM_INT int64_t
#define ELEM_UINT uint64_t
#else
#define ELEM_INT int32_t
#define ELEM_UINT uint32_t
#endif

#if CBN_IMPL_AVX2
#define VEC_BYTES 32
#define TARGET_ATTRS __attribute__((target("avx2,fma,f16c"), unused))
#define ISA_NAME avx2
#else
#define VEC_BYTES CBN_BASE_BYTES
#define TARGET_ATTRS __attribute__((unused))
#define ISA_NAME base
#endif

#define FN(name) CBN_LOOP_NAME(name, KIND_NAME, ISA_NAME)

/* F16C for float16 conversions: in the AVX2 loops (the dispatch checks the
 * CPU has it), and in baseline ones when the build targets it */
#if CBN_IMPL_KIND == CBN_F16 && CBN_X86 && (CBN_IMPL_AVX2 || defined(__F16C__))
#define F16C 1
#else
#define F16C 0
#endif

typedef ELEM FN(vec) __attribute__((vector_size(VEC_BYTES)));
typedef ELEM_INT FN(ivec) __attribute__((vector_size(VEC_BYTES)));
typedef ELEM_UINT FN(uvec) __attribute__((vector_size(VEC_BYTES)));
#define LANES ((ptrdiff_t)(VEC_BYTES / sizeof(ELEM)))
#define LINE_VALUES ((ptrdiff_t)(CBN_LINE / sizeof(DATA)))
#define VEC FN(vec)
#define IVEC FN(ivec)
#define UVEC FN(uvec)

/* value in every lane: a vector-scalar operation broadcasts its scalar (one
 * vbroadcastss), where a loop over the lanes compiles to a chain of inserts.
 * -0.0 is the exact identity of addition, so every value (-0.0 and NaN
 * included) comes through unchanged. */
TARGET_ATTRS static inline VEC FN(splat)(ELEM value)
{
    const VEC negative_zero = -(VEC){0};
    return negative_zero + value;
}

/* where mask (all ones or zeros per lane): a, else b */
TARGET_ATTRS static inline UVEC FN(select)(IVEC mask, UVEC a, UVEC b)
{
    return ((UVEC)mask & a) | (~(UVEC)mask & b);
}

/* tables of ELEM (coefficients, row accumulators) */
TARGET_ATTRS static inline VEC FN(loadc)(const ELEM *p) { VEC v; memcpy(&v, p, sizeof(v)); return v; }
TARGET_ATTRS static inline void FN(storec)(ELEM *p, VEC v) { memcpy(p, &v, sizeof(v)); }

/* ---------------------------------------------------------------- data: load and store */

#if !HALF
TARGET_ATTRS static inline VEC FN(load)(const DATA *p) { return FN(loadc)(p); }
TARGET_ATTRS static inline void FN(store)(DATA *p, VEC v) { FN(storec)(p, v); }
TARGET_ATTRS static inline ELEM FN(get)(const DATA *p) { return *p; }
TARGET_ATTRS static inline void FN(put)(DATA *p, ELEM v) { *p = v; }
#if !CBN_X86
#define STREAM_STORE(p, v) FN(store)((p), (v))
#elif VEC_BYTES == 32 && CBN_IMPL_KIND == CBN_F32
#define STREAM_STORE(p, v) _mm256_stream_ps((p), (__m256)(v))
#elif VEC_BYTES == 32
#define STREAM_STORE(p, v) _mm256_stream_pd((p), (__m256d)(v))
#elif CBN_IMPL_KIND == CBN_F32
#define STREAM_STORE(p, v) _mm_stream_ps((p), (__m128)(v))
#else
#define STREAM_STORE(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif

#else /* 2-byte data: LANES values in half a vector */
typedef uint16_t FN(hvec) __attribute__((vector_size(VEC_BYTES / 2)));
#define HVEC FN(hvec)

#if CBN_IMPL_KIND == CBN_BF16
TARGET_ATTRS static inline ELEM FN(get)(const DATA *p) { return cbn_bf16_to_float(*p); }
TARGET_ATTRS static inline void FN(put)(DATA *p, ELEM v) { *p = cbn_bf16_from_float(v); }
#define OVERFLOW_LIMIT cbn_bf16_overflow()

#if CBN_X86 && (CBN_IMPL_AVX2 || defined(__AVX2__))
/* Scalar math: cbn_bf16_to_float, cbn_bf16_from_float on every lane, in AVX2
 * intrinsics: what GCC makes of the generic form below costs twice the
 * instructions (a split zero-extension, a masked truncating pack), which
 * made bfloat16 loops compute-bound. (AVX-512 BF16's vcvtneps2bf16 would
 * round in one instruction, but it flushes float32 subnormals to zero.) */
TARGET_ATTRS static inline VEC FN(widen)(HVEC h)
{
    return (VEC)_mm256_slli_epi32(_mm256_cvtepu16_epi32((__m128i)h), 16);
}

TARGET_ATTRS static inline HVEC FN(narrow)(VEC v)
{
    const __m256i u = (__m256i)v;
    const __m256i top = _mm256_srli_epi32(u, 16);
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                         _mm256_and_si256(top, _mm256_set1_epi32(1))), 16);
    const __m256i nan = (__m256i)_mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q);
    const __m256i h = _mm256_blendv_epi8(rounded, _mm256_or_si256(top, _mm256_set1_epi32(0x40)),
                                         nan);
    return (HVEC)_mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

#else
/* Scalar math: cbn_bf16_to_float, cbn_bf16_from_float on every lane */
TARGET_ATTRS static inline VEC FN(widen)(HVEC h) { return (VEC)(__builtin_convertvector(h, UVEC) << 16); }

TARGET_ATTRS static inline HVEC FN(narrow)(VEC v)
{
    const UVEC u = (UVEC)v;
    const IVEC nan = (IVEC)(u & 0x7fffffffu) > 0x7f800000;
    const UVEC rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return __builtin_convertvector(FN(select)(nan, (u >> 16) | 0x40u, rounded), HVEC);
}
#endif

#elif F16C
TARGET_ATTRS static inline VEC FN(widen)(HVEC h)
{
#if VEC_BYTES == 32
    return (VEC)_mm256_cvtph_ps((__m128i)h);
#else
    return (VEC)_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(const void *)&h));
#endif
}

TARGET_ATTRS static inline HVEC FN(narrow)(VEC v)
{
#if VEC_BYTES == 32
    return (HVEC)_mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT);
#else
    HVEC h;
    _mm_storel_epi64((__m128i *)(void *)&h, _mm_cvtps_ph((__m128)v, _MM_FROUND_TO_NEAREST_INT));
    return h;
#endif
}

TARGET_ATTRS static inline ELEM FN(get)(const DATA *p) { return _cvtsh_ss(p->bits); }
TARGET_ATTRS static inline void FN(put)(DATA *p, ELEM v)
{
    p->bits = (uint16_t)_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
}
#define OVERFLOW_LIMIT CBN_F16_OVERFLOW

#else /* float16 in integer operations */
/* Scalar math: cbn_f16_to_float on every lane */
TARGET_ATTRS static inline VEC FN(widen)(HVEC h)
{
    const UVEC x = __builtin_convertvector(h, UVEC), exp_mask = (UVEC){0} + (0x7c00u << 13);
    UVEC o = (x & 0x7fffu) << 13;
    const UVEC e = o & exp_mask;
    o += (uint32_t)(127 - 15) << 23;
    const UVEC special = (UVEC)(e == exp_mask);
    o = (o + (special & ((uint32_t)(128 - 16) << 23))) | (special & (UVEC)((o & 0x7fffffu) != 0)
                                                             & 0x400000u);
    o = FN(select)(e == 0, (UVEC)((VEC)(o + (1u << 23)) - FN(splat)(0x1p-14f)), o);
    return (VEC)(o | ((x & 0x8000u) << 16));
}

/* Scalar math: cbn_f16_from_float on every lane (each case computed, one kept) */
TARGET_ATTRS static inline HVEC FN(narrow)(VEC v)
{
    const uint32_t magic = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
    UVEC u = (UVEC)v;
    const UVEC sign = u & 0x80000000u;
    u ^= sign;
    const IVEC big = (IVEC)u >= (int32_t)((127 + 16) << 23);
    const IVEC tiny = (IVEC)u < (int32_t)(113u << 23);
    const UVEC special = FN(select)((IVEC)u > 0x7f800000, (UVEC){0} + 0x7e00u,
                                    (UVEC){0} + 0x7c00u);
    const UVEC subnormal = (UVEC)((VEC)u + FN(splat)(0.5f)) - magic;
    const UVEC normal = (u + (((uint32_t)(15 - 127) << 23) + 0xfffu) + ((u >> 13) & 1u)) >> 13;
    const UVEC h = FN(select)(big, special, FN(select)(tiny, subnormal, normal));
    return __builtin_convertvector(h | (sign >> 16), HVEC);
}

TARGET_ATTRS static inline ELEM FN(get)(const DATA *p) { return cbn_f16_to_float(*p); }
TARGET_ATTRS static inline void FN(put)(DATA *p, ELEM v) { *p = cbn_f16_from_float(v); }
#define OVERFLOW_LIMIT CBN_F16_OVERFLOW
#endif

TARGET_ATTRS static inline VEC FN(load)(const DATA *p)
{
    HVEC h;
    memcpy(&h, p, sizeof(h));
    return FN(widen)(h);
}

TARGET_ATTRS static inline void FN(store)(DATA *p, VEC v)
{
    HVEC h = FN(narrow)(v);
    memcpy(p, &h, sizeof(h));
}

#if CBN_X86 && VEC_BYTES == 32
#define STREAM_STORE(p, v) _mm_stream_si128((__m128i *)(void *)(p), (__m128i)FN(narrow)(v))
#elif CBN_X86 && defined(__x86_64__)
#define STREAM_STORE(p, v) FN(stream8)((p), (v))
TARGET_ATTRS static inline void FN(stream8)(DATA *p, VEC v)
{
    HVEC h = FN(narrow)(v);
    long long bits;
    memcpy(&bits, &h, sizeof(bits));
    _mm_stream_si64((long long *)(void *)p, bits);
}
#else
#define STREAM_STORE(p, v) FN(store)((p), (v))
#endif
#endif /* HALF */

/* ---------------------------------------------------------------- outputs, and their range */

/* Every output value goes through FN(out_vec), FN(out_stream) or FN(out1),
 * which store it and, for 2-byte data, tally the values that are +-inf once
 * stored: |v| >= OVERFLOW_LIMIT (infinite ones included: bfloat16's range is
 * float32's, so its overflows happen in the float32 arithmetic), unless
 * excused: a value the output was computed from elementwise (x; dy, and x
 * with batch statistics) is +-inf, so its +-inf is that input's, not past
 * the range. That is told here, before an in-place output writes over its
 * inputs; FN(report) sets the block's flag when any value counted. (An
 * infinite dy also makes a training-mode channel's sums, so all its dx,
 * +-inf or NaN: the caller excuses those channels.)
 *
 * An input x's excuse, FN(excuse)(x) = x * 0, is +-0 where x is finite and
 * NaN where it is +-inf; the tally takes v + excuse, which is v or NaN, and
 * NaN is never >= the limit (a multiply-add, where an infinity mask costs
 * three operations). The vector loops keep the largest |v + excuse| per lane
 * (FN(keep_peak): one max, which passes NaN over) and compare it with the
 * limit once, in FN(report). So the tally and its excuse cost a float16
 * eval forward (one thread) no measurable time, where ORing in per vector a
 * mask of |v| >= limit and one of infinite inputs took it 35% longer. */
#if HALF
TARGET_ATTRS static inline IVEC FN(beyond)(VEC v)
{
    return (VEC)((UVEC)v & 0x7fffffffu) >= FN(splat)(OVERFLOW_LIMIT);
}
TARGET_ATTRS static inline int FN(beyond1)(ELEM v)
{
    return __builtin_fabsf(v) >= OVERFLOW_LIMIT;   /* (v < 0 ? -v : v) became a branch */
}
TARGET_ATTRS static inline VEC FN(excuse)(VEC x) { return x * FN(splat)(0); }
TARGET_ATTRS static inline ELEM FN(excuse1)(ELEM x) { return x * 0; }

/* *peak = max(*peak, |v|) per lane, NaN v passed over (maxps returns its
 * second operand when either is NaN) */
TARGET_ATTRS static inline void FN(keep_peak)(VEC *peak, VEC v)
{
    const VEC a = (VEC)((UVEC)v & 0x7fffffffu);
#if CBN_X86 && VEC_BYTES == 32
    *peak = (VEC)_mm256_max_ps((__m256)a, (__m256)*peak);
#elif CBN_X86
    *peak = (VEC)_mm_max_ps((__m128)a, (__m128)*peak);
#else
    *peak = (VEC)FN(select)(a > *peak, (UVEC)a, (UVEC)*peak);
#endif
}
#else  /* (no tally: these compile to nothing) */
TARGET_ATTRS static inline IVEC FN(beyond)(VEC v) { (void)v; return (IVEC){0}; }
TARGET_ATTRS static inline int FN(beyond1)(ELEM v) { (void)v; return 0; }
TARGET_ATTRS static inline VEC FN(excuse)(VEC x) { (void)x; return FN(splat)(0); }
TARGET_ATTRS static inline ELEM FN(excuse1)(ELEM x) { (void)x; return 0; }
TARGET_ATTRS static inline void FN(keep_peak)(VEC *peak, VEC v) { (void)peak; (void)v; }
#endif

/* dx's excuse: with batch statistics dy's or x's, (x + dy * 0) * 0 (not
 * (x + dy) * 0: a sum of finite values can overflow); fixed (eval) dy's
 * alone: dx = g * k_dy, which x can only gate to 0 (nor is x read then,
 * without a ReLU) */
TARGET_ATTRS static inline VEC FN(dx_excuse)(VEC dy, VEC x, int fixed)
{
    return fixed ? FN(excuse)(dy) : FN(excuse)(x + FN(excuse)(dy));
}
TARGET_ATTRS static inline ELEM FN(dx_excuse1)(ELEM dy, ELEM x, int fixed)
{
    return fixed ? FN(excuse1)(dy) : FN(excuse1)(x + FN(excuse1)(dy));
}

TARGET_ATTRS static inline void FN(out_vec)(DATA *p, VEC v, VEC excuse, VEC *peak)
{
    FN(keep_peak)(peak, v + excuse);
    FN(store)(p, v);
}

TARGET_ATTRS static inline void FN(out_stream)(DATA *p, VEC v, VEC excuse, VEC *peak)
{
    FN(keep_peak)(peak, v + excuse);
    STREAM_STORE(p, v);
}

/* (a scalar tally of its own: setting a lane of the vector one would move it
 * through memory for every value) */
TARGET_ATTRS static inline void FN(out1)(DATA *p, ELEM v, ELEM excuse, int *over1)
{
    *over1 |= FN(beyond1)(v + excuse);
    FN(put)(p, v);
}

TARGET_ATTRS static inline void FN(report)(const cbn_block *b, VEC peak, int over1)
{
    const IVEC over = FN(beyond)(peak);
    ELEM_INT any = over1;
    for (ptrdiff_t j = 0; j < LANES; j++) any |= over[j];
    if (HALF && any && b->overflow != NULL) CBN_SET_FLAG(b->overflow);
}

/* the lanes summed pairwise, halves then quarters...: log2(LANES) dependent
 * additions, not LANES - 1 in one chain (a flush every few runs of a short-run
 * reduction waited on that chain: asv_bench/NOTES.md section 23) */
TARGET_ATTRS static inline double FN(hsum)(VEC v)
{
    ELEM t[LANES];
    memcpy(t, &v, sizeof t);
    for (ptrdiff_t w = LANES / 2; w >= 1; w /= 2)
        for (ptrdiff_t j = 0; j < w; j++) t[j] += t[j + w];
    return (double)t[0];
}

/* max(v, 0), NaN kept */
TARGET_ATTRS static inline VEC FN(relu)(VEC v) { return (VEC)((IVEC)v & ~(IVEC)(v < FN(splat)(0))); }
TARGET_ATTRS static inline ELEM FN(relu1)(ELEM v) { return v < 0 ? 0 : v; }

/* g where z > 0, else 0 */
TARGET_ATTRS static inline VEC FN(gate)(VEC g, VEC z) { return (VEC)((IVEC)g & (IVEC)(z > FN(splat)(0))); }
TARGET_ATTRS static inline ELEM FN(gate1)(ELEM g, ELEM z) { return z > 0 ? g : 0; }

/* ---------------------------------------------------------------- float64 lane flushing */

/* Two sums (s1, s2) in CBN_UNROLL vectors each, flushed into float64 every
 * CBN_ADDS_PER_LANE additions per lane (see cbn_loops.h). */
typedef struct {
    VEC s1[CBN_UNROLL], s2[CBN_UNROLL];
    double d1, d2;
    int adds;
} FN(lanes);

TARGET_ATTRS static inline void FN(lanes_clear)(FN(lanes) *l)
{
    for (int j = 0; j < CBN_UNROLL; j++) l->s1[j] = l->s2[j] = FN(splat)(0);
}

/* (no initialiser: one would zero the whole struct in memory first) */
TARGET_ATTRS static inline void FN(lanes_start)(FN(lanes) *l)
{
    FN(lanes_clear)(l);
    l->d1 = l->d2 = 0.0;
    l->adds = 0;
}

TARGET_ATTRS static inline void FN(lanes_flush)(FN(lanes) *l)
{
    l->d1 += FN(hsum)((l->s1[0] + l->s1[1]) + (l->s1[2] + l->s1[3]));
    l->d2 += FN(hsum)((l->s2[0] + l->s2[1]) + (l->s2[2] + l->s2[3]));
}

/* count one addition per lane: flush into float64 every CBN_ADDS_PER_LANE */
TARGET_ATTRS static inline void FN(lanes_added)(FN(lanes) *l)
{
    if (++l->adds == CBN_ADDS_PER_LANE) {
        FN(lanes_flush)(l);
        FN(lanes_clear)(l);
        l->adds = 0;
    }
}

/* *s1 += the first sum, *s2 += the second */
TARGET_ATTRS static inline void FN(lanes_total)(FN(lanes) *l, double *s1, double *s2)
{
    double d1 = l->d1, d2 = l->d2;
    l->d1 = l->d2 = 0.0;
    FN(lanes_flush)(l);
    *s1 += d1 + l->d1;
    *s2 += d2 + l->d2;
}

/* ---------------------------------------------------------------- prefetching */

/* Runs far apart in memory (channels-first, one channel's runs: C * S
 * values apart) each start cold: the hardware prefetcher needs a few lines
 * of a run to lock on. A loop over such runs asks for the first
 * CBN_PREFETCH_BYTES of the next run while it works on this one, when the
 * runs are not adjacent (stride n: the memory-order passes, left to the
 * hardware) and span at least CBN_PREFETCH_SPAN (smaller blocks are read
 * from L2, where the prefetches only cost instructions). Measured in
 * asv_bench/NOTES.md section 12. */
TARGET_ATTRS static inline int FN(far_runs)(ptrdiff_t stride, ptrdiff_t n, ptrdiff_t count)
{
    return stride != n && count * stride * (ptrdiff_t)sizeof(DATA) >= CBN_PREFETCH_SPAN;
}

/* the first bytes of the run `ahead` runs after p (stride values apart) */
TARGET_ATTRS static inline void FN(prefetch_run)(const DATA *p, ptrdiff_t ahead, ptrdiff_t stride,
                                                 ptrdiff_t n, int write)
{
    const char *run = (const char *)(p + ahead * stride);
    ptrdiff_t bytes = n * (ptrdiff_t)sizeof(DATA);
    if (bytes > CBN_PREFETCH_BYTES) bytes = CBN_PREFETCH_BYTES;
    for (ptrdiff_t off = 0; off < bytes; off += CBN_LINE) {
        if (write) __builtin_prefetch(run + off, 1);
        else __builtin_prefetch(run + off, 0);
    }
}

/* While run r (at p) of count is worked on: short runs are done before one
 * run's prefetch lands, so the runs up to CBN_PREFETCH_AHEAD bytes ahead are
 * asked for (all of them at the first run, then one more per run). */
TARGET_ATTRS static inline void FN(prefetch_next)(const DATA *p, ptrdiff_t r, ptrdiff_t count,
                                                  ptrdiff_t stride, ptrdiff_t n, int write)
{
    const ptrdiff_t bytes = n * (ptrdiff_t)sizeof(DATA);
    const ptrdiff_t depth = bytes >= CBN_PREFETCH_AHEAD ? 1 : CBN_PREFETCH_AHEAD / bytes;
    if (r == 0)
        for (ptrdiff_t k = 1; k < depth && k < count; k++) FN(prefetch_run)(p, k, stride, n, write);
    if (r + depth < count) FN(prefetch_run)(p, depth, stride, n, write);
}

/* ---------------------------------------------------------------- reductions over runs */

/* Scalar math: return the sum of x over the block's runs, in ELEM (it only
 * centres the next pass) */
TARGET_ATTRS static ELEM FN(runs_sum)(const cbn_block *block)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t step = CBN_UNROLL * LANES, n = b.length;
    VEC a0 = FN(splat)(0), a1 = a0, a2 = a0, a3 = a0;
    ELEM tail = 0;
    const int far = FN(far_runs)(b.x_stride, n, b.count);
    for (ptrdiff_t r = 0; r < b.count; r++) {
        const DATA *q = (const DATA *)b.x + r * b.x_stride;
        ptrdiff_t i = 0;
        if (far) FN(prefetch_next)(q, r, b.count, b.x_stride, n, 0);
        for (; i + step <= n; i += step) {
            a0 += FN(load)(q + i);
            a1 += FN(load)(q + i + LANES);
            a2 += FN(load)(q + i + 2 * LANES);
            a3 += FN(load)(q + i + 3 * LANES);
        }
        for (; i + LANES <= n; i += LANES) a0 += FN(load)(q + i);
        for (; i < n; i++) tail += FN(get)(q + i);
    }
    return (ELEM)FN(hsum)((a0 + a1) + (a2 + a3)) + tail;
}

/* Scalar math: *s1 += sum(x - m), *s2 += sum((x - m)^2) over the block's runs */
TARGET_ATTRS static void FN(runs_centered)(const cbn_block *block, ELEM m, double *s1, double *s2)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t step = CBN_UNROLL * LANES, n = b.length;
    const VEC mv = FN(splat)(m);
    FN(lanes) l;
    const int far = FN(far_runs)(b.x_stride, n, b.count);
    FN(lanes_start)(&l);
    for (ptrdiff_t r = 0; r < b.count; r++) {
        const DATA *q = (const DATA *)b.x + r * b.x_stride;
        ptrdiff_t i = 0;
        if (far) FN(prefetch_next)(q, r, b.count, b.x_stride, n, 0);
        for (; i + step <= n; i += step) {
            for (int j = 0; j < CBN_UNROLL; j++) {
                VEC u = FN(load)(q + i + j * LANES) - mv;
                l.s1[j] += u;
                l.s2[j] += u * u;
            }
            FN(lanes_added)(&l);
        }
        for (; i + LANES <= n; i += LANES) {
            VEC u = FN(load)(q + i) - mv;
            l.s1[0] += u;
            l.s2[0] += u * u;
            FN(lanes_added)(&l);
        }
        for (; i < n; i++) {
            ELEM u = FN(get)(q + i) - m;
            l.d1 += (double)u;
            l.d2 += (double)(u * u);
        }
    }
    FN(lanes_total)(&l, s1, s2);
}

/* Scalar math: g = dy, gated by relu (the z > 0 of the forward);
 * *s1 += sum(g), *s2 += sum(g * (x - shift)) over the block's runs */
TARGET_ATTRS static void FN(runs_grad_sums)(const cbn_block *block, ELEM shift, const ELEM *relu,
                                           double *s1, double *s2)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t step = CBN_UNROLL * LANES, n = b.length, ts = b.table_stride;
    const VEC sv = FN(splat)(shift);
    const ELEM rs = relu ? relu[0] : 0, ra = relu ? relu[ts] : 0, rb = relu ? relu[2 * ts] : 0;
    const VEC rsv = FN(splat)(rs), rav = FN(splat)(ra), rbv = FN(splat)(rb);
    FN(lanes) l;
    const int far_dy = FN(far_runs)(b.dy_stride, n, b.count);
    const int far_x = FN(far_runs)(b.x_stride, n, b.count);
    FN(lanes_start)(&l);
    for (ptrdiff_t r = 0; r < b.count; r++) {
        const DATA *g = (const DATA *)b.dy + r * b.dy_stride;
        const DATA *q = (const DATA *)b.x + r * b.x_stride;
        ptrdiff_t i = 0;
        if (far_dy) FN(prefetch_next)(g, r, b.count, b.dy_stride, n, 0);
        if (far_x) FN(prefetch_next)(q, r, b.count, b.x_stride, n, 0);
        for (; i + step <= n; i += step) {
            VEC qj[CBN_UNROLL], gj[CBN_UNROLL];
            for (int j = 0; j < CBN_UNROLL; j++) {
                qj[j] = FN(load)(q + i + j * LANES);
                gj[j] = FN(load)(g + i + j * LANES);
            }
            if (relu)
                for (int j = 0; j < CBN_UNROLL; j++)
                    gj[j] = FN(gate)(gj[j], (qj[j] - rsv) * rav + rbv);
            for (int j = 0; j < CBN_UNROLL; j++) {
                l.s1[j] += gj[j];
                l.s2[j] += gj[j] * (qj[j] - sv);
            }
            FN(lanes_added)(&l);
        }
        for (; i + LANES <= n; i += LANES) {
            VEC q0 = FN(load)(q + i), g0 = FN(load)(g + i);
            if (relu) g0 = FN(gate)(g0, (q0 - rsv) * rav + rbv);
            l.s1[0] += g0;
            l.s2[0] += g0 * (q0 - sv);
            FN(lanes_added)(&l);
        }
        for (; i < n; i++) {
            const ELEM qi = FN(get)(q + i), gi0 = FN(get)(g + i);
            const ELEM gi = relu ? FN(gate1)(gi0, (qi - rs) * ra + rb) : gi0;
            l.d1 += (double)gi;
            l.d2 += (double)(gi * (qi - shift));
        }
    }
    FN(lanes_total)(&l, s1, s2);
}

/* ---------------------------------------------------------------- elementwise */

/* Whole 64-byte lines of a streamed output get non-temporal stores, partial
 * lines at either end ordinary ones: a line written both ways is read and
 * written back, which costs more than not streaming at all. *head: the first
 * index of o at a line boundary (at most n), *end: where whole lines stop;
 * both 0 when not streaming. */
TARGET_ATTRS static inline void FN(stream_span)(const DATA *o, ptrdiff_t n, int stream,
                                                ptrdiff_t *head, ptrdiff_t *end)
{
    ptrdiff_t h;
    if (!stream) {
        *head = *end = 0;
        return;
    }
    h = (ptrdiff_t)(((CBN_LINE - ((size_t)o % CBN_LINE)) % CBN_LINE) / sizeof(DATA));
    *head = h > n ? n : h;
    *end = *head + (n - *head) / LINE_VALUES * LINE_VALUES;
}

/* (x - shift) * scale + offset, then max(y, 0) with relu: not x * a + b':
 * when |mean| >> std, x * a and b' are huge and cancel, while x - shift is
 * exact near the mean. */
TARGET_ATTRS static inline ELEM FN(affine1)(ELEM x, ELEM shift, ELEM scale, ELEM offset,
                                            int relu)
{
    ELEM v = (x - shift) * scale + offset;
    return relu ? FN(relu1)(v) : v;
}

/* affine1 on a vector, coefficients splat or per lane */
TARGET_ATTRS static inline VEC FN(affine)(VEC x, VEC shift, VEC scale, VEC offset, int relu)
{
    VEC v = (x - shift) * scale + offset;
    return relu ? FN(relu)(v) : v;
}

/* dx = g * k_dy + (x - shift) * k_x + k_0 with g = dy gated by relu
 * (NULL: none); fixed (eval): dx = g * k_dy. k: the channel's
 * {shift, k_dy, k_x, k_0}, relu its {shift, scale, offset}, ts apart. */
TARGET_ATTRS static inline ELEM FN(grad_input1)(ELEM dy, ELEM x, const ELEM *k, const ELEM *relu,
                                                ptrdiff_t ts, int fixed)
{
    ELEM g = relu ? FN(gate1)(dy, (x - relu[0]) * relu[ts] + relu[2 * ts]) : dy;
    return fixed ? g * k[ts] : g * k[ts] + (x - k[0]) * k[2 * ts] + k[3 * ts];
}

/* o = affine1(*q), grad_input1(*g, *q) at one value, with its excuse */
TARGET_ATTRS static inline void FN(affine_out1)(DATA *o, const DATA *q, ELEM shift, ELEM scale,
                                                ELEM offset, int relu, int *over1)
{
    const ELEM x = FN(get)(q);
    FN(out1)(o, FN(affine1)(x, shift, scale, offset, relu), FN(excuse1)(x), over1);
}

TARGET_ATTRS static inline void FN(grad_input_out1)(DATA *o, const DATA *g, const DATA *q,
                                                    const ELEM *k, const ELEM *relu,
                                                    ptrdiff_t ts, int fixed, int *over1)
{
    const ELEM dy = FN(get)(g), x = FN(get)(q);
    FN(out1)(o, FN(grad_input1)(dy, x, k, relu, ts, fixed),
             FN(dx_excuse1)(dy, x, fixed), over1);
}

/* A channel's n coefficients (read ts apart), as scalars and as splat
 * vectors: loaded once per channel, not reloaded after every store */
typedef struct {
    ELEM s[4];
    VEC v[4];
} FN(coefs);

TARGET_ATTRS static inline void FN(load_coefs)(FN(coefs) *c, const ELEM *k, ptrdiff_t ts,
                                               int n)
{
    for (int j = 0; j < n; j++) {
        c->s[j] = k ? k[j * ts] : 0;
        c->v[j] = FN(splat)(c->s[j]);
    }
}

/* grad_input1 on a vector, with a channel's coefficients */
TARGET_ATTRS static inline VEC FN(grad_input)(VEC g, VEC x, const FN(coefs) *k,
                                              const FN(coefs) *relu, int fixed)
{
    if (relu) g = FN(gate)(g, (x - relu->v[0]) * relu->v[1] + relu->v[2]);
    return fixed ? g * k->v[1] : g * k->v[1] + (x - k->v[0]) * k->v[2] + k->v[3];
}

/* Scalar math: affine1 for every value of the block's runs, run r with the
 * coefficients at coef + r * table_step (flags: CBN_STREAM, CBN_RELU) */
TARGET_ATTRS static void FN(runs_affine)(const cbn_block *block, const ELEM *coef)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t n = b.length;
    const int relu = b.flags & CBN_RELU, stream = b.flags & CBN_STREAM;
    const int far_x = FN(far_runs)(b.x_stride, n, b.count);
    const int far_out = !stream && FN(far_runs)(b.out_stride, n, b.count);
    VEC peak = FN(splat)(0);
    int over1 = 0;
    FN(coefs) k;
    for (ptrdiff_t r = 0; r < b.count; r++) {
        if (r == 0 || b.table_step)
            FN(load_coefs)(&k, coef + r * b.table_step, b.table_stride, 3);
        const DATA *restrict q = (const DATA *)b.x + r * b.x_stride;
        DATA *restrict o = (DATA *)b.out + r * b.out_stride;
        ptrdiff_t i = 0, head, end;
        if (far_x) FN(prefetch_next)(q, r, b.count, b.x_stride, n, 0);
        if (far_out) FN(prefetch_next)(o, r, b.count, b.out_stride, n, 1);
        FN(stream_span)(o, n, stream, &head, &end);
        for (; i < head; i++)
            FN(affine_out1)(o + i, q + i, k.s[0], k.s[1], k.s[2], relu, &over1);
        for (; i < end; i += LANES) {
            const VEC x = FN(load)(q + i);
            FN(out_stream)(o + i, FN(affine)(x, k.v[0], k.v[1], k.v[2], relu), FN(excuse)(x),
                           &peak);
        }
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            const VEC x0 = FN(load)(q + i), x1 = FN(load)(q + i + LANES);
            FN(out_vec)(o + i, FN(affine)(x0, k.v[0], k.v[1], k.v[2], relu), FN(excuse)(x0),
                        &peak);
            FN(out_vec)(o + i + LANES, FN(affine)(x1, k.v[0], k.v[1], k.v[2], relu),
                        FN(excuse)(x1), &peak);
        }
        for (; i < n; i++)
            FN(affine_out1)(o + i, q + i, k.s[0], k.s[1], k.s[2], relu, &over1);
    }
    if (stream) CBN_SFENCE();
    FN(report)(&b, peak, over1);
}

/* Scalar math: grad_input1 for every value of the block's runs, run r with
 * the coefficients at coef + r * table_step (relu likewise, when not NULL;
 * flags: CBN_STREAM, CBN_FIXED) */
TARGET_ATTRS static void FN(runs_grad_input)(const cbn_block *block, const ELEM *coef,
                                            const ELEM *relu_coef)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t n = b.length, ts = b.table_stride;
    const int stream = b.flags & CBN_STREAM, fixed = b.flags & CBN_FIXED;
    const int relu = relu_coef != NULL;
    const int far_dy = FN(far_runs)(b.dy_stride, n, b.count);
    const int far_x = FN(far_runs)(b.x_stride, n, b.count);
    const int far_out = !stream && FN(far_runs)(b.out_stride, n, b.count);
    VEC peak = FN(splat)(0);
    int over1 = 0;
    FN(coefs) k, z;   /* {shift, k_dy, k_x, k_0} and the ReLU's {shift, scale, offset} */
    for (ptrdiff_t r = 0; r < b.count; r++) {
        if (r == 0 || b.table_step) {
            FN(load_coefs)(&k, coef + r * b.table_step, ts, 4);
            FN(load_coefs)(&z, relu ? relu_coef + r * b.table_step : NULL, ts, 3);
        }
        const DATA *restrict g = (const DATA *)b.dy + r * b.dy_stride;
        const DATA *restrict q = (const DATA *)b.x + r * b.x_stride;
        DATA *restrict o = (DATA *)b.out + r * b.out_stride;
        const ELEM *zs = relu ? z.s : NULL;
        const FN(coefs) *zv = relu ? &z : NULL;
        ptrdiff_t i = 0, head, end;
        if (far_dy) FN(prefetch_next)(g, r, b.count, b.dy_stride, n, 0);
        if (far_x) FN(prefetch_next)(q, r, b.count, b.x_stride, n, 0);
        if (far_out) FN(prefetch_next)(o, r, b.count, b.out_stride, n, 1);
        FN(stream_span)(o, n, stream, &head, &end);
        for (; i < head; i++)
            FN(grad_input_out1)(o + i, g + i, q + i, k.s, zs, 1, fixed, &over1);
        for (; i < end; i += LANES) {
            const VEC dy = FN(load)(g + i), x = FN(load)(q + i);
            FN(out_stream)(o + i, FN(grad_input)(dy, x, &k, zv, fixed),
                           FN(dx_excuse)(dy, x, fixed), &peak);
        }
        for (; i + LANES <= n; i += LANES) {
            const VEC dy = FN(load)(g + i), x = FN(load)(q + i);
            FN(out_vec)(o + i, FN(grad_input)(dy, x, &k, zv, fixed),
                        FN(dx_excuse)(dy, x, fixed), &peak);
        }
        for (; i < n; i++)
            FN(grad_input_out1)(o + i, g + i, q + i, k.s, zs, 1, fixed, &over1);
    }
    if (stream) CBN_SFENCE();
    FN(report)(&b, peak, over1);
}

/* ---------------------------------------------------------------- rows (channels-last) */

/* Scalar math: affine1 for every value of the block's rows, channel c's
 * coefficients at k + c (flags: CBN_STREAM, CBN_RELU) */
TARGET_ATTRS static void FN(rows_affine)(const cbn_block *block, const ELEM *restrict k)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t C = b.length, ts = b.table_stride;
    const int relu = b.flags & CBN_RELU, stream = b.flags & CBN_STREAM;
    const ELEM *restrict shift = k, *restrict scale = k + ts, *restrict offset = k + 2 * ts;
    VEC peak = FN(splat)(0);
    int over1 = 0;
    ptrdiff_t r = 0;
    if (!stream && (b.flags & CBN_ROWS4)) {
        /* four rows per load of a channel's coefficients: three loads fewer
         * for every four vectors (the pass was bound by loads on short
         * tensors). Rows are written whole, in order: out may be x itself */
        for (; r + 4 <= b.count; r += 4) {
            const DATA *q0 = (const DATA *)b.x + r * b.x_stride, *q1 = q0 + b.x_stride;
            const DATA *q2 = q1 + b.x_stride, *q3 = q2 + b.x_stride;
            DATA *o0 = (DATA *)b.out + r * b.out_stride, *o1 = o0 + b.out_stride;
            DATA *o2 = o1 + b.out_stride, *o3 = o2 + b.out_stride;
            ptrdiff_t c = 0;
            for (; c + LANES <= C; c += LANES) {
                const VEC sh = FN(loadc)(shift + c), sc = FN(loadc)(scale + c);
                const VEC of = FN(loadc)(offset + c);
                const VEC x0 = FN(load)(q0 + c), x1 = FN(load)(q1 + c);
                const VEC x2 = FN(load)(q2 + c), x3 = FN(load)(q3 + c);
                FN(out_vec)(o0 + c, FN(affine)(x0, sh, sc, of, relu), FN(excuse)(x0), &peak);
                FN(out_vec)(o1 + c, FN(affine)(x1, sh, sc, of, relu), FN(excuse)(x1), &peak);
                FN(out_vec)(o2 + c, FN(affine)(x2, sh, sc, of, relu), FN(excuse)(x2), &peak);
                FN(out_vec)(o3 + c, FN(affine)(x3, sh, sc, of, relu), FN(excuse)(x3), &peak);
            }
            for (; c < C; c++) {
                FN(affine_out1)(o0 + c, q0 + c, shift[c], scale[c], offset[c], relu, &over1);
                FN(affine_out1)(o1 + c, q1 + c, shift[c], scale[c], offset[c], relu, &over1);
                FN(affine_out1)(o2 + c, q2 + c, shift[c], scale[c], offset[c], relu, &over1);
                FN(affine_out1)(o3 + c, q3 + c, shift[c], scale[c], offset[c], relu, &over1);
            }
        }
    }
    for (; r < b.count; r++) {
        const DATA *restrict q = (const DATA *)b.x + r * b.x_stride;
        DATA *restrict o = (DATA *)b.out + r * b.out_stride;
        ptrdiff_t c = 0;
        if (stream) {
            ptrdiff_t head, end;
            FN(stream_span)(o, C, stream, &head, &end);
            for (; c < head; c++)
                FN(affine_out1)(o + c, q + c, shift[c], scale[c], offset[c], relu, &over1);
            for (; c < end; c += LANES) {
                const VEC x = FN(load)(q + c);
                FN(out_stream)(o + c, FN(affine)(x, FN(loadc)(shift + c), FN(loadc)(scale + c),
                                                 FN(loadc)(offset + c), relu),
                               FN(excuse)(x), &peak);
            }
        }
        for (; c + LANES <= C; c += LANES) {
            const VEC x = FN(load)(q + c);
            FN(out_vec)(o + c, FN(affine)(x, FN(loadc)(shift + c), FN(loadc)(scale + c),
                                          FN(loadc)(offset + c), relu),
                        FN(excuse)(x), &peak);
        }
        for (; c < C; c++)
            FN(affine_out1)(o + c, q + c, shift[c], scale[c], offset[c], relu, &over1);
    }
    if (stream) CBN_SFENCE();
    FN(report)(&b, peak, over1);
}

/* dx of a row's vectors, from c while c + LANES <= C (those before end
 * streamed); returns where they stop. Inlined with relu_on and fixed
 * constants: a loop per case (one loop testing both per vector took 15-25%
 * longer in an eval backward, and the compiler no longer made the cases
 * itself once the tally's excuse was added) */
TARGET_ATTRS static inline __attribute__((always_inline)) ptrdiff_t FN(row_grad_input)(
    DATA *restrict o, const DATA *restrict g, const DATA *restrict q, ptrdiff_t c, ptrdiff_t C,
    ptrdiff_t end, const ELEM *k, const ELEM *relu, ptrdiff_t ts, int relu_on, int fixed,
    VEC *peak)
{
    const ELEM *restrict shift = k, *restrict k_dy = k + ts, *restrict k_x = k + 2 * ts;
    const ELEM *restrict k_0 = k + 3 * ts;
    const ELEM *rs = relu, *ra = relu_on ? relu + ts : NULL, *rb = relu_on ? relu + 2 * ts : NULL;
    for (; c + LANES <= C; c += LANES) {
        const VEC qv = FN(load)(q + c), dy = FN(load)(g + c);
        VEC gv = dy;
        if (relu_on)
            gv = FN(gate)(gv, (qv - FN(loadc)(rs + c)) * FN(loadc)(ra + c) + FN(loadc)(rb + c));
        VEC v = fixed ? gv * FN(loadc)(k_dy + c)
                      : gv * FN(loadc)(k_dy + c)
                            + (qv - FN(loadc)(shift + c)) * FN(loadc)(k_x + c)
                            + FN(loadc)(k_0 + c);
        if (c < end)
            FN(out_stream)(o + c, v, FN(dx_excuse)(dy, qv, fixed), peak);
        else
            FN(out_vec)(o + c, v, FN(dx_excuse)(dy, qv, fixed), peak);
    }
    return c;
}

/* Four rows (r0 at g, q, o; the others a stride on) of row_grad_input without
 * a ReLU or streaming, for vectors of channels while c + LANES <= C: one
 * load of a channel's coefficients per four vectors (the pass was bound by
 * loads on short tensors); returns where they stop */
TARGET_ATTRS static inline __attribute__((always_inline)) ptrdiff_t FN(rows4_grad_input)(
    const cbn_block *b, ptrdiff_t r, ptrdiff_t C, const ELEM *k, ptrdiff_t ts, int fixed,
    VEC *peak)
{
    const DATA *g[4], *q[4];
    DATA *o[4];
    ptrdiff_t c = 0;
    for (int j = 0; j < 4; j++) {
        g[j] = (const DATA *)b->dy + (r + j) * b->dy_stride;
        q[j] = (const DATA *)b->x + (r + j) * b->x_stride;
        o[j] = (DATA *)b->out + (r + j) * b->out_stride;
    }
    for (; c + LANES <= C; c += LANES) {
        const VEC kdy = FN(loadc)(k + ts + c);
        const VEC sh = fixed ? kdy : FN(loadc)(k + c);
        const VEC kx = fixed ? kdy : FN(loadc)(k + 2 * ts + c);
        const VEC k0 = fixed ? kdy : FN(loadc)(k + 3 * ts + c);
        VEC qv[4], dy[4];
        for (int j = 0; j < 4; j++) {
            qv[j] = FN(load)(q[j] + c);
            dy[j] = FN(load)(g[j] + c);
        }
        for (int j = 0; j < 4; j++) {
            VEC v = fixed ? dy[j] * kdy : dy[j] * kdy + (qv[j] - sh) * kx + k0;
            FN(out_vec)(o[j] + c, v, FN(dx_excuse)(dy[j], qv[j], fixed), peak);
        }
    }
    return c;
}

/* Scalar math: grad_input1 for every value of the block's rows, channel c's
 * coefficients at k + c and relu + c (flags: CBN_STREAM, CBN_FIXED) */
TARGET_ATTRS static void FN(rows_grad_input)(const cbn_block *block, const ELEM *k, const ELEM *relu)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t C = b.length, ts = b.table_stride;
    const int stream = b.flags & CBN_STREAM, fixed = b.flags & CBN_FIXED;
    VEC peak = FN(splat)(0);
    int over1 = 0;
    ptrdiff_t r = 0;
    if (!stream && !relu && (b.flags & CBN_ROWS4))
        for (; r + 4 <= b.count; r += 4) {
            ptrdiff_t c = fixed ? FN(rows4_grad_input)(&b, r, C, k, ts, 1, &peak)
                                : FN(rows4_grad_input)(&b, r, C, k, ts, 0, &peak);
            for (int j = 0; j < 4; j++) {
                const DATA *g = (const DATA *)b.dy + (r + j) * b.dy_stride;
                const DATA *q = (const DATA *)b.x + (r + j) * b.x_stride;
                DATA *o = (DATA *)b.out + (r + j) * b.out_stride;
                for (ptrdiff_t i = c; i < C; i++)
                    FN(grad_input_out1)(o + i, g + i, q + i, k + i, NULL, ts, fixed, &over1);
            }
        }
    for (; r < b.count; r++) {
        const DATA *restrict g = (const DATA *)b.dy + r * b.dy_stride;
        const DATA *restrict q = (const DATA *)b.x + r * b.x_stride;
        DATA *restrict o = (DATA *)b.out + r * b.out_stride;
        ptrdiff_t c = 0, head, end;
        FN(stream_span)(o, C, stream, &head, &end);
        for (; c < head; c++)
            FN(grad_input_out1)(o + c, g + c, q + c, k + c, relu ? relu + c : NULL, ts, fixed,
                                &over1);
        if (relu)
            c = fixed ? FN(row_grad_input)(o, g, q, c, C, end, k, relu, ts, 1, 1, &peak)
                      : FN(row_grad_input)(o, g, q, c, C, end, k, relu, ts, 1, 0, &peak);
        else
            c = fixed ? FN(row_grad_input)(o, g, q, c, C, end, k, relu, ts, 0, 1, &peak)
                      : FN(row_grad_input)(o, g, q, c, C, end, k, relu, ts, 0, 0, &peak);
        for (; c < C; c++)
            FN(grad_input_out1)(o + c, g + c, q + c, k + c, relu ? relu + c : NULL, ts, fixed,
                                &over1);
    }
    if (stream) CBN_SFENCE();
    FN(report)(&b, peak, over1);
}

/* Row reductions into per-channel accumulators of type ELEM, vectors of
 * LANES channels at a time. Four rows are combined before an accumulator is
 * touched: its load and store, not the arithmetic, bound a one-row-at-a-time
 * loop. */

/* Scalar math: s1[c] += sum(x[c] - m[c]), s2[c] += sum((x[c] - m[c])^2) over the block's rows */
TARGET_ATTRS static void FN(rows_centered)(const cbn_block *block, const ELEM *restrict m,
                                          ELEM *restrict s1, ELEM *restrict s2)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t C = b.length, stride = b.x_stride;
    const DATA *x = (const DATA *)b.x;
    ptrdiff_t r = 0;
    for (; r + 4 <= b.count; r += 4) {
        const DATA *restrict q0 = x + r * stride, *restrict q1 = q0 + stride;
        const DATA *restrict q2 = q1 + stride, *restrict q3 = q2 + stride;
        ptrdiff_t c = 0;
        for (; c + LANES <= C; c += LANES) {
            const VEC mc = FN(loadc)(m + c);
            const VEC u0 = FN(load)(q0 + c) - mc, u1 = FN(load)(q1 + c) - mc;
            const VEC u2 = FN(load)(q2 + c) - mc, u3 = FN(load)(q3 + c) - mc;
            FN(storec)(s1 + c, FN(loadc)(s1 + c) + ((u0 + u1) + (u2 + u3)));
            FN(storec)(s2 + c, FN(loadc)(s2 + c) + ((u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3)));
        }
        for (; c < C; c++) {
            const ELEM u0 = FN(get)(q0 + c) - m[c], u1 = FN(get)(q1 + c) - m[c];
            const ELEM u2 = FN(get)(q2 + c) - m[c], u3 = FN(get)(q3 + c) - m[c];
            s1[c] += (u0 + u1) + (u2 + u3);
            s2[c] += (u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3);
        }
    }
    for (; r < b.count; r++) {
        const DATA *restrict q = x + r * stride;
        ptrdiff_t c = 0;
        for (; c + LANES <= C; c += LANES) {
            const VEC u = FN(load)(q + c) - FN(loadc)(m + c);
            FN(storec)(s1 + c, FN(loadc)(s1 + c) + u);
            FN(storec)(s2 + c, FN(loadc)(s2 + c) + u * u);
        }
        for (; c < C; c++) {
            const ELEM u = FN(get)(q + c) - m[c];
            s1[c] += u;
            s2[c] += u * u;
        }
    }
}

/* Scalar math: g = dy gated by relu (channel c's coefficients at relu + c);
 * s1[c] += sum(g[c]), s2[c] += sum(g[c] * (x[c] - shift[c])) over the block's rows */
TARGET_ATTRS static void FN(rows_grad_sums)(const cbn_block *block, const ELEM *restrict shift,
                                           const ELEM *relu, ELEM *restrict s1,
                                           ELEM *restrict s2)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t C = b.length, ts = b.table_stride, ds = b.dy_stride, xs = b.x_stride;
    const DATA *dy = (const DATA *)b.dy, *x = (const DATA *)b.x;
    ptrdiff_t r = 0;
    if (relu) {  /* gating breaks the four-row combination's simple form */
        const ELEM *rs = relu, *ra = relu + ts, *rb = relu + 2 * ts;
        for (; r < b.count; r++) {
            const DATA *restrict g = dy + r * ds, *restrict q = x + r * xs;
            ptrdiff_t c = 0;
            for (; c + LANES <= C; c += LANES) {
                const VEC qc = FN(load)(q + c);
                const VEC gc = FN(gate)(FN(load)(g + c), (qc - FN(loadc)(rs + c))
                                                             * FN(loadc)(ra + c)
                                                         + FN(loadc)(rb + c));
                FN(storec)(s1 + c, FN(loadc)(s1 + c) + gc);
                FN(storec)(s2 + c, FN(loadc)(s2 + c) + gc * (qc - FN(loadc)(shift + c)));
            }
            for (; c < C; c++) {
                const ELEM qc = FN(get)(q + c);
                const ELEM gc = FN(gate1)(FN(get)(g + c), (qc - rs[c]) * ra[c] + rb[c]);
                s1[c] += gc;
                s2[c] += gc * (qc - shift[c]);
            }
        }
        return;
    }
    for (; r + 4 <= b.count; r += 4) {
        const DATA *restrict g0 = dy + r * ds, *restrict g1 = g0 + ds;
        const DATA *restrict g2 = g1 + ds, *restrict g3 = g2 + ds;
        const DATA *restrict q0 = x + r * xs, *restrict q1 = q0 + xs;
        const DATA *restrict q2 = q1 + xs, *restrict q3 = q2 + xs;
        ptrdiff_t c = 0;
        for (; c + LANES <= C; c += LANES) {
            const VEC h = FN(loadc)(shift + c);
            const VEC a0 = FN(load)(g0 + c), a1 = FN(load)(g1 + c);
            const VEC a2 = FN(load)(g2 + c), a3 = FN(load)(g3 + c);
            FN(storec)(s1 + c, FN(loadc)(s1 + c) + ((a0 + a1) + (a2 + a3)));
            FN(storec)(s2 + c, FN(loadc)(s2 + c)
                                   + ((a0 * (FN(load)(q0 + c) - h) + a1 * (FN(load)(q1 + c) - h))
                                      + (a2 * (FN(load)(q2 + c) - h)
                                         + a3 * (FN(load)(q3 + c) - h))));
        }
        for (; c < C; c++) {
            const ELEM h = shift[c];
            const ELEM a0 = FN(get)(g0 + c), a1 = FN(get)(g1 + c);
            const ELEM a2 = FN(get)(g2 + c), a3 = FN(get)(g3 + c);
            s1[c] += (a0 + a1) + (a2 + a3);
            s2[c] += (a0 * (FN(get)(q0 + c) - h) + a1 * (FN(get)(q1 + c) - h))
                     + (a2 * (FN(get)(q2 + c) - h) + a3 * (FN(get)(q3 + c) - h));
        }
    }
    for (; r < b.count; r++) {
        const DATA *restrict g = dy + r * ds, *restrict q = x + r * xs;
        ptrdiff_t c = 0;
        for (; c + LANES <= C; c += LANES) {
            const VEC gc = FN(load)(g + c);
            FN(storec)(s1 + c, FN(loadc)(s1 + c) + gc);
            FN(storec)(s2 + c, FN(loadc)(s2 + c) + gc * (FN(load)(q + c) - FN(loadc)(shift + c)));
        }
        for (; c < C; c++) {
            const ELEM gc = FN(get)(g + c);
            s1[c] += gc;
            s2[c] += gc * (FN(get)(q + c) - shift[c]);
        }
    }
}

/* the per-channel finishing of row blocks works on ELEM accumulators, and
 * the per-channel coefficients are of ELEM: one instance per compute type
 * (the 2-byte data's are the float32 loops') */
#if !HALF
#include "cbn_rows_merge.h"
#if CBN_IMPL_AVX2
#define COEF_ATTRS __attribute__((target("avx2"), unused))
#else
#define COEF_ATTRS __attribute__((unused))
#endif
#include "cbn_per_channel.h"
#undef COEF_ATTRS
#endif

#undef LANES
#undef LINE_VALUES
#undef VEC
#undef IVEC
#undef UVEC
#undef HVEC
#undef ELEM
#undef ELEM_INT
#undef ELEM_UINT
#undef DATA
#undef HALF
#undef F16C
#undef KIND_NAME
#undef ISA_NAME
#undef OVERFLOW_LIMIT
#undef STREAM_STORE
#undef VEC_BYTES
#undef TARGET_ATTRS
#undef FN
