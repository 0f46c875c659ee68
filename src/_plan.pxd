# How a tensor is cut into work units, and how outputs are written. The cut
# depends on the shape only, never on the thread count, and partial results
# are merged in a fixed order: results are bitwise identical for any number of
# threads.

from _arrays cimport Tensor

cdef enum:
    MIN_CHANNEL_UNITS = 32       # channels-first: split channels over N below this many ...
    MIN_SPLIT_VALUES = 65536     # ... unless the tensor is too small to run on two threads
    MAX_ROW_PARTS = 16           # channels-last: at most this many row ranges ...
    MIN_ROWS_PER_PART = 64       # ... of at least this many rows
    MIN_STREAM_RUN_BYTES = 256   # shorter runs/rows are mostly partial cache lines
    PARALLEL_CHANNELS = 256      # per-channel finishing work (merges, sqrt) in parallel from here
    FUSE_MIN_BYTES = 262144      # below this the whole input stays in L2 between passes
    UNIT_VALUES = 2048           # channels-first elementwise passes: values per work unit
    ROWS4_MAX_BYTES = 4194304    # channels-last output passes: four rows at a time up to this


cdef extern from "cbn_loops.h" nogil:
    Py_ssize_t cbn_stream_threshold()


cdef inline Py_ssize_t channel_parts(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    """Pieces each channel of a channels-first (N, C, S) tensor is split into over N."""
    cdef Py_ssize_t parts
    if C >= MIN_CHANNEL_UNITS or N * C * S < MIN_SPLIT_VALUES:
        return 1
    parts = (MIN_CHANNEL_UNITS + C - 1) // C
    return max(1, min(parts, N))


cdef inline bint fuse_by_channel(Tensor x, Py_ssize_t bytes_per_value) noexcept nogil:
    """Channels-first: statistics and output of one channel at a time (its values
    still in cache for the second pass) rather than separate passes, the output
    pass in memory order. Fusing saves a DRAM read once the input outgrows L2;
    below that memory order is faster (no L1 set conflicts between runs 4 KiB
    apart). Needs unsplit channels; depends on the shape only."""
    return (channel_parts(x.N, x.C, x.S) == 1
            and x.N * x.C * x.S * bytes_per_value > FUSE_MIN_BYTES)


cdef inline Py_ssize_t channels_per_unit(Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    """Channels-first elementwise passes (memory order): one sample's runs of
    this many consecutive channels per work unit, about UNIT_VALUES values, so
    that short runs do not pay a call each."""
    return max(1, min(C, UNIT_VALUES // max(S, 1)))


cdef inline Py_ssize_t row_parts(Py_ssize_t M) noexcept nogil:
    """Row ranges of a channels-last (M, C) tensor reduced separately, then merged."""
    return max(1, min(MAX_ROW_PARTS, M // MIN_ROWS_PER_PART))


cdef inline Py_ssize_t part_start(Py_ssize_t total, Py_ssize_t parts, Py_ssize_t k) noexcept nogil:
    return (total * k) // parts


cdef inline bint streams(Py_ssize_t nbytes, Py_ssize_t run_bytes) noexcept nogil:
    """Whether an output of nbytes, in contiguous runs of run_bytes, is written
    with streaming (non-temporal) stores.

    Outputs larger than half the last-level cache are not read back from
    cache anyway; streaming them skips the read-for-ownership of every line
    and keeps the inputs in cache. (At 12.8 MB on a 32 MiB L3 ordinary stores
    were faster; at 25.7 MB streaming saved 15-20% of a training forward.)
    """
    return nbytes >= cbn_stream_threshold() and run_bytes >= MIN_STREAM_RUN_BYTES


cdef inline bint interleaves_rows(Py_ssize_t nbytes) noexcept nogil:
    """Whether the channels-last output loops take four rows per load of the
    coefficients (CBN_ROWS4) for an output of nbytes: loads bound them on
    tensors in cache (one thread, Zen 3: 24 KB 15% faster, 1 MB the same to
    7% faster), but at 12.8 MB the eight interleaved streams were 8-15%
    slower than two (asv_bench/NOTES.md section 22)."""
    return nbytes <= ROWS4_MAX_BYTES
