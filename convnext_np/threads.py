"""Thread counts of a forward pass: the ``num_threads`` of :func:`convnext_np.from_pretrained`.

Without it, the numba backend follows ``NUMBA_NUM_THREADS`` (or ``OMP_NUM_THREADS``) and NumPy's
OpenBLAS follows ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``, read when they are imported.
With it, each call runs on that many threads:

- numba backend: ``numba.set_num_threads``, which applies to the calling thread only, so callers
  in other threads keep their own counts;
- numpy backend: NumPy's OpenBLAS ``set_num_threads`` (through ctypes), which is process-wide
  while the call runs, and restored after it.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np

_BLAS_SYMBOLS = [("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                 ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                 ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                 ("openblas_get_num_threads", "openblas_set_num_threads")]


def _numpy_blas():
    """(get, set) of the thread count of NumPy's own OpenBLAS, or None for another BLAS."""
    core = getattr(np, "_core", None) or np.core
    try:
        lib = ctypes.CDLL(core._multiarray_umath.__file__)  # dlsym also searches its dependencies
    except OSError:
        return None
    for get_name, set_name in _BLAS_SYMBOLS:
        get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
        if get is not None and put is not None:
            put.argtypes = [ctypes.c_int]
            return get, put
    return None


_BLAS = _numpy_blas()


def blas_threads() -> int | None:
    """The thread count of NumPy's OpenBLAS now (None where NumPy uses another BLAS)."""
    return None if _BLAS is None else _BLAS[0]()


def check(num_threads) -> int | None:
    if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    return num_threads


@contextlib.contextmanager
def limit(backend: str, num_threads: int | None):
    """Run the enclosed code on ``num_threads`` threads of ``backend`` (None: as configured)."""
    if num_threads is None:
        yield
    elif backend == "numba":
        import numba

        previous = numba.get_num_threads()
        numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(previous)
    elif _BLAS is not None:
        get, put = _BLAS
        previous = get()
        put(num_threads)
        try:
            yield
        finally:
            put(previous)
    else:
        yield
