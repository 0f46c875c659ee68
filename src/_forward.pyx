# Forward kernels: channel statistics, normalisation, and both fused.
#
# Two canonical views: channels-first (N, C, S), each (n, c) a contiguous run
# of S values, and channels-last (M, C), each row a contiguous run of C
# channels; 3-D arrays are the first, 2-D the second. Only the innermost axis
# must be contiguous. Each entry point fills and checks a Job (_job.pxd),
# then run_and_free dispatches on the type computed in once; each kernel
# branches on the layout. Loop bodies take (compute, job, i) and run through
# for_each.
cimport numpy as cnp
from libc.string cimport memcpy

from _arrays cimport checked, checked_vector
from _forward_kernels cimport MOMENTS, NORMALIZE, TRAIN, begin_affine, forward_run
from _job cimport Job, begin, f64_table
from _loops cimport init_loops, move_running

cnp.import_array()
init_loops()


# ---------------------------------------------------------------- entry points

def moments(x, out, int nthreads):
    """out[0] = per-channel mean, out[1] = M2 (sum of squared deviations), float64;
    returns the count of values per channel."""
    cdef Job job
    cdef cnp.ndarray xa = begin(&job, x, nthreads)
    job.tables.moments = f64_table(out, "out", 2, xa, True)
    forward_run(MOMENTS, &job)
    return job.x.N * job.x.S


def normalize(x, y, weight, bias, double eps, mean, var, double count, relu_coef, int nthreads):
    """y = weight * (x - mean) / sqrt(var + eps) + bias; mean, var: (C,)
    float32 or float64 (the same), e.g. the running statistics. x: float32,
    float64, float16 or bfloat16; y has its dtype, weight, bias and relu_coef
    that of the type computed in (float64 for float64 x, else float32).
    Returns whether some value of y is +-inf though its x is finite (2-byte
    x only: past the type's range).

    Ten parameters, one per argument (as PyTorch's batch_norm): bundling mean
    and var would cost every eval forward a copy into a table.
    count: values per channel when mean and var are x's own (biased)
    statistics (batch renormalisation, synchronised statistics), else 0.
    relu_coef: None, or for a fused ReLU (y = max(y, 0)) a (3, C) array
    receiving the coefficients used, [shift, scale, offset] with
    y = (x - shift) * scale + offset (what backward needs).
    """
    cdef Job job
    cdef cnp.ndarray xa = begin_affine(&job, x, y, weight, bias, eps, relu_coef, nthreads)
    cdef cnp.ndarray stats = mean_var_table(mean, var, xa)
    job.tables.stats = <double*>cnp.PyArray_DATA(stats)
    job.count = count
    return forward_run(NORMALIZE, &job)


cdef cnp.ndarray mean_var_table(object mean, object var, cnp.ndarray x):
    """[mean, var] as a new float64 (2, C) array; mean and var (C,) float32 or
    float64 arrays of the same dtype."""
    cdef Py_ssize_t c, C = cnp.PyArray_DIMS(x)[1]
    cdef int typenum = (cnp.PyArray_TYPE(<cnp.ndarray>mean) if cnp.PyArray_Check(mean)
                        else cnp.NPY_FLOAT64)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"mean, var: expected float32 or float64 arrays, got {mean.dtype}")
    cdef cnp.ndarray ma = checked_vector(mean, "mean", C, typenum, False)
    cdef cnp.ndarray va = checked_vector(var, "var", C, typenum, False)
    if ma is None or va is None:
        raise TypeError("mean, var: expected arrays, got None")
    cdef cnp.npy_intp dims[2]
    dims[0] = 2
    dims[1] = C
    cdef cnp.ndarray table = cnp.PyArray_SimpleNew(2, dims, cnp.NPY_FLOAT64)
    cdef double* t = <double*>cnp.PyArray_DATA(table)
    if typenum == cnp.NPY_FLOAT32:
        for c in range(C):
            t[c] = (<const float*>cnp.PyArray_DATA(ma))[c]
            t[C + c] = (<const float*>cnp.PyArray_DATA(va))[c]
    else:
        memcpy(t, cnp.PyArray_DATA(ma), C * sizeof(double))
        memcpy(t + C, cnp.PyArray_DATA(va), C * sizeof(double))
    return table


def train_forward(x, y, weight, bias, double eps, stats, relu_coef, int nthreads):
    """Training forward: y, and stats = [mean, invstd, biased var] (float64 (3, C)).

    The running statistics are the caller's to update (cbn._ops), from stats.
    Types, relu_coef and the result as for normalize.
    """
    cdef Job job
    cdef cnp.ndarray xa = begin_affine(&job, x, y, weight, bias, eps, relu_coef, nthreads)
    job.tables.stats = f64_table(stats, "stats", 3, xa, True)
    if job.x.N * job.x.S < 2:
        raise ValueError("x: expected more than 1 value per channel")
    job.rows_last_first = True   # the output pass follows the statistics' reduction
    return forward_run(TRAIN, &job)



def moved_running_stats(running_mean, running_var, mean, var, double var_scale, double momentum):
    """The running statistics moved towards the batch's (float64 (C,) mean, and
    var * var_scale, e.g. count / (count - 1)), as new arrays: (new_mean,
    new_var, kept), kept a bool (C,) array marking the channels left as they
    were, or None when there are none. The running statistics are not changed."""
    if not cnp.PyArray_Check(running_mean):
        raise TypeError("running_mean: expected a numpy.ndarray")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>running_mean)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"running_mean: expected float32 or float64, got {running_mean.dtype}")
    cdef cnp.ndarray rma = checked(running_mean, "running_mean", 1, typenum, False)
    cdef Py_ssize_t C = cnp.PyArray_DIMS(rma)[0]
    cdef cnp.ndarray rva = checked_vector(running_var, "running_var", C, typenum, False)
    cdef cnp.ndarray ma = checked_vector(mean, "mean", C, cnp.NPY_FLOAT64, False)
    cdef cnp.ndarray va = checked_vector(var, "var", C, cnp.NPY_FLOAT64, False)
    if rva is None or ma is None or va is None:
        raise TypeError("running_var, mean, var: expected arrays, got None")
    cdef cnp.npy_intp dims[1]
    dims[0] = C
    cdef cnp.ndarray nma = cnp.PyArray_NewCopy(rma, cnp.NPY_CORDER)
    cdef cnp.ndarray nva = cnp.PyArray_NewCopy(rva, cnp.NPY_CORDER)
    cdef cnp.ndarray ka = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_BOOL)
    cdef const double* m = <const double*>cnp.PyArray_DATA(ma)
    cdef const double* v = <const double*>cnp.PyArray_DATA(va)
    cdef Py_ssize_t kept = move_running(typenum == cnp.NPY_FLOAT32, C, cnp.PyArray_DATA(nma),
                                        cnp.PyArray_DATA(nva), m, v, var_scale, momentum,
                                        <unsigned char*>cnp.PyArray_DATA(ka))
    return nma, nva, (ka if kept else None)
