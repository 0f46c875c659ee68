# How a tensor is cut into work units. The cut depends on the shape only, never
# on the thread count, and partial results are merged in a fixed order: results
# are bitwise identical for any number of threads.

cdef enum:
    MIN_CHANNEL_UNITS = 32    # channels-first: split channels over N below this many
    MAX_ROW_PARTS = 16        # channels-last: at most this many row ranges ...
    MIN_ROWS_PER_PART = 64    # ... of at least this many rows


cdef inline Py_ssize_t channel_parts(Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    """Pieces each channel of a channels-first (N, C, S) tensor is split into over N."""
    cdef Py_ssize_t parts
    if C >= MIN_CHANNEL_UNITS:
        return 1
    parts = (MIN_CHANNEL_UNITS + C - 1) // C
    return max(1, min(parts, N))


cdef inline Py_ssize_t row_parts(Py_ssize_t M) noexcept nogil:
    """Row ranges of a channels-last (M, C) tensor reduced separately, then merged."""
    return max(1, min(MAX_ROW_PARTS, M // MIN_ROWS_PER_PART))


cdef inline Py_ssize_t part_start(Py_ssize_t total, Py_ssize_t parts, Py_ssize_t k) noexcept nogil:
    return (total * k) // parts
