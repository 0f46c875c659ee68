# The vectorised loops of cbn_loops.h (SSE2 or AVX2, chosen once per process
# by init_loops()), each taking a cbn_block that says what it walks, and the
# data types they read and write (a block's kind).
from libc.stdlib cimport getenv
from libc.string cimport memset

cdef extern from "cbn_loops.h" nogil:
    # data types: float64, float32, and float16 and bfloat16 (computed in float32)
    int CBN_F64
    int CBN_F32
    int CBN_F16
    int CBN_BF16
    ctypedef struct cbn_f16:
        pass
    ctypedef struct cbn_bf16:
        pass
    float cbn_f16_to_float(cbn_f16 h)
    float cbn_bf16_to_float(cbn_bf16 h)
    int CBN_STREAM
    int CBN_RELU
    int CBN_FIXED
    int CBN_ROWS4
    ctypedef struct cbn_block:
        const void* x
        Py_ssize_t x_stride
        const void* dy
        Py_ssize_t dy_stride
        void* out
        Py_ssize_t out_stride
        Py_ssize_t count
        Py_ssize_t length
        Py_ssize_t table_stride
        Py_ssize_t table_step
        int flags
        int kind
        int* overflow
    int CBN_LOOPS_SCALAR
    int CBN_LOOPS_BASELINE
    int CBN_LOOPS_AUTO
    void cbn_loops_init(int request)
    const char* cbn_loops_isa()
    # Pointers to per-channel values have the type computed in (float64 for
    # float64 data, else float32); see cbn_loops_impl.h for each loop's
    # scalar math.
    double runs_sum "cbn_runs_sum"(const cbn_block* b)
    void runs_centered "cbn_runs_centered"(const cbn_block* b, double m, double* s1, double* s2)
    void runs_grad_sums "cbn_runs_grad_sums"(const cbn_block* b, double shift, const void* relu,
                                             double* s1, double* s2)
    void runs_affine "cbn_runs_affine"(const cbn_block* b, const void* k)
    void runs_grad_input "cbn_runs_grad_input"(const cbn_block* b, const void* k,
                                               const void* relu)
    void rows_affine "cbn_rows_affine"(const cbn_block* b, const void* k)
    void rows_grad_input "cbn_rows_grad_input"(const cbn_block* b, const void* k,
                                               const void* relu)
    void rows_centered "cbn_rows_centered"(const cbn_block* b, const void* m, void* s1, void* s2)
    void rows_grad_sums "cbn_rows_grad_sums"(const cbn_block* b, const void* shift,
                                             const void* relu, void* s1, void* s2)
    int rows_block_flags "cbn_rows_block_flags"(int f32, Py_ssize_t C, const void* s1,
                                                const void* s2, double nb,
                                                double amplification)
    void rows_block_merge "cbn_rows_block_merge"(int f32, Py_ssize_t C, const void* shift,
                                                 const void* s1, const void* s2, double nb,
                                                 double w, double v, double* mean, double* m2)
    # the per-channel work of cbn_per_channel.h (coefficients: channels c0 <= c < c1)
    void train_coefficients "cbn_train_coefficients"(
        int f32, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1, const double* mean,
        const double* m2, double count, double eps, const void* weight,
        const void* bias, double* stats, void* coef)
    void given_coefficients "cbn_given_coefficients"(
        int f32, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1, const double* stats, double count,
        double eps, const void* weight, const void* bias, void* coef)
    void grad_input_coefficients "cbn_grad_input_coefficients"(
        int f32, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1, const double* stats,
        const double* sums, double count, const void* weight, void* coef)
    Py_ssize_t move_running "cbn_moved_running"(
        int f32, Py_ssize_t C, void* running_mean, void* running_var, const double* mean,
        const double* var, double var_scale, double momentum, unsigned char* kept)
    void position_totals "cbn_position_totals"(
        int f32, Py_ssize_t C, Py_ssize_t S, Py_ssize_t copies, const void* s1, const void* s2,
        double* t1, double* t2, Py_ssize_t stride)


cdef inline cbn_block input_block(const void* x, Py_ssize_t stride, Py_ssize_t count,
                                  Py_ssize_t length, int kind) noexcept nogil:
    """count runs (or rows) of length values of x (of type kind), stride apart:
    for the reductions."""
    cdef cbn_block b
    memset(&b, 0, sizeof(b))
    b.x = x
    b.x_stride = stride
    b.count = count
    b.length = length
    b.kind = kind
    return b


cdef inline Py_ssize_t kind_itemsize(int kind) noexcept nogil:
    """Bytes per value of data of type kind."""
    return 8 if kind == CBN_F64 else 4 if kind == CBN_F32 else 2


cdef inline const void* advance(const void* p, Py_ssize_t n, int kind) noexcept nogil:
    """p moved on by n values of type kind."""
    return <const char*>p + n * kind_itemsize(kind)


cdef inline double value_at(const void* p, Py_ssize_t i, int kind) noexcept nogil:
    """Value i of data of type kind, widened (exactly)."""
    if kind == CBN_F64:
        return (<const double*>p)[i]
    if kind == CBN_F32:
        return (<const float*>p)[i]
    if kind == CBN_F16:
        return cbn_f16_to_float((<const cbn_f16*>p)[i])
    return cbn_bf16_to_float((<const cbn_bf16*>p)[i])


cdef inline double in_compute_type(double v, int kind) noexcept nogil:
    """v rounded to the type the loops compute in for data of type kind."""
    return v if kind == CBN_F64 else <float>v


cdef inline int init_loops() except -1:
    """Pick this process's loops; call once at module import.

    AVX2 where the CPU has it, else the baseline vector loops, unless the
    environment variable CBN_LOOPS is "baseline" (the tests run those that
    way, and valgrind, which does not decode every AVX instruction, needs
    them) or "scalar" (the portable reference loops, the only ones of a
    build without GCC/Clang vector extensions).
    """
    cdef const char* env = getenv("CBN_LOOPS")
    cdef bytes choice = b"" if env == NULL else <bytes>env
    if choice not in (b"", b"auto", b"baseline", b"scalar"):
        raise ValueError("CBN_LOOPS: expected 'auto', 'baseline' or 'scalar', got "
                         f"{choice.decode(errors='replace')!r}")
    cbn_loops_init(CBN_LOOPS_SCALAR if choice == b"scalar"
                   else CBN_LOOPS_BASELINE if choice == b"baseline" else CBN_LOOPS_AUTO)
    return 0
