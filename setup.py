"""Build the compiled kernels of cbn.

OpenMP is probed by compiling, linking and running a tiny program with the
user's CFLAGS/LDFLAGS; without it the kernels are built serially (with a
warning) and ``cbn.openmp_enabled()`` reports False.

Environment variables:
  CBN_DISABLE_OPENMP=1   build the serial kernels even if OpenMP works
  CBN_MARCH_NATIVE=1     add -march=native (the wheel then only runs on CPUs
                         with the build machine's instruction set)
"""
import os
import shlex
import subprocess
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_MODULES = ["_forward", "_backward", "_runtime", "_sums", "_call"]

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _env_flags(name):
    return shlex.split(os.environ.get(name, ""))


def _openmp_flags(compiler):
    """(compile flags, link flags) to try in turn: GCC and Clang, Apple's
    clang with Homebrew's libomp (its include and lib directories in CFLAGS
    and LDFLAGS), MSVC."""
    if compiler.compiler_type == "msvc":
        return [(["/openmp"], [])]
    return [(["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]


def _serial_requested():
    """CBN_DISABLE_OPENMP asks for the serial kernels."""
    return os.environ.get("CBN_DISABLE_OPENMP", "") not in ("", "0")


def _probe_openmp(compiler):
    """(compile flags, link flags) of the first OpenMP flags with which a
    program compiles, links and runs, or None."""
    failures = []
    for cflags, lflags in _openmp_flags(compiler):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe_openmp.c")
            with open(source, "w") as f:
                f.write(OPENMP_PROBE)
            try:
                objects = compiler.compile(
                    [source], output_dir=tmp, extra_postargs=cflags + _env_flags("CFLAGS")
                )
                exe = os.path.join(tmp, "probe_openmp")
                compiler.link_executable(
                    objects, exe, extra_postargs=lflags + _env_flags("LDFLAGS")
                )
                out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
            except Exception as exc:  # CompileError, LinkError, OSError, timeout
                failures.append(f"{' '.join(cflags)}: {type(exc).__name__}: {exc}")
                continue
            if out.returncode == 0 and out.stdout.strip() == "1":
                return cflags, lflags
            failures.append(f"{' '.join(cflags)}: rc={out.returncode} {out.stdout!r}")
    warnings.warn("OpenMP probe failed: " + "; ".join(failures))
    return None


def _c_string(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        serial = _serial_requested()
        openmp = None if serial else _probe_openmp(self.compiler)   # (cflags, lflags)
        if serial:
            warnings.warn("cbn: building the serial kernels, as CBN_DISABLE_OPENMP asks: "
                          "they run on one thread")
        elif openmp is None:
            warnings.warn(
                "cbn: building WITHOUT OpenMP - kernels run on one thread. "
                "Install a compiler with OpenMP support (e.g. gcc) for parallel kernels."
            )
        # (-fno-math-errno: square roots vectorise; errno is never read)
        msvc = self.compiler.compiler_type == "msvc"
        compile_args = ["/O2"] if msvc else ["-O3", "-fno-math-errno"]
        if os.environ.get("CBN_MARCH_NATIVE", "") not in ("", "0"):
            compile_args.append("-march=native")
        if openmp:
            compile_args += openmp[0]
        link_args = openmp[1] if openmp else []
        compiler_cmd = " ".join(getattr(self.compiler, "compiler_so", []) or [self.compiler.compiler_type])
        build_info = f"{compiler_cmd} {' '.join(compile_args)}".strip()
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            if ext.name == "cbn._sums" and self.compiler.compiler_type != "msvc":
                # its decisions must be the same on every process, whatever the
                # CPU a build targets: no fused multiply-adds
                ext.extra_compile_args.append("-ffp-contract=off")
            ext.extra_link_args = link_args + ext.extra_link_args
            ext.define_macros.append(("CBN_BUILD_FLAGS", _c_string(build_info)))
            ext.define_macros.append(("CBN_SERIAL_REQUESTED", "1" if serial else "0"))
        super().build_extensions()


extensions = [
    Extension(
        f"cbn.{name}",
        [f"src/{name}.pyx"],
        include_dirs=["src", numpy.get_include()],
        depends=sorted(str(p) for p in Path("src").glob("*.h"))
        + sorted(str(p) for p in Path("src").glob("*.pxd")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in KERNEL_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
