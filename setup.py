"""Builds spad._core from csrc/ (the same sorted source list CMakeLists.txt uses)."""
import glob
import os
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("SPAD_BUILD_JOBS", default=0).install()

# One source list for both builds: every .cpp under csrc/core, sorted. CMake globs the same
# (cmake/spad_sources.cmake) and tests/test_build.py checks that the two lists agree.
CORE = sorted(glob.glob("csrc/core/**/*.cpp", recursive=True))
SOURCES = CORE + sorted(glob.glob("csrc/python/*.cpp"))

define_macros = []
include_dirs, library_dirs, libraries, rpaths = [], [], [], []
try:  # OpenBLAS with scipy_-prefixed symbols: no clash with the BLAS inside numpy
    import scipy_openblas32

    define_macros.append(("SPAD_CBLAS", "1"))
    library_dirs.append(scipy_openblas32.get_lib_dir())
    libraries.append(scipy_openblas32.get_library())
    # Installed next to spad/ in site-packages; the absolute path covers in-place builds.
    rpaths += ["$ORIGIN/../scipy_openblas32/lib", scipy_openblas32.get_lib_dir()]
except ImportError:
    print("spad: scipy-openblas32 not found, using the portable GEMM kernel", file=sys.stderr)

extra = ["-O3", "-fvisibility=hidden"]
if os.environ.get("SPAD_PORTABLE", "0") != "1":
    extra.append("-march=native")  # a source build for this machine; SPAD_PORTABLE=1 for generic code

ext = Pybind11Extension(
    "spad._core",
    SOURCES,
    cxx_std=17,
    define_macros=define_macros,
    include_dirs=include_dirs,
    library_dirs=library_dirs,
    libraries=libraries,
    runtime_library_dirs=rpaths,
    extra_compile_args=extra,
    # setuptools rebuilds only when a listed file is newer than the module: list the headers.
    depends=sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.def", recursive=True)),
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
