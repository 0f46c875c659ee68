# Fused-type front end to the vectorised loops of cbn_loops.h (SSE2 or AVX2,
# chosen once per process by init_loops()). The C side documents each loop.
from cython cimport floating
from libc.stdlib cimport getenv

cdef extern from "cbn_loops.h" nogil:
    int CBN_STREAM
    int CBN_RELU
    int CBN_FIXED
    void cbn_loops_init(int allow_avx2)
    const char* cbn_loops_isa()
    float cbn_runs_sum_f32(const float* p, Py_ssize_t stride, Py_ssize_t nruns, Py_ssize_t n)
    double cbn_runs_sum_f64(const double* p, Py_ssize_t stride, Py_ssize_t nruns, Py_ssize_t n)
    void cbn_runs_centered_f32(const float* p, Py_ssize_t stride, Py_ssize_t nruns, Py_ssize_t n,
                               float m, double* s1, double* s2)
    void cbn_runs_centered_f64(const double* p, Py_ssize_t stride, Py_ssize_t nruns, Py_ssize_t n,
                               double m, double* s1, double* s2)
    void cbn_runs_grad_sums_f32(const float* dy, Py_ssize_t dstride, const float* x,
                                Py_ssize_t xstride, Py_ssize_t nruns, Py_ssize_t n, float shift,
                                const float* relu, double* s1, double* s2)
    void cbn_runs_grad_sums_f64(const double* dy, Py_ssize_t dstride, const double* x,
                                Py_ssize_t xstride, Py_ssize_t nruns, Py_ssize_t n, double shift,
                                const double* relu, double* s1, double* s2)
    void cbn_runs_affine_f32(const float* x, Py_ssize_t xstride, float* y, Py_ssize_t ystride,
                             Py_ssize_t nruns, Py_ssize_t n, float shift, float scale,
                             float offset, int flags)
    void cbn_runs_affine_f64(const double* x, Py_ssize_t xstride, double* y, Py_ssize_t ystride,
                             Py_ssize_t nruns, Py_ssize_t n, double shift, double scale,
                             double offset, int flags)
    void cbn_runs_grad_input_f32(const float* dy, Py_ssize_t dstride, const float* x,
                                 Py_ssize_t xstride, float* dx, Py_ssize_t gstride,
                                 Py_ssize_t nruns, Py_ssize_t n, float shift, float k_dy,
                                 float k_x, float k_0, const float* relu, int flags)
    void cbn_runs_grad_input_f64(const double* dy, Py_ssize_t dstride, const double* x,
                                 Py_ssize_t xstride, double* dx, Py_ssize_t gstride,
                                 Py_ssize_t nruns, Py_ssize_t n, double shift, double k_dy,
                                 double k_x, double k_0, const double* relu, int flags)
    void cbn_rows_affine_f32(const float* x, Py_ssize_t xstride, float* y, Py_ssize_t ystride,
                             Py_ssize_t nrows, Py_ssize_t C, const float* shift,
                             const float* scale, const float* offset, int flags)
    void cbn_rows_affine_f64(const double* x, Py_ssize_t xstride, double* y, Py_ssize_t ystride,
                             Py_ssize_t nrows, Py_ssize_t C, const double* shift,
                             const double* scale, const double* offset, int flags)
    void cbn_rows_grad_input_f32(const float* dy, Py_ssize_t dstride, const float* x,
                                 Py_ssize_t xstride, float* dx, Py_ssize_t gstride,
                                 Py_ssize_t nrows, Py_ssize_t C, const float* shift,
                                 const float* k_dy, const float* k_x, const float* k_0,
                                 const float* relu, int flags)
    void cbn_rows_grad_input_f64(const double* dy, Py_ssize_t dstride, const double* x,
                                 Py_ssize_t xstride, double* dx, Py_ssize_t gstride,
                                 Py_ssize_t nrows, Py_ssize_t C, const double* shift,
                                 const double* k_dy, const double* k_x, const double* k_0,
                                 const double* relu, int flags)
    void cbn_rows_sum_f32(float* acc, const float* x, Py_ssize_t stride, Py_ssize_t nrows,
                          Py_ssize_t C)
    void cbn_rows_sum_f64(double* acc, const double* x, Py_ssize_t stride, Py_ssize_t nrows,
                          Py_ssize_t C)
    void cbn_rows_centered_f32(float* s1, float* s2, const float* x, Py_ssize_t stride,
                               Py_ssize_t nrows, Py_ssize_t C, const float* m)
    void cbn_rows_centered_f64(double* s1, double* s2, const double* x, Py_ssize_t stride,
                               Py_ssize_t nrows, Py_ssize_t C, const double* m)
    void cbn_rows_grad_sums_f32(float* s1, float* s2, const float* dy, Py_ssize_t dstride,
                                const float* x, Py_ssize_t xstride, Py_ssize_t nrows, Py_ssize_t C,
                                const float* shift, const float* relu)
    void cbn_rows_grad_sums_f64(double* s1, double* s2, const double* dy, Py_ssize_t dstride,
                                const double* x, Py_ssize_t xstride, Py_ssize_t nrows,
                                Py_ssize_t C, const double* shift, const double* relu)


cdef inline floating runs_sum(const floating* p, Py_ssize_t stride, Py_ssize_t nruns,
                              Py_ssize_t n) noexcept nogil:
    """Sum of nruns runs of n values, run r at p + r * stride."""
    if floating is float:
        return cbn_runs_sum_f32(p, stride, nruns, n)
    else:
        return cbn_runs_sum_f64(p, stride, nruns, n)


cdef inline void runs_centered(const floating* p, Py_ssize_t stride, Py_ssize_t nruns,
                               Py_ssize_t n, floating m, double* s1, double* s2) noexcept nogil:
    """s1 += sum(x - m), s2 += sum((x - m)^2) over the runs."""
    if floating is float:
        cbn_runs_centered_f32(p, stride, nruns, n, m, s1, s2)
    else:
        cbn_runs_centered_f64(p, stride, nruns, n, m, s1, s2)


cdef inline void runs_grad_sums(const floating* dy, Py_ssize_t dstride, const floating* x,
                                Py_ssize_t xstride, Py_ssize_t nruns, Py_ssize_t n, floating shift,
                                const floating* relu, double* s1, double* s2) noexcept nogil:
    """s1 += sum(g), s2 += sum(g * (x - shift)), g = dy gated by relu (NULL: none)."""
    if floating is float:
        cbn_runs_grad_sums_f32(dy, dstride, x, xstride, nruns, n, shift, relu, s1, s2)
    else:
        cbn_runs_grad_sums_f64(dy, dstride, x, xstride, nruns, n, shift, relu, s1, s2)


cdef inline void runs_affine(const floating* x, Py_ssize_t xstride, floating* y,
                             Py_ssize_t ystride, Py_ssize_t nruns, Py_ssize_t n, floating shift,
                             floating scale, floating offset, int flags) noexcept nogil:
    """y = (x - shift) * scale + offset over the runs; flags: CBN_STREAM, CBN_RELU."""
    if floating is float:
        cbn_runs_affine_f32(x, xstride, y, ystride, nruns, n, shift, scale, offset, flags)
    else:
        cbn_runs_affine_f64(x, xstride, y, ystride, nruns, n, shift, scale, offset, flags)


cdef inline void runs_grad_input(const floating* dy, Py_ssize_t dstride, const floating* x,
                                 Py_ssize_t xstride, floating* dx, Py_ssize_t gstride,
                                 Py_ssize_t nruns, Py_ssize_t n, floating shift, floating k_dy,
                                 floating k_x, floating k_0, const floating* relu,
                                 int flags) noexcept nogil:
    """dx = g * k_dy + (x - shift) * k_x + k_0 over the runs, g = dy gated by relu;
    flags: CBN_STREAM, CBN_FIXED (eval: dx = g * k_dy)."""
    if floating is float:
        cbn_runs_grad_input_f32(dy, dstride, x, xstride, dx, gstride, nruns, n, shift, k_dy, k_x,
                                k_0, relu, flags)
    else:
        cbn_runs_grad_input_f64(dy, dstride, x, xstride, dx, gstride, nruns, n, shift, k_dy, k_x,
                                k_0, relu, flags)


cdef inline void rows_affine(const floating* x, Py_ssize_t xstride, floating* y,
                             Py_ssize_t ystride, Py_ssize_t nrows, Py_ssize_t C,
                             const floating* shift, const floating* scale, const floating* offset,
                             int flags) noexcept nogil:
    """Per channel c: y = (x - shift[c]) * scale[c] + offset[c], over nrows rows."""
    if floating is float:
        cbn_rows_affine_f32(x, xstride, y, ystride, nrows, C, shift, scale, offset, flags)
    else:
        cbn_rows_affine_f64(x, xstride, y, ystride, nrows, C, shift, scale, offset, flags)


cdef inline void rows_grad_input(const floating* dy, Py_ssize_t dstride, const floating* x,
                                 Py_ssize_t xstride, floating* dx, Py_ssize_t gstride,
                                 Py_ssize_t nrows, Py_ssize_t C, const floating* shift,
                                 const floating* k_dy, const floating* k_x, const floating* k_0,
                                 const floating* relu, int flags) noexcept nogil:
    """Per channel: dx = g * k_dy + (x - shift) * k_x + k_0, over nrows rows."""
    if floating is float:
        cbn_rows_grad_input_f32(dy, dstride, x, xstride, dx, gstride, nrows, C, shift, k_dy, k_x,
                                k_0, relu, flags)
    else:
        cbn_rows_grad_input_f64(dy, dstride, x, xstride, dx, gstride, nrows, C, shift, k_dy, k_x,
                                k_0, relu, flags)


cdef inline void rows_sum(floating* acc, const floating* x, Py_ssize_t stride, Py_ssize_t nrows,
                          Py_ssize_t C) noexcept nogil:
    """acc[c] += sum of x[:, c] over nrows rows."""
    if floating is float:
        cbn_rows_sum_f32(acc, x, stride, nrows, C)
    else:
        cbn_rows_sum_f64(acc, x, stride, nrows, C)


cdef inline void rows_centered(floating* s1, floating* s2, const floating* x, Py_ssize_t stride,
                               Py_ssize_t nrows, Py_ssize_t C, const floating* m) noexcept nogil:
    """s1[c] += sum(x - m[c]), s2[c] += sum((x - m[c])^2) over nrows rows."""
    if floating is float:
        cbn_rows_centered_f32(s1, s2, x, stride, nrows, C, m)
    else:
        cbn_rows_centered_f64(s1, s2, x, stride, nrows, C, m)


cdef inline void rows_grad_sums(floating* s1, floating* s2, const floating* dy, Py_ssize_t dstride,
                                const floating* x, Py_ssize_t xstride, Py_ssize_t nrows,
                                Py_ssize_t C, const floating* shift,
                                const floating* relu) noexcept nogil:
    """s1[c] += sum(g), s2[c] += sum(g * (x - shift[c])), g = dy gated by relu (3C or NULL)."""
    if floating is float:
        cbn_rows_grad_sums_f32(s1, s2, dy, dstride, x, xstride, nrows, C, shift, relu)
    else:
        cbn_rows_grad_sums_f64(s1, s2, dy, dstride, x, xstride, nrows, C, shift, relu)


cdef inline int init_loops() except -1:
    """Pick SSE2 or AVX2 loops for this process; call once at module import.

    AVX2 where the CPU has it, unless the environment variable CBN_LOOPS is
    "baseline": the tests run the baseline loops that way, and valgrind
    (which does not decode every AVX instruction) needs them.
    """
    cdef const char* env = getenv("CBN_LOOPS")
    cdef bytes choice = b"" if env == NULL else <bytes>env
    if choice not in (b"", b"auto", b"baseline"):
        raise ValueError("CBN_LOOPS: expected 'auto' or 'baseline', got "
                         f"{choice.decode(errors='replace')!r}")
    cbn_loops_init(choice != b"baseline")
    return 0
