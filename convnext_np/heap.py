"""glibc's malloc thresholds for the numpy backend: set once per process, on its first call.

The numpy backend allocates a new array for most ops' outputs; for convnext-tiny @224 at batch 1
those are 1.1 MiB (96 channels at 56 x 56) to 4.6 MiB (384 channels) in stage 1. glibc's malloc
maps an allocation above its mmap threshold from the kernel on its own, and gives memory back
to the kernel when more than its trim threshold is free at the top of a heap. Both thresholds
start at 128 KiB; glibc raises them only as it frees blocks it had mapped, to the size of the
largest (at most ``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB on 64-bit) and twice that (glibc
``malloc/malloc.c``, ``__libc_free``). Until a process has freed blocks as large as its arrays,
each new array is mapped anew, or lands where the heap's top was trimmed: pages the kernel maps
and zeroes on first touch. A process that has run only single images (tiny @224, 2 threads,
a 2-core AMD EPYC) took 7,800 page faults per forward pass, none with the thresholds at those
maxima, and the pass 0.82-0.87 of the time (``benchmarks/bench_trees.py --backend numpy``, two
runs). Where the process has run batches of 8 before (``benchmarks/bench_model.py``'s
comparison), glibc's rule had already raised them, and the times are the same.

:func:`keep_freed_memory` sets both thresholds to those maxima, where glibc's rule ends after it
has freed one 32 MiB block, and with that turns the rule off. What it costs: up to 64 MiB of
freed memory per malloc arena (each thread that allocates may have one) stays with the process
instead of going back to the kernel. Measured at batch 32 (tiny @224, the machine above; run in
two groups), the peak (VmHWM of a fresh process that loads the model and calls it) after the
first call was 696-700 MiB against 579-614 without, and after three calls 696-709 against
663-691: glibc's own rule gets most of the way there by itself.

It runs when a numpy-backend call first runs, which is also when ``backend="auto"`` serves with
NumPy while the Numba kernels compile. It does nothing where the C library is not glibc, nor
where the environment sets when glibc's malloc maps and trims (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or the same as
``glibc.malloc`` tunables in ``GLIBC_TUNABLES``): the user's choice stands. Under jemalloc or
tcmalloc (``LD_PRELOAD``), glibc's malloc serves nothing, and setting its thresholds changes
nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc malloc.h)
MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc sets with it when it raises the mmap threshold
# glibc's settings of when malloc maps and trims, as MALLOC_MMAP_THRESHOLD_ ... in the environment
# or glibc.malloc.mmap_threshold ... in GLIBC_TUNABLES
USER_SETTINGS = ("mmap_threshold", "trim_threshold", "top_pad", "mmap_max")

log = logging.getLogger("convnext_np")
_LOCK = threading.Lock()
_DONE = False


def user_set_malloc(environ=os.environ) -> bool:
    """Whether ``environ`` sets one of :data:`USER_SETTINGS`: then the user's settings stand."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(f"MALLOC_{name.upper()}_" in environ or f"glibc.malloc.{name}=" in tunables
               for name in USER_SETTINGS)


def is_glibc() -> bool:
    """Whether the process's C library is glibc (which answers ``confstr`` for its version)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # a C library that does not know the name
        return False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to the maxima of its own dynamic rule (see the module
    docstring), once per process; whether this call set them."""
    global _DONE
    if _DONE:  # every call after the first, without the lock
        return False
    with _LOCK:
        if _DONE:
            return False
        _DONE = True
        if not is_glibc() or user_set_malloc():
            return False
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        done = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
        log.debug("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)",
                  MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, "set" if done else "mallopt refused")
        return done
