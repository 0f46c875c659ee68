"""Canonical 2-D/3-D views of N-D inputs, whatever their memory order.

``layout`` says which axis holds the channels ("NCHW": axis 1, "NHWC": the
last). The kernels see one of two views, chosen from the array's memory order,
not from ``layout``:

* channels-first ``(N, C, S)``: each (n, c) is a contiguous run of S values;
* channels-last ``(M, C)``: each row holds the C channels contiguously.

An NCHW array stored channels-last (a transposed NHWC array) is therefore
processed without a copy, and its output is laid out the same way, as in
PyTorch's ``channels_last`` memory format. Arrays that fit neither view
(Fortran order, arbitrary strides, unaligned data) are copied once into the
layout's natural order; results are the same either way.
"""
import math

import numpy as np

LAYOUTS = ("NCHW", "NHWC")
CHANNELS_FIRST = "cf"
CHANNELS_LAST = "cl"


def check_layout(layout):
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def channel_axis(layout, ndim):
    return 1 if layout == "NCHW" else ndim - 1


def _reshape_view(a, shape):
    """a.reshape(shape) if that needs no copy, else None."""
    try:
        return a.reshape(shape, copy=False)
    except ValueError:
        return None
    except TypeError:  # NumPy < 2.1: no copy= argument
        v = a.view()
        try:
            v.shape = shape
        except AttributeError:
            return None
        return v


def _usable(view, itemsize):
    """Kernels need aligned data, element-multiple strides and a unit last stride."""
    return (
        view is not None
        and view.flags.aligned
        and (view.shape[-1] <= 1 or view.strides[-1] == itemsize)
        and all(s % itemsize == 0 for s in view.strides)
    )


def _channels_last_view(x, axis):
    moved = np.moveaxis(x, axis, -1)
    C = moved.shape[-1]
    return _reshape_view(moved, (x.size // C if C else 0, C))


def _channels_first_view(x, axis):
    moved = np.moveaxis(x, axis, 1)
    N, C = moved.shape[0], moved.shape[1]
    return _reshape_view(moved, (N, C, math.prod(moved.shape[2:])))


def _view_of_kind(x, axis, kind, copy=True):
    """x's kernel view of the given kind; copied into that order if needed (and allowed)."""
    itemsize = x.dtype.itemsize
    make = _channels_last_view if kind == CHANNELS_LAST else _channels_first_view
    view = make(x, axis)
    if _usable(view, itemsize):
        return view
    if not copy:
        return None
    target = -1 if kind == CHANNELS_LAST else 1
    return make(np.require(np.moveaxis(x, axis, target), requirements=("C", "A")), target)


def memory_order(a):
    """a's axes longer than 1, from the largest stride (in magnitude) to the smallest."""
    axes = [i for i in range(a.ndim) if a.shape[i] > 1]
    return sorted(axes, key=lambda i: -abs(a.strides[i]))


class Output:
    """Where a kernel writes a result.

    array: what the caller returns; view: its kernel view; target: the
    user's ``out`` when it has a memory order no kernel view fits, so the
    kernel writes ``array`` and ``result()`` copies it there.
    """

    __slots__ = ("array", "view", "target")

    def __init__(self, array, view, target=None):
        self.array = array
        self.view = view
        self.target = target

    def result(self):
        """The user-facing result, once the kernels have written ``view``."""
        if self.target is None:
            return self.array
        np.copyto(self.target, self.array)
        return self.target


class Canonical:
    """An N-D array and the kernel view of it.

    kind: CHANNELS_FIRST or CHANNELS_LAST; view: (N, C, S) or (M, C);
    shape: the user's shape; axis: the channel axis in it; natural: a
    C-contiguous array of the user's shape reshapes to a view of this kind.
    """

    __slots__ = ("kind", "view", "shape", "axis", "natural")

    def __init__(self, kind, view, shape, axis, natural):
        self.kind = kind
        self.view = view
        self.shape = shape
        self.axis = axis
        self.natural = natural

    @property
    def count(self):
        """Values per channel."""
        v = self.view
        return v.shape[0] * v.shape[2] if v.ndim == 3 else v.shape[0]

    def output(self, out=None, orders=(), name="out"):
        """An Output for the result: a new array, or ``out`` checked.

        ``out`` must be viewable as this kind of view, or have the memory
        order of one of ``orders`` (e.g. the input: what ``np.empty_like``
        gives); the kernels then write a temporary that is copied into it.
        """
        dtype = self.view.dtype
        if out is None:
            if self.natural:
                y = np.empty(self.shape, dtype)
                return Output(y, y.reshape(self.view.shape))
            return Output(*self._wrap(np.empty(self.view.shape, dtype)))
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != dtype or out.shape != self.shape:
            raise ValueError(f"{name}: expected a {dtype} array of shape {self.shape}, "
                             f"got {out.dtype} {out.shape}")
        if not out.flags.writeable:
            raise ValueError(f"{name}: expected a writable array, got a read-only one")
        view = self.like(out, copy=False)
        if view is not None:
            return Output(out, view)
        if any(memory_order(out) == memory_order(a) for a in orders):
            fresh = self.output()
            return Output(fresh.array, fresh.view, target=out)
        order = "channels-first" if self.kind == CHANNELS_FIRST else "channels-last"
        raise ValueError(f"{name}: expected the memory order of the input (as np.empty_like "
                         f"gives) or a {order} one with a contiguous innermost axis, got strides "
                         f"{out.strides}")

    def _wrap(self, view):
        """The user-shaped array whose kernel view is ``view`` (same kind and shape)."""
        shape, axis = self.shape, self.axis
        if self.kind == CHANNELS_FIRST:
            # stored (N, C, *rest) in C order: move C to its place
            ordered = (shape[0], shape[axis]) + tuple(s for i, s in enumerate(shape)
                                                      if i not in (0, axis))
            return np.moveaxis(view.reshape(ordered), 1, axis), view
        # stored (..., C) in C order: move C from last to its place
        ordered = tuple(s for i, s in enumerate(shape) if i != axis) + (shape[axis],)
        return np.moveaxis(view.reshape(ordered), -1, axis), view

    def like(self, other, copy=True):
        """The kernel view of ``other`` (our shape) of our kind; a copy if needed and allowed."""
        if self.natural and other.flags.c_contiguous and other.flags.aligned:
            return other.reshape(self.view.shape)
        return _view_of_kind(other, self.axis, self.kind, copy)


def canonicalize(x, layout):
    """The kernel view of x (ndim >= 2, non-empty channel axis on ``layout``'s axis)."""
    ndim = x.ndim
    shape = x.shape
    axis = 1 if layout == "NCHW" else ndim - 1
    N, C = shape[0], shape[axis]
    spatial = x.size // (N * C) if N * C else 0
    # channels-last rows when there is no spatial extent (one run per value would
    # be the slowest possible channels-first view), channels-first runs for a single channel
    natural_kind = CHANNELS_LAST if (layout == "NHWC" or spatial == 1) and C > 1 else CHANNELS_FIRST
    flags = x.flags
    if flags.c_contiguous and flags.aligned:
        if natural_kind == CHANNELS_LAST:
            return Canonical(CHANNELS_LAST, x.reshape(x.size // C, C), shape, axis, True)
        if layout == "NCHW" or ndim == 2:
            return Canonical(CHANNELS_FIRST, x.reshape(N, C, spatial), shape, axis, True)
    other_kind = CHANNELS_FIRST if natural_kind == CHANNELS_LAST else CHANNELS_LAST
    for kind in (natural_kind, other_kind):
        view = _view_of_kind(x, axis, kind, copy=False)
        if view is not None:
            return Canonical(kind, view, shape, axis, _natural_ok(shape, axis, kind))
    view = _view_of_kind(x, axis, natural_kind)
    return Canonical(natural_kind, view, shape, axis, _natural_ok(shape, axis, natural_kind))


def _natural_ok(shape, axis, kind):
    """Whether a C-contiguous array of ``shape`` reshapes to a view of ``kind``."""
    if shape[axis] == 1:
        return True
    if kind == CHANNELS_LAST:
        return math.prod(shape[axis + 1:]) == 1
    return math.prod(shape[1:axis]) == 1
