/*
 * The loops of cbn_loops.h for one element type and instruction set, included
 * once per instance with CBN_IMPL_F32 (float, else double) and CBN_IMPL_AVX2
 * (32-byte AVX2 vectors, else the build's baseline) set. Within it:
 *   ELEM          float or double        ELEM_INT      the integer type of its size
 *   VEC_BYTES     vector bytes (16, 32)  TARGET_ATTRS  function attributes (target ISA)
 *   FN(name)      the instance's name for a loop, e.g. cbn_runs_sum_f32_avx2
 *   STREAM_STORE(p, v)  a non-temporal store of vector v at p
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
 */
#if CBN_IMPL_F32
#define ELEM float
#define ELEM_INT int32_t
#else
#define ELEM double
#define ELEM_INT int64_t
#endif

#if CBN_IMPL_AVX2
#define VEC_BYTES 32
#define TARGET_ATTRS __attribute__((target("avx2,fma"), unused))
#else
#define VEC_BYTES CBN_BASE_BYTES
#define TARGET_ATTRS __attribute__((unused))
#endif

#if CBN_IMPL_F32 && CBN_IMPL_AVX2
#define FN(name) cbn_##name##_f32_avx2
#elif CBN_IMPL_F32
#define FN(name) cbn_##name##_f32_base
#elif CBN_IMPL_AVX2
#define FN(name) cbn_##name##_f64_avx2
#else
#define FN(name) cbn_##name##_f64_base
#endif

/* non-temporal (streaming) stores: no read-for-ownership of the destination
 * and no eviction of the inputs from cache */
#if !CBN_X86
#define STREAM_STORE(p, v) memcpy((p), &(v), sizeof(v))
#elif VEC_BYTES == 32 && CBN_IMPL_F32
#define STREAM_STORE(p, v) _mm256_stream_ps((p), (__m256)(v))
#elif VEC_BYTES == 32
#define STREAM_STORE(p, v) _mm256_stream_pd((p), (__m256d)(v))
#elif CBN_IMPL_F32
#define STREAM_STORE(p, v) _mm_stream_ps((p), (__m128)(v))
#else
#define STREAM_STORE(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif

typedef ELEM FN(vec) __attribute__((vector_size(VEC_BYTES)));
typedef ELEM_INT FN(ivec) __attribute__((vector_size(VEC_BYTES)));
#define LANES ((ptrdiff_t)(VEC_BYTES / sizeof(ELEM)))
#define LINE_VALUES ((ptrdiff_t)(CBN_LINE / sizeof(ELEM)))
#define VEC FN(vec)
#define IVEC FN(ivec)

TARGET_ATTRS static inline VEC FN(load)(const ELEM *p) { VEC v; memcpy(&v, p, sizeof(v)); return v; }
TARGET_ATTRS static inline void FN(store)(ELEM *p, VEC v) { memcpy(p, &v, sizeof(v)); }

/* value in every lane: a vector-scalar operation broadcasts its scalar (one
 * vbroadcastss), where a loop over the lanes compiles to a chain of inserts.
 * -0.0 is the exact identity of addition, so every value (-0.0 and NaN
 * included) comes through unchanged. */
TARGET_ATTRS static inline VEC FN(splat)(ELEM value)
{
    const VEC negative_zero = -(VEC){0};
    return negative_zero + value;
}

TARGET_ATTRS static inline double FN(hsum)(VEC v)
{
    ELEM total = 0;
    for (ptrdiff_t j = 0; j < LANES; j++) total += v[j];
    return (double)total;
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
    return stride != n && count * stride * (ptrdiff_t)sizeof(ELEM) >= CBN_PREFETCH_SPAN;
}

/* the first bytes of the run after p (stride values on) */
TARGET_ATTRS static inline void FN(prefetch_next)(const ELEM *p, ptrdiff_t stride, ptrdiff_t n,
                                                  int write)
{
    ptrdiff_t bytes = n * (ptrdiff_t)sizeof(ELEM);
    if (bytes > CBN_PREFETCH_BYTES) bytes = CBN_PREFETCH_BYTES;
    for (ptrdiff_t off = 0; off < bytes; off += CBN_LINE) {
        if (write) __builtin_prefetch((const char *)(p + stride) + off, 1);
        else __builtin_prefetch((const char *)(p + stride) + off, 0);
    }
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
        const ELEM *q = (const ELEM *)b.x + r * b.x_stride;
        ptrdiff_t i = 0;
        if (far && r + 1 < b.count) FN(prefetch_next)(q, b.x_stride, n, 0);
        for (; i + step <= n; i += step) {
            a0 += FN(load)(q + i);
            a1 += FN(load)(q + i + LANES);
            a2 += FN(load)(q + i + 2 * LANES);
            a3 += FN(load)(q + i + 3 * LANES);
        }
        for (; i + LANES <= n; i += LANES) a0 += FN(load)(q + i);
        for (; i < n; i++) tail += q[i];
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
        const ELEM *q = (const ELEM *)b.x + r * b.x_stride;
        ptrdiff_t i = 0;
        if (far && r + 1 < b.count) FN(prefetch_next)(q, b.x_stride, n, 0);
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
            ELEM u = q[i] - m;
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
        const ELEM *g = (const ELEM *)b.dy + r * b.dy_stride;
        const ELEM *q = (const ELEM *)b.x + r * b.x_stride;
        ptrdiff_t i = 0;
        if (r + 1 < b.count) {
            if (far_dy) FN(prefetch_next)(g, b.dy_stride, n, 0);
            if (far_x) FN(prefetch_next)(q, b.x_stride, n, 0);
        }
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
            ELEM gi = relu ? FN(gate1)(g[i], (q[i] - rs) * ra + rb) : g[i];
            l.d1 += (double)gi;
            l.d2 += (double)(gi * (q[i] - shift));
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
TARGET_ATTRS static inline void FN(stream_span)(const ELEM *o, ptrdiff_t n, int stream,
                                                ptrdiff_t *head, ptrdiff_t *end)
{
    ptrdiff_t h;
    if (!stream) {
        *head = *end = 0;
        return;
    }
    h = (ptrdiff_t)(((CBN_LINE - ((size_t)o % CBN_LINE)) % CBN_LINE) / sizeof(ELEM));
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
    FN(coefs) k;
    for (ptrdiff_t r = 0; r < b.count; r++) {
        if (r == 0 || b.table_step)
            FN(load_coefs)(&k, coef + r * b.table_step, b.table_stride, 3);
        const ELEM *restrict q = (const ELEM *)b.x + r * b.x_stride;
        ELEM *restrict o = (ELEM *)b.out + r * b.out_stride;
        ptrdiff_t i = 0, head, end;
        if (r + 1 < b.count) {
            if (far_x) FN(prefetch_next)(q, b.x_stride, n, 0);
            if (far_out) FN(prefetch_next)(o, b.out_stride, n, 1);
        }
        FN(stream_span)(o, n, stream, &head, &end);
        for (; i < head; i++) o[i] = FN(affine1)(q[i], k.s[0], k.s[1], k.s[2], relu);
        for (; i < end; i += LANES) {
            VEC v = FN(affine)(FN(load)(q + i), k.v[0], k.v[1], k.v[2], relu);
            STREAM_STORE(o + i, v);
        }
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            FN(store)(o + i, FN(affine)(FN(load)(q + i), k.v[0], k.v[1], k.v[2], relu));
            FN(store)(o + i + LANES,
                      FN(affine)(FN(load)(q + i + LANES), k.v[0], k.v[1], k.v[2], relu));
        }
        for (; i < n; i++) o[i] = FN(affine1)(q[i], k.s[0], k.s[1], k.s[2], relu);
    }
    if (stream) CBN_SFENCE();
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
    FN(coefs) k, z;   /* {shift, k_dy, k_x, k_0} and the ReLU's {shift, scale, offset} */
    for (ptrdiff_t r = 0; r < b.count; r++) {
        if (r == 0 || b.table_step) {
            FN(load_coefs)(&k, coef + r * b.table_step, ts, 4);
            FN(load_coefs)(&z, relu ? relu_coef + r * b.table_step : NULL, ts, 3);
        }
        const ELEM *restrict g = (const ELEM *)b.dy + r * b.dy_stride;
        const ELEM *restrict q = (const ELEM *)b.x + r * b.x_stride;
        ELEM *restrict o = (ELEM *)b.out + r * b.out_stride;
        const ELEM *zs = relu ? z.s : NULL;
        ptrdiff_t i = 0, head, end;
        if (r + 1 < b.count) {
            if (far_dy) FN(prefetch_next)(g, b.dy_stride, n, 0);
            if (far_x) FN(prefetch_next)(q, b.x_stride, n, 0);
            if (far_out) FN(prefetch_next)(o, b.out_stride, n, 1);
        }
        FN(stream_span)(o, n, stream, &head, &end);
        for (; i < head; i++) o[i] = FN(grad_input1)(g[i], q[i], k.s, zs, 1, fixed);
        for (; i < end; i += LANES) {
            VEC v = FN(grad_input)(FN(load)(g + i), FN(load)(q + i), &k, relu ? &z : NULL, fixed);
            STREAM_STORE(o + i, v);
        }
        for (; i + LANES <= n; i += LANES)
            FN(store)(o + i, FN(grad_input)(FN(load)(g + i), FN(load)(q + i), &k,
                                            relu ? &z : NULL, fixed));
        for (; i < n; i++) o[i] = FN(grad_input1)(g[i], q[i], k.s, zs, 1, fixed);
    }
    if (stream) CBN_SFENCE();
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
    for (ptrdiff_t r = 0; r < b.count; r++) {
        const ELEM *restrict q = (const ELEM *)b.x + r * b.x_stride;
        ELEM *restrict o = (ELEM *)b.out + r * b.out_stride;
        ptrdiff_t c = 0;
        if (stream) {
            ptrdiff_t head, end;
            FN(stream_span)(o, C, stream, &head, &end);
            for (; c < head; c++) o[c] = FN(affine1)(q[c], shift[c], scale[c], offset[c], relu);
            for (; c < end; c += LANES) {
                VEC v = FN(affine)(FN(load)(q + c), FN(load)(shift + c), FN(load)(scale + c),
                                   FN(load)(offset + c), relu);
                STREAM_STORE(o + c, v);
            }
        }
        for (; c + LANES <= C; c += LANES) {
            VEC v = (FN(load)(q + c) - FN(load)(shift + c)) * FN(load)(scale + c)
                    + FN(load)(offset + c);
            FN(store)(o + c, relu ? FN(relu)(v) : v);
        }
        for (; c < C; c++) o[c] = FN(affine1)(q[c], shift[c], scale[c], offset[c], relu);
    }
    if (stream) CBN_SFENCE();
}

/* Scalar math: grad_input1 for every value of the block's rows, channel c's
 * coefficients at k + c and relu + c (flags: CBN_STREAM, CBN_FIXED) */
TARGET_ATTRS static void FN(rows_grad_input)(const cbn_block *block, const ELEM *k, const ELEM *relu)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t C = b.length, ts = b.table_stride;
    const int stream = b.flags & CBN_STREAM, fixed = b.flags & CBN_FIXED;
    const ELEM *restrict shift = k, *restrict k_dy = k + ts, *restrict k_x = k + 2 * ts;
    const ELEM *restrict k_0 = k + 3 * ts;
    const ELEM *rs = relu, *ra = relu ? relu + ts : NULL, *rb = relu ? relu + 2 * ts : NULL;
    for (ptrdiff_t r = 0; r < b.count; r++) {
        const ELEM *restrict g = (const ELEM *)b.dy + r * b.dy_stride;
        const ELEM *restrict q = (const ELEM *)b.x + r * b.x_stride;
        ELEM *restrict o = (ELEM *)b.out + r * b.out_stride;
        ptrdiff_t c = 0, head, end;
        FN(stream_span)(o, C, stream, &head, &end);
        for (; c < head; c++)
            o[c] = FN(grad_input1)(g[c], q[c], k + c, relu ? relu + c : NULL, ts, fixed);
        for (; c + LANES <= C; c += LANES) {
            VEC qv = FN(load)(q + c), gv = FN(load)(g + c);
            if (relu)
                gv = FN(gate)(gv, (qv - FN(load)(rs + c)) * FN(load)(ra + c) + FN(load)(rb + c));
            VEC v = fixed ? gv * FN(load)(k_dy + c)
                          : gv * FN(load)(k_dy + c) + (qv - FN(load)(shift + c)) * FN(load)(k_x + c)
                                + FN(load)(k_0 + c);
            if (c < end)
                STREAM_STORE(o + c, v);
            else
                FN(store)(o + c, v);
        }
        for (; c < C; c++)
            o[c] = FN(grad_input1)(g[c], q[c], k + c, relu ? relu + c : NULL, ts, fixed);
    }
    if (stream) CBN_SFENCE();
}

/* Row reductions into per-channel accumulators of type ELEM. Four rows are
 * combined before an accumulator is touched: its load and store, not the
 * arithmetic, bound a one-row-at-a-time loop. */

/* Scalar math: s1[c] += sum(x[c] - m[c]), s2[c] += sum((x[c] - m[c])^2) over the block's rows */
TARGET_ATTRS static void FN(rows_centered)(const cbn_block *block, const ELEM *restrict m,
                                          ELEM *restrict s1, ELEM *restrict s2)
{
    const cbn_block b = *block;  /* a copy: stores through ELEM pointers cannot alias it */
    const ptrdiff_t C = b.length, stride = b.x_stride;
    const ELEM *x = (const ELEM *)b.x;
    ptrdiff_t r = 0;
    for (; r + 4 <= b.count; r += 4) {
        const ELEM *restrict q0 = x + r * stride, *restrict q1 = q0 + stride;
        const ELEM *restrict q2 = q1 + stride, *restrict q3 = q2 + stride;
        for (ptrdiff_t c = 0; c < C; c++) {
            ELEM u0 = q0[c] - m[c], u1 = q1[c] - m[c], u2 = q2[c] - m[c], u3 = q3[c] - m[c];
            s1[c] += (u0 + u1) + (u2 + u3);
            s2[c] += (u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3);
        }
    }
    for (; r < b.count; r++) {
        const ELEM *restrict q = x + r * stride;
        for (ptrdiff_t c = 0; c < C; c++) {
            ELEM u = q[c] - m[c];
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
    const ELEM *dy = (const ELEM *)b.dy, *x = (const ELEM *)b.x;
    ptrdiff_t r = 0;
    if (relu) {  /* gating breaks the four-row combination's simple form */
        for (; r < b.count; r++) {
            const ELEM *restrict g = dy + r * ds, *restrict q = x + r * xs;
            for (ptrdiff_t c = 0; c < C; c++) {
                ELEM gc = FN(gate1)(g[c], (q[c] - relu[c]) * relu[ts + c] + relu[2 * ts + c]);
                s1[c] += gc;
                s2[c] += gc * (q[c] - shift[c]);
            }
        }
        return;
    }
    for (; r + 4 <= b.count; r += 4) {
        const ELEM *restrict g0 = dy + r * ds, *restrict g1 = g0 + ds;
        const ELEM *restrict g2 = g1 + ds, *restrict g3 = g2 + ds;
        const ELEM *restrict q0 = x + r * xs, *restrict q1 = q0 + xs;
        const ELEM *restrict q2 = q1 + xs, *restrict q3 = q2 + xs;
        for (ptrdiff_t c = 0; c < C; c++) {
            ELEM h = shift[c];
            s1[c] += (g0[c] + g1[c]) + (g2[c] + g3[c]);
            s2[c] += (g0[c] * (q0[c] - h) + g1[c] * (q1[c] - h))
                     + (g2[c] * (q2[c] - h) + g3[c] * (q3[c] - h));
        }
    }
    for (; r < b.count; r++) {
        const ELEM *restrict g = dy + r * ds, *restrict q = x + r * xs;
        for (ptrdiff_t c = 0; c < C; c++) {
            s1[c] += g[c];
            s2[c] += g[c] * (q[c] - shift[c]);
        }
    }
}

#include "cbn_rows_merge.h"

#undef LANES
#undef LINE_VALUES
#undef VEC
#undef IVEC
#undef ELEM
#undef ELEM_INT
#undef STREAM_STORE
#undef VEC_BYTES
#undef TARGET_ATTRS
#undef FN
