"""Build script: the extension list, the OpenMP probe and the Cython directives.

Environment switches:

* ``CNORM_NATIVE=1``      add ``-march=native`` (local builds only; the result
                          may not run on other CPUs).
* ``CNORM_NO_OPENMP=1``   build serial kernels even where OpenMP is available.
* ``CNORM_DEBUG=1``       turn Cython's bounds and wrap-around checks back on.
* ``CNORM_SANITIZE=address``  compile and link with ``-fsanitize=address``.
"""

import os
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

MODULES = ["_openmp", "_batchnorm"]

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
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        cc = new_compiler()
        customize_compiler(cc)
        objs = cc.compile([src], output_dir=tmp, extra_postargs=flags)
        cc.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
    except Exception as exc:  # any compiler or linker failure means "no OpenMP"
        print(f"cnorm: OpenMP probe failed ({exc}); building serial kernels", file=sys.stderr)
        return [], []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return flags, flags


omp_compile, omp_link = openmp_flags()
compile_args = ["-O3", "-fno-math-errno", "-Wno-unreachable-code"] + omp_compile
link_args = list(omp_link)
if os.environ.get("CNORM_NATIVE") == "1":
    compile_args.append("-march=native")
sanitize = os.environ.get("CNORM_SANITIZE")
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    link_args += [f"-fsanitize={sanitize}"]

extensions = [
    Extension(
        f"cnorm.{name}",
        [f"cnorm/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in MODULES
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
