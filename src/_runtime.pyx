# Facts about the build and the OpenMP runtime, the memory-floor reference, and
# the one step in which a call changes a layer's state.
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from _loops cimport cbn_loops_isa, init_loops
from _plan cimport cbn_stream_threshold
from _openmp_helpers cimport CBN_OPENMP_ENABLED, omp_get_max_threads

cnp.import_array()
init_loops()

cdef extern from *:
    """
    #ifndef CBN_BUILD_FLAGS
    #define CBN_BUILD_FLAGS "unknown"
    #endif
    #ifndef CBN_SERIAL_REQUESTED
    #define CBN_SERIAL_REQUESTED 0
    #endif
    """
    const char* CBN_BUILD_FLAGS
    int CBN_SERIAL_REQUESTED


def serial_requested():
    """True when the build was asked for serial kernels (CBN_DISABLE_OPENMP)."""
    return bool(CBN_SERIAL_REQUESTED)


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CBN_OPENMP_ENABLED)


def omp_max_threads():
    """The OpenMP runtime's default team size (respects OMP_NUM_THREADS)."""
    return omp_get_max_threads()


def loops_isa():
    """The instruction set the vectorised loops use in this process."""
    return cbn_loops_isa().decode()


def stream_threshold():
    """Output bytes from which the kernels write with streaming stores (see
    cbn_loops.h: half the reported last-level cache, bounded, or
    CBN_STREAM_BYTES)."""
    return cbn_stream_threshold()


def build_flags():
    """Compiler command and flags the kernels were built with."""
    return CBN_BUILD_FLAGS.decode("utf-8", "replace")


cdef enum:
    MAX_CHUNK_BYTES = 1 << 20


cdef Py_ssize_t chunk_items(Py_ssize_t n, Py_ssize_t itemsize, int nthreads) noexcept:
    """Items per chunk of the floors' parallel passes over n items: an equal
    share per thread, at most 1 MiB, a multiple of a 64-byte cache line."""
    cdef Py_ssize_t line = 64 // itemsize
    cdef Py_ssize_t chunk = min(<Py_ssize_t>MAX_CHUNK_BYTES // itemsize,
                                (n + nthreads - 1) // nthreads)
    return max(line, (chunk + line - 1) // line * line)


def parallel_copy(const unsigned char[::1] src, unsigned char[::1] dst, int nthreads):
    """dst[:] = src[:] with nthreads threads: the memory floor of a kernel that
    reads its input once and writes its output once."""
    cdef Py_ssize_t n = src.shape[0], chunk, chunks, k, start
    if dst.shape[0] != n:
        raise ValueError(f"dst: expected {n} bytes, got {dst.shape[0]}")
    if nthreads < 1:
        raise ValueError(f"nthreads: expected >= 1, got {nthreads}")
    if n == 0:
        return
    chunk = chunk_items(n, 1, nthreads)
    chunks = (n + chunk - 1) // chunk
    # one thread: no OpenMP region, as the kernels (a region costs ~0.7 us,
    # which would flatter cbn against the floor on small tensors)
    with nogil:
        if nthreads == 1:
            memcpy(&dst[0], &src[0], n)
        else:
            for k in prange(chunks, num_threads=nthreads, schedule="static"):
                start = k * chunk
                memcpy(&dst[start], &src[start], min(chunk, n - start))


cdef inline uint64_t word_sum(const uint64_t* w, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """w[start] + ... + w[stop - 1], modulo 2**64."""
    cdef uint64_t total = 0
    cdef Py_ssize_t i
    for i in range(start, stop):
        total = total + w[i]
    return total


def parallel_read(const unsigned char[::1] src, int nthreads):
    """The sum of src's bytes as 64-bit words (any tail bytes ignored), with
    nthreads threads: the memory floor of one pass that only reads src.
    Returns the sum (modulo 2**64) so that the reads cannot be optimised away."""
    cdef Py_ssize_t words = src.shape[0] // 8, chunk, chunks, k
    cdef const uint64_t* w = <const uint64_t*>&src[0] if src.shape[0] else NULL
    cdef uint64_t total = 0
    if nthreads < 1:
        raise ValueError(f"nthreads: expected >= 1, got {nthreads}")
    if words == 0:
        return 0
    chunk = chunk_items(words, 8, nthreads)
    chunks = (words + chunk - 1) // chunk
    with nogil:
        if nthreads == 1:   # no OpenMP region (see parallel_copy)
            total = word_sum(w, 0, words)
        else:
            for k in prange(chunks, num_threads=nthreads, schedule="static"):
                total += word_sum(w, k * chunk, min(k * chunk + chunk, words))
    return total


def commit(list copies, list assignments):
    """Apply a call's changes to layer state at once, after checking them all.

    copies: (dst, src) pairs of arrays of equal shape and dtype, dst[...] = src;
    assignments: (obj, name, value) triples, stored in obj.__dict__ (plain
    attributes, no descriptors). Compiled code runs no Python bytecode
    between the changes, so nothing Python-level (a KeyboardInterrupt
    handler, a trace function) can stop it half-way: the state is either all
    old or all new.
    """
    cdef cnp.ndarray dst, src
    cdef tuple pair, triple
    cdef list namespaces = []
    cdef int d
    for pair in copies:
        dst, src = pair
        if (cnp.PyArray_NDIM(dst) != cnp.PyArray_NDIM(src)
                or cnp.PyArray_TYPE(dst) != cnp.PyArray_TYPE(src)):
            raise ValueError(f"copies: expected arrays of equal shapes and dtypes, got "
                             f"{(<object>dst).dtype} {(<object>dst).shape} and "
                             f"{(<object>src).dtype} {(<object>src).shape}")
        for d in range(cnp.PyArray_NDIM(dst)):
            if cnp.PyArray_DIMS(dst)[d] != cnp.PyArray_DIMS(src)[d]:
                raise ValueError(f"copies: expected arrays of equal shapes, got "
                                 f"{(<object>dst).shape} and {(<object>src).shape}")
        if not cnp.PyArray_ISWRITEABLE(dst):
            raise ValueError("copies: expected writable destinations, got a read-only one")
    for triple in assignments:
        namespaces.append(<dict?>(triple[0].__dict__))
    for pair in copies:
        cnp.PyArray_CopyInto(<cnp.ndarray>pair[0], <cnp.ndarray>pair[1])
    for d in range(len(assignments)):
        triple = <tuple>assignments[d]
        (<dict>namespaces[d])[triple[1]] = triple[2]
