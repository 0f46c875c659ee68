# The layers' compiled call path: a BatchNorm layer's training forward, eval
# forward and backward in the common case, from the first check to the commit
# without Python code in between (warnings aside, issued before the commit).
#
# The common case: x (dy) a plain C-contiguous aligned ndarray of the layer's
# dtype and one of its shapes, out None or the same (x itself for in place),
# no virtual batches, no statistics observer, a count with room for the step.
# Anything else returns None and the layer takes its Python path
# (cbn/batchnorm.py), which checks, refuses and computes as it always has:
# so both accept and refuse the same inputs with the same messages. Both
# run the same kernels with the same arguments: results are bitwise equal.
#
# Layer state is read and written where the Python path keeps it: the
# layer's and its SharedState's instance dicts (plain attributes, as
# _runtime.commit writes them), through the C API, without Python code.
# The commit is two copies into the running statistics, the count and the
# saved forward: nothing in between can raise or run Python code.
#
# For tests, set_step_hook(k, hook) calls hook at the k-th step of the
# calls (counted from 0 by step()), which may raise there; steps_reached()
# says how many a call reached. Each step costs one compare of a C global.
cimport numpy as cnp
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.object cimport PyObject
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport expm1, isfinite, log1p, sqrt
from libc.string cimport memcpy, memset

from _arrays cimport Tensor, free_scratch, scratch, typenum_kind
from _backward_kernels cimport BACKWARD, backward_run
from _forward_kernels cimport NORMALIZE, TRAIN, forward_run
from _job cimport Job, output_tensor, plan
from _loops cimport CBN_BF16, CBN_F32, CBN_F64, CBN_FIXED, CBN_RELU, init_loops, move_running

from cbn import _threads

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewLikeArray(cnp.ndarray prototype, cnp.NPY_ORDER order, PyObject* descr,
                                int subok)

cnp.import_array()
init_loops()

cdef Py_ssize_t MIN_PARALLEL_SIZE = 2 * _threads.MIN_ELEMENTS_PER_THREAD
cdef long long INT64_MAX = 9223372036854775807

cdef bint enabled = True
cdef object step_hook = None
cdef int hook_at = -1
cdef int reached = 0


def set_enabled(bint value):
    """Take the compiled path where it applies (True, the default) or never
    (False: every call takes the Python path; for tests that compare them)."""
    global enabled
    enabled = value


def set_step_hook(int at, hook):
    """Call hook(at) at step ``at`` (from 0) of every compiled call, where it
    may raise (a fault) or look at the layer; at = -1 or hook None: none.
    For tests: the steps lie between the checks and the commit."""
    global step_hook, hook_at
    step_hook = hook
    hook_at = -1 if hook is None else at


def steps_reached():
    """The steps the last compiled call reached (see set_step_hook)."""
    return reached


cdef inline int step(int k) except -1:
    global reached
    reached = k + 1
    if k == hook_at:
        step_hook(k)
    return 0


# ---------------------------------------------------------------- the record

cdef class CompiledForward:
    """What backward needs of a forward that took the compiled path.

    x: the input (its kernel view has x's C order); layout; batch_stats,
    overwritten: as SavedForward's; affine: the layer's; eps; relu_coef: a
    fused ReLU's (3, C) coefficients, or None; parameters: an eval
    forward's copies (param_dtype (4, C): running_mean, running_var,
    weight, bias), else None. A training forward's statistics and weight
    live in memory of the record's own (no arrays made per call); stats
    (float64 (3, C) [mean, invstd, biased var]) and weight (the copy it
    scaled with, or None) give them as new arrays. cbn.batchnorm turns a
    record into a SavedForward for the Python path.
    """

    cdef readonly object x
    cdef readonly str layout
    cdef readonly bint batch_stats
    cdef readonly bint overwritten
    cdef readonly bint affine
    cdef readonly object parameters
    cdef readonly double eps
    cdef readonly object relu_coef
    cdef public object converted   # the SavedForward made of it, once asked for
    cdef Tensor view
    cdef bint channels_first
    cdef int kind
    cdef char* block               # training: stats (3 C float64), then the weight's copy
    cdef double* stats_data
    cdef void* weight_data         # NULL without a weight

    def __dealloc__(self):
        free_scratch(self.block)

    @property
    def stats(self):
        if self.stats_data == NULL:
            return None
        cdef cnp.ndarray table = new_table(3, self.view.C, cnp.NPY_FLOAT64)
        memcpy(cnp.PyArray_DATA(table), self.stats_data, cnp.PyArray_NBYTES(table))
        return table

    @property
    def weight(self):
        if self.weight_data == NULL:
            return None
        cdef cnp.npy_intp dims[1]
        dims[0] = self.view.C
        cdef cnp.ndarray copy = cnp.PyArray_EMPTY(
            1, dims, cnp.NPY_FLOAT64 if self.kind == CBN_F64 else cnp.NPY_FLOAT32, 0)
        memcpy(cnp.PyArray_DATA(copy), self.weight_data, cnp.PyArray_NBYTES(copy))
        return copy

    def __reduce__(self):
        raise TypeError("CompiledForward: convert it with the layer's _last_forward to pickle it")


# ---------------------------------------------------------------- checks

cdef inline object field(dict d, str name):
    """d[name], or None when absent (a layer's dict always has its fields)."""
    cdef PyObject* v = PyDict_GetItemWithError(d, name)
    return None if v == NULL else <object>v


cdef inline bint same_dtype(cnp.ndarray arr, object descr) noexcept:
    """arr's dtype is descr (the same object, as nearly always; else an
    equivalent one in native byte order: an unpickled layer's dtype is a copy)."""
    cdef object own = <object>cnp.PyArray_DESCR(arr)
    if own is descr:
        return True
    return (cnp.PyArray_ISNOTSWAPPED(arr)
            and cnp.PyArray_EquivTypes(<cnp.dtype>own, <cnp.dtype>descr))


cdef inline bint plain_array(object a, object descr, int ndim) noexcept:
    """a is a plain ndarray of dtype descr, ndim dims, C-contiguous and aligned."""
    cdef cnp.ndarray arr
    if type(a) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(arr) == ndim and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISALIGNED(arr) and same_dtype(arr, descr))


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef int d
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b):
        return False
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d]:
            return False
    return True


cdef inline bint overlaps(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether two C-contiguous arrays share bytes."""
    cdef char* a0 = <char*>cnp.PyArray_DATA(a)
    cdef char* b0 = <char*>cnp.PyArray_DATA(b)
    return a0 < b0 + cnp.PyArray_NBYTES(b) and b0 < a0 + cnp.PyArray_NBYTES(a)


cdef inline int output_role(object out, cnp.ndarray like, object descr) noexcept:
    """How a forward's out (backward's) relates to its input like: 0 not
    usable here (the Python path checks it), 1 a separate array, 2 like
    itself (in place)."""
    cdef cnp.ndarray o
    if not plain_array(out, descr, cnp.PyArray_NDIM(like)):
        return 0
    o = <cnp.ndarray>out
    if not (same_shape(o, like) and cnp.PyArray_ISWRITEABLE(o)):
        return 0
    if not overlaps(o, like):
        return 1
    return 2 if (cnp.PyArray_DATA(o) == cnp.PyArray_DATA(like) and same_strides(o, like)) else 0


cdef inline bint same_strides(cnp.ndarray a, cnp.ndarray b) noexcept:
    """(Of two arrays of one shape: size-1 axes may have any stride.)"""
    cdef int d
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_STRIDES(a)[d] != cnp.PyArray_STRIDES(b)[d]:
            return False
    return True


cdef inline bint kernel_view(cnp.ndarray x, bint nhwc, Tensor* t, bint* channels_first) noexcept:
    """x's kernel view as cbn._layout.canonicalize takes it for a C-contiguous
    x: (M, C) rows for NHWC data or no spatial extent (C > 1), else (N, C, S)
    runs; False for the rare shape it copies instead (NHWC, C = 1, ndim > 2)."""
    cdef int ndim = cnp.PyArray_NDIM(x)
    cdef Py_ssize_t N = cnp.PyArray_DIMS(x)[0]
    cdef Py_ssize_t C = cnp.PyArray_DIMS(x)[ndim - 1 if nhwc else 1]
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    cdef Py_ssize_t spatial
    if size == 0:
        return False
    spatial = size // (N * C)
    t.data = cnp.PyArray_DATA(x)
    t.C = C
    t.flags = 0
    if (nhwc or spatial == 1) and C > 1:
        channels_first[0] = False
        t.N = size // C
        t.S = 1
        t.sn = C
        t.sc = 1
        return True
    if nhwc and ndim > 2:
        return False
    channels_first[0] = True
    t.N = N
    t.S = spatial
    t.sn = C * spatial
    t.sc = spatial
    return True


cdef inline bint usable_vector(object a, int typenum, Py_ssize_t C,
                               bint writable=False) noexcept:
    """A (C,) vector as the layers' setters bind them: of typenum in native
    byte order, contiguous, aligned, and writable if asked (checked again for
    the layers: cheap)."""
    cdef cnp.ndarray arr
    if type(a) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_ISNOTSWAPPED(arr)
            and cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_DIMS(arr)[0] == C
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and (not writable or cnp.PyArray_ISWRITEABLE(arr)))


cdef inline int threads_for(Py_ssize_t size) except -1:
    """cbn._threads.threads_for, without a Python call for small tensors."""
    if size < MIN_PARALLEL_SIZE:
        return 1
    return _threads.threads_for(size)


cdef inline cnp.ndarray new_table(Py_ssize_t rows, Py_ssize_t C, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = rows
    dims[1] = C
    return cnp.PyArray_EMPTY(2, dims, typenum, 0)


cdef inline double step_momentum(object momentum, bint bias_correction, long long count):
    """BatchNormBase._step_momentum: this step's weight in the running averages."""
    cdef double t = <double>(count + 1), m
    if momentum is None:
        return 1.0 / t
    m = momentum
    if bias_correction and m > 0.0:
        return 1.0 if count == 0 else m / -expm1(t * log1p(-m))
    return m


cdef inline int data_kind(cnp.ndarray x) noexcept:
    """The loops' data type of x, whose dtype is a layer's (so a supported one:
    bfloat16 is the one without a fixed NumPy type number)."""
    cdef int kind = typenum_kind(cnp.PyArray_TYPE(x))
    return CBN_BF16 if kind < 0 else kind


cdef inline cnp.ndarray new_like(cnp.ndarray x):
    """A new C-ordered array of x's shape and dtype (any dtype, bfloat16 too)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64:   # (the faster call)
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), typenum, 0)
    return PyArray_NewLikeArray(x, cnp.NPY_CORDER, NULL, 0)


# ---------------------------------------------------------------- the steps over buffers

cdef struct Forward:
    # One forward over buffers its caller owns (the layers', the functional
    # API's), their dtypes and shapes checked by the caller.
    Tensor view             # x's kernel view
    bint channels_first
    int kind                # the data type (CBN_F32, ...)
    void* out               # y: x's geometry
    int flags               # CBN_RELU or 0
    const void* weight      # (C,) of the type computed in, or NULL
    const void* bias
    double eps
    void* relu_coef         # (3, C) of the type computed in, or NULL (no ReLU: scratch)
    double* stats           # train: (3, C) [mean, invstd, biased var], written
    const double* mean_var  # eval: (2, C) [mean, var]


cdef inline const void* array_data(object a) noexcept:
    """An ndarray's data, or NULL for None."""
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Forward forward_of(Tensor view, bint channels_first, int kind, cnp.ndarray y,
                               object relu_coef, const void* weight, const void* bias,
                               double eps) noexcept:
    """A Forward of x's view into y; relu_coef: the (3, C) array a fused ReLU's
    coefficients go to, or None (no ReLU)."""
    cdef Forward f
    memset(&f, 0, sizeof(Forward))
    f.view = view
    f.channels_first = channels_first
    f.kind = kind
    f.out = cnp.PyArray_DATA(y)
    f.flags = 0 if relu_coef is None else CBN_RELU
    f.weight = weight
    f.bias = bias
    f.eps = eps
    f.relu_coef = NULL if relu_coef is None else cnp.PyArray_DATA(<cnp.ndarray>relu_coef)
    return f


cdef inline int kernel_threads(Tensor view) except -1:
    return threads_for(view.C * view.N * view.S)


cdef void affine_job(Job* job, const Forward* f) except *:
    """job planned for f's forward: x, y, weight, bias, eps and the coefficients."""
    memset(job, 0, sizeof(Job))
    plan(job, f.view, f.kind, f.channels_first, kernel_threads(f.view))
    job.out = output_tensor(f.view, f.out, job.itemsize, f.flags)
    job.tables.weight = f.weight
    job.tables.bias = f.bias
    job.eps = f.eps
    job.tables.coef = f.relu_coef


cdef bint train_step(Forward* f) except -1:
    """y and the batch statistics; returns the 2-byte overflow flag."""
    cdef Job job
    affine_job(&job, f)
    job.tables.stats = f.stats
    job.rows_last_first = True   # (as _forward.train_forward)
    return forward_run(TRAIN, &job)


cdef bint eval_step(Forward* f) except -1:
    """y from given statistics; returns the 2-byte overflow flag."""
    cdef Job job
    affine_job(&job, f)
    job.tables.stats = <double*>f.mean_var
    job.count = 0.0
    return forward_run(NORMALIZE, &job)


cdef Py_ssize_t moved_running(int kind, const void* running_mean, const void* running_var,
                              const double* stats, Py_ssize_t C, double values,
                              double momentum, char* block) noexcept:
    """The running statistics moved towards the batch's (_forward.moved_running_stats),
    computed aside into block: new mean, new var (the type computed in), then
    the kept mask (C bytes). Returns how many channels keep their values."""
    cdef Py_ssize_t size = C * (8 if kind == CBN_F64 else 4)
    memcpy(block, running_mean, size)
    memcpy(block + size, running_var, size)
    return move_running(kind != CBN_F64, C, block, block + size, stats, stats + 2 * C,
                        values / (values - 1.0), momentum, <unsigned char*>(block + 2 * size))


cdef void widen(const void* p, int kind, Py_ssize_t n, double* out) noexcept:
    """out = n values of the type computed in, as float64 (exact)."""
    cdef Py_ssize_t i
    if kind == CBN_F64:
        memcpy(out, p, n * sizeof(double))
    else:
        for i in range(n):
            out[i] = (<const float*>p)[i]


# ---------------------------------------------------------------- forward

def layer_call(self, x, out=None):
    """Normalise x: the same as :meth:`forward`.

    Parameters
    ----------
    x : numpy.ndarray
        The input.
    out : numpy.ndarray, optional
        Where to write the output.

    Returns
    -------
    numpy.ndarray
        The output.
    """
    # (BatchNormBase.__call__: a layer call reaches the compiled path
    # without a Python frame of its own; a forward set on the instance is
    # called, as Python would)
    cdef dict d = self.__dict__
    cdef object y
    if not type(self)._COMPILED_PATH or "forward" in d:
        return self.forward(x, out)
    y = compiled_forward(self, d, x, out)
    return self._python_forward(x, out) if y is None else y


def forward(layer, x, out):
    """The layer's forward(x, out) on the compiled path: the output, or None
    when this call is not the common case (the Python path then runs it)."""
    return compiled_forward(layer, layer.__dict__, x, out)


cdef inline bint is_bool(object value) noexcept:
    return value is True or value is False


cdef object compiled_forward(object layer, dict d, object x, object out):
    if not enabled:
        return None
    cdef object descr = field(d, "_dtype")
    cdef object shared = field(d, "_shared")
    cdef object channels = field(d, "num_features")
    cdef object layout = field(d, "layout")
    cdef object activation = field(d, "activation")
    cdef object training_flag = field(d, "training")
    cdef object tracked_flag = field(d, "track_running_stats")
    cdef bint training, tracked, batch_stats, nhwc
    cdef cnp.ndarray xa
    cdef int role = 1
    cdef Tensor view
    cdef bint channels_first
    # the options as the constructor and setters leave them (anything else:
    # the Python path, which reads them as Python does)
    if not (is_bool(training_flag) and is_bool(tracked_flag)
            and is_bool(field(d, "bias_correction")) and type(channels) is int
            and type(layout) is str and (layout == "NCHW" or layout == "NHWC")
            and (activation is None or (type(activation) is str and activation == "relu"))):
        return None
    training = training_flag is True
    tracked = tracked_flag is True
    batch_stats = training or not tracked
    nhwc = layout == "NHWC"
    if not type(x) is cnp.ndarray:
        return None
    xa = <cnp.ndarray>x
    if not (plain_array(xa, descr, cnp.PyArray_NDIM(xa))
            and cnp.PyArray_NDIM(xa) in type(layer)._SHAPES[layout]
            and kernel_view(xa, nhwc, &view, &channels_first) and view.C == <Py_ssize_t>channels):
        return None
    if batch_stats and view.N * view.S < 2:
        return None
    if field(d, "_collector") is not None:
        return None
    if training and field(d, "_virtual_batch_size") is not None:
        if field(d, "_virtual_batch_size") != cnp.PyArray_DIMS(xa)[0]:
            return None
    if out is not None:
        role = output_role(out, xa, descr)
        if role == 0:
            return None
    if batch_stats:
        return train_forward(layer, d, shared, xa, out, role, view, channels_first, layout,
                             activation is not None, training and tracked)
    return eval_forward(layer, d, shared, xa, out, role, view, channels_first, layout,
                        activation is not None)


cdef object train_forward(object layer, dict d, object shared, cnp.ndarray xa, object out,
                          int role, Tensor view, bint channels_first, str layout, bint relu,
                          bint update):
    """Batch statistics; with update, the running statistics and count move.
    The lock is held from the first read of the state: to the commit with
    update, else until the weight and bias are copied (as the Python path)."""
    cdef dict sd = shared.__dict__
    cdef object lock = field(sd, "lock")
    cdef int kind = data_kind(xa)
    cdef int param_type = cnp.NPY_FLOAT64 if kind == CBN_F64 else cnp.NPY_FLOAT32
    cdef Py_ssize_t C = view.C
    cdef object weight, bias, running_mean, running_var, count_obj
    cdef long long count = 0
    cdef cnp.ndarray y, coef = None
    cdef char* block = NULL
    cdef Py_ssize_t size = C * (8 if kind == CBN_F64 else 4), nkept = 0
    cdef bint overflowed, locked
    cdef void* bias_copy = NULL
    cdef Forward f
    cdef CompiledForward record
    step(0)
    lock.acquire()
    locked = True
    try:
        weight = field(sd, "weight")
        bias = field(sd, "bias")
        if weight is not None and not (usable_vector(weight, param_type, C)
                                       and usable_vector(bias, param_type, C)):
            return None
        if update:
            running_mean = field(sd, "running_mean")
            running_var = field(sd, "running_var")
            count_obj = field(sd, "num_batches_tracked")
            if not (usable_vector(running_mean, param_type, C, True)
                    and usable_vector(running_var, param_type, C, True)):
                return None   # (a read-only one: the Python path's commit refuses it)
            count = count_obj   # (checked_count: an int in [0, 2**63 - 1])
            if count >= INT64_MAX:
                return None   # the Python path refuses it
        step(1)
        # everything this call makes: the output, then what backward keeps
        y = new_like(xa) if out is None else <cnp.ndarray>out
        if relu:
            coef = new_table(3, C, param_type)
        record = CompiledForward.__new__(CompiledForward)
        record.view = view
        record.kind = kind
        # statistics, then copies of the weight (kept for backward) and bias
        record.block = <char*>scratch(3 * C * sizeof(double) + 2 * size)
        record.stats_data = <double*>record.block
        if weight is not None:
            record.weight_data = record.block + 3 * C * sizeof(double)
            memcpy(record.weight_data, cnp.PyArray_DATA(<cnp.ndarray>weight), size)
            bias_copy = record.block + 3 * C * sizeof(double) + size
            memcpy(bias_copy, cnp.PyArray_DATA(<cnp.ndarray>bias), size)
        if update:
            block = <char*>scratch(3 * size)
        else:   # nothing of the layer's is read or replaced after the copies
            lock.release()
            locked = False
        step(2)
        f = forward_of(view, channels_first, kind, y, coef, record.weight_data, bias_copy,
                       field(d, "_eps"))
        f.stats = record.stats_data
        overflowed = train_step(&f)
        step(3)
        if overflowed:
            warn_beyond_range(layout, y, "y", None)
        if update:
            # the running statistics' new values, computed aside
            nkept = moved_running(kind, cnp.PyArray_DATA(<cnp.ndarray>running_mean),
                                  cnp.PyArray_DATA(<cnp.ndarray>running_var), f.stats, C,
                                  <double>(view.N * view.S),
                                  step_momentum(field(d, "_momentum"),
                                                field(d, "bias_correction") is True, count),
                                  <char*>block)
            count_obj = count + 1
        step(4)
        if nkept:
            warn_kept(layer, record.stats, <cnp.npy_bool*>(<char*>block + 2 * size), C)
        step(5)
        record.x = xa
        record.layout = layout
        record.batch_stats = True
        record.affine = weight is not None
        record.overwritten = role == 2
        record.eps = f.eps
        record.relu_coef = coef
        record.channels_first = channels_first
        step(6)
        # the commit
        if update:
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>running_mean), block, size)
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>running_var), block + size, size)
            PyDict_SetItem(sd, "num_batches_tracked", count_obj)
        PyDict_SetItem(d, "_saved", record)
    finally:
        free_scratch(block)
        if locked:
            lock.release()
    return y


cdef object eval_forward(object layer, dict d, object shared, cnp.ndarray xa, object out,
                         int role, Tensor view, bint channels_first, str layout, bint relu):
    """Normalise with the running statistics, copied under the lock; the
    kernels run without it."""
    cdef dict sd = shared.__dict__
    cdef object lock = field(sd, "lock")
    cdef int kind = data_kind(xa)
    cdef int param_type = cnp.NPY_FLOAT64 if kind == CBN_F64 else cnp.NPY_FLOAT32
    cdef Py_ssize_t C = view.C
    cdef object weight, bias, running_mean, running_var
    cdef cnp.ndarray y, parameters, coef = None
    cdef Py_ssize_t size = C * (8 if kind == CBN_F64 else 4)
    cdef char* p
    cdef double* mean_var = NULL
    cdef bint overflowed, affine
    cdef Forward f
    cdef CompiledForward record
    step(0)
    lock.acquire()
    try:
        weight = field(sd, "weight")
        bias = field(sd, "bias")
        running_mean = field(sd, "running_mean")
        running_var = field(sd, "running_var")
        affine = weight is not None
        if not (usable_vector(running_mean, param_type, C)
                and usable_vector(running_var, param_type, C)
                and (not affine or (usable_vector(weight, param_type, C)
                                    and usable_vector(bias, param_type, C)))):
            return None
        parameters = new_table(4, C, param_type)
        p = <char*>cnp.PyArray_DATA(parameters)
        memcpy(p, cnp.PyArray_DATA(<cnp.ndarray>running_mean), size)
        memcpy(p + size, cnp.PyArray_DATA(<cnp.ndarray>running_var), size)
        if affine:
            memcpy(p + 2 * size, cnp.PyArray_DATA(<cnp.ndarray>weight), size)
            memcpy(p + 3 * size, cnp.PyArray_DATA(<cnp.ndarray>bias), size)
        step(1)
    finally:
        lock.release()
    try:
        y = new_like(xa) if out is None else <cnp.ndarray>out
        if relu:
            coef = new_table(3, C, param_type)
        record = CompiledForward.__new__(CompiledForward)
        mean_var = <double*>scratch(2 * C * sizeof(double))
        step(2)
        widen(p, kind, 2 * C, mean_var)   # (as _forward.normalize's table)
        f = forward_of(view, channels_first, kind, y, coef, p + 2 * size if affine else NULL,
                       p + 3 * size if affine else NULL, field(d, "_eps"))
        f.mean_var = mean_var
        overflowed = eval_step(&f)
        step(3)
        if overflowed:
            warn_beyond_range(layout, y, "y", None)
        record.x = xa
        record.layout = layout
        record.batch_stats = False
        record.affine = affine
        record.overwritten = role == 2
        record.parameters = parameters
        record.eps = f.eps
        record.relu_coef = coef
        record.view = view
        record.channels_first = channels_first
        record.kind = kind
        step(4)
        PyDict_SetItem(d, "_saved", record)   # the commit
    finally:
        free_scratch(mean_var)
    return y


cdef void warn_beyond_range(str layout, cnp.ndarray result, str what, object sums) except *:
    """The RuntimeWarning of 2-byte outputs past the type's range, when
    cbn._ops.checked_range finds one (the kernels flagged a +-inf)."""
    from cbn._layout import canonicalize
    from cbn._ops import checked_range
    checked_range(True, canonicalize(result, layout).view, what, sums)


cdef void warn_kept(object layer, cnp.ndarray stats, const cnp.npy_bool* kept,
                    Py_ssize_t C) except *:
    """The layer's warning naming the channels whose running statistics stay."""
    cdef cnp.npy_intp dims[1]
    dims[0] = C
    cdef cnp.ndarray mask = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_BOOL)
    memcpy(cnp.PyArray_DATA(mask), kept, C)
    import numpy as np
    layer._warn_kept(mask, np.isfinite(stats[0]) & np.isfinite(stats[2]))


# ---------------------------------------------------------------- backward

def backward(layer, dy, out):
    """The layer's backward(dy, out) on the compiled path: dx, or None when
    this call is not the common case or the last forward did not take the
    compiled path (the Python path then runs it)."""
    if not enabled:
        return None
    cdef dict d = layer.__dict__
    cdef object saved = field(d, "_saved")
    cdef CompiledForward record
    cdef cnp.ndarray xa, dya
    cdef object descr = field(d, "_dtype")
    cdef int role = 1
    if type(saved) is not CompiledForward:
        return None
    record = <CompiledForward>saved
    if record.x is None:   # (a record made by hand, not by a forward)
        return None
    xa = <cnp.ndarray>record.x
    if record.overwritten or not plain_array(dy, descr, cnp.PyArray_NDIM(xa)):
        return None
    dya = <cnp.ndarray>dy
    if not same_shape(dya, xa):
        return None
    if out is not None:
        role = output_role(out, dya, descr)   # dy itself (in place) or apart from it
        if role == 0 or overlaps(<cnp.ndarray>out, xa):
            return None
    return run_backward(d, record, dya, out, role, record.affine)


cdef object run_backward(dict d, CompiledForward record, cnp.ndarray dya, object out, int role,
                         bint affine):
    cdef Tensor view = record.view
    cdef Py_ssize_t C = view.C, c
    cdef int kind = record.kind
    cdef Py_ssize_t size = C * (8 if kind == CBN_F64 else 4)
    cdef bint batch_stats = record.batch_stats
    cdef bint sums_needed = affine or (batch_stats and kind != CBN_F64 and kind != CBN_F32)
    cdef int param_type = cnp.NPY_FLOAT64 if kind == CBN_F64 else cnp.NPY_FLOAT32
    cdef cnp.ndarray dx, grad_weight = None, grad_bias = None
    cdef char* p
    cdef char* block = NULL
    cdef double* fixed
    cdef bint overflowed
    cdef Job job
    cdef cnp.npy_intp dims[1]
    dims[0] = C
    step(0)
    try:
        dx = new_like(<cnp.ndarray>record.x) if out is None else <cnp.ndarray>out
        if affine:
            grad_weight = cnp.PyArray_EMPTY(1, dims, param_type, 0)
            grad_bias = cnp.PyArray_EMPTY(1, dims, param_type, 0)
        # the parameters' gradients (2, C), then an eval forward's [mean, invstd]
        block = <char*>scratch(2 * size + (0 if batch_stats else 2 * C * sizeof(double)))
        step(1)
        memset(&job, 0, sizeof(Job))
        plan(&job, view, kind, record.channels_first, threads_for(C * view.N * view.S))
        job.dy = view
        job.dy.data = cnp.PyArray_DATA(dya)
        job.out = output_tensor(view, cnp.PyArray_DATA(dx), job.itemsize,
                                0 if batch_stats else CBN_FIXED)
        job.tables.param_grads = block if sums_needed else NULL
        job.tables.relu_coef = (NULL if record.relu_coef is None
                                else cnp.PyArray_DATA(<cnp.ndarray>record.relu_coef))
        if batch_stats:
            job.tables.stats = record.stats_data
            job.tables.weight = record.weight_data
        else:
            # cbn._ops.fixed_stats: [mean, 1 / sqrt(var + eps)] from the running statistics
            p = <char*>cnp.PyArray_DATA(<cnp.ndarray>record.parameters)
            fixed = <double*>(block + 2 * size)
            for c in range(C):
                if kind == CBN_F64:
                    fixed[c] = (<double*>p)[c]
                    fixed[C + c] = (<double*>p)[C + c]
                else:
                    fixed[c] = (<float*>p)[c]
                    fixed[C + c] = (<float*>p)[C + c]
                fixed[C + c] = 1.0 / sqrt(fixed[C + c] + record.eps)
            job.tables.stats = fixed
            job.tables.weight = p + 2 * size if affine else NULL
        job.batch_stats = batch_stats
        job.count = <double>(view.N * view.S)
        job.rows_last_first = True   # (as _backward.backward)
        overflowed = backward_run(BACKWARD, &job)
        step(2)
        if overflowed:
            warn_beyond_range(record.layout, dx, "dx",
                              grads_table(block, C, param_type) if batch_stats else None)
        if affine:
            memcpy(cnp.PyArray_DATA(grad_weight), block, size)
            memcpy(cnp.PyArray_DATA(grad_bias), block + size, size)
        step(3)
        if affine:   # the commit
            PyDict_SetItem(d, "grad_weight", grad_weight)
            PyDict_SetItem(d, "grad_bias", grad_bias)
    finally:
        free_scratch(block)
    return dx


cdef cnp.ndarray grads_table(const char* block, Py_ssize_t C, int typenum):
    """The kernel's (2, C) [sum(g * xhat), sum(g)] as an array (for the range check)."""
    cdef cnp.ndarray table = new_table(2, C, typenum)
    memcpy(cnp.PyArray_DATA(table), block, cnp.PyArray_NBYTES(table))
    return table


# ---------------------------------------------------------------- the functional API

def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, layout,
               out):
    """cbn.functional.batch_norm on the compiled path: y, or None when this call
    is not the common case (plain float arguments, contiguous (C,) vectors of
    the type computed in; the Python path then checks and runs it)."""
    if not enabled:
        return None
    cdef cnp.ndarray xa
    cdef int typenum, param_type, kind
    cdef Tensor view
    cdef bint channels_first, nhwc
    cdef double smallest
    if type(x) is not cnp.ndarray or not (training is True or training is False):
        return None
    if type(layout) is not str or not (layout == "NCHW" or layout == "NHWC"):
        return None
    xa = <cnp.ndarray>x
    typenum = cnp.PyArray_TYPE(xa)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64 and typenum != cnp.NPY_FLOAT16:
        return None
    descr = cnp.PyArray_DescrFromType(typenum)
    nhwc = layout == "NHWC"
    if not (cnp.PyArray_NDIM(xa) >= 2 and plain_array(xa, descr, cnp.PyArray_NDIM(xa))
            and kernel_view(xa, nhwc, &view, &channels_first)):
        return None
    kind = data_kind(xa)
    param_type = cnp.NPY_FLOAT64 if kind == CBN_F64 else cnp.NPY_FLOAT32
    smallest = DBL_MIN if kind == CBN_F64 else FLT_MIN
    if type(eps) is not float or not (isfinite(eps) and eps >= smallest):
        return None
    if training and (type(momentum) is not float or not 0.0 <= momentum <= 1.0):
        return None
    if not ((weight is None or usable_vector(weight, param_type, view.C))
            and (bias is None or usable_vector(bias, param_type, view.C))):
        return None
    if (running_mean is None) != (running_var is None):
        return None
    if running_mean is None:
        if not training:
            return None
    elif not (usable_vector(running_mean, param_type, view.C, training)
              and usable_vector(running_var, param_type, view.C, training)):
        return None
    if training and view.N * view.S < 2:
        return None
    if out is not None and output_role(out, xa, descr) == 0:
        return None
    return functional_forward(xa, running_mean, running_var, weight, bias, training, momentum,
                              eps, layout, out, view, channels_first, kind)


cdef object functional_forward(cnp.ndarray xa, object running_mean, object running_var,
                               object weight, object bias, bint training, object momentum,
                               double eps, str layout, object out, Tensor view,
                               bint channels_first, int kind):
    cdef Py_ssize_t C = view.C, size = view.C * (8 if kind == CBN_F64 else 4), nkept = 0
    cdef bint update = training and running_mean is not None
    cdef cnp.ndarray y
    cdef char* block = NULL
    cdef Forward f
    cdef bint overflowed
    step(0)
    try:
        y = new_like(xa) if out is None else <cnp.ndarray>out
        # float64 (3, C) statistics (or [mean, var]), then the new running statistics
        block = <char*>scratch(3 * C * sizeof(double) + (3 * size if update else 0))
        step(1)
        f = forward_of(view, channels_first, kind, y, None, array_data(weight),
                       array_data(bias), eps)
        f.stats = <double*>block
        if training:
            overflowed = train_step(&f)
        else:
            widen(cnp.PyArray_DATA(<cnp.ndarray>running_mean), kind, C, f.stats)
            widen(cnp.PyArray_DATA(<cnp.ndarray>running_var), kind, C, f.stats + C)
            f.mean_var = f.stats
            overflowed = eval_step(&f)
        step(2)
        if overflowed:
            warn_beyond_range(layout, y, "y", None)
        if update:
            nkept = moved_running(kind, cnp.PyArray_DATA(<cnp.ndarray>running_mean),
                                  cnp.PyArray_DATA(<cnp.ndarray>running_var), f.stats, C,
                                  <double>(view.N * view.S), <double>momentum + 0.0,
                                  block + 3 * C * sizeof(double))
            if nkept:
                warn_running_unchanged(block + 3 * C * sizeof(double) + 2 * size, C,
                                       running_mean)
        step(3)
        if update:   # the commit
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>running_mean), block + 3 * C * sizeof(double),
                   size)
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>running_var),
                   block + 3 * C * sizeof(double) + size, size)
    finally:
        free_scratch(block)
    return y


cdef void warn_running_unchanged(const char* kept, Py_ssize_t C, object running_mean) except *:
    """cbn.functional's warning naming the channels whose running statistics stay."""
    cdef cnp.npy_intp dims[1]
    dims[0] = C
    cdef cnp.ndarray mask = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_BOOL)
    memcpy(cnp.PyArray_DATA(mask), kept, C)
    from cbn._ops import warn_running_unchanged as warn
    warn(mask, running_mean.dtype)
