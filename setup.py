"""Build script: the extension list, the OpenMP probe and the Cython directives.

Environment switches:

* ``CNORM_NATIVE=1``      add ``-march=native`` (local builds only; the result
                          may not run on other CPUs).
* ``CNORM_NO_OPENMP=1``   build serial kernels even where OpenMP is available.
* ``CNORM_DEBUG=1``       turn Cython's bounds and wrap-around checks back on.
* ``CNORM_SANITIZE=address``  compile and link with ``-fsanitize=address``.
* ``CNORM_QUICK=1``       one baseline build at ``-O1`` (no x86-64-v3/v4 variants):
                          a quick compile for packaging checks, with slow kernels.
* ``CNORM_BUILD_JOBS=N``  compile N extensions at once (default: the CPUs this
                          process may use; the three kernel builds take about
                          50 s each on one core).
"""

import glob
import os
import platform
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

# Kernel modules are built three times where the compiler allows: for the
# baseline of the target architecture, as NAME_v3 for x86-64-v3 (AVX2 + FMA)
# and as NAME_v4 for x86-64-v4 (AVX-512).  cnorm._dispatch imports the widest
# build the CPU reports support for.
KERNEL_MODULES = ["_kernels"]

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}
if os.environ.get("CNORM_DEBUG") == "1":
    DIRECTIVES.update(boundscheck=True, wraparound=True, initializedcheck=True)


def compiles(code, flags, link=True):
    """Whether a tiny C program builds (and links) with the given flags."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        cc = new_compiler()
        customize_compiler(cc)
        objs = cc.compile([src], output_dir=tmp, extra_postargs=flags)
        if link:
            cc.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
    except Exception as exc:  # any compiler or linker failure means "no"
        print(f"cnorm: probe with {flags} failed ({exc})", file=sys.stderr)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def openmp_flags():
    """Return (compile, link) flags for OpenMP, or ([], []) if a tiny program won't build."""
    if os.environ.get("CNORM_NO_OPENMP") == "1" or sys.platform == "win32":
        return [], []
    flags = ["-fopenmp"]
    code = textwrap.dedent(
        """
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
        }
        """
    )
    if not compiles(code, flags):
        print("cnorm: building serial kernels (no OpenMP)", file=sys.stderr)
        return [], []
    return flags, flags


V3_FLAGS = ["-march=x86-64-v3", "-mtune=generic"]
V4_FLAGS = ["-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512"]


QUICK = os.environ.get("CNORM_QUICK") == "1"


def build_isa(flags):
    if (QUICK or os.environ.get("CNORM_NATIVE") == "1"
            or platform.machine().lower() not in ("x86_64", "amd64")):
        return False
    return compiles("int main(void) { return 0; }", flags, link=False)


omp_compile, omp_link = openmp_flags()
# -ffp-contract=off: no fused multiply-adds behind our back, so that the
# baseline, v3 and v4 builds give bitwise identical results (float32 SiLU asks
# for its fused multiply-adds explicitly, fmaf where a build has no FMA).
compile_args = ["-O1" if QUICK else "-O3", "-fno-math-errno", "-ffp-contract=off",
                "-Wno-unreachable-code"] + omp_compile
# GCC turns loops that zero small accumulator arrays into memset, expanded as
# `rep stosq`, whose start-up cost is large next to a short row's statistics;
# keep them as loops.
NO_MEMSET = ["-fno-tree-loop-distribute-patterns"]
if compiles("int main(void) { return 0; }", NO_MEMSET + ["-Werror"], link=False):
    compile_args += NO_MEMSET
# One module holds every kernel: GCC's translation-unit growth limits would otherwise stop
# inlining the per-run helpers into batch norm's loops (3-7% slower, float64).
INLINE = ["--param", "inline-unit-growth=1000", "--param", "large-function-growth=1000",
          "--param", "large-unit-insns=200000"]
if not QUICK and compiles("int main(void) { return 0; }", INLINE + ["-Werror"], link=False):
    compile_args += INLINE
link_args = list(omp_link)
if os.environ.get("CNORM_NATIVE") == "1":
    compile_args.append("-march=native")
sanitize = os.environ.get("CNORM_SANITIZE")
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    link_args += [f"-fsanitize={sanitize}"]


def extension(name, extra=()):
    return Extension(
        f"cnorm.{name}",
        [f"cnorm/{name}.pyx"],
        include_dirs=["cnorm", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=compile_args + list(extra),
        extra_link_args=link_args,
        depends=["cnorm/_moments.pxd", "cnorm/_openmp.pxd", "cnorm/_stream.h", "cnorm/_lanes.h", "cnorm/_elementwise.h", "cnorm/_dtypes.h"] + glob.glob("cnorm/*.pxi"),
    )


extensions = [extension("_openmp")]
for name in KERNEL_MODULES:
    extensions.append(extension(name))
    if build_isa(V3_FLAGS):
        extensions.append(extension(f"{name}_v3", V3_FLAGS))
    if build_isa(V4_FLAGS):
        extensions.append(extension(f"{name}_v4", V4_FLAGS))



def build_jobs():
    """How many extensions to compile at once: CNORM_BUILD_JOBS, else the usable CPUs."""
    wanted = os.environ.get("CNORM_BUILD_JOBS", "")
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            sys.exit(f"CNORM_BUILD_JOBS must be a positive integer, got {wanted!r}")
        return int(wanted)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES),
      options={"build_ext": {"parallel": build_jobs()}})
