# The two backward reductions over channels-last rows, sum(dy) and
# sum(dy * (x - shift)), in one pass: blocks of rows in the input type, merged
# in float64. (Channels-first runs use runs_grad_sums of _loops directly.)
from cython cimport floating

from _loops cimport rows_grad_sums
from _moments cimport row_block


cdef inline void rows_grad_sums_f64(const floating* dy, Py_ssize_t dy_stride, const floating* x,
                                    Py_ssize_t x_stride, Py_ssize_t r0, Py_ssize_t r1,
                                    Py_ssize_t C, const floating* shift, const floating* relu,
                                    floating* scratch, double* s_dy,
                                    double* s_dyx) noexcept nogil:
    """Add the sums over rows r0..r1 to s_dy, s_dyx; scratch holds 2*C values; relu:
    the forward's (3, C) coefficients when a ReLU was fused, else NULL."""
    cdef floating* b1 = scratch
    cdef floating* b2 = scratch + C
    cdef Py_ssize_t block = row_block(C, sizeof(floating))
    cdef Py_ssize_t b0, nb, c
    b0 = r0
    while b0 < r1:
        nb = min(block, r1 - b0)
        for c in range(C):
            b1[c] = 0
            b2[c] = 0
        rows_grad_sums(b1, b2, dy + b0 * dy_stride, dy_stride, x + b0 * x_stride, x_stride, nb, C,
                       shift, relu)
        for c in range(C):
            s_dy[c] += b1[c]
            s_dyx[c] += b2[c]
        b0 += nb
