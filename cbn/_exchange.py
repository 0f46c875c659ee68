"""SyncBatchNorm's forward exchange: the whole batch's statistics from O(C)
bytes per process, the same bits on every process.

Algebra. A process holds its shard's count n_r, mean m_r and M2_r (float64,
from the kernels). With a shift K that every process agrees on, its shifted
sums are

    S1_r = sum(x - K)   = n_r (m_r - K)
    S2_r = sum(x - K)^2 = M2_r + n_r (m_r - K)^2

and, with S1, S2, n the sums over processes, the whole batch's

    mean = K + S1 / n,        M2 = S2 - S1 * S1 / n.

Exactness. The sums travel as fixed-point integers (src/_sums.pyx) in one
Allreduce: integer addition is exact and associative, so every process gets
the same totals whatever order MPI adds in. What remains is each process's
rounding of S1_r and S2_r (relative 2**-52) and the fixed point's unit, so
M2 is exact to about 2**-52 * S2 / M2: precise while K is within a few
standard deviations of the mean (the kernels' rule for their blocks).

Frames. The shift and the fixed-point windows (per channel) must be the same
on every process: they are the frame, and a frame comes from an earlier
exchange's totals, which every process holds bitwise. In the steady state a
forward uses the previous forward's frame (its mean as the shift, windows
2**8 above its sums): one Allreduce of 32 bytes per channel (in the
opening of cbn._collectives while it fits there). The totals carry
a fingerprint of the frame each process used. More rounds follow, each a
collective of O(C) bytes, when
  - a process had no frame or another one (the first forward, a copied or
    new layer on one process): a MAX Allreduce of every shard's mean,
    -mean and M2 gives a frame that holds every value (the midpoint of the
    means as the shift), then the sums again;
  - a value fell outside its window, or was not finite: the same;
  - the error bound says precision was lost: the sums again, centred on the
    mean just found, with windows from the M2 just found.
Every decision reads totals every process holds, so all take the same path.

With virtual batches a process also sends its number of virtual batches
and W_r, the sum of their M2s (no cancellation: W_r <= M2_r <= S2_r).
"""
import functools
from typing import NamedTuple, Optional

import numpy as np

from . import _sums
from ._collectives import (
    allgather_opening,
    allreduce_opening,
    gathering,
    reduction_ops,
    same_everywhere,
)
from ._messages import MessageLayout
from ._moments import Moments, merge_all

# windows of the steady state: 2**8 above the previous forward's sums
FRAME_HEADROOM_BITS = 8
# the error bound every total is held to, relative to M2 (and sqrt(M2/n) for the mean)
TARGET_BITS = 44
ROUNDING = _sums.ROUNDING
# sums centred on a mean found by the sums: a second one only when the
# first was far off; after it precision is what the data allow
MAX_CENTRED_ROUNDS = 2
_NO_WITHIN = np.empty(0)
FINGERPRINT_MASK = (1 << 21) - 1


class Frame(NamedTuple):
    """What every process must agree on before summing.

    Attributes
    ----------
    shift : numpy.ndarray
        float64 (C,): K, per channel.
    tops : numpy.ndarray
        int32 (k, C): the fixed-point windows of S1, S2 (and W with virtual
        batches).
    nonfinite : numpy.ndarray
        bool (C,): channels not finite on some process (sent as 0).
    """

    shift: np.ndarray
    tops: np.ndarray
    nonfinite: np.ndarray

    def fingerprint(self):
        """Three integers in [1, 2**21], a 63-bit hash of the frame: their
        squares summed over MAX_PROCESSES processes fit in an int64."""
        h = _sums.fingerprint(self.shift, self.tops, self.nonfinite.view(np.uint8))
        return tuple(((h >> shift) & FINGERPRINT_MASK) + 1 for shift in (0, 21, 42))


class Shard(NamedTuple):
    """What one process contributes.

    Attributes
    ----------
    moments : Moments
        Its shard's count, mean and M2 per channel.
    within : numpy.ndarray or None
        With virtual batches: float64 (C,) sum of their M2s, else None.
    batches : int
        Its number of virtual batches (0 without them).
    """

    moments: Moments
    within: Optional[np.ndarray]
    batches: int


class Exchanged(NamedTuple):
    """The whole batch's statistics, the same bits on every process.

    Attributes
    ----------
    total : Moments
        Count, mean and M2 per channel (NaN where not finite on some process).
    within : numpy.ndarray or None
        With virtual batches: the sum over all of them of their M2s.
    batches : int
        Virtual batches over all processes (0 without them).
    frame : Frame or None
        The frame for the next exchange.
    """

    total: Moments
    within: Optional[np.ndarray]
    batches: int
    frame: Optional[Frame]


class _Sums(NamedTuple):
    """One round's totals, decoded (sums is None when the processes' frames
    differed), and what they give."""

    count: float
    nonempty: int
    batches: int
    sums: Optional[np.ndarray]   # float64 (k, C): S1, S2 (and W)
    outside: bool
    mean: Optional[np.ndarray]
    m2: Optional[np.ndarray]
    errors: Optional[np.ndarray]  # float64 (k, C): bounds on the errors of mean, M2 (and W)
    following: Optional[Frame]    # the frame for the next exchange
    precise: bool


@functools.lru_cache(maxsize=64)
def sum_layout(C, virtual):
    """The int64 row of one round of sums: header, then limbs (2, k, C)."""
    return MessageLayout(np.int64, fingerprint=6, outside=1, count=1, nonempty=1, batches=1,
                         limbs=2 * (3 if virtual else 2) * C)


@functools.lru_cache(maxsize=64)
def max_layout(C, virtual):
    """The float64 row of the round that finds a frame."""
    return MessageLayout(np.float64, count=1, high=C, negated_low=C, m2=C,
                         **({"within": C} if virtual else {}))


def exchange(comm, shard, frame, error, agreement, C, virtual):
    """The whole batch's statistics (Exchanged) from every process's Shard,
    by_gather while _collectives.gathering(comm), else by_sums.

    frame is this process's Frame from its previous exchange, or None;
    error this process's rejection of its input (an exception; shard is
    then None), or None; agreement the layer's options (an Agreement). The
    first collective is an opening (cbn._collectives): every process
    raises the same error when the options differ or any process's input
    was rejected. virtual: whether the shards carry virtual batches (the
    same on every process once the options agree).
    """
    if gathering(comm):
        return by_gather(comm, shard, frame, error, agreement, C, virtual)
    return by_sums(comm, shard, frame, error, agreement, C, virtual)


def by_sums(comm, shard, frame, error, agreement, C, virtual):
    """exchange by Allreduces of fixed-point sums: O(C) bytes per process."""
    size = comm.Get_size()
    if size > _sums.MAX_PROCESSES:
        raise ValueError(f"comm: expected at most {_sums.MAX_PROCESSES} processes, "
                         f"got {size}")
    if frame is not None and frame.tops.shape != ((3 if virtual else 2), C):
        frame = None   # made with(out) virtual batches: virtual_batch_size has changed
    return _Rounds(comm, size, C, shard, error, agreement, virtual).run(frame)


@functools.lru_cache(maxsize=64)
def gather_layout(C, virtual):
    """The float64 row each process contributes to an Allgather."""
    return MessageLayout(np.float64, count=1, mean=C, m2=C,
                         **({"batches": 1, "within": C} if virtual else {}))


def by_gather(comm, shard, frame, error, agreement, C, virtual):
    """exchange by an Allgather of every process's count, mean and M2
    (and virtual batches, W), merged in rank order on every process (so
    with the same bits). Each process receives P rows of 2C + 12 values
    where by_sums's message has 4C + 21 (and MPI moves up to twice a
    message), and no fixed-point work. One collective while a row fits
    the opening (C <= 250), two beyond. frame is returned unchanged."""
    layout = gather_layout(C, virtual)
    values = {}
    if error is None:
        m = shard.moments
        values.update(count=m.count, mean=m.mean, m2=m.m2)
        if virtual:
            values.update(batches=shard.batches, within=shard.within)
    rows = allgather_opening(comm, layout, layout.pack(comm.Get_rank(), error, **values),
                             agreement, error, "x")
    with np.errstate(invalid="ignore", over="ignore"):   # NaN and Inf channels stay so
        total = merge_all(Moments(layout.read(r, "count"), layout.read(r, "mean"),
                                  layout.read(r, "m2")) for r in rows)
        if not virtual:
            return Exchanged(total, None, 0, frame)
        within = layout.read(rows, "within").sum(axis=0)
    return Exchanged(total, within, int(layout.read(rows, "batches").sum()), frame)


class _Rounds:
    """One exchange by sums: its rounds."""

    def __init__(self, comm, size, C, shard, error, agreement, virtual):
        self.comm, self.size, self.C, self.virtual = comm, size, C, virtual
        self.rank = comm.Get_rank()
        self.ops = reduction_ops()
        self.shard, self.error, self.agreement = shard, error, agreement

    def run(self, frame):
        result = self._sum_round(frame, first=True)
        if result.count < 2:   # nothing to normalise with: the layer raises
            empty = Moments(result.count, np.zeros(self.C), np.zeros(self.C))
            return Exchanged(empty, None, result.batches, frame)
        centred, from_maxima = 0, False
        while not result.precise:
            if result.sums is None or result.outside:
                if from_maxima:
                    raise RuntimeError("SyncBatchNorm: a process sent a value outside the "
                                       "frame found from every process's maxima (a bug)")
                frame, from_maxima = self._frame_from_maxima(), True
            elif centred == MAX_CENTRED_ROUNDS:
                break
            else:
                frame, from_maxima = _centred_frame(frame, result), False
                centred += 1
            result = self._sum_round(frame)
        within = result.sums[2] if self.virtual else None
        return Exchanged(Moments(result.count, result.mean, result.m2), within, result.batches,
                         result.following)

    def _allreduce(self, row, op):
        total = np.empty_like(row)
        self.comm.Allreduce(row, total, op=op)
        return total

    def _sum_round(self, frame, first=False):
        """One Allreduce of the shifted sums in frame (None: this process has
        none), decoded when every process used the same frame."""
        C, shard = self.C, self.shard
        layout = sum_layout(C, self.virtual)
        values = {}
        outside = False
        if frame is not None:
            values["fingerprint"] = [v for h in frame.fingerprint() for v in (h, h * h)]
        if self.error is None:
            m = shard.moments
            values.update(count=int(m.count), nonempty=int(m.count > 0), batches=shard.batches)
            if m.count > 0 and frame is not None:
                limbs = np.empty((2,) + frame.tops.shape, np.int64)
                outside = _sums.encode_shard(m.count, m.mean, m.m2,
                                             shard.within if self.virtual else _NO_WITHIN,
                                             frame.shift, frame.tops,
                                             frame.nonfinite.view(np.uint8), limbs)
                values["limbs"] = limbs.ravel()
            elif m.count > 0:
                outside = True   # no frame: the sums cannot be sent
        values["outside"] = int(outside)
        row = layout.pack(self.rank, self.error, **values)
        if first:   # options and rejections checked before the sizes can differ
            total = allreduce_opening(self.comm, layout, row, self.agreement, self.error, "x")
        else:
            total = self._allreduce(row, self.ops.sum)
        count = float(layout.read(total, "count"))
        batches, outside = int(layout.read(total, "batches")), bool(layout.read(total, "outside"))
        fp = layout.read(total, "fingerprint")
        # every process had a frame (h > 0) and the same one
        if not (frame is not None and (fp[0::2] > 0).all() and same_everywhere(self.size, fp)):
            return _Sums(count, 0, batches, sums=None, outside=True, mean=None, m2=None,
                         errors=None, following=None, precise=False)
        nonempty = int(layout.read(total, "nonempty"))
        sums = np.empty(frame.tops.shape)
        _sums.decode(layout.read(total, "limbs").reshape((2,) + sums.shape), frame.tops, sums)
        if outside or count < 2:
            return _Sums(count, nonempty, batches, sums, outside, mean=None, m2=None,
                         errors=None, following=None, precise=False)
        mean, m2, errors = np.empty(C), np.empty(C), np.empty(sums.shape)
        next_tops = np.empty(sums.shape, np.int32)
        precise = _sums.statistics(frame.shift, count, nonempty, sums, frame.tops,
                                   frame.nonfinite.view(np.uint8), 2.0 ** -TARGET_BITS,
                                   FRAME_HEADROOM_BITS, mean, m2, errors, next_tops)
        # the frame for the next forward: this one's mean as the shift, windows
        # FRAME_HEADROOM_BITS above this one's sums
        following = Frame(np.where(frame.nonfinite, 0.0, mean), next_tops,
                          np.zeros_like(frame.nonfinite))
        return _Sums(count, nonempty, batches, sums, outside=False, mean=mean, m2=m2,
                     errors=errors, following=following, precise=precise)

    def _frame_from_maxima(self):
        """A frame that holds every process's values, from one MAX Allreduce:
        the midpoint of the shards' means as the shift, windows from the
        largest count, M2 and distance of a mean from the shift."""
        C, shard, virtual = self.C, self.shard, self.virtual
        layout = max_layout(C, virtual)
        m = shard.moments
        values = {"count": m.count}
        if m.count > 0:
            finite = np.isfinite(m.mean) & np.isfinite(m.m2)
            if virtual:
                finite &= np.isfinite(shard.within)
            values.update(high=np.where(finite, m.mean, -np.inf),
                          negated_low=np.where(finite, -m.mean, -np.inf),
                          m2=np.where(finite, m.m2, np.inf))
            if virtual:
                values["within"] = np.where(finite, shard.within, np.inf)
        else:
            values.update(high=-np.inf, negated_low=-np.inf)
        top = self._allreduce(layout.pack(self.rank, None, **values), self.ops.max)
        count = layout.read(top, "count")
        high, low = layout.read(top, "high"), -layout.read(top, "negated_low")
        with np.errstate(invalid="ignore", over="ignore"):
            shift = low / 2 + high / 2
            # |m_r - shift| <= reach, the midpoint's rounding included
            reach = (high / 2 - low / 2) + ROUNDING * np.maximum(np.abs(high), np.abs(low))
            bounds = [count * reach, layout.read(top, "m2") + count * reach * reach]
            if virtual:
                bounds.append(layout.read(top, "within"))
        bounds = np.array(bounds)
        nonfinite = ~(np.all(np.isfinite(bounds), axis=0) & np.isfinite(shift))
        return _frame(shift, bounds, nonfinite)


def _frame(shift, bounds, nonfinite, headroom_bits=0):
    """The Frame with this shift whose windows hold values up to bounds (k, C)."""
    tops = np.empty(bounds.shape, np.int32)
    _sums.tops_for(np.where(nonfinite, 0.0, bounds), headroom_bits, tops)
    return Frame(np.where(nonfinite, 0.0, shift), tops, nonfinite.copy())


def _centred_frame(frame, result):
    """Sums centred on the mean just found, in windows from the M2 just found
    plus its error bound: every process's S2_r <= S2 = M2 + n (mean error)^2."""
    n, errors = result.count, result.errors
    with np.errstate(invalid="ignore", over="ignore"):
        s2 = result.m2 + errors[1] + n * errors[0] * errors[0]
        bounds = [np.sqrt(n * s2), s2] + ([result.sums[2] + errors[2]]
                                          if len(result.sums) == 3 else [])
    return _frame(result.mean, np.array(bounds), frame.nonfinite)
