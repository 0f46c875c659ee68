# Small tensors of short runs or short rows passed over as long rows.
#
# Channels-first: when a sample's C runs of S values lie one after the
# other in memory, the sample is one row of C*S values, and a table whose
# entries repeat each channel's S times makes every channels-first pass a
# channels-last one: the row loops take four rows per load of their
# per-position coefficients, where the run loops paid a call, a coefficient
# load, a loop set-up and scalar tails per run of a few vectors (a 16x32x2x2
# training forward 4.6x faster, 16x16x7x7 1.2x; at 64 float32 values a run
# the two were as fast: asv_bench/NOTES.md section 23). Reductions sum per
# position over the rows in the type computed in (at most MAX_RUN_ROWS
# rows), then each channel's S positions in float64 (position_totals,
# cbn_per_channel.h).
#
# Channels-last (statistics and backward): rows of a few channels (C = 16
# float32: two vectors a row) are taken k at a time as one row of k*C
# values, the tables tiled k times; the per-position sums are then folded k
# to a channel in float64 (a 1024x16 backward 9.6 -> 6.0 us, its statistics
# 3.5 -> 2.4: section 23).
from cython cimport floating
from libc.string cimport memset

from _arrays cimport Tensor
from _block_moments cimport row_block
from _job cimport Job
from _plan cimport MIN_SPLIT_VALUES

cdef enum:
    RUN_BYTES = 256         # runs shorter than this (64 float32 values: there the run loops,
                            # eight whole vectors a run, were as fast)
    MIN_RUN_ROWS = 4        # at least one four-row step of the row loops
    MAX_RUN_ROWS = 32       # reductions: 32 values per lane in the type computed in (the
                            # statistics: 8 additions of four-row sums), half what the
                            # channels-last reductions allow (MAX_ROW_BLOCK)
    MAX_TABLE_BYTES = 8192  # a repeated table's row (C*S values): the tables stay in L1
    TILE_BYTES = 1024       # channels-last: long rows of at most this many bytes ...
    MIN_TILE = 4            # ... of at least this many short rows ...
    MAX_TILED_ROWS = 64     # ... and at most this many long rows (summed in the type computed
                            # in, as the channels-last reductions' blocks of MAX_ROW_BLOCK)


cdef inline bint adjacent_runs(Tensor t) noexcept nogil:
    """Whether t's runs of one sample follow one another (an absent operand: yes)."""
    return t.data == NULL or t.sc == t.S or t.C == 1


cdef inline bint runs_as_rows(const Job* job) noexcept nogil:
    """Whether job's channels-first passes run as rows (see above): short
    runs, each sample's adjacent in x, dy and the output, channels reduced
    in one piece, few enough samples and values per sample, and a tensor
    that the layers run on one thread (the reductions run on one). Depends
    on the shape and strides only."""
    cdef Tensor x = job.x
    cdef Py_ssize_t table_item = 4 if job.f32 else 8
    return (job.channels_first and job.pieces == 1
            and x.S * job.itemsize < RUN_BYTES
            and MIN_RUN_ROWS <= x.N <= MAX_RUN_ROWS
            and x.C * x.S * table_item <= MAX_TABLE_BYTES
            and x.N * x.C * x.S < MIN_SPLIT_VALUES
            and adjacent_runs(x) and adjacent_runs(job.dy) and adjacent_runs(job.out))


cdef inline bint adjacent_rows(Tensor t) noexcept nogil:
    """Whether t's rows follow one another (an absent operand: yes)."""
    return t.data == NULL or t.sn == t.C or t.N == 1


cdef inline Py_ssize_t row_tiles(const Job* job) noexcept nogil:
    """Channels-last: how many rows make one long row (k, a power of two
    dividing the row count; see above), or 0 when the rows are not tiled:
    rows shorter than RUN_BYTES, adjacent in x, dy and the output, a tensor
    that the layers run on one thread (the reductions run on one), and at
    most MAX_TILED_ROWS long rows. Depends on the shape and strides only."""
    cdef Tensor x = job.x
    cdef Py_ssize_t k = 1
    if (job.channels_first or x.C * job.itemsize >= RUN_BYTES
            or x.N * x.C >= MIN_SPLIT_VALUES
            or not (adjacent_rows(x) and adjacent_rows(job.dy) and adjacent_rows(job.out))):
        return 0
    while 2 * k * x.C * job.itemsize <= TILE_BYTES and x.N % (2 * k) == 0:
        k *= 2
    return k if k >= MIN_TILE and x.N // k <= MAX_TILED_ROWS else 0


cdef struct LongRows:
    # How a job's operands are seen as long rows: copies * C channels * run
    # positions each; position p of a long row belongs to channel (p // run) % C.
    Py_ssize_t copies   # short rows per long row (channels-last: k), 1 for runs; 0: none
    Py_ssize_t run      # positions per channel in a copy (channels-first: S), 1 for rows


cdef inline LongRows long_rows(const Job* job) noexcept nogil:
    """The long rows job's passes take (runs_as_rows, row_tiles), or copies 0."""
    cdef LongRows lr
    lr.copies = 0
    lr.run = 1
    if runs_as_rows(job):
        lr.copies = 1
        lr.run = job.x.S
    else:
        lr.copies = row_tiles(job)
    return lr


cdef inline Py_ssize_t row_length(LongRows lr, Py_ssize_t C) noexcept nogil:
    return lr.copies * C * lr.run


cdef inline Tensor as_long_rows(Tensor t, LongRows lr) noexcept nogil:
    """t's (N, C, S) adjacent runs or (M, C) adjacent rows as long rows."""
    t.N = t.N // lr.copies
    t.C = t.C * t.S * lr.copies
    t.sn = t.sn * lr.copies
    t.S = 1
    t.sc = 1
    return t


cdef inline void long_rows_job(const Job* job, Job* rows, LongRows lr, void* coef,
                               const void* relu_coef) noexcept nogil:
    """rows = job over its long rows, with coefficient tables of their length
    (see expanded)."""
    rows[0] = job[0]
    rows.x = as_long_rows(job.x, lr)
    rows.dy = as_long_rows(job.dy, lr)
    rows.out = as_long_rows(job.out, lr)
    rows.channels_first = False
    rows.block_rows = row_block(rows.x.C, job.itemsize)
    rows.units = (rows.x.N + rows.block_rows - 1) // rows.block_rows
    rows.tables.coef = coef
    rows.tables.relu_coef = relu_coef


cdef inline void expanded(const floating* table, Py_ssize_t nrows, Py_ssize_t C, LongRows lr,
                          floating* out) noexcept nogil:
    """out (nrows, row_length) = table (nrows, C) with each entry at every
    position of its channel (copies times, run times each)."""
    cdef Py_ssize_t r, j, c, i
    cdef floating v
    for r in range(nrows):
        for j in range(lr.copies):
            if lr.run == 1:   # (rows: the table's row again, in a loop the compiler vectorises)
                for c in range(C):
                    out[(r * lr.copies + j) * C + c] = table[r * C + c]
                continue
            for c in range(C):
                v = table[r * C + c]
                for i in range(lr.run):
                    out[((r * lr.copies + j) * C + c) * lr.run + i] = v


cdef inline void zeroed(floating* p, Py_ssize_t n) noexcept nogil:
    memset(p, 0, n * sizeof(floating))


