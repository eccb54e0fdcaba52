"""glibc's malloc thresholds for the numpy backend: set once per process, on its first call.

The numpy backend allocates a new array for most ops' outputs; for convnext-tiny @224 at batch 1
those are 1.2 MiB (96 channels at 56 x 56) to 4.8 MiB (384 channels) in stage 1. glibc's malloc
gives an allocation above its mmap threshold pages of its own from the kernel, and gives freed
memory back to the kernel when more than its trim threshold is free at the top of the heap.
Both thresholds start at 128 KiB; glibc raises them only as it frees blocks it had mapped, to
the size of the largest (the mmap threshold, at most ``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB on
64-bit) and twice that (the trim threshold) (glibc ``malloc/malloc.c``, ``__libc_free``). Below
those maxima, arrays keep landing on fresh pages, which the kernel maps and zeroes on first
touch. Measured on a 2-core AMD EPYC (tiny @224, 2 threads, the model of
``benchmarks/bench_model.py``): 7,800 page faults per forward pass at batch 1, none with the
thresholds at those maxima, and the pass 0.82-0.87 of the time (``benchmarks/bench_trees.py
--backend numpy``, two runs); at batch 8, which runs in two groups of images (``threads.py``),
5,000-8,000 against 19,000, in the same time within the runs' noise.

:func:`keep_freed_memory` sets both thresholds to those maxima, where glibc's own rule ends
after it has freed one 32 MiB block. What it costs: up to 64 MiB of freed memory stays with the
process instead of going back to the kernel, and arrays of up to 32 MiB come from the heap.
It does nothing where the C library is not glibc, nor where the environment sets when glibc's
malloc maps and trims (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or the same as ``glibc.malloc`` tunables in
``GLIBC_TUNABLES``): the user's choice stands. Under jemalloc or tcmalloc (``LD_PRELOAD``),
glibc's malloc serves nothing, and setting its thresholds changes nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
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


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to the maxima of its own dynamic rule (see the module
    docstring), once per process; whether this call set them."""
    global _DONE
    with _LOCK:
        if _DONE:
            return False
        _DONE = True
        if platform.libc_ver()[0] != "glibc" or user_set_malloc():
            return False
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        log.debug("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)",
                  MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, "set" if done else "mallopt refused")
        return done
