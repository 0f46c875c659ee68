/*
 * Dispatching wrappers for one element type: G(name) calls A(name) (AVX2)
 * or B(name) (baseline); included by cbn_loops.h with T, G, A, B defined.
 */
#if CBN_DISPATCH_AVX2
#define CBN_PICK(name) (cbn_use_avx2 ? A(name) : B(name))
#else
#define CBN_PICK(name) B(name)
#endif

static inline T G(runs_sum)(const T *p, ptrdiff_t stride, ptrdiff_t nruns, ptrdiff_t n)
{
    return CBN_PICK(runs_sum)(p, stride, nruns, n);
}

static inline void G(runs_centered)(const T *p, ptrdiff_t stride, ptrdiff_t nruns, ptrdiff_t n,
                                    T m, double *s1, double *s2)
{
    CBN_PICK(runs_centered)(p, stride, nruns, n, m, s1, s2);
}

static inline void G(runs_grad_sums)(const T *dy, ptrdiff_t ds, const T *x, ptrdiff_t xs,
                                     ptrdiff_t nruns, ptrdiff_t n, T shift, const T *relu,
                                     double *s1, double *s2)
{
    CBN_PICK(runs_grad_sums)(dy, ds, x, xs, nruns, n, shift, relu, s1, s2);
}

static inline void G(runs_affine)(const T *x, ptrdiff_t xs, T *y, ptrdiff_t ys, ptrdiff_t nruns,
                                  ptrdiff_t n, T shift, T scale, T offset, int flags)
{
    CBN_PICK(runs_affine)(x, xs, y, ys, nruns, n, shift, scale, offset, flags);
}

static inline void G(runs_grad_input)(const T *dy, ptrdiff_t ds, const T *x, ptrdiff_t xs, T *dx,
                                      ptrdiff_t gs, ptrdiff_t nruns, ptrdiff_t n, T shift,
                                      T k_dy, T k_x, T k_0, const T *relu, int flags)
{
    CBN_PICK(runs_grad_input)(dy, ds, x, xs, dx, gs, nruns, n, shift, k_dy, k_x, k_0, relu,
                              flags);
}

static inline void G(rows_affine)(const T *x, ptrdiff_t xs, T *y, ptrdiff_t ys, ptrdiff_t nrows,
                                  ptrdiff_t C, const T *shift, const T *scale, const T *offset,
                                  int flags)
{
    CBN_PICK(rows_affine)(x, xs, y, ys, nrows, C, shift, scale, offset, flags);
}

static inline void G(rows_grad_input)(const T *dy, ptrdiff_t ds, const T *x, ptrdiff_t xs, T *dx,
                                      ptrdiff_t gs, ptrdiff_t nrows, ptrdiff_t C, const T *shift,
                                      const T *k_dy, const T *k_x, const T *k_0, const T *relu,
                                      int flags)
{
    CBN_PICK(rows_grad_input)(dy, ds, x, xs, dx, gs, nrows, C, shift, k_dy, k_x, k_0, relu,
                              flags);
}

static inline void G(rows_sum)(T *acc, const T *x, ptrdiff_t stride, ptrdiff_t nrows, ptrdiff_t C)
{
    CBN_PICK(rows_sum)(acc, x, stride, nrows, C);
}

static inline void G(rows_centered)(T *s1, T *s2, const T *x, ptrdiff_t stride, ptrdiff_t nrows,
                                    ptrdiff_t C, const T *m)
{
    CBN_PICK(rows_centered)(s1, s2, x, stride, nrows, C, m);
}

static inline void G(rows_grad_sums)(T *s1, T *s2, const T *dy, ptrdiff_t ds, const T *x,
                                     ptrdiff_t xs, ptrdiff_t nrows, ptrdiff_t C, const T *shift,
                                     const T *relu)
{
    CBN_PICK(rows_grad_sums)(s1, s2, dy, ds, x, xs, nrows, C, shift, relu);
}

#undef CBN_PICK
