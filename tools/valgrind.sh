#!/usr/bin/env bash
# A quick subset of the tests under valgrind memcheck: every kernel (forward,
# backward, both layouts and dtypes, views, fused ReLU, NaN batches, out=)
# on small shapes, with the baseline (SSE2) loops. Any invalid read or write,
# or a jump on an uninitialised value, fails the run. Needs valgrind (Debian: apt-get install valgrind).
# Arguments replace the default subset (e.g. tools/valgrind.sh tests/test_views.py).
set -euo pipefail

if ! command -v valgrind >/dev/null; then
    echo "valgrind.sh: valgrind not found (Debian: apt-get install valgrind)" >&2
    exit 2
fi
# shellcheck source=tools/_sandbox.sh
. "$(dirname "$0")/_sandbox.sh"
suppressions=$(cd "$(dirname "$0")" && pwd)/valgrind.supp
sandbox_install "-g" ""

if [ "$#" -eq 0 ]; then
    set -- tests/test_forward.py tests/test_backward.py tests/test_views.py tests/test_fused_relu.py \
        tests/test_nonfinite.py tests/test_out.py
fi
# The baseline loops: valgrind 3.19 does not decode every AVX2 instruction.
export CBN_LOOPS=baseline
# Python's small-object allocator stays on: everything the kernels touch
# (NumPy's buffers, their scratch) comes from malloc anyway, and with
# PYTHONMALLOC=malloc CPython 3.11 itself reports uninitialised reads at startup.
set +e
valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --show-error-list=yes \
    --suppressions="$suppressions" \
    python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
pytest_status "$rc"
