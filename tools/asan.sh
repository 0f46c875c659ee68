#!/usr/bin/env bash
# The whole test suite against an AddressSanitizer build of the extensions.
#
# Builds a copy of the tracked files in a temporary virtual environment,
# checks that the extensions really are instrumented, then runs pytest with
# the ASan runtime preloaded into the (uninstrumented) Python. An
# out-of-bounds access or a use after free aborts the run with a report.
# Leak detection is off: CPython keeps interned objects until exit on
# purpose. Needs gcc or clang with its ASan runtime (CC picks the compiler).
# Arguments go to pytest (e.g. tools/asan.sh tests/test_forward.py).
set -euo pipefail

cc=${CC:-gcc}
libasan=$("$cc" -print-file-name=libasan.so)
# preloaded too, or ASan cannot find the real __cxa_throw when a C++
# extension (matplotlib's) throws
libstdcxx=$("$cc" -print-file-name=libstdc++.so)
if [ ! -e "$libasan" ]; then
    echo "asan.sh: $cc has no libasan.so (install its AddressSanitizer runtime)" >&2
    exit 2
fi
# shellcheck source=tools/_sandbox.sh
. "$(dirname "$0")/_sandbox.sh"
sandbox_install "-fsanitize=address -fno-omit-frame-pointer -g" "-fsanitize=address"

for so in cbn/_*.so; do
    if ! nm -D "$so" | grep "__asan_init" >/dev/null; then
        echo "asan.sh: $so is not instrumented" >&2
        exit 2
    fi
done
echo "asan.sh: extensions built with AddressSanitizer; runtime $libasan"

export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1
export PYTHONMALLOC=malloc   # every Python allocation visible to ASan
set +e
LD_PRELOAD="$libasan $libstdcxx" python -m pytest -s -q -p no:cacheprovider "$@"
rc=$?
set -e
pytest_status "$rc"
