# Per-channel coefficients of the affine maps the loops apply: a Job's
# tables handed to the loops of cbn_per_channel.h, which compute them in
# float64 and round them once to the type the loops compute in, a range of
# channels per call (vectorised over the channels).
from _job cimport Job
from _loops cimport given_coefficients, grad_input_coefficients, train_coefficients


cdef inline void training_coefficients(const Job* job, Py_ssize_t c0, Py_ssize_t c1,
                                       const double* mean, const double* m2,
                                       double count) noexcept nogil:
    """Channels c0..c1-1 of stats = [mean, invstd, biased var] and of the
    forward's coefficients, from their mean and M2 (channel c's at c - c0)
    over count values."""
    train_coefficients(job.f32, job.x.C, c0, c1, mean, m2, count, job.eps,
                       job.tables.weight, job.tables.bias, job.tables.stats, job.tables.coef)


cdef inline void given_stats_coefficients(const Job* job) noexcept nogil:
    """The forward's coefficients of every channel from stats = [mean, var]
    (given); job.count values behind them (for the shift's bound), or 0 when
    they are not x's."""
    given_coefficients(job.f32, job.x.C, 0, job.x.C, job.tables.stats, job.count, job.eps,
                       job.tables.weight, job.tables.bias, job.tables.coef)


cdef inline void dx_coefficients(const Job* job, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Channels c0..c1-1 of backward's (4, C) coefficients [shift, k_dy, k_x,
    k_0], from stats = [mean, invstd] and, with batch statistics, the sums."""
    grad_input_coefficients(job.f32, job.x.C, c0, c1, job.tables.stats,
                            job.tables.sums if job.batch_stats else NULL, job.count,
                            job.tables.weight, job.tables.coef)
