# Facts about the build and the OpenMP runtime, and the memory-floor reference.
from _openmp_helpers cimport CBN_OPENMP_ENABLED, omp_get_max_threads

cdef extern from *:
    """
    #ifndef CBN_BUILD_FLAGS
    #define CBN_BUILD_FLAGS "unknown"
    #endif
    """
    const char* CBN_BUILD_FLAGS


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CBN_OPENMP_ENABLED)


def omp_max_threads():
    """The OpenMP runtime's default team size (respects OMP_NUM_THREADS)."""
    return omp_get_max_threads()


def build_flags():
    """Compiler command and flags the kernels were built with."""
    return CBN_BUILD_FLAGS.decode("utf-8", "replace")
