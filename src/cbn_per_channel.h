/*
 * Per-channel work of a kernel call: the coefficients of the affine maps the
 * loops apply, computed in float64 from the statistics and rounded once to
 * the type computed in (ELEM), the running statistics' update, and the
 * per-channel totals of position sums (channels-first runs as rows). Loops
 * over channels without calls or branches, so that they vectorise: a square
 * root and a division per channel cost ~6 ns one channel at a time (they
 * share one unit), a quarter of that four at a time with AVX2
 * (asv_bench/NOTES.md section 23).
 *
 * Included by cbn_loops_impl.h (vector instruction sets) and by
 * cbn_loops_scalar.h (the reference), with ELEM, FN and COEF_ATTRS set.
 * COEF_ATTRS never enables FMA: a contracted a * b + c would round
 * differently from one instruction set to the next, and these values are
 * the layer's state (IEEE square roots and divisions are exact, and the
 * sums are added in an order the source fixes, so every set gives the same
 * bits). Tables are (rows, C): row j of channel c at [j * C + c].
 */

/* GCC: no trapping math in these functions (clang's default), or a
 * selection whose arms convert or compare floating-point values is not
 * if-converted and the loops do not vectorise. Not for the whole build: it
 * changed the code of the run loops too (a 16x16x8x8 output pass 0.1 us
 * slower). No floating-point exception flag is ever read. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

/* The loops' functions are not inlined into their callers: the compiler
 * keeps the promise of their restrict-qualified pointers only within a
 * function compiled on its own, and without it the loops need more run-time
 * overlap checks than it will emit before vectorising. */
#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

/* range(..., weighted, biased) with whether weight and bias are given as
 * constants (the loops then have no conditional load) */
#define BY_PARAMETERS(range, ...)                                                              \
    do {                                                                                       \
        if (weight && bias) range(__VA_ARGS__, 1, 1);                                          \
        else if (weight) range(__VA_ARGS__, 1, 0);                                             \
        else if (bias) range(__VA_ARGS__, 0, 1);                                               \
        else range(__VA_ARGS__, 0, 0);                                                         \
    } while (0)

/* ELEM's largest finite value, as a double */
#define COEF_MAX (sizeof(ELEM) == sizeof(double) ? DBL_MAX : (double)FLT_MAX)

/* v rounded to ELEM, finite values kept finite: a scale past ELEM's range
 * (eps -> 0 on a constant channel: invstd ~ 1 / sqrt(eps)) becomes its
 * largest value, so (x - shift) * scale is 0, not 0 * inf = NaN; NaN stays
 * NaN (both comparisons false) */
COEF_ATTRS static inline ELEM FN(clamped)(double v)
{
    v = v < -COEF_MAX ? -COEF_MAX : v;
    return (ELEM)(v > COEF_MAX ? COEF_MAX : v);
}

/* 0 when the bound max_dev on |x - mean| is past half ELEM's range (values
 * near +-3e38 in float32), else the mean rounded to ELEM: the shift K of
 * (x - K) * scale, so that x - K is exact near the mean. With K = 0, x *
 * scale cannot overflow, and the mean is within 2 sqrt(count) standard
 * deviations of 0, so few digits are lost to the cancellation with the
 * offset. past: max_dev > half the range, given as a comparison the caller
 * can make without a square root. */
COEF_ATTRS static inline ELEM FN(shift_unless)(int past, double mean)
{
    return past ? (ELEM)0 : (ELEM)mean;
}

/* Scalar math, channel c: y = gamma * (x - mean) * invstd + beta written as
 * (x - shift) * scale + offset, with scale = gamma * invstd given:
 *   shift = the mean rounded to ELEM, or 0 when the bound dev2 on
 *           (x - mean)^2 (M2) says x - mean could overflow (shift_unless:
 *           dev2 > (half the range)^2, which is inf for double, so there
 *           only dev2 = inf)
 *   coef[c], coef[C + c], coef[2C + c] = shift, clamped(scale),
 *                                        beta + (shift - mean) * scale
 * (offset absorbs the rounding of the mean; a constant channel gives
 * exactly beta) */
COEF_ATTRS static inline void FN(affine_coefficients1)(ELEM *coef, ptrdiff_t C, ptrdiff_t c,
                                                       double mean, double scale, double beta,
                                                       double dev2)
{
    const double half = 0.5 * COEF_MAX;
    const ELEM shift = FN(shift_unless)((dev2 > half * half) | (dev2 > DBL_MAX), mean);
    coef[c] = shift;
    coef[C + c] = FN(clamped)(scale);
    coef[2 * C + c] = (ELEM)(beta + ((double)shift - mean) * scale);
}

/* Scalar math, channels c0 <= c < c1, from mean[c - c0] and m2[c - c0] over
 * count values:
 *   var = m2 / count;  invstd = 1 / sqrt(var + eps)
 *   stats[c], stats[C + c], stats[2C + c] = mean, invstd, var
 *   affine_coefficients1(mean, gamma * invstd, beta, m2)
 * with gamma = weight[c] (1 without weight), beta = bias[c] (0 without).
 * (weighted, biased: whether weight and bias are given, constants in each
 * instance: a loop with a conditional load does not vectorise) */
COEF_ATTRS static inline __attribute__((always_inline)) void FN(train_range)(
    ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, const double *CBN_RESTRICT mean,
    const double *CBN_RESTRICT m2, double count, double eps,
    const ELEM *CBN_RESTRICT weight, const ELEM *CBN_RESTRICT bias, double *CBN_RESTRICT stats,
    ELEM *CBN_RESTRICT coef, int weighted, int biased)
{
    for (ptrdiff_t c = c0; c < c1; c++) {
        const double mu = mean[c - c0], q = m2[c - c0];
        const double var = q / count, invstd = 1.0 / sqrt(var + eps);
        stats[c] = mu;
        stats[C + c] = invstd;
        stats[2 * C + c] = var;
        FN(affine_coefficients1)(coef, C, c, mu, (weighted ? (double)weight[c] : 1.0) * invstd,
                                 biased ? (double)bias[c] : 0.0, q);
    }
}

COEF_ATTRS static NOINLINE void FN(train_coefficients)(
    ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, const double *CBN_RESTRICT mean,
    const double *CBN_RESTRICT m2, double count, double eps, const ELEM *CBN_RESTRICT weight,
    const ELEM *CBN_RESTRICT bias, double *CBN_RESTRICT stats, ELEM *CBN_RESTRICT coef)
{
    BY_PARAMETERS(FN(train_range), C, c0, c1, mean, m2, count, eps, weight, bias, stats, coef);
}

/* Scalar math, channels c0 <= c < c1, from given stats = [mean, var] (2, C)
 * with count values behind them (0 when they are not x's own):
 *   affine_coefficients1(mean, gamma * (1 / sqrt(var + eps)), beta, var * count)
 * (weighted, biased: as train_range) */
COEF_ATTRS static inline __attribute__((always_inline)) void FN(given_range)(
    ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, const double *CBN_RESTRICT stats, double count,
    double eps, const ELEM *CBN_RESTRICT weight, const ELEM *CBN_RESTRICT bias,
    ELEM *CBN_RESTRICT coef, int weighted, int biased)
{
    for (ptrdiff_t c = c0; c < c1; c++)
        FN(affine_coefficients1)(coef, C, c, stats[c],
                                 (weighted ? (double)weight[c] : 1.0)
                                     * (1.0 / sqrt(stats[C + c] + eps)),
                                 biased ? (double)bias[c] : 0.0, stats[C + c] * count);
}

COEF_ATTRS static NOINLINE void FN(given_coefficients)(
    ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, const double *CBN_RESTRICT stats, double count,
    double eps, const ELEM *CBN_RESTRICT weight, const ELEM *CBN_RESTRICT bias,
    ELEM *CBN_RESTRICT coef)
{
    BY_PARAMETERS(FN(given_range), C, c0, c1, stats, count, eps, weight, bias, coef);
}

/* Channels c0 <= c < c1 of dx = g * k_dy + (x - shift) * k_x + k_0, into
 * coef (4, C) [shift, k_dy, k_x, k_0], from stats [mean, invstd] (2, C),
 * gamma, and with batch statistics sums [sum(g), sum(g * (x - mean))] (2, C)
 * over count values (NULL with fixed statistics).
 *
 * With batch statistics (training), xhat = (x - mean) * invstd and M = count:
 *   dx = gamma * invstd * (g - sum(g) / M - xhat * sum(g * xhat) / M)
 *      = g * k_dy - (x - mean) * c3 - k_dy * sum(g) / M
 *   with k_dy = gamma * invstd and c3 = sum(g * (x - mean)) / M * invstd^2 * k_dy;
 *   x - mean = (x - shift) + (shift - mean) gives k_x = -c3 and
 *   k_0 = -k_dy * sum(g) / M + c3 * (mean - shift).
 * With fixed statistics (eval): dx = gamma * invstd * g (k_x = k_0 = 0).
 * sum(g * (x - mean)) is taken with the exact (float64) mean; the shift's
 * bound on |x - mean| is sqrt(M2 + count * eps) = sqrt(count) / invstd; the
 * sums come first in c3, so that on a constant channel (sum(g * (x - mean))
 * = 0) it stays 0 however large invstd^2 (eps -> 0).
 *
 * Scalar math, channel c:
 *   k_dy = gamma * invstd
 *   coef[c], coef[C + c] = shift_unless(sqrt(count) / invstd > half the range, mean),
 *                          clamped(k_dy)
 *   coef[2C + c], coef[3C + c] = clamped(-c3), clamped(-k_dy * sum(g) / M + c3 * (mean - shift))
 *                                with batch statistics, else 0, 0 */
COEF_ATTRS static inline __attribute__((always_inline)) void FN(grad_input_range)(
    ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, const double *CBN_RESTRICT stats,
    const double *CBN_RESTRICT sums, double count, const ELEM *CBN_RESTRICT weight,
    ELEM *CBN_RESTRICT coef, int weighted)
{
    const double root = sqrt(count), half = 0.5 * COEF_MAX;
    for (ptrdiff_t c = c0; c < c1; c++) {
        const double mean = stats[c], invstd = stats[C + c];
        const double k_dy = (weighted ? (double)weight[c] : 1.0) * invstd;
        const ELEM shift = FN(shift_unless)(root / invstd > half, mean);
        coef[c] = shift;
        coef[C + c] = FN(clamped)(k_dy);
        if (sums) {
            const double c3 = sums[C + c] / count * invstd * invstd * k_dy;
            coef[2 * C + c] = FN(clamped)(-c3);
            coef[3 * C + c] = FN(clamped)(-k_dy * sums[c] / count + c3 * (mean - (double)shift));
        } else {
            coef[2 * C + c] = 0;
            coef[3 * C + c] = 0;
        }
    }
}

/* (weighted, and sums given or not: constants in each instance, as train_range) */
COEF_ATTRS static NOINLINE void FN(grad_input_coefficients)(
    ptrdiff_t C, ptrdiff_t c0, ptrdiff_t c1, const double *CBN_RESTRICT stats,
    const double *CBN_RESTRICT sums, double count, const ELEM *CBN_RESTRICT weight,
    ELEM *CBN_RESTRICT coef)
{
#define CBN_GRAD_RANGE(s, w) FN(grad_input_range)(C, c0, c1, stats, s, count, weight, coef, w)
    if (sums && weight) CBN_GRAD_RANGE(sums, 1);
    else if (sums) CBN_GRAD_RANGE(sums, 0);
    else if (weight) CBN_GRAD_RANGE(NULL, 1);
    else CBN_GRAD_RANGE(NULL, 0);
#undef CBN_GRAD_RANGE
}

/* Scalar math, every channel c, in float64 and rounded once to ELEM:
 *   m = (1 - momentum) * running_mean[c] + momentum * mean[c]
 *   v = (1 - momentum) * running_var[c] + momentum * (var[c] * var_scale)
 *   kept[c] = m or v is not finite (NaN/Inf batch statistics, or values past
 *             ELEM's range): the channel keeps its running values
 *   else running_mean[c], running_var[c] = m, v
 * Returns how many channels are kept. */
COEF_ATTRS static NOINLINE ptrdiff_t FN(moved_running)(
    ptrdiff_t C, ELEM *CBN_RESTRICT running_mean, ELEM *CBN_RESTRICT running_var,
    const double *CBN_RESTRICT mean, const double *CBN_RESTRICT var, double var_scale,
    double momentum, unsigned char *CBN_RESTRICT kept)
{
    ptrdiff_t count = 0;
    for (ptrdiff_t c = 0; c < C; c++) {
        const ELEM m = (ELEM)((1.0 - momentum) * running_mean[c] + momentum * mean[c]);
        const ELEM v = (ELEM)((1.0 - momentum) * running_var[c] + momentum * (var[c] * var_scale));
        /* (|m| <= max is false for NaN) */
        const int keep = !((fabs((double)m) <= COEF_MAX) & (fabs((double)v) <= COEF_MAX));
        kept[c] = (unsigned char)keep;
        count += keep;
        running_mean[c] = keep ? running_mean[c] : m;
        running_var[c] = keep ? running_var[c] : v;
    }
    return count;
}

/* Scalar math, channel c of C, from per-position sums of long rows of
 * copies * C channels * S positions (position i of channel c in copy j at
 * (j * C + c) * S + i):
 *   t1[c * stride] = sum of s1 over the channel's positions, t2 likewise,
 *   in float64: position i of each copy, copy after copy, added into partial
 *   sum i % 8, then the eight pairwise (independent chains, not one chain of
 *   S additions); with S = 1 that is the copies in order, a loop over the
 *   channels */
COEF_ATTRS static NOINLINE void FN(position_totals)(ptrdiff_t C, ptrdiff_t S, ptrdiff_t copies,
                                                    const ELEM *CBN_RESTRICT s1,
                                                    const ELEM *CBN_RESTRICT s2,
                                                    double *CBN_RESTRICT t1,
                                                    double *CBN_RESTRICT t2, ptrdiff_t stride)
{
    if (S == 1) {
        for (ptrdiff_t c = 0; c < C; c++) t1[c * stride] = t2[c * stride] = 0.0;
        for (ptrdiff_t copy = 0; copy < copies; copy++)
            for (ptrdiff_t c = 0; c < C; c++) {
                t1[c * stride] += (double)s1[copy * C + c];
                t2[c * stride] += (double)s2[copy * C + c];
            }
        return;
    }
    for (ptrdiff_t c = 0; c < C; c++) {
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (ptrdiff_t copy = 0; copy < copies; copy++) {
            const ELEM *p = s1 + (copy * C + c) * S, *q = s2 + (copy * C + c) * S;
            ptrdiff_t i = 0;
            for (; i + 8 <= S; i += 8)
                for (int j = 0; j < 8; j++) {
                    a[j] += (double)p[i + j];
                    b[j] += (double)q[i + j];
                }
            for (int j = 0; i < S; i++, j++) {
                a[j] += (double)p[i];
                b[j] += (double)q[i];
            }
        }
        t1[c * stride] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        t2[c * stride] = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#undef BY_PARAMETERS
#undef COEF_MAX
#undef NOINLINE
