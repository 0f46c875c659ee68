"""SyncBatchNorm: batch statistics over every process of an MPI communicator.

Data-parallel training gives each process a shard of the batch; plain batch
norm would normalise each shard with its own statistics. SyncBatchNorm
exchanges per-channel statistics once per forward (cbn._exchange): up to
four processes an Allgather of every shard's float64 (count, mean, M2),
merged in rank order; beyond, an Allreduce of fixed-point sums shifted by
the previous forward's mean, whose size does not depend on the number of
processes. Either way every process gets the same bits, as exact as one
process's statistics on the whole batch, and normalises its shard with
them; the backward sums (sum(dy), sum(dy * (x - mean))) over the processes.
Each is one collective while its message fits the opening
(cbn._collectives: ~250 channels by Allgather, ~120 by sums), two beyond;
the backward beyond four processes always takes two.
With virtual batches (ghost batch norm) each shard's runs of k rows are
normalised on their own, with no exchange, and the one exchange carries
what the running statistics need. Needs mpi4py (``pip install "cbn[mpi]"``);
any object that follows the communicator protocol (cbn._collectives: mpi4py's
Get_size/Get_rank/Allgather/Allreduce, with the ops it documents) works.

Every operation opens with a message of one size and type whatever the
options (cbn._collectives), so ranks that disagree on an option, or run
different operations, all raise the same ValueError instead of failing
inside MPI; a rank whose input is rejected still joins the collective,
flagging the error, so every rank raises instead of the others waiting
forever.

Copies share the communicator. A pickle keeps only the default one (the
loading process's COMM_WORLD): another communicator is a handle into this
process's MPI, so an unpickled layer raises until ``layer.comm`` is set.
"""
import copy
import hashlib
import sys

import numpy as np

from . import _ops
from ._collectives import Agreement, agreement, allreduce_opening
from ._commit import Changes
from ._docs import LAYER_PARAMETERS, OPTIONS_AS_BATCHNORM
from ._exchange import Shard, exchange
from ._layout import canonicalize
from ._messages import MessageLayout
from ._moments import Moments, merge_all
from ._records import Piece, SavedForward
from ._validation import check_bool, check_out_overlap, describe
from .batchnorm import BatchNormBase
from .renorm import BatchRenormBase

__all__ = ["SyncBatchNorm", "allreduce_gradients"]

INSTALL_HINT = ('SyncBatchNorm needs mpi4py and an MPI library: pip install "cbn[mpi]" '
                '(mpi4py and the mpich wheel)')

_AXES = {2: "", 3: "L", 4: "H, W", 5: "D, H, W"}
# channels whose statistics tell a backward's forward (SyncBatchNorm._backward_agreement)
FORWARD_ID_CHANNELS = 64


def default_comm():
    """mpi4py's COMM_WORLD, or ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return MPI.COMM_WORLD


def _world_if_imported():
    """mpi4py's COMM_WORLD if mpi4py is loaded already, else None."""
    mpi = sys.modules.get("mpi4py.MPI")
    return None if mpi is None else mpi.COMM_WORLD


class _CommNotPickled:
    """Stands for a communicator a pickled layer had: it must be set again."""


def _check_comm(comm):
    for method in ("Get_size", "Get_rank", "Allgather", "Allreduce"):
        if not callable(getattr(comm, method, None)):
            raise TypeError(f"comm: expected a communicator (an object with Get_size, "
                            f"Get_rank, Allgather and Allreduce, as mpi4py's), got "
                            f"{describe(comm)}, which has no {method}")
    return comm


def _shape_names(layout):
    names = {}
    for nd, spatial in _AXES.items():
        parts = ["N", spatial, "C"] if layout == "NHWC" else ["N", "C", spatial]
        names[nd] = "(" + ", ".join(p for p in parts if p) + ")"
    return names


_SYNC_NOTES = """\
Takes ``(N, C, *spatial)`` inputs with up to three spatial axes, or
channels-last ones with layout="NHWC", and every BatchNorm*d option.
With one process, or in eval mode, it is BatchNorm and communicates
nothing. With virtual_batch_size=k every shard's size must be a multiple
of k: the virtual batches are then the whole batch's runs of k rows, as
one process would take them, and each lies within one shard. grad_weight
and grad_bias stay local: all-reduce them with the other gradients (see
allreduce_gradients). Shards may be uneven, empty included; a whole batch
of one value per channel raises ValueError on every rank."""

_SYNC_PARAMETERS = """\
num_features : int
    C, the number of channels.
comm : communicator, optional
    The processes whose shards make up the batch: an mpi4py communicator or
    any object that follows the communicator protocol (API reference,
    "Synchronized statistics"); mpi4py's COMM_WORLD by default.
""" + LAYER_PARAMETERS.split("\n", 2)[2] + "\n" + OPTIONS_AS_BATCHNORM


class SyncBatchNorm(BatchNormBase):
    """Batch normalization with statistics over the whole distributed batch."""

    _DOC_PARAMETERS = _SYNC_PARAMETERS
    _DOC_NOTES = _SYNC_NOTES
    _DOC_EXAMPLE = ""   # needs MPI processes: see examples/mpi_data_parallel.py

    _SHAPES = {"NCHW": _shape_names("NCHW"), "NHWC": _shape_names("NHWC")}

    def __init__(self, num_features, comm=None, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, **options):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, **options)
        if comm is None:
            default_comm()   # mpi4py missing: say so now, not at the first forward
        self.comm = comm
        # the shift and fixed-point windows of the last exchange (_exchange.Frame)
        self._exchange_frame = None

    @property
    def comm(self):
        """The communicator: mpi4py's COMM_WORLD unless another was given."""
        if self._comm is None:
            return default_comm()
        if isinstance(self._comm, _CommNotPickled):
            raise ValueError("comm: expected a communicator, got none: this layer was "
                             "unpickled, and only the default COMM_WORLD is pickled (a "
                             "communicator is a handle into this process's MPI); set "
                             "layer.comm = ...")
        return self._comm

    @comm.setter
    def comm(self, value):
        if value is not None:
            _check_comm(value)
            if value is _world_if_imported():
                value = None
        self._comm = value

    def __getstate__(self):
        state = super().__getstate__()
        if state["_comm"] is not None:
            state["_comm"] = _CommNotPickled()
        return state

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        # copies share the communicator, a handle rather than state
        if self._comm is not None:
            memo[id(self._comm)] = self._comm
        new = object.__new__(type(self))
        memo[id(self)] = new
        state = BatchNormBase.__getstate__(self)   # the base's: keeps the communicator
        new.__setstate__(copy.deepcopy(state, memo))
        return new

    @classmethod
    def from_batchnorm(cls, bn, comm=None):
        """A SyncBatchNorm with bn's options, parameters, running statistics and mode.

        Parameters
        ----------
        bn : BatchNorm1d, BatchNorm2d or BatchNorm3d
            The layer to copy (not a batch renormalization layer).
        comm : communicator, optional
            As for the constructor.

        Returns
        -------
        SyncBatchNorm
            A new layer holding copies of bn's arrays.
        """
        if not isinstance(bn, BatchNormBase) or isinstance(bn, BatchRenormBase):
            raise TypeError(f"bn: expected a cbn BatchNorm1d/2d/3d, got {describe(bn)}")
        sync = cls(bn.num_features, comm, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                   dtype=bn.dtype, param_dtype=bn.param_dtype, layout=bn.layout,
                   bias_correction=bn.bias_correction,
                   activation=bn.activation, virtual_batch_size=bn.virtual_batch_size)
        sync.load_state_dict(bn.state_dict())
        return sync.train(bn.training)

    def _distributed(self):
        # eval mode communicates nothing, also without running statistics (as PyTorch)
        return self.training and self.comm.Get_size() > 1

    def _agreement(self, operation):
        """The options every rank's layer must share for operation (an Agreement)."""
        return agreement(operation, (
            ("num_features", self.num_features), ("virtual_batch_size", self.virtual_batch_size),
            ("dtype", self.dtype), ("param_dtype", self.param_dtype), ("layout", self.layout),
            ("affine", self.affine), ("track_running_stats", self.track_running_stats),
            ("momentum", self.momentum), ("eps", self.eps),
            ("bias_correction", self.bias_correction), ("activation", self.activation)))

    def _backward_agreement(self, piece):
        """What every rank's backward must share: the forward it
        differentiates, told by that forward's statistics (the same bits on
        every rank), and so its channels. Not the options the forward read
        (momentum, eps): one rank may have changed them since, and the
        backward does not read them."""
        # (its first channels' mean and invstd: two forwards that agree there
        # agree everywhere but by a coincidence of no consequence, and
        # hashing every channel cost 30 us at C = 2048)
        forward = hashlib.blake2b(piece.stats[:2, :FORWARD_ID_CHANNELS].tobytes(),
                                  digest_size=6)
        forward.update(repr(piece.global_count).encode())
        return Agreement("backward", (
            ("num_features", self.num_features),
            ("last_forward", f"the one with statistics {forward.hexdigest()}")))

    def _exchange(self, error, shard):
        """The whole batch's statistics (see _exchange.exchange), with the frame
        of this layer's previous exchange."""
        return exchange(self.comm, shard, self._exchange_frame, error,
                        self._agreement("forward"), self.num_features,
                        self.virtual_batch_size is not None)

    @staticmethod
    def _check_global_count(total):
        if total.count < 2:
            raise ValueError(f"x: expected more than 1 value per channel over all processes "
                             f"when using batch statistics, got {int(total.count)}")

    # ------------------------------------------------------------ forward

    def forward(self, x, out=None):
        """Normalise this shard with the statistics of every process's shard.

        In training with more than one process every rank must call it (it
        runs a collective).

        Parameters
        ----------
        x : numpy.ndarray
            This process's shard of the batch (possibly empty).
        out : numpy.ndarray, optional
            Where to write the output, as for BatchNorm2d.forward.

        Returns
        -------
        numpy.ndarray
            The output (``out`` when given).
        """
        if not self._distributed():
            return super().forward(x, out)
        with self._state_lock:
            if self.virtual_batch_size is not None:
                return self._forward_virtual_batches(x, out)
            return self._forward_distributed(x, out)

    def _forward_distributed(self, x, out):
        C = self.num_features
        error, local = None, Moments.empty(C)
        try:
            self._check_input(x)
            self._check_count_room()
            overwritten = out is not None and check_out_overlap(out, x, "x")
            canon = canonicalize(x, self.layout)
            output = canon.output(out, orders=(x,))   # a bad out is refused before the collective
            if x.size:
                local = _ops.moments(canon)
        except (TypeError, ValueError, Warning) as exc:   # (a warning filter set to "error")
            error = exc
        exchanged = self._exchange(error, None if error else Shard(local, None, 0))
        total = exchanged.total
        self._check_global_count(total)
        var = total.m2 / total.count
        p = self._parameters(copy_all=False)   # the lock is held
        y, coef = _ops.normalize(canon, total.mean, var, p.eps, p.weight, p.bias, output,
                                 self.activation == "relu", total.count)
        changes = Changes()
        changes.set(self, "_exchange_frame", exchanged.frame)
        if self.track_running_stats:
            self._stage_running_update(changes, total.mean, var,
                                       total.count / (total.count - 1.0))
        stats = np.empty((3, C))
        stats[0] = total.mean
        stats[1] = 1.0 / np.sqrt(var + p.eps)
        stats[2] = var
        piece = Piece(canon, p.weight, stats=stats, relu_coef=coef,
                      global_count=total.count)
        self._stage_forward(changes, SavedForward(canon, (piece,), True, overwritten),
                            self._observer, total)
        changes.apply()
        return y

    def _forward_virtual_batches(self, x, out):
        """Ghost batch norm over shards: this shard's runs of k rows are
        normalised as BatchNorm does, needing no other rank (so a rank whose
        input was valid has written its output even when another rank's was
        rejected). The one exchange carries, per rank, the shard's (count,
        mean, M2), its number of virtual batches and the sum of their M2s:
        the running statistics move once, with the mean over all virtual
        batches of their means and unbiased variances, and
        precise_statistics takes the whole batch's moments."""
        C, k = self.num_features, self.virtual_batch_size
        error, pieces = None, ()
        try:
            axis = self._check_input(x)
            self._check_count_room()
            if x.shape[0]:
                self._check_batch(x, axis, k)
            overwritten = out is not None and check_out_overlap(out, x, "x")
            canon = canonicalize(x, self.layout)
            output = canon.output(out, orders=(x,))
            y, pieces = self._normalize_virtual_batches(x, canon, k, output,
                                                        self.activation == "relu",
                                                        self._parameters(copy_all=False))
        except (TypeError, ValueError, Warning) as exc:   # (a warning filter set to "error")
            error = exc
        moments = [p.moments() for p in pieces]
        shard = None if error else Shard(merge_all(moments) or Moments.empty(C),
                                         sum(m.m2 for m in moments) if moments else np.zeros(C),
                                         len(moments))
        exchanged = self._exchange(error, shard)
        total = exchanged.total
        self._check_global_count(total)
        changes = Changes()
        changes.set(self, "_exchange_frame", exchanged.frame)
        if self.track_running_stats:
            # every virtual batch has count / batches values per channel: the
            # mean of their means is the batch's, of their unbiased variances
            # the sum of their M2s over batches * (values - 1)
            per_batch = total.count / exchanged.batches
            self._stage_running_update(changes, total.mean,
                                       exchanged.within / (exchanged.batches * (per_batch - 1.0)))
        self._stage_forward(changes, SavedForward(canon, pieces, True, overwritten),
                            self._observer, total)
        changes.apply()
        return y

    # ------------------------------------------------------------ backward

    def backward(self, dy, out=None):
        """Gradient of this shard's input, with (sum(dy), sum(dy * (x - mean))) summed over ranks.

        grad_weight and grad_bias are this shard's share (all-reduce them).

        Parameters
        ----------
        dy : numpy.ndarray
            Gradient of this shard's output.
        out : numpy.ndarray, optional
            Where to write dx, as for BatchNorm2d.backward.

        Returns
        -------
        numpy.ndarray
            dx (``out`` when given).
        """
        saved = self._last_forward
        if saved is None or not saved.pieces or saved.pieces[0].global_count is None:
            return super().backward(dy, out)   # one process, eval, or local virtual batches
        C, piece = self.num_features, saved.pieces[0]
        layout = MessageLayout(np.float64, sums=2 * C)
        error, local = None, np.zeros((2, C))
        try:
            output = self._checked_backward(saved, dy, out)
            if dy.size:
                local = _ops.grad_sums(saved.canon, dy, piece.stats[0], piece.relu_coef)
        except (TypeError, ValueError, Warning) as exc:
            error = exc
        sent = layout.pack(self.comm.Get_rank(), error, sums=local.ravel())
        total = allreduce_opening(self.comm, layout, sent, self._backward_agreement(piece),
                                  error, "dy")
        dx = _ops.grad_input(saved.canon, dy, piece.stats[:2], piece.weight,
                             layout.read(total, "sums").reshape(2, C), piece.global_count, output,
                             piece.relu_coef)
        if self.affine:
            changes = Changes()
            changes.set(self, "grad_weight", (local[1] * piece.stats[1]).astype(self.param_dtype))
            changes.set(self, "grad_bias", local[0].astype(self.param_dtype))
            changes.apply()
        return dx


def allreduce_gradients(layers_or_arrays, comm=None, average=True):
    """Sum (or average) gradients over every process, in place.

    A collective: every rank must call it. Up to 4 processes one opening
    Allgather (cbn._collectives) while there are at most 501 values in all,
    else a second collective for the rest; beyond 4 processes always two
    (the opening, then an Allreduce of the values). Ranks whose arrays
    differ in number or size, or whose average differs, all raise the same
    ValueError; a rank whose argument is rejected makes every rank raise.

    Parameters
    ----------
    layers_or_arrays : iterable
        The cbn layers (their grad_weight and grad_bias) and/or writable
        float numpy arrays.
    comm : communicator, optional
        The processes (mpi4py's, or one that follows the communicator
        protocol); mpi4py's COMM_WORLD by default.
    average : bool, default True
        Divide the sums (taken in float64) by the number of processes.

    Returns
    -------
    list of numpy.ndarray
        The arrays updated, every one or none of them.
    """
    comm = _check_comm(default_comm() if comm is None else comm)
    error, arrays = None, []
    try:   # a rejected argument still joins the collective, so that every rank raises
        average = check_bool(average, "average")
        arrays = _gradient_arrays(layers_or_arrays)
    except (TypeError, ValueError) as exc:
        error, arrays = exc, []
    sizes = [a.size for a in arrays]
    layout = MessageLayout(np.float64, values=sum(sizes))
    sent = layout.pack(comm.Get_rank(), error)
    if arrays:
        sent[layout.HEADER:] = np.concatenate([a.ravel() for a in arrays])
    options = None if error else agreement("allreduce_gradients", (
        ("layers_or_arrays", f"{sum(sizes)} values in {len(sizes)} arrays {sizes}"),
        ("average", average)))
    total = allreduce_opening(comm, layout, sent, options, error,
                              "layers_or_arrays")[layout.HEADER:]
    if average:
        total /= comm.Get_size()
    changes, start = Changes(), 0   # every array updated, or none (e.g. on KeyboardInterrupt)
    for a in arrays:
        changes.copy(a, total[start:start + a.size].reshape(a.shape))
        start += a.size
    changes.apply()
    return arrays


def _gradient_arrays(layers_or_arrays):
    """The arrays allreduce_gradients updates, each checked."""
    arrays = []
    for item in layers_or_arrays:
        if isinstance(item, BatchNormBase):
            if not item.affine:
                continue
            if item.grad_weight is None:
                raise ValueError(f"layers_or_arrays: expected layers with gradients, got {item!r} "
                                 f"before its first backward")
            arrays += [item.grad_weight, item.grad_bias]
        elif isinstance(item, np.ndarray) and item.dtype.kind == "f":
            if not item.flags.writeable:
                raise ValueError("layers_or_arrays: expected writable arrays (updated in place), "
                                 "got a read-only one")
            arrays.append(item)
        else:
            raise TypeError(f"layers_or_arrays: expected cbn layers or float numpy arrays, got "
                            f"{describe(item)}")
    return arrays
