/*
 * The reference loops: every loop of cbn_loops_impl.h in plain C, one value
 * at a time, with the same arithmetic per value (x - shift before the scale,
 * ReLU and its gate, the coefficient tables read table_stride apart) and the
 * same merge of the sums into float64 every CBN_ADDS_PER_LANE additions.
 * They run where the compiler has no GCC/Clang vector extensions (MSVC), and
 * anywhere with CBN_LOOPS=scalar; the tests compare the vector loops with
 * them. Streaming stores are a vector-loop matter: these store plainly.
 *
 * Included once per data type with CBN_IMPL_KIND set (see cbn_loops_impl.h:
 * DATA is the data's storage type, ELEM the type computed in; 2-byte data
 * are converted one value at a time by cbn_half.h, and outputs past their
 * range, +-inf from finite inputs, reported through the block's overflow
 * flag).
 */
#if CBN_IMPL_KIND == CBN_F32
#define ELEM float
#define DATA float
#define FN(name) cbn_##name##_f32_scalar
#define GET(p) (*(p))
#define PUT(p, v) (*(p) = (v))
#elif CBN_IMPL_KIND == CBN_F64
#define ELEM double
#define DATA double
#define FN(name) cbn_##name##_f64_scalar
#define GET(p) (*(p))
#define PUT(p, v) (*(p) = (v))
#elif CBN_IMPL_KIND == CBN_F16
#define ELEM float
#define DATA cbn_f16
#define FN(name) cbn_##name##_f16_scalar
#define GET(p) cbn_f16_to_float(*(p))
#define PUT(p, v) (*(p) = cbn_f16_from_float(v))
#define OVERFLOW_LIMIT CBN_F16_OVERFLOW
#else
#define ELEM float
#define DATA cbn_bf16
#define FN(name) cbn_##name##_bf16_scalar
#define GET(p) cbn_bf16_to_float(*(p))
#define PUT(p, v) (*(p) = cbn_bf16_from_float(v))
#define OVERFLOW_LIMIT cbn_bf16_overflow()
#endif
#define HALF (CBN_IMPL_KIND == CBN_F16 || CBN_IMPL_KIND == CBN_BF16)

/* *p = v; *over set when v is +-inf once stored (2-byte data) unless
 * excused: a value v was computed from elementwise (x; dy, and x with batch
 * statistics) is +-inf, told before an in-place output writes over it */
static inline void FN(out1)(DATA *p, ELEM v, int excused, int *over)
{
#if HALF
    *over |= (fabsf(v) >= OVERFLOW_LIMIT) & !excused;
#else
    (void)excused;
    (void)over;
#endif
    PUT(p, v);
}

/* v is +-inf (2-byte data; else 0, the tally's excuse unused) */
static inline int FN(infinite1)(ELEM v)
{
#if HALF
    return isinf(v) != 0;
#else
    (void)v;
    return 0;
#endif
}

/* dx's excuse: dy +-inf, or with batch statistics x (fixed, eval: dx =
 * g * k_dy, which x can only gate to 0) */
static inline int FN(dx_excused)(ELEM dy, ELEM x, int fixed)
{
    return FN(infinite1)(dy) || (!fixed && FN(infinite1)(x));
}

static inline void FN(report)(const cbn_block *b, int over)
{
    if (over && b->overflow != NULL) CBN_SET_FLAG(b->overflow);
}

/* (x - shift) * scale + offset, then max(v, 0) with relu (NaN kept) */
static inline ELEM FN(affine1)(ELEM x, ELEM shift, ELEM scale, ELEM offset, int relu)
{
    ELEM v = (x - shift) * scale + offset;
    return relu && v < 0 ? 0 : v;
}

/* g = dy where the fused ReLU's input z = (x - r_shift) * r_scale + r_offset
 * was positive, else 0 (NaN z stops it too); relu: a channel's {r_shift,
 * r_scale, r_offset}, ts apart, or NULL for no ReLU */
static inline ELEM FN(gated)(ELEM dy, ELEM x, const ELEM *relu, ptrdiff_t ts)
{
    return relu && !((x - relu[0]) * relu[ts] + relu[2 * ts] > 0) ? 0 : dy;
}

/* dx = g * k_dy + (x - shift) * k_x + k_0 (fixed: g * k_dy), g = gated(dy);
 * k: a channel's coefficients, ts apart */
static inline ELEM FN(grad_input1)(ELEM dy, ELEM x, const ELEM *k, const ELEM *relu,
                                   ptrdiff_t ts, int fixed)
{
    ELEM g = FN(gated)(dy, x, relu, ts);
    return fixed ? g * k[ts] : g * k[ts] + (x - k[0]) * k[2 * ts] + k[3 * ts];
}

/* sum of x over the block's runs, in ELEM (it only centres the next pass) */
static ELEM FN(runs_sum)(const cbn_block *b)
{
    ELEM total = 0;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        for (ptrdiff_t i = 0; i < b->length; i++) total += GET(q + i);
    }
    return total;
}

/* *s1 += sum(x - m), *s2 += sum((x - m)^2), merged into float64 every
 * CBN_ADDS_PER_LANE values */
static void FN(runs_centered)(const cbn_block *b, ELEM m, double *s1, double *s2)
{
    ELEM a1 = 0, a2 = 0;
    double d1 = 0.0, d2 = 0.0;
    int adds = 0;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        for (ptrdiff_t i = 0; i < b->length; i++) {
            ELEM u = GET(q + i) - m;
            a1 += u;
            a2 += u * u;
            if (++adds == CBN_ADDS_PER_LANE) {
                d1 += a1;
                d2 += a2;
                a1 = a2 = 0;
                adds = 0;
            }
        }
    }
    *s1 += d1 + a1;
    *s2 += d2 + a2;
}

/* *s1 += sum(g), *s2 += sum(g * (x - shift)), g = dy gated by relu (the
 * channel's {shift, scale, offset}, table_stride apart, or NULL) */
static void FN(runs_grad_sums)(const cbn_block *b, ELEM shift, const ELEM *relu, double *s1,
                               double *s2)
{
    const ptrdiff_t ts = b->table_stride;
    ELEM a1 = 0, a2 = 0;
    double d1 = 0.0, d2 = 0.0;
    int adds = 0;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *g = (const DATA *)b->dy + r * b->dy_stride;
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        for (ptrdiff_t i = 0; i < b->length; i++) {
            const ELEM qi = GET(q + i), gi = FN(gated)(GET(g + i), qi, relu, ts);
            a1 += gi;
            a2 += gi * (qi - shift);
            if (++adds == CBN_ADDS_PER_LANE) {
                d1 += a1;
                d2 += a2;
                a1 = a2 = 0;
                adds = 0;
            }
        }
    }
    *s1 += d1 + a1;
    *s2 += d2 + a2;
}

/* affine1 over the block's runs, run r with the coefficients at
 * coef + r * table_step */
static void FN(runs_affine)(const cbn_block *b, const ELEM *coef)
{
    int over = 0;
    const ptrdiff_t ts = b->table_stride;
    const int relu = b->flags & CBN_RELU;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const ELEM *k = coef + r * b->table_step;
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        DATA *o = (DATA *)b->out + r * b->out_stride;
        for (ptrdiff_t i = 0; i < b->length; i++) {
            const ELEM x = GET(q + i);
            FN(out1)(o + i, FN(affine1)(x, k[0], k[ts], k[2 * ts], relu), FN(infinite1)(x),
                     &over);
        }
    }
    FN(report)(b, over);
}

/* grad_input1 over the block's runs, run r with the coefficients at
 * coef + r * table_step (relu_coef likewise) */
static void FN(runs_grad_input)(const cbn_block *b, const ELEM *coef, const ELEM *relu_coef)
{
    int over = 0;
    const ptrdiff_t ts = b->table_stride;
    const int fixed = b->flags & CBN_FIXED;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const ELEM *k = coef + r * b->table_step;
        const ELEM *relu = relu_coef ? relu_coef + r * b->table_step : NULL;
        const DATA *g = (const DATA *)b->dy + r * b->dy_stride;
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        DATA *o = (DATA *)b->out + r * b->out_stride;
        for (ptrdiff_t i = 0; i < b->length; i++) {
            const ELEM dy = GET(g + i), x = GET(q + i);
            FN(out1)(o + i, FN(grad_input1)(dy, x, k, relu, ts, fixed),
                     FN(dx_excused)(dy, x, fixed), &over);
        }
    }
    FN(report)(b, over);
}

/* affine1 over the block's rows, channel c's coefficients at k + c */
static void FN(rows_affine)(const cbn_block *b, const ELEM *k)
{
    int over = 0;
    const ptrdiff_t ts = b->table_stride;
    const int relu = b->flags & CBN_RELU;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        DATA *o = (DATA *)b->out + r * b->out_stride;
        for (ptrdiff_t c = 0; c < b->length; c++) {
            const ELEM x = GET(q + c);
            FN(out1)(o + c, FN(affine1)(x, k[c], k[ts + c], k[2 * ts + c], relu),
                     FN(infinite1)(x), &over);
        }
    }
    FN(report)(b, over);
}

/* grad_input1 over the block's rows, channel c's coefficients at k + c and
 * relu + c */
static void FN(rows_grad_input)(const cbn_block *b, const ELEM *k, const ELEM *relu)
{
    int over = 0;
    const ptrdiff_t ts = b->table_stride;
    const int fixed = b->flags & CBN_FIXED;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *g = (const DATA *)b->dy + r * b->dy_stride;
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        DATA *o = (DATA *)b->out + r * b->out_stride;
        for (ptrdiff_t c = 0; c < b->length; c++) {
            const ELEM dy = GET(g + c), x = GET(q + c);
            FN(out1)(o + c, FN(grad_input1)(dy, x, k + c, relu ? relu + c : NULL, ts, fixed),
                     FN(dx_excused)(dy, x, fixed), &over);
        }
    }
    FN(report)(b, over);
}

/* s1[c] += sum(x[c] - m[c]), s2[c] += sum((x[c] - m[c])^2) over the block's rows */
static void FN(rows_centered)(const cbn_block *b, const ELEM *m, ELEM *s1, ELEM *s2)
{
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        for (ptrdiff_t c = 0; c < b->length; c++) {
            ELEM u = GET(q + c) - m[c];
            s1[c] += u;
            s2[c] += u * u;
        }
    }
}

/* s1[c] += sum(g[c]), s2[c] += sum(g[c] * (x[c] - shift[c])), g = dy gated by
 * relu (channel c's coefficients at relu + c, table_stride apart, or NULL) */
static void FN(rows_grad_sums)(const cbn_block *b, const ELEM *shift, const ELEM *relu,
                               ELEM *s1, ELEM *s2)
{
    const ptrdiff_t ts = b->table_stride;
    for (ptrdiff_t r = 0; r < b->count; r++) {
        const DATA *g = (const DATA *)b->dy + r * b->dy_stride;
        const DATA *q = (const DATA *)b->x + r * b->x_stride;
        for (ptrdiff_t c = 0; c < b->length; c++) {
            const ELEM qc = GET(q + c), gc = FN(gated)(GET(g + c), qc, relu ? relu + c : NULL, ts);
            s1[c] += gc;
            s2[c] += gc * (qc - shift[c]);
        }
    }
}

#if !HALF
#define TARGET_ATTRS
#include "cbn_rows_merge.h"
#undef TARGET_ATTRS
#define COEF_ATTRS
#include "cbn_per_channel.h"
#undef COEF_ATTRS
#endif

#undef ELEM
#undef DATA
#undef GET
#undef PUT
#undef HALF
#undef OVERFLOW_LIMIT
#undef FN
