/*
 * The loops of cbn_loops.h for one element type and instruction set; included
 * once per instantiation with these defined:
 *   T      float or double          IT   the integer type of T's size
 *   VB     vector bytes (16 or 32)  ATTR function attributes (target ISA)
 *   F(name)       the instantiation's name for a loop
 *   STREAM(p, v)  a non-temporal store of vector v at p
 *
 * Channels-first loops take nruns runs of n values (run r at p + r * stride);
 * channels-last loops take nrows rows of C channels (row r at x + r * stride).
 *
 * ReLU fused after batch norm (relu != NULL or flags & CBN_RELU): the forward
 * writes max(z, 0) with z = (x - shift) * scale + offset; the backward does
 * not store a mask but recomputes z from x with the forward's coefficients
 * (relu = {shift, scale, offset} per run, or three C-long arrays for rows)
 * and counts dy only where z > 0, the same arithmetic as the forward, so the
 * same decision. NaN passes through the forward (as torch.relu) and stops
 * the gradient (as its backward).
 */
typedef T F(vec) __attribute__((vector_size(VB)));
typedef IT F(ivec) __attribute__((vector_size(VB)));
#define W ((ptrdiff_t)(VB / sizeof(T)))
#define V F(vec)
#define IV F(ivec)

ATTR static inline V F(load)(const T *p) { V v; memcpy(&v, p, sizeof(v)); return v; }
ATTR static inline void F(store)(T *p, V v) { memcpy(p, &v, sizeof(v)); }

ATTR static inline V F(splat)(T value)
{
    V v;
    for (ptrdiff_t j = 0; j < W; j++) v[j] = value;
    return v;
}

ATTR static inline double F(hsum)(V v)
{
    T total = 0;
    for (ptrdiff_t j = 0; j < W; j++) total += v[j];
    return (double)total;
}

/* max(v, 0), NaN kept */
ATTR static inline V F(relu)(V v) { return (V)((IV)v & ~(IV)(v < F(splat)(0))); }
ATTR static inline T F(relu1)(T v) { return v < 0 ? 0 : v; }

/* g where z > 0, else 0 */
ATTR static inline V F(gate)(V g, V z) { return (V)((IV)g & (IV)(z > F(splat)(0))); }
ATTR static inline T F(gate1)(T g, T z) { return z > 0 ? g : 0; }

/* ---------------------------------------------------------------- reductions over runs */

/* sum of all values, in T: it only centres the next pass */
ATTR static T F(runs_sum)(const T *p, ptrdiff_t stride, ptrdiff_t nruns, ptrdiff_t n)
{
    const ptrdiff_t step = CBN_UNROLL * W;
    V a = F(splat)(0), b = a, c = a, d = a;
    T tail = 0;
    for (ptrdiff_t r = 0; r < nruns; r++) {
        const T *q = p + r * stride;
        ptrdiff_t i = 0;
        for (; i + step <= n; i += step) {
            a += F(load)(q + i);
            b += F(load)(q + i + W);
            c += F(load)(q + i + 2 * W);
            d += F(load)(q + i + 3 * W);
        }
        for (; i + W <= n; i += W) a += F(load)(q + i);
        for (; i < n; i++) tail += q[i];
    }
    return (T)F(hsum)((a + b) + (c + d)) + tail;
}

/* *s1 += sum(x - m), *s2 += sum((x - m)^2); lanes flushed to float64 every
 * CBN_ADDS_PER_LANE additions */
ATTR static void F(runs_centered)(const T *p, ptrdiff_t stride, ptrdiff_t nruns, ptrdiff_t n,
                                  T m, double *s1, double *s2)
{
    const ptrdiff_t step = CBN_UNROLL * W;
    const V mv = F(splat)(m), zero = F(splat)(0);
    V a1 = zero, b1 = zero, c1 = zero, e1 = zero, a2 = zero, b2 = zero, c2 = zero, e2 = zero;
    double d1 = 0.0, d2 = 0.0;
    int adds = 0;
    for (ptrdiff_t r = 0; r < nruns; r++) {
        const T *q = p + r * stride;
        ptrdiff_t i = 0;
        for (; i + step <= n; i += step) {
            V u = F(load)(q + i) - mv, v = F(load)(q + i + W) - mv;
            V w = F(load)(q + i + 2 * W) - mv, z = F(load)(q + i + 3 * W) - mv;
            a1 += u; a2 += u * u;
            b1 += v; b2 += v * v;
            c1 += w; c2 += w * w;
            e1 += z; e2 += z * z;
            if (++adds == CBN_ADDS_PER_LANE) {
                d1 += F(hsum)((a1 + b1) + (c1 + e1));
                d2 += F(hsum)((a2 + b2) + (c2 + e2));
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;
                adds = 0;
            }
        }
        for (; i + W <= n; i += W) {
            V u = F(load)(q + i) - mv;
            a1 += u; a2 += u * u;
            if (++adds == CBN_ADDS_PER_LANE) {
                d1 += F(hsum)((a1 + b1) + (c1 + e1));
                d2 += F(hsum)((a2 + b2) + (c2 + e2));
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;
                adds = 0;
            }
        }
        for (; i < n; i++) {
            T u = q[i] - m;
            d1 += (double)u;
            d2 += (double)(u * u);
        }
    }
    *s1 += d1 + F(hsum)((a1 + b1) + (c1 + e1));
    *s2 += d2 + F(hsum)((a2 + b2) + (c2 + e2));
}

/* *s1 += sum(g), *s2 += sum(g * (x - shift)) with g = dy (gated by relu) */
ATTR static void F(runs_grad_sums)(const T *dy, ptrdiff_t dstride, const T *x, ptrdiff_t xstride,
                                   ptrdiff_t nruns, ptrdiff_t n, T shift, const T *relu,
                                   double *s1, double *s2)
{
    const ptrdiff_t step = CBN_UNROLL * W;
    const V sv = F(splat)(shift), zero = F(splat)(0);
    const T rs = relu ? relu[0] : 0, ra = relu ? relu[1] : 0, rb = relu ? relu[2] : 0;
    const V rsv = F(splat)(rs), rav = F(splat)(ra), rbv = F(splat)(rb);
    V a1 = zero, b1 = zero, c1 = zero, e1 = zero, a2 = zero, b2 = zero, c2 = zero, e2 = zero;
    double d1 = 0.0, d2 = 0.0;
    int adds = 0;
    for (ptrdiff_t r = 0; r < nruns; r++) {
        const T *g = dy + r * dstride, *q = x + r * xstride;
        ptrdiff_t i = 0;
        for (; i + step <= n; i += step) {
            V q0 = F(load)(q + i), q1 = F(load)(q + i + W);
            V q2 = F(load)(q + i + 2 * W), q3 = F(load)(q + i + 3 * W);
            V g0 = F(load)(g + i), g1 = F(load)(g + i + W);
            V g2 = F(load)(g + i + 2 * W), g3 = F(load)(g + i + 3 * W);
            if (relu) {
                g0 = F(gate)(g0, (q0 - rsv) * rav + rbv);
                g1 = F(gate)(g1, (q1 - rsv) * rav + rbv);
                g2 = F(gate)(g2, (q2 - rsv) * rav + rbv);
                g3 = F(gate)(g3, (q3 - rsv) * rav + rbv);
            }
            a1 += g0; a2 += g0 * (q0 - sv);
            b1 += g1; b2 += g1 * (q1 - sv);
            c1 += g2; c2 += g2 * (q2 - sv);
            e1 += g3; e2 += g3 * (q3 - sv);
            if (++adds == CBN_ADDS_PER_LANE) {
                d1 += F(hsum)((a1 + b1) + (c1 + e1));
                d2 += F(hsum)((a2 + b2) + (c2 + e2));
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;
                adds = 0;
            }
        }
        for (; i + W <= n; i += W) {
            V q0 = F(load)(q + i), g0 = F(load)(g + i);
            if (relu) g0 = F(gate)(g0, (q0 - rsv) * rav + rbv);
            a1 += g0; a2 += g0 * (q0 - sv);
            if (++adds == CBN_ADDS_PER_LANE) {
                d1 += F(hsum)((a1 + b1) + (c1 + e1));
                d2 += F(hsum)((a2 + b2) + (c2 + e2));
                a1 = b1 = c1 = e1 = a2 = b2 = c2 = e2 = zero;
                adds = 0;
            }
        }
        for (; i < n; i++) {
            T gi = relu ? F(gate1)(g[i], (q[i] - rs) * ra + rb) : g[i];
            d1 += (double)gi;
            d2 += (double)(gi * (q[i] - shift));
        }
    }
    *s1 += d1 + F(hsum)((a1 + b1) + (c1 + e1));
    *s2 += d2 + F(hsum)((a2 + b2) + (c2 + e2));
}

/* ---------------------------------------------------------------- elementwise over runs */

/* Whole 64-byte lines of a streamed output get non-temporal stores, partial
 * lines at either end ordinary ones: a line written both ways is read and
 * written back, which costs more than not streaming at all. */
ATTR static inline ptrdiff_t F(line_head)(const T *o, ptrdiff_t n)
{
    ptrdiff_t head = (ptrdiff_t)(((CBN_LINE - ((size_t)o % CBN_LINE)) % CBN_LINE) / sizeof(T));
    return head > n ? n : head;
}

/* y = (x - shift) * scale + offset (then max(y, 0) with CBN_RELU); not
 * x * a + b': when |mean| >> std, x * a and b' are huge and cancel, while
 * x - shift is exact near the mean */
ATTR static inline void F(affine_run)(const T *restrict q, T *restrict o, ptrdiff_t n, T shift,
                                      T scale, T offset, int flags)
{
    const V sv = F(splat)(shift), av = F(splat)(scale), bv = F(splat)(offset);
    const int relu = flags & CBN_RELU;
    ptrdiff_t i = 0;
    if (flags & CBN_STREAM) {
        const ptrdiff_t head = F(line_head)(o, n);
        const ptrdiff_t end = head + (n - head) / (CBN_LINE / sizeof(T)) * (CBN_LINE / sizeof(T));
        for (; i < head; i++) {
            T v = (q[i] - shift) * scale + offset;
            o[i] = relu ? F(relu1)(v) : v;
        }
        for (; i < end; i += W) {
            V v = (F(load)(q + i) - sv) * av + bv;
            if (relu) v = F(relu)(v);
            STREAM(o + i, v);
        }
    }
    for (; i + 2 * W <= n; i += 2 * W) {
        V u = (F(load)(q + i) - sv) * av + bv, v = (F(load)(q + i + W) - sv) * av + bv;
        if (relu) {
            u = F(relu)(u);
            v = F(relu)(v);
        }
        F(store)(o + i, u);
        F(store)(o + i + W, v);
    }
    for (; i < n; i++) {
        T v = (q[i] - shift) * scale + offset;
        o[i] = relu ? F(relu1)(v) : v;
    }
}

ATTR static void F(runs_affine)(const T *x, ptrdiff_t xstride, T *y, ptrdiff_t ystride,
                                ptrdiff_t nruns, ptrdiff_t n, T shift, T scale, T offset,
                                int flags)
{
    for (ptrdiff_t r = 0; r < nruns; r++)
        F(affine_run)(x + r * xstride, y + r * ystride, n, shift, scale, offset, flags);
    if (flags & CBN_STREAM) CBN_SFENCE();
}

/* dx = g * k_dy + (x - shift) * k_x + k_0, g = dy (gated by relu); with
 * CBN_FIXED (eval) dx = g * k_dy */
ATTR static inline void F(grad_input_run)(const T *restrict g, const T *restrict q,
                                          T *restrict o, ptrdiff_t n, T shift, T k_dy, T k_x,
                                          T k_0, const T *relu, int flags)
{
    const int stream = flags & CBN_STREAM, fixed = flags & CBN_FIXED;
    const V sv = F(splat)(shift), dv = F(splat)(k_dy), xv = F(splat)(k_x), zv = F(splat)(k_0);
    const T rs = relu ? relu[0] : 0, ra = relu ? relu[1] : 0, rb = relu ? relu[2] : 0;
    const V rsv = F(splat)(rs), rav = F(splat)(ra), rbv = F(splat)(rb);
    ptrdiff_t i = 0;
    if (stream) {
        const ptrdiff_t head = F(line_head)(o, n);
        const ptrdiff_t end = head + (n - head) / (CBN_LINE / sizeof(T)) * (CBN_LINE / sizeof(T));
        for (; i < head; i++) {
            T gi = relu ? F(gate1)(g[i], (q[i] - rs) * ra + rb) : g[i];
            o[i] = fixed ? gi * k_dy : gi * k_dy + (q[i] - shift) * k_x + k_0;
        }
        for (; i < end; i += W) {
            V qv = F(load)(q + i), gv = F(load)(g + i);
            if (relu) gv = F(gate)(gv, (qv - rsv) * rav + rbv);
            V v = fixed ? gv * dv : gv * dv + (qv - sv) * xv + zv;
            STREAM(o + i, v);
        }
    }
    for (; i + W <= n; i += W) {
        V qv = F(load)(q + i), gv = F(load)(g + i);
        if (relu) gv = F(gate)(gv, (qv - rsv) * rav + rbv);
        F(store)(o + i, fixed ? gv * dv : gv * dv + (qv - sv) * xv + zv);
    }
    for (; i < n; i++) {
        T gi = relu ? F(gate1)(g[i], (q[i] - rs) * ra + rb) : g[i];
        o[i] = fixed ? gi * k_dy : gi * k_dy + (q[i] - shift) * k_x + k_0;
    }
}

ATTR static void F(runs_grad_input)(const T *dy, ptrdiff_t dstride, const T *x, ptrdiff_t xstride,
                                    T *dx, ptrdiff_t gstride, ptrdiff_t nruns, ptrdiff_t n,
                                    T shift, T k_dy, T k_x, T k_0, const T *relu, int flags)
{
    for (ptrdiff_t r = 0; r < nruns; r++)
        F(grad_input_run)(dy + r * dstride, x + r * xstride, dx + r * gstride, n, shift, k_dy,
                          k_x, k_0, relu, flags);
    if (flags & CBN_STREAM) CBN_SFENCE();
}

/* ---------------------------------------------------------------- rows (channels-last) */

/* y[c] = (x[c] - shift[c]) * scale[c] + offset[c] (then max(y, 0) with CBN_RELU) */
ATTR static void F(rows_affine)(const T *x, ptrdiff_t xstride, T *y, ptrdiff_t ystride,
                                ptrdiff_t nrows, ptrdiff_t C, const T *restrict shift,
                                const T *restrict scale, const T *restrict offset, int flags)
{
    const int relu = flags & CBN_RELU, stream = flags & CBN_STREAM;
    for (ptrdiff_t r = 0; r < nrows; r++) {
        const T *restrict q = x + r * xstride;
        T *restrict o = y + r * ystride;
        ptrdiff_t c = 0;
        if (stream) {
            const ptrdiff_t head = F(line_head)(o, C);
            const ptrdiff_t end =
                head + (C - head) / (CBN_LINE / sizeof(T)) * (CBN_LINE / sizeof(T));
            for (; c < head; c++) {
                T v = (q[c] - shift[c]) * scale[c] + offset[c];
                o[c] = relu ? F(relu1)(v) : v;
            }
            for (; c < end; c += W) {
                V v = (F(load)(q + c) - F(load)(shift + c)) * F(load)(scale + c)
                      + F(load)(offset + c);
                if (relu) v = F(relu)(v);
                STREAM(o + c, v);
            }
        }
        for (; c + W <= C; c += W) {
            V v = (F(load)(q + c) - F(load)(shift + c)) * F(load)(scale + c) + F(load)(offset + c);
            F(store)(o + c, relu ? F(relu)(v) : v);
        }
        for (; c < C; c++) {
            T v = (q[c] - shift[c]) * scale[c] + offset[c];
            o[c] = relu ? F(relu1)(v) : v;
        }
    }
    if (stream) CBN_SFENCE();
}

/* dx[c] = g[c] * k_dy[c] + (x[c] - shift[c]) * k_x[c] + k_0[c], g = dy (gated by relu:
 * three C-long arrays of forward coefficients); with CBN_FIXED (eval) dx[c] = g[c] * k_dy[c] */
ATTR static void F(rows_grad_input)(const T *dy, ptrdiff_t dstride, const T *x, ptrdiff_t xstride,
                                    T *dx, ptrdiff_t gstride, ptrdiff_t nrows, ptrdiff_t C,
                                    const T *restrict shift, const T *restrict k_dy,
                                    const T *restrict k_x, const T *restrict k_0,
                                    const T *relu, int flags)
{
    const int stream = flags & CBN_STREAM, fixed = flags & CBN_FIXED;
    const T *rs = relu, *ra = relu ? relu + C : NULL, *rb = relu ? relu + 2 * C : NULL;
    for (ptrdiff_t r = 0; r < nrows; r++) {
        const T *restrict g = dy + r * dstride, *restrict q = x + r * xstride;
        T *restrict o = dx + r * gstride;
        ptrdiff_t c = 0, end = 0;
        if (stream) {
            const ptrdiff_t head = F(line_head)(o, C);
            end = head + (C - head) / (CBN_LINE / sizeof(T)) * (CBN_LINE / sizeof(T));
            for (; c < head; c++) {
                T gc = relu ? F(gate1)(g[c], (q[c] - rs[c]) * ra[c] + rb[c]) : g[c];
                o[c] = fixed ? gc * k_dy[c] : gc * k_dy[c] + (q[c] - shift[c]) * k_x[c] + k_0[c];
            }
        }
        for (; c + W <= C; c += W) {
            V qv = F(load)(q + c), gv = F(load)(g + c);
            if (relu)
                gv = F(gate)(gv, (qv - F(load)(rs + c)) * F(load)(ra + c) + F(load)(rb + c));
            V v = fixed ? gv * F(load)(k_dy + c)
                        : gv * F(load)(k_dy + c) + (qv - F(load)(shift + c)) * F(load)(k_x + c)
                              + F(load)(k_0 + c);
            if (c < end)
                STREAM(o + c, v);
            else
                F(store)(o + c, v);
        }
        for (; c < C; c++) {
            T gc = relu ? F(gate1)(g[c], (q[c] - rs[c]) * ra[c] + rb[c]) : g[c];
            o[c] = fixed ? gc * k_dy[c] : gc * k_dy[c] + (q[c] - shift[c]) * k_x[c] + k_0[c];
        }
    }
    if (stream) CBN_SFENCE();
}

/* Row reductions into per-channel accumulators of type T. Four rows are
 * combined before an accumulator is touched: its load and store, not the
 * arithmetic, bound a one-row-at-a-time loop. */

/* acc[c] += sum over rows of x[c] */
ATTR static void F(rows_sum)(T *restrict acc, const T *restrict x, ptrdiff_t stride,
                             ptrdiff_t nrows, ptrdiff_t C)
{
    ptrdiff_t r = 0;
    for (; r + 4 <= nrows; r += 4) {
        const T *restrict q0 = x + r * stride, *restrict q1 = q0 + stride;
        const T *restrict q2 = q1 + stride, *restrict q3 = q2 + stride;
        for (ptrdiff_t c = 0; c < C; c++) acc[c] += (q0[c] + q1[c]) + (q2[c] + q3[c]);
    }
    for (; r < nrows; r++) {
        const T *restrict q = x + r * stride;
        for (ptrdiff_t c = 0; c < C; c++) acc[c] += q[c];
    }
}

/* s1[c] += sum(x[c] - m[c]), s2[c] += sum((x[c] - m[c])^2) */
ATTR static void F(rows_centered)(T *restrict s1, T *restrict s2, const T *restrict x,
                                  ptrdiff_t stride, ptrdiff_t nrows, ptrdiff_t C,
                                  const T *restrict m)
{
    ptrdiff_t r = 0;
    for (; r + 4 <= nrows; r += 4) {
        const T *restrict q0 = x + r * stride, *restrict q1 = q0 + stride;
        const T *restrict q2 = q1 + stride, *restrict q3 = q2 + stride;
        for (ptrdiff_t c = 0; c < C; c++) {
            T u0 = q0[c] - m[c], u1 = q1[c] - m[c], u2 = q2[c] - m[c], u3 = q3[c] - m[c];
            s1[c] += (u0 + u1) + (u2 + u3);
            s2[c] += (u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3);
        }
    }
    for (; r < nrows; r++) {
        const T *restrict q = x + r * stride;
        for (ptrdiff_t c = 0; c < C; c++) {
            T u = q[c] - m[c];
            s1[c] += u;
            s2[c] += u * u;
        }
    }
}

/* s1[c] += sum(g[c]), s2[c] += sum(g[c] * (x[c] - shift[c])), g = dy (gated by relu) */
ATTR static void F(rows_grad_sums)(T *restrict s1, T *restrict s2, const T *restrict dy,
                                   ptrdiff_t dstride, const T *restrict x, ptrdiff_t xstride,
                                   ptrdiff_t nrows, ptrdiff_t C, const T *restrict shift,
                                   const T *relu)
{
    const T *rs = relu, *ra = relu ? relu + C : NULL, *rb = relu ? relu + 2 * C : NULL;
    ptrdiff_t r = 0;
    if (relu) {  /* gating breaks the four-row combination's simple form */
        for (; r < nrows; r++) {
            const T *restrict g = dy + r * dstride, *restrict q = x + r * xstride;
            for (ptrdiff_t c = 0; c < C; c++) {
                T gc = F(gate1)(g[c], (q[c] - rs[c]) * ra[c] + rb[c]);
                s1[c] += gc;
                s2[c] += gc * (q[c] - shift[c]);
            }
        }
        return;
    }
    for (; r + 4 <= nrows; r += 4) {
        const T *restrict g0 = dy + r * dstride, *restrict g1 = g0 + dstride;
        const T *restrict g2 = g1 + dstride, *restrict g3 = g2 + dstride;
        const T *restrict q0 = x + r * xstride, *restrict q1 = q0 + xstride;
        const T *restrict q2 = q1 + xstride, *restrict q3 = q2 + xstride;
        for (ptrdiff_t c = 0; c < C; c++) {
            T h = shift[c];
            s1[c] += (g0[c] + g1[c]) + (g2[c] + g3[c]);
            s2[c] += (g0[c] * (q0[c] - h) + g1[c] * (q1[c] - h))
                     + (g2[c] * (q2[c] - h) + g3[c] * (q3[c] - h));
        }
    }
    for (; r < nrows; r++) {
        const T *restrict g = dy + r * dstride, *restrict q = x + r * xstride;
        for (ptrdiff_t c = 0; c < C; c++) {
            s1[c] += g[c];
            s2[c] += g[c] * (q[c] - shift[c]);
        }
    }
}

#undef W
#undef V
#undef IV
