# Fused-type front end to the vectorised run reductions in cbn_runs.h.
from cython cimport floating

cdef extern from "cbn_runs.h" nogil:
    float cbn_sum_f32(const float* p, Py_ssize_t n)
    double cbn_sum_f64(const double* p, Py_ssize_t n)
    void cbn_centered_sums_f32(const float* p, Py_ssize_t n, float m, double* s1, double* s2)
    void cbn_centered_sums_f64(const double* p, Py_ssize_t n, double m, double* s1, double* s2)
    void cbn_grad_sums_f32(const float* dy, const float* x, Py_ssize_t n, float shift,
                           double* s1, double* s2)
    void cbn_grad_sums_f64(const double* dy, const double* x, Py_ssize_t n, double shift,
                           double* s1, double* s2)


cdef inline floating run_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return cbn_sum_f32(p, n)
    else:
        return cbn_sum_f64(p, n)


cdef inline void run_centered_sums(const floating* p, Py_ssize_t n, floating m, double* s1,
                                   double* s2) noexcept nogil:
    """s1 += sum(x - m), s2 += sum((x - m)^2)."""
    if floating is float:
        cbn_centered_sums_f32(p, n, m, s1, s2)
    else:
        cbn_centered_sums_f64(p, n, m, s1, s2)


cdef inline void run_grad_sums(const floating* dy, const floating* x, Py_ssize_t n,
                               floating shift, double* s_dy, double* s_dyx) noexcept nogil:
    """s_dy += sum(dy), s_dyx += sum(dy * (x - shift))."""
    if floating is float:
        cbn_grad_sums_f32(dy, x, n, shift, s_dy, s_dyx)
    else:
        cbn_grad_sums_f64(dy, x, n, shift, s_dy, s_dyx)
