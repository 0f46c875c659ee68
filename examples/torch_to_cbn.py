"""Move a PyTorch-trained BatchNorm into cbn through its state_dict.

    python examples/torch_to_cbn.py

Trains a torch.nn.BatchNorm2d for a few steps, loads its state_dict into a
cbn.BatchNorm2d (NCHW) and one with layout="NHWC", and checks that all three
give the same eval-mode outputs. Skips (exit code 0) without PyTorch.
"""
import sys

import numpy as np

import cbn


def main(print_=print):
    try:
        import torch
    except ImportError:
        print_("PyTorch is not installed: nothing to move (pip install torch to run this)")
        return None
    torch.manual_seed(0)
    theirs = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2.0)
        theirs.bias.normal_()
    for step in range(5):
        theirs(torch.randn(16, 8, 6, 6) * (1 + step) + step)
    state = theirs.state_dict()  # tensors, of any dtype: load_state_dict converts them

    nchw = cbn.BatchNorm2d(8)
    nchw.load_state_dict(state)
    nhwc = cbn.BatchNorm2d(8, layout="NHWC")
    nhwc.load_state_dict(state)
    theirs.eval()
    nchw.eval()
    nhwc.eval()

    x = np.random.default_rng(1).standard_normal((4, 8, 6, 6)).astype(np.float32) * 3 + 2
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    y_nchw = nchw(x)
    y_nhwc = nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    differences = {"NCHW": float(np.abs(y_nchw - expected).max()),
                   "NHWC": float(np.abs(y_nhwc - expected).max())}
    print_(f"torch {torch.__version__}: num_batches_tracked {int(state['num_batches_tracked'])}, "
           f"max |cbn - torch| in eval: NCHW {differences['NCHW']:.2e}, NHWC "
           f"{differences['NHWC']:.2e}")
    if max(differences.values()) > 1e-5:
        raise SystemExit("outputs differ")
    return differences


if __name__ == "__main__":
    main()
    sys.exit(0)
