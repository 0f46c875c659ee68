"""What ``python -m cbn info`` prints."""
import platform

import numpy as np

from . import _runtime
from ._threads import available_cpus, get_num_threads, num_threads_source
from ._version import __version__


def report():
    lines = [
        f"cbn {__version__}",
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}",
        f"OpenMP: {_openmp_state()}",
        f"threads: {get_num_threads()} (from {num_threads_source()}); CPUs available: "
        f"{available_cpus()}",
        f"vector loops: {_runtime.loops_isa()}",
        f"built with: {_runtime.build_flags()}",
    ]
    return "\n".join(lines)


def _openmp_state():
    if _runtime.openmp_enabled():
        return "enabled"
    if _runtime.serial_requested():
        return "disabled (serial build, as CBN_DISABLE_OPENMP asked)"
    return "disabled (serial build: the compiler's OpenMP did not work)"
