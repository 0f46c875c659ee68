# OpenMP entry points that also compile without OpenMP: the fallbacks make a
# serial build behave like a one-thread team.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CBN_OPENMP_ENABLED 1
    #else
    #define CBN_OPENMP_ENABLED 0
    #define omp_get_max_threads() 1
    #define omp_get_thread_num() 0
    #define omp_get_num_threads() 1
    #endif
    """
    bint CBN_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
