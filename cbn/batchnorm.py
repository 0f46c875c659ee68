"""Batch normalization layers with PyTorch's semantics, for NumPy arrays.

Beyond PyTorch: debiased running averages (``bias_correction``), a fused
ReLU (``activation="relu"``), ghost batch norm (``virtual_batch_size``),
and running statistics that a NaN/Inf batch cannot poison.
"""
import inspect
import math
import warnings

import numpy as np

from . import _call, _ops
from ._commit import Changes
from ._docs import EXAMPLE_SHAPES, LAYER_EXAMPLE, LAYER_OPTIONS, LAYER_PARAMETERS, layer_doc
from ._dtypes import check_dtype, check_param_dtype, user_stacklevel
from ._layout import canonicalize, channel_axis, check_layout
from ._moments import merge_all
from ._records import ForwardParameters, Piece, SavedForward, saved_forward
from ._state import (
    INT64_MAX,
    SharedState,
    checked_bound_vector,
    checked_count,
    layer_state,
    load_layer_state,
)
from ._validation import (
    check_batch_for_statistics,
    check_bool,
    check_eps,
    check_input,
    check_momentum,
    check_num_features,
    check_out_overlap,
    describe,
)

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormBase"]

ACTIVATIONS = (None, "relu")

# What the compiled call path (_call.pyx) does in C: a subclass that
# overrides any of these takes the Python path.
_COMPILED_STEPS = ("forward", "_python_forward", "backward", "_check_input", "_check_batch",
                   "_parameters", "_forward", "_normalize_batch", "_running_targets",
                   "_updated_running_stats", "_stage_running_update", "_step_momentum",
                   "_stage_forward", "_stage_running_stats", "_check_count_room",
                   "_checked_backward")


def _copy(array):
    return None if array is None else array.copy()


_CONTRACT = """\
The extension contract: subclasses (BatchRenorm, SyncBatchNorm) and
helpers (precise_statistics) use these protected members only, never the
layer's private attributes.

To override:

- ``_normalize_batch(canon, output, relu, parameters)``: normalise one
  (virtual) batch with its statistics; returns ``(y, Piece)``.
- ``_running_targets(pieces)``: ``(mean, var, var_scale)`` the running
  statistics move towards.
- ``_updated_running_stats(mean, var, var_scale)``: the new running
  statistics as new arrays, ``(mean, var, kept)``.

To call, from subclasses (holding ``_state_lock`` where they change
state): ``_parameters``, ``_check_input``, ``_check_batch``,
``_check_count_room``, ``_normalize_virtual_batches``, ``_step_momentum``,
``_stage_running_update``, ``_stage_forward`` (the saved forward, and the
statistics observer's share), ``_last_forward`` and ``_checked_backward``
(the dy and out checks).

For statistics observers (precise_statistics): ``_observer``,
``_stage_observer``, ``_running_snapshot``, ``_stage_running_stats``,
``_state_lock``. An observer has ``stage_add(changes, moments)``, called
with every forward's per-channel Moments while it is attached."""


class BatchNormBase:
    __doc__ = layer_doc(
        "The implementation the layers share; use BatchNorm1d, BatchNorm2d or BatchNorm3d.",
        LAYER_PARAMETERS + "\n" + LAYER_OPTIONS, notes=_CONTRACT)

    # Subclasses set _SHAPES: for each layout, the accepted ndims and their
    # readable shapes.
    _SHAPES = {}
    # A subclass's docstring is its summary: __init_subclass__ adds these
    # sections (the example formatted with its name and an input shape).
    _DOC_PARAMETERS = LAYER_PARAMETERS + "\n" + LAYER_OPTIONS
    _DOC_NOTES = ""
    _DOC_EXAMPLE = LAYER_EXAMPLE

    # Whether forward and backward try the compiled path first (_call.pyx):
    # the layers whose steps are this class's.
    _COMPILED_PATH = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._COMPILED_PATH = all(getattr(cls, name) is getattr(BatchNormBase, name)
                                 for name in _COMPILED_STEPS)
        if cls.__doc__ is None or "\nParameters\n" in cls.__doc__:
            return   # python -OO, or a docstring of its own
        example = ""
        if cls._DOC_EXAMPLE and cls._SHAPES.get("NCHW") and cls.__module__.startswith("cbn."):
            shape = EXAMPLE_SHAPES[min(cls._SHAPES["NCHW"])]
            example = cls._DOC_EXAMPLE.format(name=cls.__name__, shape=shape)
        cls.__doc__ = layer_doc(inspect.cleandoc(cls.__doc__), cls._DOC_PARAMETERS,
                                cls._DOC_NOTES, example)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32, param_dtype=None,
                 layout="NCHW", bias_correction=False, activation=None,
                 virtual_batch_size=None):
        self.num_features = check_num_features(num_features)
        self._dtype = check_dtype(dtype)
        self._param_dtype = check_param_dtype(param_dtype, self._dtype)
        self.layout = check_layout(layout)
        self.eps = eps
        self.momentum = momentum
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        self.bias_correction = check_bool(bias_correction, "bias_correction")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.virtual_batch_size = virtual_batch_size
        C, dt = self.num_features, self._param_dtype
        tracked = self.track_running_stats
        # parameters, buffers and the lock that serialises the calls that
        # read and then replace them (training forwards, loads; eval
        # forwards hold it only to copy what they normalise with, not in
        # the kernels): shared with shallow copies, as in PyTorch
        self._shared = SharedState(np.ones(C, dt) if self.affine else None,
                                   np.zeros(C, dt) if self.affine else None,
                                   np.zeros(C, dt) if tracked else None,
                                   np.ones(C, dt) if tracked else None,
                                   0 if tracked else None)
        self.grad_weight = None
        self.grad_bias = None
        self.training = True
        # the last forward, for backward: a SavedForward
        self._saved = None
        # set by cbn.precise_statistics while it collects population statistics
        self._collector = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_saved"] = self._last_forward   # (a compiled path's record converted)
        return state

    def __setstate__(self, state):
        if "_shared" not in state:   # pickled by cbn before shallow copies shared state
            state = dict(state)
            state["_shared"] = SharedState(*(state.pop(f"_{key}") for key in (
                "weight", "bias", "running_mean", "running_var", "num_batches_tracked")))
        self.__dict__.update(state)

    # ------------------------------------------------------------ attributes

    @property
    def dtype(self):
        """The data's dtype: inputs and their gradients must have it, outputs have it."""
        return self._dtype

    @property
    def param_dtype(self):
        """The parameters' dtype: weight, bias, running statistics, their gradients.

        The type the data are computed in: float32 for float16 and bfloat16
        data, else the data's dtype.
        """
        return self._param_dtype

    @property
    def eps(self):
        """Added to the variance before its square root.

        A finite float, at least param_dtype's smallest normal number
        (1.2e-38 for float32).
        """
        return self._eps

    @eps.setter
    def eps(self, value):
        self._eps = check_eps(value, self._param_dtype)

    @property
    def momentum(self):
        """Weight of the new batch in the running averages; None: cumulative average."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        self._momentum = check_momentum(value)

    @property
    def virtual_batch_size(self):
        """Rows per virtual batch for batch statistics (ghost batch norm), or None."""
        return self._virtual_batch_size

    @virtual_batch_size.setter
    def virtual_batch_size(self, value):
        if value is not None and (isinstance(value, (bool, np.bool_))
                                  or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"virtual_batch_size: expected a positive int or None, "
                             f"got {describe(value)}")
        self._virtual_batch_size = None if value is None else int(value)

    @property
    def num_batches_tracked(self):
        """Training batches seen (a 0-d int64 array, as PyTorch's buffer), or None."""
        n = self._shared.num_batches_tracked
        return None if n is None else np.array(n, dtype=np.int64)

    @num_batches_tracked.setter
    def num_batches_tracked(self, value):
        if self._shared.num_batches_tracked is None:
            raise AttributeError("num_batches_tracked: expected a layer with running statistics, "
                                 "got one built with track_running_stats=False")
        count = checked_count(value, "num_batches_tracked")
        with self._shared.lock:
            self._shared.num_batches_tracked = count

    def _vector(name):
        def get(self):
            return getattr(self._shared, name)

        def set_(self, value):
            if getattr(self._shared, name) is None:
                flag = "affine" if name in ("weight", "bias") else "track_running_stats"
                raise AttributeError(f"{name}: expected a layer with {name}, got one built with "
                                     f"{flag}=False")
            array = checked_bound_vector(self, name, value)
            with self._shared.lock:
                setattr(self._shared, name, array)

        return property(get, set_, doc=f"The layer's {name}: a (num_features,) array, or None.")

    weight = _vector("weight")
    bias = _vector("bias")
    running_mean = _vector("running_mean")
    running_var = _vector("running_var")
    del _vector

    # ------------------------------------------------------------ modes

    def train(self, mode=True):
        """Set training mode (batch statistics, running averages updated) or eval mode.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for eval mode.

        Returns
        -------
        BatchNormBase
            The layer itself.
        """
        self.training = check_bool(mode, "mode")
        return self

    def eval(self):
        """Set eval mode: normalise with the running statistics (when tracked).

        Returns
        -------
        BatchNormBase
            The layer itself.
        """
        return self.train(False)

    def reset_running_stats(self):
        """Set running_mean to 0, running_var to 1, num_batches_tracked to 0 (when tracked)."""
        # (staged under the lock: a setter, maybe a shallow copy's, could
        # otherwise bind new arrays between staging and the copies into them)
        with self._shared.lock:
            changes = Changes()
            self._stage_reset_running_stats(changes)
            changes.apply()

    def reset_parameters(self):
        """Reset the running statistics, and set weight to 1 and bias to 0 (when affine)."""
        with self._shared.lock:   # (staged under it, as in reset_running_stats)
            changes = Changes()
            self._stage_reset_running_stats(changes)
            if self.affine:
                changes.copy(self._shared.weight, 1)
                changes.copy(self._shared.bias, 0)
            changes.apply()

    def _stage_reset_running_stats(self, changes):
        if self.track_running_stats:
            changes.copy(self._shared.running_mean, 0)
            changes.copy(self._shared.running_var, 1)
            changes.set(self._shared, "num_batches_tracked", 0)

    # ------------------------------------------------------------ forward

    def _check_input(self, x, name="x"):
        """The channel axis of a valid input; a detailed error otherwise."""
        ndims = self._SHAPES[self.layout]
        if type(x) is np.ndarray and x.dtype == self._dtype and x.ndim in ndims:
            axis = 1 if self.layout == "NCHW" else x.ndim - 1
            if x.shape[axis] == self.num_features:
                return axis
        return check_input(x, name, self._dtype, tuple(ndims), self.num_features,
                           lambda nd: channel_axis(self.layout, nd), ndims)

    def _check_batch(self, x, axis, k):
        """Batch statistics need two values per channel (per virtual batch)."""
        if k is None:
            if x.size < 2 * self.num_features:
                check_batch_for_statistics(x, axis)
            return
        N = x.shape[0]
        if N % k:
            raise ValueError(f"x: expected a batch size that is a multiple of "
                             f"virtual_batch_size={k}, got {N} (shape {x.shape})")
        check_batch_for_statistics(x[:k], axis)

    __call__ = _call.layer_call   # forward(x, out), compiled: one Python frame less a call

    def forward(self, x, out=None):
        """Normalise x; in training mode also update the running statistics.

        Parameters
        ----------
        x : numpy.ndarray
            The input, of the layer's dtype and one of its shapes.
        out : numpy.ndarray, optional
            Where to write the output: an array of x's shape and dtype, with
            x's memory order (``np.empty_like(x)``) or one the kernels can
            write directly; x itself normalises in place (backward then has
            no input and refuses).

        Returns
        -------
        numpy.ndarray
            The output (``out`` when given).
        """
        if self._COMPILED_PATH:
            y = _call.forward(self, x, out)
            if y is not None:
                return y
        return self._python_forward(x, out)

    def _python_forward(self, x, out):
        """forward() where the compiled path does not apply (or is off)."""
        axis = self._check_input(x)
        batch_stats = self.training or not self.track_running_stats
        # virtual batches are a training device (as in tf-keras): eval mode
        # without running statistics normalises with the whole batch's
        k = self._virtual_batch_size if self.training else None
        if batch_stats:
            self._check_batch(x, axis, k)
        overwritten = out is not None and check_out_overlap(out, x, "x")
        canon = canonicalize(x, self.layout)
        output = canon.output(out, orders=(x,))
        if (self.training and self.track_running_stats) or self._collector is not None:
            # reads, computes from and replaces shared state: one call at a time
            with self._shared.lock:
                # held throughout: only the weight (kept for backward) and what
                # an eval piece keeps need copies
                return self._forward(x, canon, output, k, batch_stats, overwritten,
                                     self._parameters(copy_all=not batch_stats), self._collector)
        with self._shared.lock:   # a consistent snapshot; the kernels run without the lock
            parameters = self._parameters()
        return self._forward(x, canon, output, k, batch_stats, overwritten, parameters, None)

    def _parameters(self, copy_all=True):
        """A ForwardParameters (call with the lock held): copies, or with
        copy_all=False the layer's own bias and running statistics (for a
        caller that holds the lock until it is done with them)."""
        s = self._shared
        weight = None if s.weight is None else s.weight.copy()
        if not copy_all:
            return ForwardParameters(weight, s.bias, s.running_mean, s.running_var, self._eps)
        return ForwardParameters(weight, _copy(s.bias), _copy(s.running_mean),
                                 _copy(s.running_var), self._eps)

    def _forward(self, x, canon, output, k, batch_stats, overwritten, parameters, observer):
        """forward() once its arguments are checked: compute, warn, then commit."""
        self._check_count_room()   # before any kernel writes the output
        relu = self.activation == "relu"
        p = parameters
        changes = Changes()
        if not batch_stats:
            # the input's statistics before out=x overwrites it
            moments = _ops.moments(canon) if observer is not None else None
            y, coef = _ops.normalize(canon, p.running_mean, p.running_var, p.eps, p.weight,
                                     p.bias, output, relu)
            pieces = (Piece(canon, p.weight, eval_parameters=p, relu_coef=coef),)
        else:
            if k is None or k == x.shape[0]:
                y, piece = self._normalize_batch(canon, output, relu, p)
                pieces = (piece,)
            else:
                y, pieces = self._normalize_virtual_batches(x, canon, k, output, relu, p)
            if self.training and self.track_running_stats:
                self._stage_running_update(changes, *self._running_targets(pieces))
            moments = (merge_all(piece.moments() for piece in pieces) if observer is not None
                       else None)
        self._stage_forward(changes, SavedForward(canon, pieces, batch_stats, overwritten),
                            observer, moments)
        changes.apply()
        return y

    def _step_momentum(self):
        """The weight of this step's batch in the running averages.

        momentum=None: 1/t (cumulative average). With bias_correction the
        averages behave as if started at zero and divided by 1 - (1 - m)^t:
        the same as an average with weight m / (1 - (1 - m)^t) for step t,
        which makes the first step's weight 1 (the initial values drop out).
        """
        t = self._shared.num_batches_tracked + 1
        m = self._momentum
        if m is None:
            return 1.0 / t
        if self.bias_correction and m > 0.0:
            # exactly 1 at t = 1 (1 - (1 - m) rounds); 1 - (1 - m)^t without cancellation
            return 1.0 if t == 1 else m / -math.expm1(t * math.log1p(-m))
        return m

    def _normalize_batch(self, canon, output, relu, parameters):
        """Normalise one batch with its statistics: (y, Piece); changes nothing.

        parameters: the ForwardParameters this forward uses."""
        p = parameters
        y, stats, coef = _ops.train_forward(canon, p.weight, p.bias, p.eps, output, relu)
        return y, Piece(canon, p.weight, stats=stats, relu_coef=coef)

    def _normalize_virtual_batches(self, x, canon, k, output, relu, parameters):
        """Ghost batch norm: each run of k consecutive rows normalised with its
        own statistics; returns (y, pieces) and changes nothing."""
        y = output.array
        pieces = []
        for start in range(0, x.shape[0], k):
            rows = slice(start, start + k)
            piece_canon = canonicalize(x[rows], self.layout)
            piece_output = piece_canon.output(y[rows], orders=(y[rows],))
            _, piece = self._normalize_batch(piece_canon, piece_output, relu, parameters)
            piece.rows = rows
            pieces.append(piece)
        return output.result(), tuple(pieces)

    def _running_targets(self, pieces):
        """What this training step moves the running statistics towards, as
        (mean, var, var_scale): float64 (C,) arrays, the variance to use being
        var * var_scale. The batch's mean and unbiased variance, or with
        virtual batches the means over them of their means and of their
        unbiased variances (PyTorch's unbiased convention, per virtual batch)."""
        count = pieces[0].canon.count
        unbias = count / (count - 1.0)
        if len(pieces) == 1:
            return pieces[0].stats[0], pieces[0].stats[2], unbias
        means = np.mean([p.stats[0] for p in pieces], axis=0)
        unbiased = np.mean([p.stats[2] * unbias for p in pieces], axis=0)
        return means, unbiased, 1.0

    def _updated_running_stats(self, mean, var, var_scale):
        """(new running mean, new running var, kept mask or None): PyTorch's
        r <- (1 - m) r + m * batch, see _ops.moved_running_stats."""
        s = self._shared
        return _ops.moved_running_stats(s.running_mean, s.running_var, mean, var,
                                        self._step_momentum(), var_scale)

    def _stage_running_update(self, changes, mean, var, var_scale=1.0):
        """Stage this training step's update of the running statistics and
        the count, warning first about channels left unchanged (every
        training path checked _check_count_room before its kernels ran)."""
        new_mean, new_var, kept = self._updated_running_stats(mean, var, var_scale)
        if kept is not None:
            self._warn_kept(kept, np.isfinite(mean) & np.isfinite(var))
        self._stage_running_stats(changes, new_mean, new_var, self._shared.num_batches_tracked + 1)

    def _check_count_room(self):
        """A training step must be countable in PyTorch's int64 buffer."""
        count = self._shared.num_batches_tracked
        if self.training and self.track_running_stats and count >= INT64_MAX:
            raise ValueError(f"num_batches_tracked: expected a count below 2**63 - 1, so that "
                             f"this training step can be counted in PyTorch's int64 buffer, got "
                             f"{count}")

    def _warn_kept(self, kept, finite_batch):
        """One RuntimeWarning naming the channels whose running statistics
        were left unchanged, and why."""
        causes = []
        nan = np.flatnonzero(kept & ~finite_batch)
        overflow = np.flatnonzero(kept & finite_batch)
        if nan.size:
            causes.append(f"channel(s) {nan.tolist()}: the batch statistics are not finite "
                          f"(NaN or Inf in the input)")
        if overflow.size:
            causes.append(f"channel(s) {overflow.tolist()}: the updated running statistics "
                          f"would overflow {self._param_dtype}")
        warnings.warn(f"{type(self).__name__}: {'; '.join(causes)}; their running statistics "
                      f"were left unchanged", RuntimeWarning, stacklevel=user_stacklevel())

    # ------------------------------------------------------------ backward

    def backward(self, dy, out=None):
        """Gradient of the input of the last forward for output gradient dy.

        Differentiates the forward that ran, with the weight and statistics
        it used: changing the layer's weight (in place or not) or loading a
        state dict in between does not change the result, and backward can
        be called again for the same forward. Sets ``grad_weight`` and
        ``grad_bias`` (when affine). After a training forward the batch
        statistics' dependence on x is included; after an eval forward
        dx = dy * weight / sqrt(running_var + eps). With a fused ReLU, dy
        counts only where the output was positive.

        Parameters
        ----------
        dy : numpy.ndarray
            Gradient of the output: the forward input's shape and dtype.
        out : numpy.ndarray, optional
            Where to write dx (dy itself for in place), as ``out`` of forward.

        Returns
        -------
        numpy.ndarray
            dx (``out`` when given).
        """
        if self._COMPILED_PATH:
            dx = _call.backward(self, dy, out)
            if dx is not None:
                return dx
        saved = self._last_forward
        output = self._checked_backward(saved, dy, out)
        canon, pieces, batch_stats, _ = saved
        if len(pieces) == 1 and pieces[0].rows is None:
            p = pieces[0]
            dx, grads = _ops.backward(p.canon, dy, p.backward_stats(), p.weight, batch_stats,
                                      output, self.affine, p.relu_coef)
            if grads is not None and p.corrections is not None:
                grads = self._renorm_param_grads(grads, p.corrections)
        else:
            dx_all = output.array
            grads = np.zeros((2, self.num_features))
            for p in pieces:
                piece_output = p.canon.output(dx_all[p.rows], orders=(dx_all[p.rows],))
                _, g = _ops.backward(p.canon, dy[p.rows], p.backward_stats(), p.weight, True,
                                     piece_output, True, p.relu_coef)
                grads += g if p.corrections is None else self._renorm_param_grads(g, p.corrections)
            grads = grads.astype(self._param_dtype) if self.affine else None
            dx = output.result()
        if grads is not None:
            changes = Changes()
            changes.set(self, "grad_weight", grads[0])
            changes.set(self, "grad_bias", grads[1])
            changes.apply()
        return dx

    @staticmethod
    def _renorm_param_grads(grads, corrections):
        """[dgamma, dbeta] for y = gamma * (xhat * r + d) + beta from [sum(g xhat), sum(g)]."""
        g = grads.astype(np.float64)
        out = np.empty_like(grads)
        out[0] = g[0] * corrections.r + g[1] * corrections.d
        out[1] = grads[1]
        return out

    # ------------------------------------------------------------ extension contract

    @property
    def _state_lock(self):
        """The lock that serialises the calls that read and then replace state."""
        return self._shared.lock

    @property
    def _last_forward(self):
        """The SavedForward of the last forward, or None."""
        saved = self._saved
        if type(saved) is _call.CompiledForward:
            return saved_forward(saved)
        return saved

    @property
    def _observer(self):
        """The statistics observer attached (precise_statistics), or None."""
        return self._collector

    def _stage_observer(self, changes, observer):
        """Stage attaching observer (None: detaching it)."""
        changes.set(self, "_collector", observer)

    def _stage_forward(self, changes, saved, observer, moments):
        """Stage a forward's SavedForward and, when a statistics observer was
        attached as it started (None if not), the input's per-channel Moments."""
        changes.set(self, "_saved", saved)
        if observer is not None:
            observer.stage_add(changes, moments)

    def _running_snapshot(self):
        """Copies of (running_mean, running_var) and num_batches_tracked (an
        int), taken with the state lock held by the caller."""
        s = self._shared
        return s.running_mean.copy(), s.running_var.copy(), s.num_batches_tracked

    def _stage_running_stats(self, changes, mean, var, num_batches_tracked):
        """Stage new running statistics (copied into the layer's arrays) and count."""
        changes.copy(self._shared.running_mean, mean)
        changes.copy(self._shared.running_var, var)
        changes.set(self._shared, "num_batches_tracked", num_batches_tracked)

    def _checked_backward(self, saved, dy, out):
        """The Output for a backward of saved (the last forward, read once by
        the caller) with output gradient dy and out; ValueError or TypeError
        naming the argument when there is no forward to differentiate or dy
        or out do not fit it."""
        if saved is None:
            raise ValueError("dy: expected a forward on this layer first (backward differentiates "
                             "it), got none")
        canon = saved.canon
        if saved.overwritten:
            raise ValueError("dy: expected a forward that kept its input, got one that wrote its "
                             "output over it (out=x): there is no input to differentiate at")
        if not (type(dy) is np.ndarray and dy.dtype == self._dtype and dy.shape == canon.shape):
            self._check_input(dy, "dy")
            if dy.shape != canon.shape:
                raise ValueError(f"dy: expected shape {canon.shape} (the last forward's "
                                 f"input), got {dy.shape}")
        if out is not None:
            check_out_overlap(out, canon.view, "x", allow_same=False)
            check_out_overlap(out, dy, "dy")
        return canon.output(out, orders=(dy,))

    # ------------------------------------------------------------ state

    def state_dict(self):
        """Copies of the parameters and buffers, under PyTorch's keys.

        Taken in one step: a concurrent training step or load is seen whole
        or not at all.

        Returns
        -------
        dict
            ``weight``, ``bias`` (when affine), ``running_mean``,
            ``running_var`` and ``num_batches_tracked`` (when tracked).
        """
        with self._shared.lock:
            return layer_state(self)

    def load_state_dict(self, state_dict, strict=True):
        """Load a dict like state_dict()'s.

        Every value is checked (shape, finiteness, running_var >= 0, a
        non-negative integer num_batches_tracked below 2**63) before anything
        changes, then all are copied in one step. Floating and integer
        values of weight, bias and the running statistics are converted to
        the layer's param_dtype as PyTorch's ``load_state_dict`` converts
        them, rounding to nearest: a float64 checkpoint loads into a float32
        layer, and a narrower float (a bfloat16, float16 or float8
        checkpoint) is widened exactly. Refused, though PyTorch loads them:
        values that overflow param_dtype (finite values that round to inf,
        which PyTorch makes inf), non-finite values, a negative running_var
        and a num_batches_tracked that is not an integer in [0, 2**63 - 1].
        This is the one place cbn converts without being asked; the
        attribute setters bind the array itself and take only param_dtype
        ones. With strict, the keys must match exactly, except that a
        missing num_batches_tracked (old PyTorch checkpoints) keeps its
        value, as in PyTorch. The last forward's backward is not affected.

        Parameters
        ----------
        state_dict : dict
            Values, under state_dict()'s keys: anything ``np.asarray`` takes,
            or torch tensors of any real dtype (bfloat16 and the float8
            types included), also ones that require grad or live on another
            device.
        strict : bool, default True
            Require exactly the layer's keys.

        Returns
        -------
        IncompatibleKeys
            ``missing_keys`` and ``unexpected_keys`` (lists), as PyTorch's.
        """
        with self._shared.lock:   # (staged under it, as in reset_running_stats)
            changes, keys = load_layer_state(self, self._shared, state_dict, strict)
            changes.apply()
        return keys

    def extra_repr(self):
        """The constructor arguments as repr() shows them.

        Returns
        -------
        str
            For example ``3, eps=1e-05, momentum=0.1, ...``.
        """
        text = (f"{self.num_features}, eps={self._eps}, momentum={self._momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"dtype={self._dtype.name}, layout={self.layout!r}")
        if self.bias_correction:
            text += ", bias_correction=True"
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        if self._virtual_batch_size is not None:
            text += f", virtual_batch_size={self._virtual_batch_size}"
        return text

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class BatchNorm1d(BatchNormBase):
    """Batch normalization over (N, C) or (N, C, L) inputs; layout="NHWC": (N, L, C)."""

    _SHAPES = {
        "NCHW": {2: "(N, C)", 3: "(N, C, L)"},
        "NHWC": {2: "(N, C)", 3: "(N, L, C)"},
    }


class BatchNorm2d(BatchNormBase):
    """Batch normalization over (N, C, H, W) inputs; layout="NHWC": (N, H, W, C)."""

    _SHAPES = {"NCHW": {4: "(N, C, H, W)"}, "NHWC": {4: "(N, H, W, C)"}}


class BatchNorm3d(BatchNormBase):
    """Batch normalization over (N, C, D, H, W) inputs; layout="NHWC": (N, D, H, W, C)."""

    _SHAPES = {"NCHW": {5: "(N, C, D, H, W)"}, "NHWC": {5: "(N, D, H, W, C)"}}
