# Checked access to ndarray arguments through the NumPy C API.
#
# Typed memoryviews cost ~0.7 us per argument to acquire (5.5 us for a
# 7-array kernel call, more than a whole small batch norm); these checks cost
# tens of nanoseconds and keep the kernels safe from a caller's mistake.
cimport numpy as cnp
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc

from _loops cimport CBN_BF16, CBN_F16, CBN_F32, CBN_F64


cdef inline cnp.ndarray checked(object a, str name, int ndim, int typenum, bint writable):
    """a as an ndarray of ndim dims and typenum, aligned, innermost axis contiguous."""
    cdef cnp.ndarray arr
    cdef Py_ssize_t inner
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {cnp.PyArray_NDIM(arr)}")
    if cnp.PyArray_TYPE(arr) != typenum:
        raise TypeError(f"{name}: expected {cnp.PyArray_DescrFromType(typenum)}, "
                        f"got {(<object>arr).dtype}")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{name}: expected aligned data")
    inner = cnp.PyArray_STRIDES(arr)[ndim - 1]
    if cnp.PyArray_DIMS(arr)[ndim - 1] > 1 and inner != cnp.PyArray_ITEMSIZE(arr):
        raise ValueError(f"{name}: expected a contiguous last axis, got stride {inner}")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name}: expected a writable array, got a read-only one")
    return arr


cdef inline cnp.ndarray checked_like(object a, str name, cnp.ndarray like, bint writable):
    """a with the dtype, ndim and shape of like."""
    cdef cnp.ndarray arr = checked(a, name, cnp.PyArray_NDIM(like), cnp.PyArray_TYPE(like),
                                   writable)
    cdef int d
    for d in range(cnp.PyArray_NDIM(like)):
        if cnp.PyArray_DIMS(arr)[d] != cnp.PyArray_DIMS(like)[d]:
            raise ValueError(f"{name}: expected shape {(<object>like).shape}, "
                             f"got {(<object>arr).shape}")
    return arr


cdef inline cnp.ndarray checked_table(object a, str name, Py_ssize_t rows, Py_ssize_t C,
                                      int typenum, bint writable):
    """a as a C-contiguous (rows, C) array (per-channel vectors, row by row)."""
    cdef cnp.ndarray arr = checked(a, name, 2, typenum, writable)
    if cnp.PyArray_DIMS(arr)[0] != rows or cnp.PyArray_DIMS(arr)[1] != C:
        raise ValueError(f"{name}: expected shape ({rows}, {C}), got {(<object>arr).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name}: expected a C-contiguous array")
    return arr


cdef inline cnp.ndarray checked_vector(object a, str name, Py_ssize_t C, int typenum,
                                       bint writable):
    """a as a contiguous (C,) array, or None."""
    cdef cnp.ndarray arr
    if a is None:
        return None
    arr = checked(a, name, 1, typenum, writable)
    if cnp.PyArray_DIMS(arr)[0] != C:
        raise ValueError(f"{name}: expected shape ({C},), got {(<object>arr).shape}")
    return arr


cdef inline Py_ssize_t elem_stride(cnp.ndarray a, int dim) noexcept:
    return cnp.PyArray_STRIDES(a)[dim] // cnp.PyArray_ITEMSIZE(a)


cdef struct Tensor:
    # An array's data and geometry in one of the two canonical views:
    # channels-first (3-D): N runs of S per channel; strides sn (batch), sc (channel)
    # channels-last (2-D): N rows of C channels, row stride sn; S = 1, sc = 1
    void* data
    Py_ssize_t N
    Py_ssize_t C
    Py_ssize_t S
    Py_ssize_t sn   # strides in elements
    Py_ssize_t sc
    int flags       # how an output is written: CBN_STREAM, CBN_RELU, CBN_FIXED (cbn_loops.h)


cdef inline Tensor tensor(cnp.ndarray a) noexcept:
    cdef Tensor t
    t.data = cnp.PyArray_DATA(a)
    t.N = cnp.PyArray_DIMS(a)[0]
    t.C = cnp.PyArray_DIMS(a)[1]
    t.sn = elem_stride(a, 0)
    if cnp.PyArray_NDIM(a) == 3:
        t.S = cnp.PyArray_DIMS(a)[2]
        t.sc = elem_stride(a, 1)
    else:
        t.S = 1
        t.sc = 1
    t.flags = 0
    return t


cdef inline Py_ssize_t run_bytes(Tensor t, Py_ssize_t itemsize) noexcept:
    """Bytes of one contiguous run (channels-first) or row (channels-last)."""
    return (t.S if t.S > 1 else t.C) * itemsize


cdef inline int typenum_kind(int typenum) noexcept:
    """CBN_F32, CBN_F64 or CBN_F16 for NumPy's type number of that type, else
    -1 (bfloat16's type number is the one its extension was given at run time)."""
    if typenum == cnp.NPY_FLOAT32:
        return CBN_F32
    if typenum == cnp.NPY_FLOAT64:
        return CBN_F64
    if typenum == cnp.NPY_FLOAT16:
        return CBN_F16
    return -1


cdef inline int input_kind(object x, str name) except -1:
    """The data type (CBN_F32, CBN_F64, CBN_F16, CBN_BF16) of a 2-D (M, C) or
    3-D (N, C, S) float array. bfloat16 is a dtype an extension registers
    (ml_dtypes), with a type number of its own: it is known by name and size."""
    cdef int kind
    if not cnp.PyArray_Check(x):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if cnp.PyArray_NDIM(<cnp.ndarray>x) not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D (M, C) or 3-D (N, C, S) array")
    kind = typenum_kind(cnp.PyArray_TYPE(<cnp.ndarray>x))
    if kind >= 0:
        return kind
    if x.dtype.itemsize == 2 and x.dtype.type.__name__ == "bfloat16":   # (see _dtypes.py)
        return CBN_BF16
    raise TypeError(f"{name}: expected float32, float64, float16 or bfloat16, got {x.dtype}")


cdef inline int checked_threads(int nthreads) except -1:
    if nthreads < 1:
        raise ValueError(f"nthreads: expected >= 1, got {nthreads}")
    return nthreads


cdef inline void* scratch(Py_ssize_t nbytes) except NULL:
    """Working memory; release it with free_scratch in a finally clause.

    Python's raw allocator (malloc underneath, safe without the GIL) so that
    tracemalloc sees the kernels' scratch alongside NumPy's arrays.
    """
    cdef void* p = PyMem_RawMalloc(max(<Py_ssize_t>1, nbytes))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline void free_scratch(void* p) noexcept:
    PyMem_RawFree(p)
