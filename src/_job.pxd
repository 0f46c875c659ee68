# One kernel call's arguments as a record (Job), filled and checked at the
# entry point, and the one loop that runs a kernel's body per work unit.
#
# Design:
# A. Every kernel takes (compute, job) and every loop body (compute, job, i):
#    compute is a null pointer whose type, float or double, picks the fused
#    specialisation: the type computed in (float for float32, float16 and
#    bfloat16 data), that of the coefficient tables, weight and bias; the
#    data and everything else are in the job (job.kind: the data's type,
#    which the loops of cbn_loops.h dispatch on). The entry point checks
#    each argument once (through the NumPy C API: tens of nanoseconds, where
#    typed memoryviews cost ~0.7 us each) and dispatches on the type once.
# B. for_each runs body(x, job, i) for i in range(n): a plain loop on one
#    thread, since an OpenMP region costs ~0.7 us even with one thread (more
#    than a small tensor's arithmetic), else a static prange. The work units
#    depend on the shape only (_plan.pxd), so results do not depend on the
#    thread count.
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from _arrays cimport (Tensor, checked, checked_like, checked_table, checked_threads,
                     checked_vector, free_scratch, input_kind, run_bytes, scratch, tensor)
from _loops cimport CBN_F64, CBN_ROWS4, CBN_STREAM, cbn_block, kind_itemsize
from _block_moments cimport row_block
from _plan cimport (PARALLEL_CHANNELS, channel_parts, channels_per_unit, interleaves_rows,
                   part_start, row_parts, streams)


cdef struct Tables:
    # Per-channel tables: C values per row, row after row; of the type computed
    # in (f32: float, else double) unless float64 is said.
    const void* weight      # (C,), or NULL for 1
    const void* bias        # (C,), or NULL for 0
    const void* relu_coef   # backward with a fused ReLU: the forward's (3, C) coef, else NULL
    void* coef              # forward (3, C) [shift, scale, offset]:
                            #   y = (x - shift) * scale + offset
                            # backward (4, C) [shift, k_dy, k_x, k_0]: see grad_input_coefficients
    double* stats           # float64 statistics: train_forward writes [mean, invstd,
                            # biased var] (3, C); normalize reads [mean, var] (2, C),
                            # backward and grad_input [mean, invstd] (2, C), grad_sums mean (C,)
    double* sums            # float64 (2, C) [sum(g), sum(g * (x - mean))], g = dy (ReLU-gated)
    double* moments         # float64 (2, C) [mean, M2]
    void* param_grads       # backward: (2, C) [sum(g * xhat), sum(g)], or NULL


cdef struct Job:
    Tensor x                # the forward's input
    Tensor dy               # backward: the output's gradient
    Tensor out              # forward: y; backward: dx
    Tables tables
    int kind                # x's data type (CBN_F32, CBN_F64, CBN_F16, CBN_BF16; dy and out's too)
    Py_ssize_t itemsize     # bytes per value of x
    bint f32                # computed in float32 (every kind but CBN_F64), else float64
    int* overflow           # set to 1 when a 2-byte output stored is +-inf from finite
                            # inputs (see run_and_free)
    bint channels_first     # x is (N, C, S) runs (else (M, C) rows)
    bint batch_stats        # backward: stats are x's own (training), not fixed (eval)
    double eps
    double count            # values per channel behind the statistics: normalize's
                            # caller's (0: not x's own), backward N*S, grad_input all ranks'
    Py_ssize_t pieces       # pieces a channel's reduction is split into (_plan.pxd)
    double* partials        # float64 partial results, per piece (and work unit)
    void* row_scratch       # channels-last: per-piece row buffers, of the type computed in
    Py_ssize_t units        # work units of an elementwise pass (see elementwise):
    Py_ssize_t unit_groups  #   channels-first: a sample's channels in unit_groups groups
    Py_ssize_t unit_channels  # of unit_channels (channels_per_unit);
    Py_ssize_t block_rows   #   channels-last: blocks of block_rows rows (row_block),
    bint rows_last_first    #   taken last first (after a reduction), else in memory order
    int nthreads


cdef inline cnp.ndarray begin(Job* job, object x, int nthreads):
    """Zero job, then fill x, its type, layout and pieces, and the thread count, checked."""
    cdef int kind = input_kind(x, "x")
    cdef cnp.ndarray xa = checked(x, "x", cnp.PyArray_NDIM(x), cnp.PyArray_TYPE(x), False)
    memset(job, 0, sizeof(Job))
    plan(job, tensor(xa), kind, cnp.PyArray_NDIM(xa) == 3, checked_threads(nthreads))
    return xa


cdef inline void plan(Job* job, Tensor x, int kind, bint channels_first,
                      int nthreads) noexcept:
    """Fill a zeroed job's x, its type, layout (x is an (N, C, S) view if
    channels_first, else (M, C)), pieces and work units, and the thread count."""
    job.x = x
    job.kind = kind
    job.itemsize = kind_itemsize(kind)
    job.f32 = kind != CBN_F64
    job.channels_first = channels_first
    job.pieces = (channel_parts(job.x.N, job.x.C, job.x.S) if job.channels_first
                  else row_parts(job.x.N))
    if job.channels_first:
        job.unit_channels = channels_per_unit(job.x.C, job.x.S)
        job.unit_groups = (job.x.C + job.unit_channels - 1) // job.unit_channels
        job.units = job.x.N * job.unit_groups
    else:
        job.block_rows = row_block(job.x.C, job.itemsize)
        job.units = (job.x.N + job.block_rows - 1) // job.block_rows
    job.nthreads = nthreads


cdef inline Tensor operand(object a, str name, cnp.ndarray x):
    """A read-only array of x's shape and dtype."""
    return tensor(checked_like(a, name, x, False))


cdef inline Tensor output(object a, str name, cnp.ndarray x, int flags):
    """A writable array of x's shape and dtype; flags plus CBN_STREAM where
    its size makes streaming stores pay (_plan.streams)."""
    cdef cnp.ndarray arr = checked_like(a, name, x, True)
    return output_tensor(tensor(arr), cnp.PyArray_DATA(arr), cnp.PyArray_ITEMSIZE(arr), flags)


cdef inline Tensor output_tensor(Tensor like, void* data, Py_ssize_t itemsize,
                                 int flags) noexcept:
    """An output with like's geometry at data; flags plus CBN_STREAM where its
    size makes streaming stores pay (_plan.streams), and CBN_ROWS4 where it is
    small enough for four interleaved rows (_plan.interleaves_rows)."""
    cdef Tensor t = like
    t.data = data
    if streams(t.N * t.C * t.S * itemsize, run_bytes(t, itemsize)):
        flags |= CBN_STREAM
    if interleaves_rows(t.N * t.C * t.S * itemsize):
        flags |= CBN_ROWS4
    t.flags = flags
    return t


cdef inline int table_typenum(const Job* job) noexcept:
    """NPY_FLOAT32 or NPY_FLOAT64: the type computed in, of weight, bias and tables."""
    return cnp.NPY_FLOAT32 if job.f32 else cnp.NPY_FLOAT64


cdef inline const void* vector_data(object a, str name, const Job* job) except? NULL:
    """A (C,) array of the type computed in, or NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(checked_vector(a, name, job.x.C, table_typenum(job), False))


cdef inline void* table_data(object a, str name, Py_ssize_t rows, const Job* job,
                             bint writable) except? NULL:
    """A C-contiguous (rows, C) array of the type computed in, or NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(checked_table(a, name, rows, job.x.C, table_typenum(job), writable))


cdef inline double* f64_vector(object a, str name, cnp.ndarray x) except NULL:
    """A float64 (C,) array."""
    cdef cnp.ndarray arr = checked(a, name, 1, cnp.NPY_FLOAT64, False)
    if cnp.PyArray_DIMS(arr)[0] != cnp.PyArray_DIMS(x)[1]:
        raise ValueError(f"{name}: expected shape ({cnp.PyArray_DIMS(x)[1]},), "
                         f"got {(<object>arr).shape}")
    return <double*>cnp.PyArray_DATA(arr)


cdef inline double* f64_table(object a, str name, Py_ssize_t rows, cnp.ndarray x,
                              bint writable) except NULL:
    """A C-contiguous float64 (rows, C) array."""
    return <double*>cnp.PyArray_DATA(checked_table(a, name, rows, cnp.PyArray_DIMS(x)[1],
                                                   cnp.NPY_FLOAT64, writable))


cdef inline void* allocate(Job* job, Py_ssize_t doubles, Py_ssize_t coef_rows,
                           Py_ssize_t row_values) except NULL:
    """One block of scratch: job.partials (doubles float64 values), then
    job.tables.coef (coef_rows * C values of the type computed in; with 0
    rows the caller's table stays), then job.row_scratch (row_values of them).
    Returns the block, for free_scratch."""
    cdef Py_ssize_t itemsize = 4 if job.f32 else 8
    cdef Py_ssize_t coef_bytes = coef_rows * job.x.C * itemsize
    cdef char* block = <char*>scratch(doubles * sizeof(double) + coef_bytes
                                      + row_values * itemsize)
    job.partials = <double*>block
    if coef_rows:
        job.tables.coef = block + doubles * sizeof(double)
    job.row_scratch = block + doubles * sizeof(double) + coef_bytes
    return block


ctypedef void (*KernelF32)(int kernel, const float* compute, const Job* job) noexcept nogil
ctypedef void (*KernelF64)(int kernel, const double* compute, const Job* job) noexcept nogil


cdef inline bint run_and_free(KernelF32 run_f32, KernelF64 run_f64, int kernel, Job* job,
                              void* block) except -1:
    """A module's one type dispatch: kernel computed in float or double,
    without the GIL; then the scratch block (from allocate) is freed.
    Returns whether an output of 2-byte data is +-inf though the values it
    was computed from elementwise are finite (the loops tell that before an
    in-place output writes over them): past the type's range, or, in
    training-mode backward, in a channel whose sums an infinite dy made
    infinite or NaN (the caller tells which)."""
    cdef int overflow = 0
    job.overflow = &overflow
    try:
        with nogil:
            if job.f32:
                run_f32(kernel, <const float*>NULL, job)
            else:
                run_f64(kernel, <const double*>NULL, job)
    finally:
        job.overflow = NULL
        free_scratch(block)
    return overflow != 0


cdef inline void for_each(void (*body)(const floating*, const Job*, Py_ssize_t) noexcept nogil,
                          const floating* compute, const Job* job, Py_ssize_t n,
                          int nthreads) noexcept nogil:
    """body(compute, job, i) for every i in range(n), on nthreads threads (see B above)."""
    cdef Py_ssize_t i
    if nthreads == 1:
        for i in range(n):
            body(compute, job, i)
    else:
        for i in prange(n, num_threads=nthreads, schedule="static"):
            body(compute, job, i)


cdef inline int channel_threads(const Job* job) noexcept nogil:
    """Threads for per-channel finishing work (merges, square roots): only many channels pay."""
    return job.nthreads if job.x.C >= PARALLEL_CHANNELS else 1


cdef inline Py_ssize_t piece_start(const Job* job, Py_ssize_t k) noexcept nogil:
    """The first batch index (channels-first) or row (channels-last) of piece k."""
    return part_start(job.x.N, job.pieces, k)


cdef inline void* element(Tensor t, Py_ssize_t n, Py_ssize_t c, Py_ssize_t itemsize) noexcept nogil:
    """Address of t's element (n, c, 0), or NULL for an absent operand."""
    if t.data == NULL:
        return NULL
    return <char*>t.data + (n * t.sn + c * t.sc) * itemsize


cdef inline cbn_block block_at(const Job* job, Py_ssize_t n0, Py_ssize_t count,
                               Py_ssize_t c) noexcept nogil:
    """The loops' view of x, dy and out from batch index (channels-first) or
    row (channels-last, c = 0) n0: count runs of channel c, or count rows."""
    cdef cbn_block b
    b.x = element(job.x, n0, c, job.itemsize)
    b.x_stride = job.x.sn
    b.dy = element(job.dy, n0, c, job.itemsize)
    b.dy_stride = job.dy.sn
    b.out = element(job.out, n0, c, job.itemsize)
    b.out_stride = job.out.sn
    b.count = count
    b.length = job.x.S if job.channels_first else job.x.C
    b.table_stride = job.x.C
    b.table_step = 0
    b.flags = job.out.flags
    b.kind = job.kind
    b.overflow = job.overflow
    return b


cdef inline cbn_block unit_runs(const Job* job, Py_ssize_t u, Py_ssize_t* c0) noexcept nogil:
    """Channels-first unit u's runs, in memory order: one sample's channels
    c0[0] onwards, a channel (and its coefficients) per run."""
    cdef cbn_block b
    c0[0] = (u % job.unit_groups) * job.unit_channels
    b = block_at(job, u // job.unit_groups, min(job.unit_channels, job.x.C - c0[0]), c0[0])
    b.x_stride = job.x.sc
    b.dy_stride = job.dy.sc
    b.out_stride = job.out.sc
    b.table_step = 1
    return b


cdef inline cbn_block rows_at(const Job* job, Py_ssize_t i) noexcept nogil:
    """Channels-last block i: block_rows rows, taken last first after a
    reduction (the most recently read rows are the likeliest to be cached),
    else in memory order (which the prefetchers follow: eval forward 15-35%
    faster than last first, asv_bench/NOTES.md section 20)."""
    cdef Py_ssize_t r0 = ((job.units - 1 - i) if job.rows_last_first else i) * job.block_rows
    return block_at(job, r0, min(job.block_rows, job.x.N - r0), 0)


cdef inline void elementwise(
        void (*runs_body)(const floating*, const Job*, Py_ssize_t) noexcept nogil,
        void (*rows_body)(const floating*, const Job*, Py_ssize_t) noexcept nogil,
        const floating* compute, const Job* job) noexcept nogil:
    """An elementwise pass over job.units work units: runs_body over the
    channels-first ones (unit_runs), or rows_body over the channels-last
    row blocks (rows_at)."""
    if job.channels_first:   # (two calls: each body a constant the compiler can inline)
        for_each(runs_body, compute, job, job.units, job.nthreads)
    else:
        for_each(rows_body, compute, job, job.units, job.nthreads)
