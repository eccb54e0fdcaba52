"""Thread counts of a forward pass: one policy, applied on every call (:func:`limit`).

- numba backend: each call runs on ``num_threads`` threads (the ``num_threads`` of
  :func:`convnext_np.from_pretrained`) or, without it, on what the environment says:
  ``NUMBA_NUM_THREADS``, or ``OMP_NUM_THREADS`` when only that is set. ``numba.set_num_threads``
  applies to the calling thread only, so the count is set per call, in whichever thread makes
  it, and restored afterwards; callers in other threads keep their own counts.
- numpy backend: the BLAS behind NumPy's matrix products has one process-wide thread count.
  threadpoolctl sets it, whichever BLAS it is (OpenBLAS, MKL, BLIS, Apple's Accelerate...),
  for every BLAS library loaded in the process when the first call with ``num_threads`` runs;
  NumPy's is among them, since NumPy is imported before any call. While calls with
  ``num_threads`` run, the count is the smallest any of them asked for; when the last of them
  returns, each library's count is restored to what it was before the first began, so
  concurrent callers cannot leave it changed. Without ``num_threads``, the BLAS follows its
  environment variables (``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OMP_NUM_THREADS``),
  read when NumPy is imported.
- numpy backend, a batch of several images: NumPy runs each elementwise op (GELU, LayerNorm, the
  depthwise conv) on one core, whatever the BLAS's count. So a call on N >= 2 images with T >= 2
  threads (``num_threads``, or the BLAS's count) runs min(N, T) groups of consecutive images at
  once, each in its own Python thread with the BLAS on one thread (:func:`over_images`). NumPy
  releases the GIL inside each ufunc, einsum and matrix product, so the groups' ops overlap.
  ``benchmarks/bench_trees.py --backend numpy`` measured 0.72 of the ungrouped time at batch 8
  (tiny @224, 2 threads, a 2-core AMD EPYC). A single image runs
  as one group: halves of an image would need the depthwise conv's halo rows, and their ops
  are too short for two threads to beat the GIL's hand-offs.

threadpoolctl's own ``threadpool_limits`` sets and restores the count around one block, which is
right for one caller; calls that overlap in several threads need the bookkeeping below, or the
first to return would restore the count under the others.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

import numpy as np

_BLAS = None  # threadpoolctl's controllers of the loaded BLAS libraries, made on first use
_BLAS_LOCK = threading.Lock()
_BLAS_ACTIVE = collections.Counter()  # num_threads of the calls running now -> how many
_BLAS_SAVED = None  # each library's count before the first of them began


def _blas_libraries() -> list:
    """threadpoolctl's controller of each BLAS library loaded in the process (found once:
    looking them up takes milliseconds)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas").lib_controllers
    return _BLAS


def blas_threads() -> int | None:
    """The BLAS thread count now (the smallest, where several BLAS libraries are loaded); None
    where threadpoolctl finds no BLAS."""
    counts = [lib.num_threads for lib in _blas_libraries()]
    return min(counts) if counts else None


def blas_default() -> int | None:
    """The BLAS thread count as the environment or the user set it, not as a call with
    ``num_threads`` running now has set it; None where threadpoolctl finds no BLAS."""
    with _BLAS_LOCK:
        if not _BLAS_ACTIVE:
            return blas_threads()
        return min(_BLAS_SAVED) if _BLAS_SAVED else None


def image_groups(n_images: int, num_threads: int | None) -> int:
    """How many groups of images a numpy-backend call on ``n_images`` runs at once (see the
    module docstring): one per thread, at most one per image."""
    return max(1, min(n_images, num_threads or blas_default() or 1))


def over_images(run, x, groups: int) -> list:
    """``run`` on ``groups`` consecutive groups of the images of ``x`` (axis 0) at once, the first
    in the calling thread and each other in a thread of its own, with the BLAS on one thread
    meanwhile; the results in the order of the images. An exception in any group is raised here,
    after every group has ended."""
    parts = np.array_split(x, groups)
    results, errors = [None] * groups, [None] * groups

    def work(i):
        try:
            results[i] = run(parts[i])
        except BaseException as e:  # noqa: BLE001 - raised in the calling thread below
            errors[i] = e

    _blas_enter(1)
    try:
        helpers = [threading.Thread(target=work, args=(i,), name=f"convnext_np-images-{i}", daemon=True)
                   for i in range(1, groups)]
        for helper in helpers:
            helper.start()
        work(0)
        for helper in helpers:
            helper.join()
    finally:
        _blas_exit(1)
    for error in errors:
        if error is not None:
            raise error
    return results


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
    elif num_threads is not None:
        _blas_enter(num_threads)
        try:
            yield
        finally:
            _blas_exit(num_threads)
    else:
        yield


def _blas_enter(num_threads: int) -> None:
    global _BLAS_SAVED
    with _BLAS_LOCK:
        libraries = _blas_libraries()
        if not _BLAS_ACTIVE:
            _BLAS_SAVED = [lib.num_threads for lib in libraries]
        _BLAS_ACTIVE[num_threads] += 1
        _set_blas([min(_BLAS_ACTIVE)] * len(libraries))


def _blas_exit(num_threads: int) -> None:
    with _BLAS_LOCK:
        _BLAS_ACTIVE[num_threads] -= 1
        if not _BLAS_ACTIVE[num_threads]:
            del _BLAS_ACTIVE[num_threads]
        _set_blas([min(_BLAS_ACTIVE)] * len(_BLAS) if _BLAS_ACTIVE else _BLAS_SAVED)


def _set_blas(counts) -> None:
    """Set each BLAS library's count; the caller holds ``_BLAS_LOCK``.

    Recent threadpoolctl lets one thread at a time set the count of an OpenBLAS without OpenMP
    (its "controlling thread"; a call from any other thread is silently ignored). Calls here
    come from whichever thread runs the model, one at a time under the lock, so each takes
    control (``clear_controlling_thread(force=True)``), sets, and lets go again.
    """
    for lib, count in zip(_BLAS, counts):
        control = getattr(lib, "clear_controlling_thread", None)  # absent before that change
        if control is not None:
            control(force=True)
        lib.set_num_threads(count)
        if control is not None:
            control()
