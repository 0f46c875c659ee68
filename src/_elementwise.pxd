# Per-channel affine maps over runs (channels-first) and rows (channels-last).
#
# y = (x - shift) * scale + offset rather than x * alpha + beta': when
# |mean| >> std, x * alpha and beta' are huge and nearly cancel, so the short
# form loses every digit of y; x - shift is exact for x near shift.
from cython cimport floating


cdef inline void affine_run(const floating* x, floating* y, Py_ssize_t n, floating shift,
                            floating scale, floating offset) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = (x[i] - shift) * scale + offset


cdef inline void affine_row(const floating* x, floating* y, Py_ssize_t C, const floating* shift,
                            const floating* scale, const floating* offset) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        y[c] = (x[c] - shift[c]) * scale[c] + offset[c]


cdef inline void grad_input_run(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                                floating shift, floating k_dy, floating k_x,
                                floating k_0) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] * k_dy + (x[i] - shift) * k_x + k_0


cdef inline void grad_input_row(const floating* dy, const floating* x, floating* dx, Py_ssize_t C,
                                const floating* shift, const floating* k_dy, const floating* k_x,
                                const floating* k_0) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        dx[c] = dy[c] * k_dy[c] + (x[c] - shift[c]) * k_x[c] + k_0[c]
