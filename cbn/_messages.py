"""The float64 rows SyncBatchNorm exchanges over MPI, by field name.

Every row starts with an error flag (a rank whose input was rejected still
joins the collective, so that every rank can raise), then named fields of
fixed lengths, the same on every rank.
"""
import numpy as np

from ._moments import Moments


class MessageLayout:
    """Named fields of a float64 row after its error flag.

    Parameters
    ----------
    **lengths : int
        Each field's number of values, in row order; a field of length 1
        reads as a scalar.
    """

    def __init__(self, **lengths):
        self.slices = {}
        start = 1
        for name, length in lengths.items():
            self.slices[name] = start if length == 1 else slice(start, start + length)
            start += length
        self.size = start

    def pack(self, error, **values):
        """This rank's row: the error flag (error is an exception or None) and every field."""
        row = np.zeros(self.size)
        row[0] = error is not None
        for name, value in values.items():
            row[self.slices[name]] = value
        return row

    @staticmethod
    def flagged(rows):
        """The indices of the rows whose error flag is set: of gathered rows,
        the ranks whose input was rejected; of one summed (all-reduced) row,
        [0] when any rank's was."""
        return np.flatnonzero(np.asarray(rows)[..., 0])

    def read(self, rows, name):
        """Field name of a row, or of each of a stack of rows."""
        return rows[..., self.slices[name]]

    def moments(self, row):
        """Moments from fields count, mean and m2."""
        return Moments(self.read(row, "count"), self.read(row, "mean"), self.read(row, "m2"))
