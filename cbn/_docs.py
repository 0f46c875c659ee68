"""Docstring sections the layer classes share (numpydoc), written once."""

LAYER_PARAMETERS = """\
num_features : int
    C, the number of channels.
eps : float, default 1e-5
    Added to the variance before its square root: a finite float, at least
    param_dtype's smallest normal number (1.2e-38 for float32).
momentum : float or None, default 0.1
    Weight of each new batch in the running averages (PyTorch's meaning);
    None for a cumulative average.
affine : bool, default True
    Learn a per-channel ``weight`` and ``bias``.
track_running_stats : bool, default True
    Keep running averages for eval mode; without them every mode normalises
    with the batch's statistics."""

LAYER_OPTIONS = """\
dtype : {numpy.float32, numpy.float64, numpy.float16, "bfloat16"}, default numpy.float32
    The dtype of the inputs, the outputs and their gradients. bfloat16 is
    ``ml_dtypes.bfloat16`` (``pip install 'cbn[bfloat16]'``); float16 and
    bfloat16 data are computed in float32, each output rounded once.
param_dtype : numpy dtype or None, default None
    The dtype of the weight, bias, running statistics and their gradients:
    the type the data are computed in (float32 for float16 and bfloat16,
    else dtype), which None picks and which is the only one accepted.
layout : {"NCHW", "NHWC"}, default "NCHW"
    Channels on axis 1, or last (channels-last).
bias_correction : bool, default False
    Debias the running averages as if they started at zero: the first
    batch's statistics replace the initial values.
activation : {None, "relu"}, default None
    A ReLU fused after the normalisation (forward and backward).
virtual_batch_size : int or None, default None
    In training, normalise each run of this many rows with its own
    statistics (ghost batch norm)."""

LAYER_ATTRIBUTES = """\
Attributes
----------
weight, bias : numpy.ndarray or None
    (C,) parameters when ``affine``.
running_mean, running_var : numpy.ndarray or None
    (C,) running statistics when ``track_running_stats``; running_var is
    unbiased, as PyTorch's.
num_batches_tracked : numpy.ndarray or None
    Training batches seen (0-d int64).
grad_weight, grad_bias : numpy.ndarray or None
    Gradients of the parameters, set by ``backward``.
training : bool
    Training mode (see ``train`` and ``eval``)."""


OPTIONS_AS_BATCHNORM = """\
**options
    The options dtype, param_dtype, layout, bias_correction, activation and
    virtual_batch_size, as for :class:`~cbn.BatchNorm2d`."""


LAYER_EXAMPLE = """\
>>> import numpy as np, cbn
>>> bn = cbn.{name}(3)
>>> x = np.random.default_rng(0).standard_normal({shape}, dtype=np.float32)
>>> y = bn(x)                        # training mode: batch statistics
>>> dx = bn.backward(np.ones_like(y))
>>> bn.num_batches_tracked
array(1)
>>> y_eval = bn.eval()(x)            # running statistics"""

# an input shape for the examples, by ndim
EXAMPLE_SHAPES = {2: "(8, 3)", 3: "(4, 3, 6)", 4: "(4, 3, 5, 5)", 5: "(2, 3, 2, 4, 4)"}


def layer_doc(summary, parameters, notes="", examples=""):
    """A layer class's docstring: summary, parameters (numpydoc entries), the
    shared Attributes, then optional Notes and Examples."""
    parts = [summary, "", "Parameters", "----------", parameters, "", LAYER_ATTRIBUTES]
    if notes:
        parts += ["", "Notes", "-----", notes]
    if examples:
        parts += ["", "Examples", "--------", examples]
    return "\n".join(parts) + "\n"
