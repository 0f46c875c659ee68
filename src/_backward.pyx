# Backward kernels: the reductions sum(g) and sum(g * (x - mean)), and dx,
# alone and fused; g = dy, or with a fused ReLU dy where its output was
# positive. Same canonical views and Job conventions as _forward.pyx; dy, x
# and dx (one data type) may each have their own strides.
cimport numpy as cnp

from _backward_kernels cimport BACKWARD, GRAD_INPUT, GRAD_SUMS, backward_run
from _job cimport Job, begin, f64_table, f64_vector, operand, output, table_data, vector_data
from _loops cimport CBN_FIXED, init_loops

cnp.import_array()
init_loops()


# ---------------------------------------------------------------- entry points

def grad_sums(dy, x, mean, out, relu_coef, int nthreads):
    """out[0] = sum(g), out[1] = sum(g * (x - mean)) per channel, float64 (2, C);
    mean: float64 (C,); g = dy, or with a fused ReLU (relu_coef: the forward's
    (3, C) [shift, scale, offset], of the type computed in: float64 for
    float64 x, else float32) dy where its output was positive."""
    cdef Job job
    cdef cnp.ndarray xa = begin(&job, x, nthreads)
    job.dy = operand(dy, "dy", xa)
    job.tables.stats = f64_vector(mean, "mean", xa)
    job.tables.sums = f64_table(out, "out", 2, xa, True)
    job.tables.relu_coef = table_data(relu_coef, "relu_coef", 3, &job, False)
    backward_run(GRAD_SUMS, &job)


def backward(dy, x, dx, stats, weight, bint batch_stats, grads, relu_coef, int nthreads):
    """dx, and when grads is given, grads[0] = sum(g * xhat), grads[1] = sum(g).

    stats = [mean, invstd], float64 (2, C). batch_stats: they are the batch's own
    (training); otherwise they are fixed (eval) and dx = g * weight * invstd.
    g and relu_coef as for grad_sums; weight and grads of the type computed in.
    Returns whether some value of dx is +-inf though the dy (and with batch
    statistics the x) it was computed from is finite (2-byte x only: past
    the type's range, or with batch statistics in a channel whose sums an
    infinite dy made infinite or NaN; the caller tells which).
    """
    cdef Job job
    cdef cnp.ndarray xa = begin(&job, x, nthreads)
    job.dy = operand(dy, "dy", xa)
    job.out = output(dx, "dx", xa, 0 if batch_stats else CBN_FIXED)
    job.tables.stats = f64_table(stats, "stats", 2, xa, False)
    job.tables.weight = vector_data(weight, "weight", &job)
    job.tables.param_grads = table_data(grads, "grads", 2, &job, True)
    job.tables.relu_coef = table_data(relu_coef, "relu_coef", 3, &job, False)
    job.batch_stats = batch_stats
    job.count = <double>(job.x.N * job.x.S)
    job.rows_last_first = True   # dx follows the sums' reduction
    return backward_run(BACKWARD, &job)


def grad_input(dy, x, dx, stats, weight, sums, double count, relu_coef, int nthreads):
    """dx of training-mode batch norm from given sums and count, e.g. over every
    process of a distributed batch.

    sums = [sum(g), sum(g * (x - mean))] (float64 (2, C), as grad_sums gives,
    summed over the processes); count: values per channel in all of them;
    stats = [mean, invstd] as for backward; returns as backward.
    """
    cdef Job job
    cdef cnp.ndarray xa = begin(&job, x, nthreads)
    job.dy = operand(dy, "dy", xa)
    job.out = output(dx, "dx", xa, 0)
    job.tables.stats = f64_table(stats, "stats", 2, xa, False)
    job.tables.sums = f64_table(sums, "sums", 2, xa, False)
    job.tables.weight = vector_data(weight, "weight", &job)
    job.tables.relu_coef = table_data(relu_coef, "relu_coef", 3, &job, False)
    job.batch_stats = True
    job.count = count
    if not count > 0:
        raise ValueError(f"count: expected a positive count of values per channel, got {count}")
    return backward_run(GRAD_INPUT, &job)
