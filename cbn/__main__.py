"""Command line: ``python -m cbn demo | info | bench``."""
import argparse
import sys

from . import _bench, _info
from ._bench import DTYPES, LAYOUTS, OPS
from ._version import __version__


def _shape(text):
    """argparse type of --shapes: a bad shape is a usage error, not a traceback."""
    try:
        return _bench.parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cbn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cbn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the paper's Figure 1 setting on handwritten digits: "
                                       "an MLP with and without batch norm")
    demo.add_argument("--steps", type=int, default=3000, help="training steps per run")
    demo.add_argument("--seed", type=int, default=0, help="data split, weights and batch order")
    demo.add_argument("--lr", type=float, default=0.1, help="base learning rate (5x is the other)")
    demo.add_argument("--out", default="cbn_demo.png", help="where to write the figure")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("info", help="version, OpenMP, threads and build flags")
    bench = sub.add_parser("bench", help="time cbn against its memory-traffic limit, NumPy and PyTorch")
    bench.add_argument("--threads", type=int, default=None,
                       help="threads for cbn, the limit's floors and PyTorch (default: cbn.get_num_threads())")
    bench.add_argument("--shapes", nargs="+", type=_shape, default=None, metavar="NxCxHxW",
                       help="NCHW-ordered shapes, e.g. 32x64x56x56 256x1024 (default: the suite)")
    bench.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    bench.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    bench.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    bench.add_argument("--repeats", type=int, default=11, help="interleaved rounds per case")
    bench.add_argument("--calls", type=int, default=3000,
                       help="calls per op of the per-call table (one thread; 0: no table)")
    bench.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    bench.add_argument("--json", metavar="FILE", help="also write every sample to FILE")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1:
            parser.error("--steps: expected a positive integer")
        if not args.lr > 0:
            parser.error("--lr: expected a positive number")
        try:
            from . import _demo
            _demo.run(args.steps, args.seed, args.out, args.lr, not args.no_progress)
        except ImportError as exc:
            parser.exit(1, f"python -m cbn demo needs the demo extras ({exc.name} is missing): "
                           f'pip install "cbn[demo]"\n')
    elif args.command == "info":
        print(_info.report())
    elif args.command == "bench":
        # every argument checked before anything runs: a bad one is a usage
        # error now, not a traceback after minutes of timing
        try:
            _bench.check_run(args.threads, args.shapes, args.ops, args.layouts, args.dtypes,
                             args.repeats, args.json, args.calls)
        except ValueError as exc:   # one line, argparse's exit status for usage errors
            bench.exit(2, f"{bench.prog}: error: {exc}\n")
        _bench.run(threads=args.threads, shapes=args.shapes, ops=args.ops, layouts=args.layouts,
                   dtypes=args.dtypes, repeats=args.repeats, json_path=args.json,
                   with_torch=not args.no_torch, calls=args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
