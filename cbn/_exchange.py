"""SyncBatchNorm's forward exchange: the whole batch's statistics from O(C)
bytes per process, the same bits on every process.

Algebra. A process holds its shard's count n_r, mean m_r and M2_r (float64,
from the kernels). With a shift K that every process agrees on, its shifted
sums are

    S1_r = sum(x - K)   = n_r (m_r - K)
    S2_r = sum(x - K)^2 = M2_r + n_r (m_r - K)^2

and, with S1, S2, n the sums over processes, the whole batch's

    mean = K + S1 / n,        M2 = S2 - S1 * S1 / n.

Exactness. The sums travel as fixed-point integers (_fixed_point) in one
Allreduce: integer addition is exact and associative, so every process gets
the same totals whatever order MPI adds in. What remains is each process's
rounding of S1_r and S2_r (relative 2**-52) and the fixed point's unit, so
M2 is exact to about 2**-52 * S2 / M2: precise while K is within a few
standard deviations of the mean (the kernels' rule for their blocks).

Frames. The shift and the fixed-point windows (per channel) must be the same
on every process: they are the frame, and a frame comes from an earlier
exchange's totals, which every process holds bitwise. In the steady state a
forward uses the previous forward's frame (its mean as the shift, windows
2**8 above its sums): one Allreduce of 32 bytes per channel. The totals carry
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
import sys
import zlib
from typing import NamedTuple, Optional

import numpy as np

from . import _fixed_point
from ._messages import MessageLayout
from ._moments import Moments

# windows of the steady state: 2**8 above the previous forward's sums
FRAME_HEADROOM_BITS = 8
# the error bound every total is held to, relative to M2 (and sqrt(M2/n) for the mean)
TARGET_BITS = 44
ROUNDING = 2.0 ** -52
# sums centred on a mean found by the sums: a second one only when the
# first was far off; after it precision is what the data allow
MAX_CENTRED_ROUNDS = 2
FIELDS = ("s1", "s2", "within")


class Frame(NamedTuple):
    """What every process must agree on before summing.

    Attributes
    ----------
    shift : numpy.ndarray
        float64 (C,): K, per channel.
    tops : numpy.ndarray
        int64 (3, C): the fixed-point windows of S1, S2 and W.
    nonfinite : numpy.ndarray
        bool (C,): channels not finite on some process (sent as 0).
    """

    shift: np.ndarray
    tops: np.ndarray
    nonfinite: np.ndarray

    def fingerprint(self):
        """Two integers in [1, 2**16] that differ when frames differ (almost surely)."""
        crc = zlib.crc32(self.shift.tobytes() + self.tops.tobytes() + self.nonfinite.tobytes())
        return (crc & 0xFFFF) + 1, (crc >> 16) + 1


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
    frame : Frame
        The frame for the next exchange.
    collectives : int
        The Allreduces this exchange took.
    """

    total: Moments
    within: Optional[np.ndarray]
    batches: int
    frame: Frame
    collectives: int


class _Sums(NamedTuple):
    """Decoded totals of one round of sums."""

    count: float
    nonempty: int
    batches: int
    s1: np.ndarray
    s2: np.ndarray
    within: Optional[np.ndarray]


def reduction_ops(comm):
    """(SUM, MAX) as comm.Allreduce takes them: mpi4py's for an mpi4py
    communicator, else the NumPy ufuncs that combine two buffers (np.add,
    np.maximum), for a stand-in communicator."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and isinstance(comm, mpi.Comm):
        return mpi.SUM, mpi.MAX
    return np.add, np.maximum


def sum_layout(C, virtual):
    """The int64 row of one round of sums."""
    return MessageLayout(np.int64, fingerprint=4, outside=1, count=1, nonempty=1, batches=1,
                         s1=2 * C, s2=2 * C, **({"within": 2 * C} if virtual else {}))


def max_layout(C, virtual):
    """The float64 row of the round that finds a frame."""
    return MessageLayout(np.float64, count=1, high=C, negated_low=C, m2=C,
                         **({"within": C} if virtual else {}))


def exchange(comm, shard, frame, error, C, virtual):
    """The whole batch's statistics (Exchanged) from every process's Shard.

    frame is this process's Frame from its previous exchange, or None;
    error this process's rejection of its input (an exception; shard is
    then None), or None. Raises on every process when any process's input
    was rejected. virtual: whether the shards carry virtual batches (the
    same on every process).
    """
    size = comm.Get_size()
    if size > _fixed_point.MAX_PROCESSES:
        raise ValueError(f"comm: expected at most {_fixed_point.MAX_PROCESSES} processes, "
                         f"got {size}")
    return _Rounds(comm, size, C, shard, error, virtual).run(frame)


class _Rounds:
    """One exchange: its rounds and the collectives they took."""

    def __init__(self, comm, size, C, shard, error, virtual):
        self.comm, self.size, self.C, self.virtual = comm, size, C, virtual
        self.rank = comm.Get_rank()
        self.sum_op, self.max_op = reduction_ops(comm)
        self.shard, self.error = shard, error
        self.collectives = 0

    def run(self, frame):
        sums, agreed, outside = self._sum_round(frame, first=True)
        if sums.count < 2:   # nothing to normalise with: the layer raises
            return self._result(frame, sums, frame)
        centred = 0
        while True:
            if not agreed or outside:
                frame = self._frame_from_maxima()
                sums, agreed, outside = self._sum_round(frame)
                if outside:
                    raise RuntimeError("SyncBatchNorm: a process sent a value outside the frame "
                                       "found from every process's maxima (a bug)")
            mean, m2, precise = _decoded(frame, sums)
            if precise or centred == MAX_CENTRED_ROUNDS:
                return self._result(frame, sums, _next_frame(frame, sums, mean, m2))
            frame = _centred_frame(frame, sums, mean, m2)
            sums, agreed, outside = self._sum_round(frame)
            centred += 1

    def _result(self, frame, sums, next_frame):
        if sums.count < 2:
            total = Moments(sums.count, np.zeros(self.C), np.zeros(self.C))
        else:
            mean, m2, _ = _decoded(frame, sums)
            total = Moments(sums.count, mean, m2)
        return Exchanged(total, sums.within, sums.batches, next_frame, self.collectives)

    def _allreduce(self, row, op):
        total = np.empty_like(row)
        self.comm.Allreduce(row, total, op=op)
        self.collectives += 1
        return total

    def _sum_round(self, frame, first=False):
        """One Allreduce of the shifted sums in frame (None: this process has
        none). Returns (sums, agreed, outside): agreed when every process used
        the same frame, outside when a value did not fit its window."""
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
                known = frame.nonfinite
                with np.errstate(invalid="ignore", over="ignore"):
                    d = m.mean - frame.shift
                    fields = {"s1": m.count * d, "s2": m.m2 + m.count * d * d}
                    if self.virtual:
                        fields["within"] = shard.within
                for i, name in enumerate(FIELDS):
                    if name in fields:
                        limbs, out = _fixed_point.encode(np.where(known, 0.0, fields[name]),
                                                         frame.tops[i])
                        values[name] = limbs.ravel()
                        outside |= bool(out[~known].any())
            elif m.count > 0:
                outside = True   # no frame: the sums cannot be sent
        values["outside"] = int(outside)
        total = self._allreduce(layout.pack(self.rank, self.error, **values), self.sum_op)
        if first:
            layout.raise_if_rejected(total, self.error, "x")
        fp = [int(v) for v in layout.read(total, "fingerprint")]
        agreed = frame is not None and all(self.size * fp[i + 1] == fp[i] * fp[i] and fp[i] > 0
                                           for i in (0, 2))
        if not agreed:
            return _Sums(float(layout.read(total, "count")), 0, 0, None, None, None), False, True
        limbs = {name: layout.read(total, name).reshape(2, C) for name in FIELDS
                 if name in layout.slices}
        decoded = {name: _fixed_point.decode(limbs[name], frame.tops[i])
                   for i, name in enumerate(FIELDS) if name in limbs}
        sums = _Sums(float(layout.read(total, "count")), int(layout.read(total, "nonempty")),
                     int(layout.read(total, "batches")), decoded["s1"], decoded["s2"],
                     decoded.get("within"))
        return sums, True, bool(layout.read(total, "outside"))

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
        top = self._allreduce(layout.pack(self.rank, None, **values), self.max_op)
        count = layout.read(top, "count")
        high, low = layout.read(top, "high"), -layout.read(top, "negated_low")
        with np.errstate(invalid="ignore", over="ignore"):
            shift = low / 2 + high / 2
            # |m_r - shift| <= reach, the midpoint's rounding included
            reach = (high / 2 - low / 2) + ROUNDING * np.maximum(np.abs(high), np.abs(low))
            bounds = [count * reach, layout.read(top, "m2") + count * reach * reach,
                      layout.read(top, "within") if virtual else np.zeros(C)]
        nonfinite = ~np.all([np.isfinite(b) for b in bounds], axis=0) | ~np.isfinite(shift)
        return _frame(np.where(nonfinite, 0.0, shift), bounds, nonfinite)


def _frame(shift, bounds, nonfinite):
    tops = np.stack([_fixed_point.top_for(np.where(nonfinite, 0.0, b)) for b in bounds])
    return Frame(np.ascontiguousarray(shift, dtype=np.float64), tops, nonfinite.copy())


def _error_bounds(frame, sums):
    """Bounds on the errors of S1, S2 (and W): each process's rounding of
    its values (S1 by Cauchy-Schwarz: sum |S1_r| <= sqrt(n S2)) and one
    fixed-point unit per process that sent values."""
    units = _fixed_point.unit(frame.tops) * sums.nonempty
    s2 = np.abs(sums.s2)
    err_s1 = units[0] + ROUNDING * np.sqrt(sums.count * s2)
    err_s2 = units[1] + 3 * ROUNDING * s2
    err_w = None if sums.within is None else units[2] + 3 * ROUNDING * np.abs(sums.within)
    return err_s1, err_s2, err_w


def _decoded(frame, sums):
    """(mean, M2, precise) from the sums in frame; precise when the error
    bounds of M2, of the mean (beyond its rounding to float64) and of W are
    within 2**-TARGET_BITS of what the data can resolve: M2, but at least
    n (2**-52 mean)**2 (values equal to rounding have no finer spread), and
    its square root per value for the mean."""
    n = sums.count
    with np.errstate(invalid="ignore", over="ignore"):
        shifted_mean = sums.s1 / n
        mean = frame.shift + shifted_mean
        m2 = np.maximum(sums.s2 - sums.s1 * shifted_mean, 0.0)
        err_s1, err_s2, err_w = _error_bounds(frame, sums)
        err_m2 = err_s2 + (2 * np.abs(sums.s1) * err_s1 + err_s1 * err_s1) / n \
            + ROUNDING * np.abs(sums.s2)
        resolvable = np.maximum(m2, n * (ROUNDING * mean) ** 2)
        target = 2.0 ** -TARGET_BITS
        # the mean's own rounding (to float64, as one process's) is not counted
        ok = (err_m2 <= target * resolvable) & (err_s1 / n <= target * np.sqrt(resolvable / n))
        if err_w is not None:
            ok &= err_w <= target * np.maximum(sums.within, n * (ROUNDING * mean) ** 2)
    mean[frame.nonfinite] = np.nan
    m2[frame.nonfinite] = np.nan
    return mean, m2, bool(np.all(ok | frame.nonfinite))


def _centred_frame(frame, sums, mean, m2):
    """Sums centred on the mean just found, in windows from the M2 just found
    plus its error bound: every process's S2_r <= S2 = M2 + n (mean error)^2."""
    err_s1, err_s2, err_w = _error_bounds(frame, sums)
    n = sums.count
    with np.errstate(invalid="ignore", over="ignore"):
        err_mean = err_s1 / n + ROUNDING * np.abs(mean)
        s2 = m2 + err_s2 + 2 * np.abs(sums.s1) * err_s1 / n + n * err_mean * err_mean
        bounds = [np.sqrt(n * s2), s2,
                  np.zeros_like(s2) if sums.within is None else sums.within + err_w]
    nonfinite = frame.nonfinite.copy()
    return _frame(np.where(nonfinite, 0.0, mean), bounds, nonfinite)


def _next_frame(frame, sums, mean, m2):
    """The frame for the next forward: this one's mean as the shift,
    windows FRAME_HEADROOM_BITS above this one's sums (S1 within
    sqrt(n S2) by Cauchy-Schwarz)."""
    n = sums.count
    bounds = [np.sqrt(n * m2), m2, np.zeros_like(m2) if sums.within is None else sums.within]
    nonfinite = frame.nonfinite
    new = _frame(np.where(nonfinite, 0.0, mean), [np.where(nonfinite, 0.0, b) for b in bounds],
                 np.zeros_like(nonfinite))
    tops = np.minimum(new.tops + FRAME_HEADROOM_BITS, _fixed_point.HIGHEST_TOP)
    return Frame(new.shift, tops, new.nonfinite)
