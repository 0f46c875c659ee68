"""Command line: ``python -m cbn info``."""
import argparse
import sys

from . import _info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cbn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, OpenMP, threads and build flags")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(_info.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
