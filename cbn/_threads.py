"""How many threads the kernels use.

The count is decided here, in Python, and passed to every kernel: the value set
with :func:`set_num_threads`, else the OpenMP default (``OMP_NUM_THREADS``, or
what threadpoolctl set, or the CPUs available), capped so that each thread gets
at least ``MIN_ELEMENTS_PER_THREAD`` values (small tensors run serially: a
thread team costs more than it saves on them).

In a child created by fork() (multiprocessing's "fork" start method, data
loader workers) the kernels run on one thread, which never enters OpenMP: GNU
OpenMP's thread pool does not survive fork, and the first parallel region in
the child would wait forever for threads that no longer exist. Use the
"spawn" or "forkserver" start method for multi-threaded kernels in workers.
"""
import os
import operator

from . import _runtime

MIN_ELEMENTS_PER_THREAD = 32768

_requested = None
_forked = False


def _after_fork_in_child():
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def openmp_enabled():
    """Whether the kernels were compiled with OpenMP.

    Returns
    -------
    bool
        True for an OpenMP build; a serial build runs every kernel on one thread.
    """
    return _runtime.openmp_enabled()


def set_num_threads(n):
    """Set the number of threads the kernels use.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None for the OpenMP default
        (``OMP_NUM_THREADS``, threadpoolctl's limit, or the CPUs available).
        Small tensors still run on fewer threads.
    """
    global _requested
    if n is None:
        _requested = None
        return
    if isinstance(n, bool):
        raise TypeError(f"n: expected a positive int or None, got bool {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n: expected a positive int or None, got {type(n).__name__} {n!r}") from None
    if n < 1:
        raise ValueError(f"n: expected a positive int or None, got {n}")
    _requested = n


def get_num_threads():
    """The number of threads a large kernel call uses.

    Returns
    -------
    int
        The count set with :func:`set_num_threads`, else the OpenMP
        default; 1 in a serial build or a fork()ed child.
    """
    if _forked or not _runtime.openmp_enabled():
        return 1
    if _requested is not None:
        return _requested
    return _runtime.omp_max_threads()


def num_threads_source():
    """Where :func:`get_num_threads` gets its value: a short description."""
    if not _runtime.openmp_enabled():
        return "serial build (no OpenMP)"
    if _forked:
        return "a fork()ed child: serial, as OpenMP threads do not survive fork"
    if _requested is not None:
        return "cbn.set_num_threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS"
    return "OpenMP default"


def available_cpus():
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def threads_for(size):
    """Threads for a kernel over ``size`` values."""
    if size < 2 * MIN_ELEMENTS_PER_THREAD:
        return 1
    return max(1, min(get_num_threads(), size // MIN_ELEMENTS_PER_THREAD))
