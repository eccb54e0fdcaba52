"""Thread counts of a forward pass: one policy, applied on every call (:func:`limit`).

- numba backend: each call runs on ``num_threads`` threads (the ``num_threads`` of
  :func:`convnext_np.from_pretrained`) or, without it, on what the environment says:
  ``NUMBA_NUM_THREADS``, or ``OMP_NUM_THREADS`` when only that is set. ``numba.set_num_threads``
  applies to the calling thread only, so the count is set per call, in whichever thread makes
  it, and restored afterwards; callers in other threads keep their own counts.
- numpy backend: NumPy's OpenBLAS has one process-wide thread count (set through ctypes). While
  calls with ``num_threads`` run, it is the smallest count any of them asked for; when the last
  of them returns, it is restored to what it was before the first began, so concurrent callers
  cannot leave it changed. Without ``num_threads``, OpenBLAS follows ``OPENBLAS_NUM_THREADS`` /
  ``OMP_NUM_THREADS``, read when NumPy is imported.

threadpoolctl could set the BLAS count too, but it is process-wide in the same way and would
not remove the need for the bookkeeping below; the few ctypes lines keep the runtime
dependencies as they are.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import threading

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
_BLAS_LOCK = threading.Lock()
_BLAS_ACTIVE = collections.Counter()  # num_threads of the calls running now -> how many
_BLAS_SAVED = None  # the count before the first of them began


def blas_threads() -> int | None:
    """The thread count of NumPy's OpenBLAS now (None where NumPy uses another BLAS)."""
    return None if _BLAS is None else _BLAS[0]()


def check(num_threads) -> int | None:
    if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    return num_threads


def numba_default() -> int | None:
    """The numba thread count the environment asks for: ``OMP_NUM_THREADS`` when it is set and
    ``NUMBA_NUM_THREADS`` is not (Numba itself reads only the latter); else None (Numba's own)."""
    if "OMP_NUM_THREADS" in os.environ and "NUMBA_NUM_THREADS" not in os.environ:
        try:
            return max(1, int(os.environ["OMP_NUM_THREADS"].split(",")[0]))
        except ValueError:
            return None
    return None


@contextlib.contextmanager
def limit(backend: str, num_threads: int | None):
    """Run the enclosed code on ``num_threads`` threads of ``backend`` (None: as the
    environment configures); see the module docstring."""
    if backend == "numba":
        count = num_threads or numba_default()
        if count is None:
            yield
            return
        import numba

        previous = numba.get_num_threads()
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(previous)
    elif num_threads is not None and _BLAS is not None:
        _blas_enter(num_threads)
        try:
            yield
        finally:
            _blas_exit(num_threads)
    else:
        yield


def _blas_enter(num_threads: int) -> None:
    global _BLAS_SAVED
    get, put = _BLAS
    with _BLAS_LOCK:
        if not _BLAS_ACTIVE:
            _BLAS_SAVED = get()
        _BLAS_ACTIVE[num_threads] += 1
        put(min(_BLAS_ACTIVE))


def _blas_exit(num_threads: int) -> None:
    _, put = _BLAS
    with _BLAS_LOCK:
        _BLAS_ACTIVE[num_threads] -= 1
        if not _BLAS_ACTIVE[num_threads]:
            del _BLAS_ACTIVE[num_threads]
        put(min(_BLAS_ACTIVE) if _BLAS_ACTIVE else _BLAS_SAVED)
