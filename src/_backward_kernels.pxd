# The backward kernels as inline functions: the entry points of
# _backward.pyx and the layers' compiled call path (_call.pyx) run them on a
# Job they have filled (see _forward_kernels.pxd for why a pxd).
#
# Backward kernels: the reductions sum(g) and sum(g * (x - mean)), and dx,
# alone and fused; g = dy, or with a fused ReLU dy where its output was
# positive. Same canonical views and Job conventions as _forward.pyx; dy, x
# and dx (one data type) may each have their own strides.
cimport numpy as cnp
from cython cimport floating

from _coefficients cimport dx_coefficients
from _job cimport (Job, allocate, begin, block_at, elementwise, f64_table, f64_vector, for_each,
                   operand, output, piece_start, rows_at, run_and_free, table_data, unit_runs,
                   vector_data)
from _loops cimport (CBN_FIXED, cbn_block, init_loops, position_totals, rows_grad_input,
                     rows_grad_sums, runs_grad_input, runs_grad_sums)
from _plan cimport fuse_by_channel
from _long_rows cimport LongRows, expanded, long_rows, long_rows_job, row_length, zeroed

cdef enum BackwardKernel:
    GRAD_SUMS
    BACKWARD
    GRAD_INPUT


cdef inline const void* relu_at(const Job* job, Py_ssize_t c) noexcept nogil:
    """Channel c's column of the forward's coefficients of a fused ReLU, or NULL."""
    if job.tables.relu_coef == NULL:
        return NULL
    return <const char*>job.tables.relu_coef + c * (4 if job.f32 else 8)


cdef inline double centred_on_mean(const double* sums, Py_ssize_t C, Py_ssize_t c, double mean,
                                   double shift) noexcept nogil:
    """sum(g * (x - mean)) from sums = [sum(g), sum(g * (x - shift))]: the loops
    centre on the shift (the mean rounded to the type computed in), exact near it."""
    return sums[C + c] - (mean - shift) * sums[c]


# ---------------------------------------------------------------- channels-first

cdef inline void cf_unit_sums(const floating* compute, const Job* job,
                              Py_ssize_t u) noexcept nogil:
    """part[2u], part[2u+1] = sums of unit u = c * parts + k (channel c, batch range k)."""
    cdef Py_ssize_t c = u // job.pieces, k = u % job.pieces
    cdef Py_ssize_t n0 = piece_start(job, k)
    cdef cbn_block runs = block_at(job, n0, piece_start(job, k + 1) - n0, c)
    job.partials[2 * u] = 0.0
    job.partials[2 * u + 1] = 0.0
    runs_grad_sums(&runs, (<const floating*>job.tables.coef)[c], relu_at(job, c),
                   &job.partials[2 * u], &job.partials[2 * u + 1])


cdef inline void cf_unit_grad_input(const floating* compute, const Job* job,
                                    Py_ssize_t u) noexcept nogil:
    """Unit u of the elementwise pass (see unit_runs)."""
    cdef Py_ssize_t c0
    cdef cbn_block runs = unit_runs(job, u, &c0)
    runs_grad_input(&runs, <const floating*>job.tables.coef + c0, relu_at(job, c0))


cdef inline void cf_channel_backward(const floating* compute, const Job* job,
                                     Py_ssize_t c) noexcept nogil:
    """Sums, then dx, of channel c while its values are in cache."""
    cdef Py_ssize_t C = job.x.C
    cdef double* sums = job.tables.sums
    cdef floating shift = <floating>job.tables.stats[c]
    cdef const void* relu = relu_at(job, c)
    cdef cbn_block runs = block_at(job, 0, job.x.N, c)
    sums[c] = 0.0
    sums[C + c] = 0.0
    runs_grad_sums(&runs, shift, relu, &sums[c], &sums[C + c])
    sums[C + c] = centred_on_mean(sums, C, c, job.tables.stats[c], shift)
    dx_coefficients(job, c, c + 1)
    runs_grad_input(&runs, <const floating*>job.tables.coef + c, relu)


cdef inline floating* expanded_relu(const floating* compute, const Job* job,
                                    LongRows lr) noexcept nogil:
    """Long rows (_long_rows.pxd): a fused ReLU's coefficients expanded into
    the first 3 * row_length values of the row scratch, or NULL without one."""
    cdef floating* relu = <floating*>job.row_scratch
    if job.tables.relu_coef == NULL:
        return NULL
    expanded(<const floating*>job.tables.relu_coef, 3, job.x.C, lr, relu)
    return relu


cdef inline void long_rows_sums(const floating* compute, const Job* job,
                                LongRows lr) noexcept nogil:
    """The partial sums of a reduction in one piece, from the long rows
    (_long_rows.pxd): channels-first, cf_unit_sums'; channels-last, the first
    row range's (the others zero)."""
    cdef Py_ssize_t C = job.x.C, L = row_length(lr, C), i
    cdef floating* relu = expanded_relu(compute, job, lr)
    cdef floating* shift = <floating*>job.row_scratch + 3 * L
    cdef floating* s1 = shift + L
    cdef floating* s2 = s1 + L
    cdef Job rows
    cdef cbn_block block
    expanded(<const floating*>job.tables.coef, 1, C, lr, shift)   # (sums_kernel's shifts)
    zeroed(s1, L)
    zeroed(s2, L)
    long_rows_job(job, &rows, lr, NULL, relu)
    block = block_at(&rows, 0, rows.x.N, 0)
    rows_grad_sums(&block, shift, relu, s1, s2)
    if job.channels_first:   # [sum(g), sum(g * (x - shift))] per unit
        position_totals(job.f32, C, lr.run, lr.copies, s1, s2, job.partials, job.partials + 1, 2)
    else:   # the first row range's C values of each
        position_totals(job.f32, C, lr.run, lr.copies, s1, s2, job.partials, job.partials + C, 1)
        for i in range(2 * C, 2 * C * job.pieces):
            job.partials[i] = 0.0


# ---------------------------------------------------------------- channels-last

cdef inline void cl_part_sums(const floating* compute, const Job* job,
                              Py_ssize_t k) noexcept nogil:
    """part[2Ck :] = (sum(g)[C], sum(g * (x - shift))[C]) of row range k: blocks
    of rows summed in the type computed in (into the 2C row buffers of range
    k), merged in float64."""
    cdef Py_ssize_t C = job.x.C, c
    cdef Py_ssize_t block = job.block_rows
    cdef Py_ssize_t r = piece_start(job, k), r1 = piece_start(job, k + 1)
    cdef double* s_g = job.partials + k * 2 * C
    cdef double* s_gx = s_g + C
    cdef floating* b_g = <floating*>job.row_scratch + k * 2 * C
    cdef floating* b_gx = b_g + C
    cdef cbn_block rows
    for c in range(C):
        s_g[c] = 0.0
        s_gx[c] = 0.0
    while r < r1:
        rows = block_at(job, r, min(block, r1 - r), 0)
        for c in range(C):
            b_g[c] = 0
            b_gx[c] = 0
        rows_grad_sums(&rows, job.tables.coef, job.tables.relu_coef, b_g, b_gx)
        for c in range(C):
            s_g[c] += b_g[c]
            s_gx[c] += b_gx[c]
        r += rows.count


cdef inline void cl_block_grad_input(const floating* compute, const Job* job,
                                     Py_ssize_t i) noexcept nogil:
    """Block i of rows (see rows_at)."""
    cdef cbn_block rows = rows_at(job, i)
    rows_grad_input(&rows, job.tables.coef, job.tables.relu_coef)


# ---------------------------------------------------------------- kernels

cdef inline void sum_partials(const Job* job) noexcept nogil:
    """sums = the per-piece partial sums added in a fixed order."""
    cdef Py_ssize_t c, k, C = job.x.C, pieces = job.pieces
    cdef double* sums = job.tables.sums
    cdef const double* partials = job.partials
    for c in range(2 * C):
        sums[c] = 0.0
    for c in range(C):
        for k in range(pieces):
            if job.channels_first:
                sums[c] += partials[2 * (c * pieces + k)]
                sums[C + c] += partials[2 * (c * pieces + k) + 1]
            else:
                sums[c] += partials[k * 2 * C + c]
                sums[C + c] += partials[k * 2 * C + C + c]


cdef inline void sums_kernel(const floating* compute, const Job* job) noexcept nogil:
    """sums = [sum(g), sum(g * (x - mean))], mean = stats[0]; the first C
    coefficients receive the shifts (the mean rounded to the type computed in)."""
    cdef Py_ssize_t c, C = job.x.C
    cdef floating* shift = <floating*>job.tables.coef
    cdef const double* mean = job.tables.stats
    cdef double* sums = job.tables.sums
    cdef LongRows lr = long_rows(job)
    for c in range(C):
        shift[c] = <floating>mean[c]
    if lr.copies:
        long_rows_sums(compute, job, lr)
    elif job.channels_first:
        for_each(cf_unit_sums[floating], compute, job, C * job.pieces, job.nthreads)
    else:
        for_each(cl_part_sums[floating], compute, job, job.pieces, job.nthreads)
    sum_partials(job)
    for c in range(C):
        sums[C + c] = centred_on_mean(sums, C, c, mean[c], shift[c])


cdef inline void grad_input_kernel(const floating* compute, const Job* job) noexcept nogil:
    """dx from the sums (with batch statistics) and stats."""
    cdef Py_ssize_t C = job.x.C
    cdef LongRows lr = long_rows(job)
    cdef Job rows
    cdef floating* coef = <floating*>job.row_scratch + 3 * row_length(lr, C)
    dx_coefficients(job, 0, C)
    if lr.copies:
        expanded(<const floating*>job.tables.coef, 4, C, lr, coef)
        long_rows_job(job, &rows, lr, coef, expanded_relu(compute, job, lr))
        elementwise(cf_unit_grad_input[floating], cl_block_grad_input[floating], compute, &rows)
    else:
        elementwise(cf_unit_grad_input[floating], cl_block_grad_input[floating], compute, job)


cdef inline void backward_kernel(const floating* compute, const Job* job) noexcept nogil:
    cdef Py_ssize_t c, C = job.x.C
    cdef floating* grads = <floating*>job.tables.param_grads
    cdef const double* sums = job.tables.sums
    if job.channels_first and fuse_by_channel(job.x, 2 * job.itemsize):
        for_each(cf_channel_backward[floating], compute, job, C, job.nthreads)
    else:
        sums_kernel(compute, job)
        grad_input_kernel(compute, job)
    if grads != NULL:
        for c in range(C):
            grads[c] = <floating>(sums[C + c] * job.tables.stats[C + c])
            grads[C + c] = <floating>sums[c]


cdef inline void backward_typed(int kernel, const floating* compute,
                                const Job* job) noexcept nogil:
    if kernel == GRAD_SUMS:
        sums_kernel(compute, job)
    elif kernel == BACKWARD:
        backward_kernel(compute, job)
    else:
        grad_input_kernel(compute, job)


cdef inline bint backward_run(BackwardKernel kernel, Job* job) except -1:
    """backward_typed(kernel) with its scratch: unless it only applies given sums, the
    sums (when not given) and partial sums per piece, channels-last row
    buffers; and 4*C coefficients. Returns whether an output is +-inf
    from finite inputs (2-byte data: see run_and_free)."""
    cdef bint reduces = kernel != GRAD_INPUT
    cdef bint own_sums = job.tables.sums == NULL
    cdef Py_ssize_t C = job.x.C
    cdef Py_ssize_t partials = 2 * C * job.pieces if reduces else 0
    # row scratch: channels-last, the partial sums' row buffers; long rows
    # (_long_rows.pxd), a ReLU's expanded coefficients and the shifts and
    # sums, then the expanded dx coefficients (3 + 4 rows of row_length)
    cdef LongRows lr = long_rows(job)
    cdef Py_ssize_t row_values = (7 * row_length(lr, C) if lr.copies
                                  else 0 if job.channels_first else partials)
    cdef void* block = allocate(job, partials + (2 * C if own_sums else 0), 4, row_values)
    if own_sums:
        job.tables.sums = job.partials
        job.partials += 2 * C
    return run_and_free(backward_typed[float], backward_typed[double], kernel, job, block)
