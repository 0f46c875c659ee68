# The two backward reductions, sum(dy) and sum(dy * (x - shift)), in one pass.
# Runs and row blocks accumulate in the input type; everything beyond in float64.
from cython cimport floating

from _moments cimport BLOCK_BYTES
from _runs cimport run_grad_sums


cdef inline void strided_runs_grad_sums(const floating* dy, const floating* x, Py_ssize_t nruns,
                                        Py_ssize_t dy_stride, Py_ssize_t x_stride, Py_ssize_t n,
                                        floating shift, double* s_dy, double* s_dyx) noexcept nogil:
    """Add the sums over nruns runs of n values; long runs in chunks of BLOCK_BYTES."""
    cdef Py_ssize_t block = BLOCK_BYTES // sizeof(floating)
    cdef Py_ssize_t r, start
    for r in range(nruns):
        start = 0
        while start < n:
            run_grad_sums(dy + r * dy_stride + start, x + r * x_stride + start,
                          min(block, n - start), shift, s_dy, s_dyx)
            start += block


cdef inline void rows_grad_sums(const floating* dy, Py_ssize_t dy_stride, const floating* x,
                                Py_ssize_t x_stride, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                                const floating* shift, floating* scratch, double* s_dy,
                                double* s_dyx) noexcept nogil:
    """Add the sums over rows r0..r1 of channels-last arrays; scratch holds 2*C values."""
    cdef floating* b1 = scratch
    cdef floating* b2 = scratch + C
    cdef const floating* dyr
    cdef const floating* xr
    cdef Py_ssize_t block = max(1, min(256, BLOCK_BYTES // (C * <Py_ssize_t>sizeof(floating))))
    cdef Py_ssize_t b0, nb, r, c
    b0 = r0
    while b0 < r1:
        nb = min(block, r1 - b0)
        for c in range(C):
            b1[c] = 0
            b2[c] = 0
        for r in range(b0, b0 + nb):
            dyr = dy + r * dy_stride
            xr = x + r * x_stride
            for c in range(C):
                b1[c] += dyr[c]
                b2[c] += dyr[c] * (xr[c] - shift[c])
        for c in range(C):
            s_dy[c] += b1[c]
            s_dyx[c] += b2[c]
        b0 += nb
