"""Loads the OpenBLAS that spad._core links against, before _core is imported.

_core's rpath finds libscipy_openblas next to an installed spad (site-packages), but an
editable or in-place build may record the lib dir of a since-deleted build environment.
Once the library is loaded by absolute path, the dynamic linker reuses this copy.
"""


def _preload_openblas() -> None:
    try:
        import ctypes
        import os

        import scipy_openblas32
    except ImportError:  # built with the portable GEMM kernel: nothing to load
        return
    name = scipy_openblas32.get_library(fullname=True)
    ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), name), mode=ctypes.RTLD_GLOBAL)


_preload_openblas()
