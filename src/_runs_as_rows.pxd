# Channels-first tensors of short runs (H*W of a few dozen values) passed
# over as rows.
#
# When a sample's C runs of S values lie one after the other in memory, the
# sample is one row of C*S values, and a table whose entries repeat each
# channel's S times makes every channels-first pass a channels-last one: the
# row loops take four rows per load of their per-position coefficients,
# where the run loops paid a call, a coefficient load, a loop set-up and
# scalar tails per run of a few vectors (a 16x32x2x2 training forward 4.6x
# faster, 16x16x7x7 1.2x; at 64 float32 values a run the two were as fast:
# asv_bench/NOTES.md section 23). Reductions sum per position over the rows
# in the type computed in (at most MAX_RUN_ROWS rows), then each channel's S
# positions in float64 (position_totals, cbn_per_channel.h).
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


cdef inline Tensor as_rows(Tensor t) noexcept nogil:
    """t's (N, C, S) runs (adjacent: see adjacent_runs) as N rows of C*S values."""
    t.C = t.C * t.S
    t.S = 1
    t.sc = 1
    return t


cdef inline void rows_job(const Job* job, Job* rows, void* coef, const void* relu_coef) noexcept nogil:
    """rows = job over its rows (as_rows), with coefficient tables of C*S
    columns (repeated: see repeated)."""
    rows[0] = job[0]
    rows.x = as_rows(job.x)
    rows.dy = as_rows(job.dy)
    rows.out = as_rows(job.out)
    rows.channels_first = False
    rows.block_rows = row_block(rows.x.C, job.itemsize)
    rows.units = (rows.x.N + rows.block_rows - 1) // rows.block_rows
    rows.tables.coef = coef
    rows.tables.relu_coef = relu_coef


cdef inline void repeated(const floating* table, Py_ssize_t nrows, Py_ssize_t C, Py_ssize_t S,
                          floating* out) noexcept nogil:
    """out (nrows, C*S) = table (nrows, C) with each entry repeated S times."""
    cdef Py_ssize_t r, c, i
    cdef floating v
    for r in range(nrows):
        for c in range(C):
            v = table[r * C + c]
            for i in range(S):
                out[(r * C + c) * S + i] = v


cdef inline void zeroed(floating* p, Py_ssize_t n) noexcept nogil:
    memset(p, 0, n * sizeof(floating))
