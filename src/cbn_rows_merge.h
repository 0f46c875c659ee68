/*
 * Channels-last statistics: the per-channel finishing of one block of rows
 * that rows_centered reduced (see _block_moments.pxd, rows_moments). It runs
 * once per block of at most MAX_ROW_BLOCK rows for every channel, as often
 * as the reduction itself touches a channel's accumulators every 64 rows, so
 * the loops are written without branches or calls: they vectorise over the
 * channels. Included by cbn_loops_impl.h (vector instruction sets) and by
 * cbn_loops_scalar.h (the reference), with ELEM, FN and TARGET_ATTRS set.
 */

/* Scalar math: over the channels of a block of nb rows with sums s1 = sum(x - shift), s2 = sum((x - shift)^2):
 *   bit 0: some channel is not well centred, s2 > amplification * (s2 - s1^2 / nb)
 *          (or NaN: the block is redone, and stays NaN); well_centred in
 *          _block_moments.pxd is this test for one channel-first block;
 *   bit 1: some channel's sums are not finite (x - x is 0 only for finite x). */
TARGET_ATTRS static int FN(rows_block_flags)(ptrdiff_t C, const ELEM *s1, const ELEM *s2,
                                             double nb, double amplification)
{
    /* bitwise, not short-circuit, operators: the loop has no branch */
    long long off_centre = 0, not_finite = 0;
    for (ptrdiff_t c = 0; c < C; c++) {
        double a = s1[c], q = s2[c];
        off_centre |= (q != 0) & !(q <= amplification * (q - a * a / nb));
        not_finite |= ((a - a) != 0) | ((q - q) != 0);
    }
    return (int)(off_centre | (not_finite << 1));
}

/* Scalar math, channel c (its sums finite), Chan et al.'s merge of the block
 * into (count, mean, m2), with w = nb / total and v = count * nb / total:
 *   mb = shift + s1 / nb,  m2b = max(s2 - s1^2 / nb, 0)
 *   delta = mb - mean;  mean += delta * w;  m2 += m2b + delta^2 * v */
TARGET_ATTRS static void FN(rows_block_merge)(ptrdiff_t C, const ELEM *shift, const ELEM *s1,
                                              const ELEM *s2, double nb, double w, double v,
                                              double *mean, double *m2)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        double a = s1[c];
        double mb = (double)shift[c] + a / nb;
        double m2b = (double)s2[c] - a * a / nb;
        double delta = mb - mean[c];
        m2b = m2b > 0.0 ? m2b : 0.0;
        mean[c] = mean[c] + delta * w;
        m2[c] = m2[c] + m2b + delta * delta * v;
    }
}
