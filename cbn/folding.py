"""Folding an eval-mode batch norm into the convolution or dense layer before it."""
import numpy as np

from .batchnorm import BatchNormBase
from ._dtypes import is_bfloat16, param_dtype_for
from ._validation import describe


def _is_float(a):
    return isinstance(a, np.ndarray) and (a.dtype.kind == "f" or is_bfloat16(a.dtype))


def _folded_dtype(weight, bn):
    """The folded arrays' dtype: weight's, widened to the parameters' type
    (float32) when weight is float16 or bfloat16, as bn's own parameters are."""
    return np.promote_types(param_dtype_for(weight.dtype), bn.param_dtype)

__all__ = ["fold_conv", "fold_linear"]


def _fold(weight, bias, bn, name):
    if not isinstance(bn, BatchNormBase):
        raise TypeError(f"bn: expected a cbn batch-norm layer, got {describe(bn)}")
    if not bn.track_running_stats:
        raise ValueError("bn: expected a layer with running statistics, got one with "
                         "track_running_stats=False (it normalises with batch statistics even in "
                         "eval mode: there is nothing fixed to fold)")
    if bn.activation is not None:
        raise ValueError(f"bn: expected a layer without a fused activation, got activation="
                         f"{bn.activation!r} (it cannot be folded into {name}; apply it after)")
    if not _is_float(weight):
        raise TypeError(f"weight: expected a float numpy.ndarray, got {describe(weight)}")
    C = bn.num_features
    if weight.shape[0] != C:
        raise ValueError(f"weight: expected {C} output channels on axis 0 (bn.num_features), "
                         f"got shape {weight.shape}")
    if bias is not None:
        if not _is_float(bias):
            raise TypeError(f"bias: expected a float numpy.ndarray or None, got {describe(bias)}")
        if bias.shape != (C,):
            raise ValueError(f"bias: expected shape ({C},), got {bias.shape}")
    state = bn.state_dict()   # one consistent snapshot, also while another thread trains bn
    scale = 1.0 / np.sqrt(state["running_var"].astype(np.float64) + bn.eps)
    if bn.affine:
        scale = scale * state["weight"]
    shift = -state["running_mean"].astype(np.float64) * scale
    if bn.affine:
        shift = shift + state["bias"]
    if bias is not None:
        shift = shift + bias.astype(np.float64) * scale
    folded_weight = weight.astype(np.float64) * scale.reshape((C,) + (1,) * (weight.ndim - 1))
    dtype = _folded_dtype(weight, bn)
    return folded_weight.astype(dtype), shift.astype(dtype)


def fold_linear(weight, bias, bn):
    """Fold an eval-mode batch norm into the dense layer before it.

    Parameters
    ----------
    weight : numpy.ndarray
        The dense layer's (C, in) float weight: ``y = x @ weight.T + bias``.
    bias : numpy.ndarray or None
        Its (C,) bias, or None.
    bn : BatchNorm1d
        A layer over C features with running statistics and no fused activation.

    Returns
    -------
    weight, bias : numpy.ndarray
        The folded layer's weight and bias, computed in float64 and returned
        in ``weight``'s dtype (float32 for a float16 or bfloat16 weight, the
        type bn's parameters have): ``x @ weight.T + bias`` equals ``bn`` in eval
        mode applied to the original layer's output.

    Examples
    --------
    >>> import numpy as np, cbn
    >>> bn = cbn.BatchNorm1d(3, dtype=np.float64).eval()
    >>> bn.running_mean[:] = [1.0, 2.0, 3.0]
    >>> w, b = np.eye(3), np.zeros(3)
    >>> fw, fb = cbn.fold_linear(w, b, bn)
    >>> x = np.ones((2, 3))
    >>> bool(np.allclose(x @ fw.T + fb, bn(x @ w.T + b)))
    True
    """
    if isinstance(weight, np.ndarray) and weight.ndim != 2:
        raise ValueError(f"weight: expected a 2-D (C, in) array, got shape {weight.shape}")
    return _fold(weight, bias, bn, "the dense layer")


def fold_conv(weight, bias, bn):
    """Fold an eval-mode batch norm into the convolution before it.

    Parameters
    ----------
    weight : numpy.ndarray
        The convolution's float weight, ``(C_out, C_in, *kernel)``.
    bias : numpy.ndarray or None
        Its (C_out,) bias, or None.
    bn : BatchNorm1d, BatchNorm2d or BatchNorm3d
        A layer over C_out channels with running statistics and no fused
        activation.

    Returns
    -------
    weight, bias : numpy.ndarray
        The folded convolution's weight and bias, computed in float64 and
        returned in ``weight``'s dtype (float32 for a float16 or bfloat16
        weight, the type bn's parameters have): ``conv(x, weight) + bias`` equals
        ``bn`` in eval mode applied to the original convolution's output.
    """
    if isinstance(weight, np.ndarray) and weight.ndim < 3:
        raise ValueError(f"weight: expected (C_out, C_in, *kernel) with at least 3 dimensions, "
                         f"got shape {weight.shape}")
    return _fold(weight, bias, bn, "the convolution")
