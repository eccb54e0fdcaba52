"""The Numba fast path (``backend="numba"``): the ops of :mod:`convnext_np.ops`, and fused layers.

Every public function has the signature of its twin: those of :mod:`convnext_np.ops`, and for
the fused ``stem``, ``downsample`` and ``block`` those of :mod:`convnext_np.model`, whose
compositions of the NumPy ops are their twins. A public function checks its inputs and lays out
memory; the private ``@njit`` kernel it calls only computes. ``tests/test_kernels.py`` holds each
one to its twin; ``docs/kernels.md`` explains the design and what was measured.

Threading: one pool, Numba's (``NUMBA_NUM_THREADS``; ``OMP_NUM_THREADS`` when only that is set).
Each parallel kernel splits its rows among the threads, or its output columns when there are too
few rows. The GEMMs are this module's own (no BLAS: below), each running inside one of those
threads, so no BLAS worker ever spins against them (docs/kernels.md, "Threads"). The two innermost
kernels, the GEMM's and the depthwise conv's, are written in LLVM IR through
``numba.extending.intrinsic`` so that their accumulators stay in registers; everything else is
plain Numba. No ``fastmath`` beyond FMA contraction and, in the LayerNorm sums, reassociation:
both change results by float32 rounding only. The GEMM's blocking is this machine's plan
(:class:`Plan`), chosen once per machine by ``python -m convnext_np.warmup``.

Importing this module imports Numba and compiles nothing: each kernel compiles, or loads from
Numba's on-disk cache, on first use.

Why one file: Numba's on-disk cache checks a cached function against its own source file only
(its size and modification time). A kernel that calls a helper from another module would be
loaded from the cache after that helper changed, with the old helper compiled into it. Every
compiled function lives here, so any edit to any of them invalidates them all.

Contents, in order:

1. Settings: threads, compile flags, work decomposition, the vector width.
2. Public: the ops and fused layers (``linear``, ``patchify``, ``stem``, ``downsample``,
   ``conv2d``, ``depthwise_conv``, ``layer_norm``, ``gelu``, ``global_avg_pool``, ``grn``,
   ``block``).
3. Public: GEMM plans, packing, start-up (``Plan``, ``candidate_plans``, ``parse_plan``,
   ``recorded_plan``, ``machine_key``, ``cache_dir``, ``initialise``, ``pack``, ``pack_weights``).
4. Private: what the public functions share (argument checks, scratch, row tiles, weight
   panels kept per weight, the patch layers and ``linear``'s body).
5. Private: the GEMM (the LLVM IR helpers, the register-blocked micro-kernel, ``_gemm``).
6. Private: scalar and row helpers (GELU, LayerNorm, GRN, epilogues).
7. Private: the depthwise conv (its IR kernel, ring buffer, rows and spans).
8. Private: the parallel kernels that the public functions call.
9. The plan in use (``PLAN``, read when the module is imported), and Numba's cache keyed on it.
"""


from __future__ import annotations

import json
import os
import sys
import threading
import weakref
from typing import NamedTuple

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic, overload

from . import ops as _numpy_ops, threads


# ==================================================================================================
# 1. Settings: threads, compile flags, work decomposition, the vector width
# ==================================================================================================

_OMP_THREADS = threads.numba_default()  # OMP_NUM_THREADS alone, for direct calls of these functions
if _OMP_THREADS is not None:
    numba.set_num_threads(min(_OMP_THREADS, numba.config.NUMBA_NUM_THREADS))

_F32 = np.float32
_NONE = np.empty(0, np.float32)  # "no such input" for a kernel
# error_model="numpy": x / 0 is inf, not an exception, so loops with a division vectorise.
_JIT = dict(cache=True, nogil=True, error_model="numpy")
_CONTRACT = {"contract"}  # a * b + c may become one FMA (more exact, not less)
_REASSOC = {"contract", "reassoc"}  # sums may be reordered, so the LayerNorm reductions vectorise

# Work decomposition (docs/kernels.md has the measurements behind these numbers).
TALL_MIN_ROWS = 256  # rows per thread below which a layer splits its output columns instead
# A row tile's widest scratch (tile rows x 4C, the block's fc1 output) holds at most TILE_FLOATS
# floats, 512 KiB, so that fc2 reads it back from the core's L2 (1 MiB on the machines measured).
TILE_FLOATS = 1 << 17
MIN_TILE_ROWS = 32
# ConvNeXt V2's blocks, when the batch is not a multiple of the threads, go a group of images at a
# time whose fc1 output is about this many floats together (docs/kernels.md, "The ConvNeXt V2 block").
GRN_GROUP_FLOATS = 1 << 20
CHUNK = 1 << 14  # elements per task of the purely elementwise kernels


def _lanes():
    """Floats per vector register of the host's ISA: 16 (AVX-512), 8 (AVX2 with FMA), else 4."""
    if numba.config.CPU_NAME not in (None, "host"):  # NUMBA_CPU_NAME: assume only SSE-class vectors
        return 4
    features = llvmlite.binding.get_host_cpu_features()
    if features.get("avx512f"):
        return 16
    if features.get("avx2") and features.get("fma"):
        return 8
    return 4


LANES = _lanes()
PREFETCH_ROWS = 64  # weight rows ahead that the kernel asks the cache for (16: 4% slower)


# ==================================================================================================
# 2. Public: the ops of convnext_np.ops, and the fused layers of convnext_np.model
# ==================================================================================================

def linear(x, w, b):
    """[..., in] -> [..., out]: ``x @ w + b``."""
    x, w, b = _f32(x), _f32(w), _f32(b)
    _check(w.ndim == 2 and x.shape[-1] == w.shape[0] and b.shape == (w.shape[1],),
           f"linear: x {x.shape}, w {w.shape}, b {b.shape} do not fit (x @ w + b)")
    x2 = x.reshape(-1, w.shape[0])
    out = np.empty((x2.shape[0], w.shape[1]), np.float32)
    _linear_into(x2, w, b, out)
    return out.reshape(*x.shape[:-1], w.shape[1])


def patchify(x, w, b, patch):
    """Conv with kernel = stride = ``patch``, no padding. [N, H, W, Ci] -> [N, H//patch, W//patch, Co]"""
    return _patch_layer(x, w, b, patch)


def stem(x, w, b, norm_w, norm_b, *, eps, ops=None):
    """model.stem fused: 4x4 patchify, bias and LayerNorm in one pass (``ops`` is ignored)."""
    return _patch_layer(x, w, b, 4, post=(norm_w, norm_b, eps))


def downsample(x, norm_w, norm_b, w, b, *, eps, ops=None):
    """model.downsample fused: LayerNorm while gathering the 2x2 patches, then the GEMM."""
    return _patch_layer(x, w, b, 2, pre=(norm_w, norm_b, eps))


def conv2d(x, w, b, kernel, stride, padding):
    """Dense conv of timm's overlapping (``_ols``) stem: the NumPy op (window gather, then one
    GEMM), run once per image at the input resolution; no kernel of its own."""
    return _numpy_ops.conv2d(x, w, b, kernel, stride, padding)


def depthwise_conv(x, w, b):
    """Depthwise kxk conv, stride 1, zero padding k//2, with bias. w: (k, k, C)."""
    x, w, b = _f32(x), _f32(w), _f32(b)
    _check(x.ndim == 4 and w.ndim == 3 and w.shape[0] == w.shape[1] and w.shape[0] % 2 == 1
           and w.shape[2] == x.shape[3] and b.shape == (x.shape[3],),
           f"depthwise_conv: x {x.shape}, w {w.shape}, b {b.shape} do not fit")
    out = np.empty_like(x)
    if x.size:
        _depthwise_conv(x, w, b, min(_threads(), x.shape[0] * x.shape[1]), out)
    return out


def layer_norm(x, w, b, eps):
    """LayerNorm over the last axis (channels), biased variance, eps inside the sqrt."""
    x, w, b = _f32(x), _f32(w), _f32(b)
    _check(w.shape == b.shape == (x.shape[-1],),
           f"layer_norm: x {x.shape}, w {w.shape}, b {b.shape} do not fit")
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty_like(x2)
    if x2.size:
        tasks = max(1, min(_threads() * 4, x2.shape[0] // 16))
        _layer_norm(x2, w, b, _F32(eps), tasks, out)
    return out.reshape(x.shape)


def gelu(x):
    """Exact GELU, x Phi(x), float32 (see ops.gelu for the formula)."""
    x = _f32(x)
    out = np.empty_like(x)
    if x.size:
        _gelu(x.reshape(-1), out.reshape(-1))
    return out


def global_avg_pool(x):
    """[N, H, W, C] -> [N, C]"""
    x = _f32(x)
    _check(x.ndim == 4, f"global_avg_pool: x must be (N, H, W, C), got {x.shape}")
    out = np.empty((x.shape[0], x.shape[3]), np.float32)
    _global_avg_pool(x, out)
    return out


def grn(x, w, b):
    """ConvNeXt V2's Global Response Normalization (see ops.grn). [N, H, W, C] -> [N, H, W, C]"""
    x, w, b = _f32(x), _f32(w), _f32(b)
    _check(x.ndim == 4 and w.shape == b.shape == (x.shape[3],),
           f"grn: x {x.shape}, w {w.shape}, b {b.shape} do not fit")
    out = x.copy()
    if x.size:
        n, hw = x.shape[0], x.shape[1] * x.shape[2]
        _grn(out.reshape(n * hw, x.shape[3]), hw, w, b, min(_threads() * 4, n * hw))
    return out


def block(x, dwconv_w, dwconv_b, norm_w, norm_b, pwconv1_w, pwconv1_b, pwconv2_w, pwconv2_b,
          gamma=None, grn_w=None, grn_b=None, *, eps, ops=None):
    """The ConvNeXt block of :func:`convnext_np.model.block`, fused (``ops`` is ignored): V1 with
    layer scale ``gamma``, V2 with a GRN (``grn_w``, ``grn_b``).

    [N, H, W, C] -> [N, H, W, C]
    """
    x = _f32(x)
    dw_w, dw_b, ln_w, ln_b, w1, b1, w2, b2 = (_f32(a) for a in (
        dwconv_w, dwconv_b, norm_w, norm_b, pwconv1_w, pwconv1_b, pwconv2_w, pwconv2_b))
    c = x.shape[-1]
    # Without layer scale (V2), a scale of ones, read-only as a loaded model's weights are, so that
    # V1 and V2 share the compiled specializations of the GEMM; without GRN (V1), None, for which
    # Numba compiles the kernels without GRN's code.
    g = _f32(gamma) if gamma is not None else _read_only_ones(c)
    v2 = grn_w is not None
    gw, gb = (_f32(grn_w), _f32(grn_b)) if v2 else (None, None)
    _check(x.ndim == 4 and dw_w.ndim == 3 and dw_w.shape[0] == dw_w.shape[1] and dw_w.shape[0] % 2
           and dw_w.shape[2] == c and dw_b.shape == ln_w.shape == ln_b.shape == b2.shape == g.shape == (c,)
           and w1.ndim == 2 and w1.shape[0] == c and b1.shape == (w1.shape[1],)
           and w2.shape == (w1.shape[1], c) and (not v2 or gw.shape == gb.shape == b1.shape),
           f"block: x {x.shape} does not fit the block's weights (dwconv {dw_w.shape}, "
           f"pwconv1 {w1.shape}, pwconv2 {w2.shape}, grn {gw.shape if v2 else None})")
    out = np.empty_like(x)
    if x.size == 0:
        return out
    m, threads, c4 = x.size // c, _threads(), w1.shape[1]
    if not _is_tall(m, threads):
        a3, hid3, o3 = _scratch(1, m, c, c4, c)  # shared by the threads, each writing its own part
        _block_wide(x, dw_w, dw_b, ln_w, ln_b, _F32(eps), _panels(w1), b1, gw, gb, _panels(w2), b2, g,
                    threads, a3[0], hid3[0], o3[0], out)
    elif v2:
        n, hw = x.shape[0], x.shape[1] * x.shape[2]
        if n % threads == 0:  # whole images per thread
            group, tasks = 0, threads
            a3, hid3 = _scratch(threads, hw, c, c4)
            ssq3 = np.empty((1, n, c4), np.float32)
        else:  # groups of images whose fc1 output is about GRN_GROUP_FLOATS together, in V1's tiles
            group = min(n, max(1, threads * GRN_GROUP_FLOATS // (hw * c4)))
            tasks = _row_tasks(group * hw, c4, threads)
            a3, hid3 = _scratch(1, group * hw, c, c4)
            ssq3 = np.empty((tasks, n, c4), np.float32)
        _block_tall_grn(x, dw_w, dw_b, ln_w, ln_b, _F32(eps), _panels(w1), b1, gw, gb, _panels(w2), b2, g,
                        group, tasks, a3, hid3, ssq3, out)
    else:
        tasks = _row_tasks(m, c4, threads)
        a3, hid3, o3 = _scratch(threads, -(-m // tasks), c, c4, c)
        _block_tall(x, dw_w, dw_b, ln_w, ln_b, _F32(eps), _panels(w1), b1, _panels(w2), b2, g, tasks,
                    a3, hid3, o3, out)
    return out


# ==================================================================================================
# 3. Public: GEMM plans (the blocking chosen per machine) and weight packing
# ==================================================================================================

class Plan(NamedTuple):
    """How the GEMM is blocked: the micro-kernel's MR x NR block of outputs (NR a multiple of the
    vector ``lanes``), and the cache blocks, MC rows of activations by KC of the inner dimension."""

    lanes: int
    mr: int
    nr: int
    mc: int
    kc: int

    def __str__(self):
        return f"{self.mr}x{self.nr} MC {self.mc} KC {self.kc} ({self.lanes} lanes)"


def candidate_plans(lanes=None):
    """The plans worth trying for vectors of ``lanes`` floats (this CPU's by default), the
    default first. Each register block fits the 32 (AVX-512) or 16 vector registers with its
    weight vectors and one broadcast; MC x KC floats of activations stay in L2, KC x NR of
    weights in L1 (docs/kernels.md, "Plans")."""
    lanes = LANES if lanes is None else lanes
    if lanes == 16:  # 32 zmm: 14 x 32 is 28 accumulators + 2 weight vectors + 1 broadcast
        shapes = [(14, 32, 256), (8, 48, 256), (6, 64, 256), (12, 32, 384)]
    elif lanes == 8:  # 16 ymm: 6 x 16 is 12 + 2 + 1
        shapes = [(6, 16, 256), (4, 24, 256), (12, 8, 256)]
    else:  # 16 xmm (SSE, NEON)
        shapes = [(6, 8, 256), (4, 12, 256)]
    return [Plan(lanes, mr, nr, 16 * mr, kc) for mr, nr, kc in shapes]


PLAN_ENV = "CONVNEXT_NP_GEMM_PLAN"  # "lanes,mr,nr,mc,kc": this plan, whatever is recorded (tests, benchmarks)
PLAN_FILE = "convnext_np-plan.json"  # the plan chosen on this machine (convnext_np.warmup), beside Numba's cache


def machine_key():
    """What a chosen plan (and Numba's compiled code) depends on: this kernels.py, Numba, Python and the CPU."""
    stat = os.stat(__file__)
    return {"kernels": [stat.st_mtime_ns, stat.st_size], "numba": numba.__version__,
            "python": sys.version.split()[0], "cpu": llvmlite.binding.get_host_cpu_name(),
            "cpu_features": llvmlite.binding.get_host_cpu_features().flatten(),
            "cpu_name_override": numba.config.CPU_NAME}


def cache_dir():
    """Where Numba caches this module's compiled functions (None with the JIT off): every
    ``cache=True`` function here has the same directory, chosen when it was decorated."""
    if numba.config.DISABLE_JIT:
        return None
    from pathlib import Path

    return Path(_global_avg_pool._cache._cache_path)


def parse_plan(text, source=PLAN_ENV):
    """A Plan from ``"lanes,mr,nr,mc,kc"``; a ValueError naming ``source`` when it is not one."""
    try:
        plan = Plan(*(int(v) for v in str(text).split(",")))
    except (TypeError, ValueError):
        plan = None
    if plan is None or plan.lanes not in (4, 8, 16) or min(plan) < 1 or plan.nr % plan.lanes:
        raise ValueError(f"{source}: {text!r} is not a GEMM plan 'lanes,mr,nr,mc,kc' (lanes 4, 8 or 16, "
                         "nr a multiple of lanes, all positive)")
    return plan


def recorded_plan():
    """The plan that convnext_np.warmup chose on this machine for this kernels.py, or None."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        data = json.loads((directory / PLAN_FILE).read_text(encoding="utf-8"))
        if data["key"] == machine_key():
            plan = parse_plan(",".join(map(str, data["plan"])), str(directory / PLAN_FILE))
            return plan if plan.lanes == LANES else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def initialise():
    """Initialise Numba's CPU compiler now, as the first compile or cache load in a process would
    (about 0.4 s here: its typing and lowering registries, and the scipy BLAS it checks for), so
    that a thread can do it while the process does other work (convnext_np.backends.prepare)."""
    if not numba.config.DISABLE_JIT:
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.registry import cpu_target

        with global_compiler_lock:
            cpu_target.target_context.refresh()


def pack(w):
    """The (K, N) weight ``w`` as column panels (ceil(N / NR), K, NR), the last one zero-padded.

    The kernel's weight operand: each panel is one contiguous stream for the kernel's run over k
    (in ``w`` itself, successive rows of a panel are N floats apart: every row a different page
    for the late stages, which left the kernel waiting on memory, and 40% of batch 1's time in
    stages 3 and 4). Packing copies ``w`` once; the public functions keep the panels of each
    read-only weight (a loaded model's) for as long as that array lives (:func:`_panels`).
    """
    k, n = w.shape
    full = n // NR  # panels without padding
    panels = np.zeros((-(-n // NR), k, NR), np.float32)
    # One strided copy, not one per panel: beside Numba's set-up in another thread, each NumPy
    # call waits for the interpreter lock (docs/kernels.md, "Packed weights").
    panels[:full] = w[:, :full * NR].reshape(k, full, NR).transpose(1, 0, 2)
    if full < panels.shape[0]:
        panels[full, :, :n - full * NR] = w[:, full * NR:]
    return panels


def pack_weights(params):
    """Pack every GEMM weight of a loaded model's parameter tree now (its read-only 2-D float32
    arrays: the stem, downsampling, pointwise and head weights), as their first use would
    (:func:`pack`, kept by :func:`_panels`). A model does this on its first call on this
    backend, before the forward pass, so that the copying (most of it page faults on fresh
    memory) overlaps Numba's set-up in a background thread (``backends.prepare``) instead of
    following it."""
    if isinstance(params, (dict, list)):
        for value in params.values() if isinstance(params, dict) else params:
            pack_weights(value)
    elif isinstance(params, np.ndarray) and params.ndim == 2 and params.dtype == np.float32:
        _panels(params)


# ==================================================================================================
# 4. Private: what the public functions share
# ==================================================================================================

def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _check(cond, message):
    if not cond:
        raise ValueError(message)


def _threads():
    return numba.get_num_threads()


_local = threading.local()


def _scratch(threads, rows, *widths):
    """Tile buffers, (threads, rows, width) each (threads = 1: one buffer that the threads share),
    carved from one cached array.

    Cached per calling (Python) thread and grown as needed, so that a forward pass does not
    allocate, and page-fault, megabytes of scratch per layer: at batch 8 the tiny's forward
    pass touched 24 MiB of fresh pages with per-call scratch.
    """
    need = threads * rows * sum(widths)
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < need:
        buf = _local.buf = np.empty(need, np.float32)
    out, start = [], 0
    for width in widths:
        size = threads * rows * width
        out.append(buf[start:start + size].reshape(threads, rows, width))
        start += size
    return out


def _row_tasks(m, width, threads):
    """Row tiles for ``m`` rows whose widest scratch is ``width`` floats: a multiple of the threads."""
    rows = max(MIN_TILE_ROWS, TILE_FLOATS // max(1, width))
    return threads * max(1, -(-m // (threads * rows)))


def _is_tall(m, threads):
    return m >= threads * TALL_MIN_ROWS


def _linear_into(x2, w, b, out):
    """out[...] = x2 @ w + b for contiguous float32 2-D arrays of fitting shapes (unchecked)."""
    if x2.shape[0]:
        threads = _threads()
        if _is_tall(x2.shape[0], threads):
            _linear_tall(x2, _panels(w), b, _row_tasks(x2.shape[0], w.shape[1], threads), out)
        else:
            _linear_wide(x2, _panels(w), b, threads, out)


def _patch_layer(x, w, b, patch, pre=None, post=None):
    """[N, H, W, Ci] -> [N, H//patch, W//patch, Co]; ``pre``/``post``: (weight, bias, eps) of a
    LayerNorm before (over Ci) or after (over Co)."""
    x, w, b = _f32(x), _f32(w), _f32(b)
    _check(x.ndim == 4 and w.ndim == 2 and w.shape[0] == patch * patch * x.shape[3]
           and b.shape == (w.shape[1],),
           f"patchify: x {x.shape}, w {w.shape} and b {b.shape} do not fit a {patch}x{patch} patch")
    n, h, w_, _ = x.shape
    out = np.empty((n, h // patch, w_ // patch, w.shape[1]), np.float32)
    m = out.size // w.shape[1]
    if m == 0:
        return out
    pre_w, pre_b, pre_eps = (_NONE, _NONE, 0.0) if pre is None else pre
    post_w, post_b, post_eps = (_NONE, _NONE, 0.0) if post is None else post
    pre_w, pre_b, post_w, post_b = (_f32(a) for a in (pre_w, pre_b, post_w, post_b))
    _check(pre_w.shape == pre_b.shape and pre_w.shape in ((0,), (x.shape[3],))
           and post_w.shape == post_b.shape and post_w.shape in ((0,), (w.shape[1],)),
           f"patchify: LayerNorm weights {pre_w.shape, post_w.shape} do not fit x {x.shape}, w {w.shape}")
    threads = _threads()
    tall = _is_tall(m, threads)
    tasks = _row_tasks(m, w.shape[0] + w.shape[1], threads) if tall else min(m, 4 * threads)
    # Tall: a tile per thread; otherwise one buffer of all the patches, which the threads share.
    a3, y3 = _scratch(threads if tall else 1, -(-m // tasks) if tall else m, w.shape[0],
                      w.shape[1] if post is not None else 0)
    _patch_linear(x, patch, pre_w, pre_b, _F32(pre_eps), _panels(w), b, post_w, post_b, _F32(post_eps),
                  threads, tall, tasks, a3, y3, out.reshape(m, w.shape[1]))
    return out


def _read_only_ones(c):
    ones = np.ones(c, np.float32)
    ones.flags.writeable = False
    return ones


_PACKED = {}  # id(weight) -> (weak reference to it, its panels)
_PACKED_LOCK = threading.Lock()


def _frozen(w):
    """True when ``w``'s values cannot change: it and every array it is a view of are read-only,
    down to one that owns its memory."""
    while isinstance(w, np.ndarray):
        if w.flags.writeable:
            return False
        if w.base is None:
            return True
        w = w.base
    return False


def _panels(w):
    """``pack(w)``, from the cache when ``w`` is frozen (a loaded model's weights are: ConvNeXt
    makes its parameters read-only); anything else is packed on every call. An entry goes when
    its weight is garbage-collected."""
    if not _frozen(w):
        return pack(w)
    key = id(w)
    with _PACKED_LOCK:
        hit = _PACKED.get(key)
        if hit is not None and hit[0]() is w:
            return hit[1]
    panels = pack(w)
    with _PACKED_LOCK:
        _PACKED[key] = (weakref.ref(w, lambda _, key=key: _PACKED.pop(key, None)), panels)
    return panels


# ==================================================================================================
# 5. Private: the GEMM
# ==================================================================================================

# Every GEMM of the forward pass is ``c = a @ w`` with ``a`` the (pixels, C_in) activations and
# ``w`` the (C_in, C_out) weight. It is computed here rather than in BLAS because (1) the
# epilogue (bias, GELU, layer scale, residual) then runs on each block of outputs while it is
# still in L1, (2) the GEMM runs inside the caller's Numba threads, so no BLAS thread pool spins
# against them (docs/kernels.md), and (3) it is as fast or faster: on the AMD Zen machines, with
# the AVX-512 kernel, 265-280 GFLOP/s per core on the tiny's shapes against 262-271 for NumPy's
# OpenBLAS on two cores; on an Intel Xeon, on par with OpenBLAS core for core (docs/kernels.md
# has the measurements).
#
# Goto/BLIS structure (_gemm), with the register-blocked inner kernel written in LLVM IR: an
# MR x NR block of ``c`` (MR rows, NR columns: NR / lanes vectors) lives in MR * NR / lanes
# vector registers (28 of the 32 zmm registers with AVX-512 and the default 14 x 32) for a whole
# run over k; each step loads NR weights, broadcasts MR activations and issues MR * NR / lanes
# fused multiply-adds. MR, NR and the cache blocks MC, KC are this machine's Plan (section 9).
# Written as plain Numba loops the accumulators went through memory; the IR keeps them in SSA
# values, so LLVM's register allocator keeps them in registers. The weight is read from packed
# column panels (pack), one contiguous stream per run over k, which the kernel prefetches
# PREFETCH_ROWS rows ahead; the MR rows of ``a`` are read in place at their own stride. Ragged
# edges take the same kernel: columns past ``nv`` are masked loads and stores, and a tile of
# fewer than MR rows runs as smaller register blocks of exactly its rows.


class _VectorIR:
    """What the two IR kernels build with: ``<lanes x float>`` fused multiply-add, masked loads and
    stores, splats and integer constants, on a Numba ``builder`` (intp = 64-bit integers)."""

    def __init__(self, builder, lanes, intp):
        self.builder, self.lanes, self.intp = builder, lanes, intp
        i32, f32 = ir.IntType(32), ir.FloatType()
        self.vec, self.mask_t = ir.VectorType(f32, lanes), ir.VectorType(ir.IntType(1), lanes)
        self.ptr, self.vptr, self.i8ptr = f32.as_pointer(), self.vec.as_pointer(), ir.IntType(8).as_pointer()
        module = builder.module

        def declare(name, ret, *params):
            return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, params), name)

        self._fma = declare(f"llvm.fma.v{lanes}f32", self.vec, self.vec, self.vec, self.vec)
        self._load = declare(f"llvm.masked.load.v{lanes}f32.p0", self.vec, self.vptr, i32, self.mask_t, self.vec)
        self._store = declare(f"llvm.masked.store.v{lanes}f32.p0", ir.VoidType(), self.vec, self.vptr, i32,
                              self.mask_t)
        self._prefetch = declare("llvm.prefetch.p0", ir.VoidType(), self.i8ptr, i32, i32, i32)
        self._align, self._zero = ir.Constant(i32, 4), ir.Constant(self.vec, [0.0] * lanes)

    def const(self, value):
        return ir.Constant(self.intp, value)

    def pointer(self, address):
        """An integer address as a float pointer."""
        return self.builder.inttoptr(address, self.ptr)

    def at(self, p, offset):
        """Float pointer ``p`` moved by ``offset`` floats (an intp value)."""
        return self.builder.gep(p, [offset])

    def splat(self, value, vtype):
        b, i32 = self.builder, ir.IntType(32)
        one = b.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(i32, 0))
        return b.shuffle_vector(one, ir.Constant(vtype, ir.Undefined),
                                ir.Constant(ir.VectorType(i32, self.lanes), [0] * self.lanes))

    def lanes_below(self, n, first=0):
        """The mask of lanes ``first + j < n`` (``n`` an intp value)."""
        i32v = ir.VectorType(ir.IntType(32), self.lanes)
        limit = self.splat(self.builder.trunc(n, ir.IntType(32)), i32v)
        return self.builder.icmp_signed("<", ir.Constant(i32v, [first + j for j in range(self.lanes)]), limit)

    def mask_if(self, mask, flag):
        """``mask`` where the i1 ``flag`` holds, else no lanes."""
        return self.builder.and_(mask, self.splat(flag, self.mask_t))

    def load(self, p, mask):
        """The vector at float pointer ``p``; lanes outside ``mask`` are 0 and not read."""
        return self.builder.call(self._load, [self.builder.bitcast(p, self.vptr), self._align, mask, self._zero])

    def store(self, value, p, mask):
        self.builder.call(self._store, [value, self.builder.bitcast(p, self.vptr), self._align, mask])

    def fma(self, a, b, c):
        return self.builder.call(self._fma, [a, b, c])

    def broadcast(self, p):
        """The float at ``p`` in every lane."""
        return self.splat(self.builder.load(p), self.vec)

    def prefetch(self, p):
        i32 = ir.IntType(32)
        self.builder.call(self._prefetch, [self.builder.bitcast(p, self.i8ptr), ir.Constant(i32, 0),
                                           ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _make_microkernel(lanes, mr, nr):
    """An intrinsic ``mk(kc, a, lda, b, ldb, c, ldc, mv, nv, accumulate)`` on raw float32 addresses:
    ``c[:mv, :nv] = (c if accumulate else 0) + a[:mv, :kc] @ b[:kc, :nv]`` (leading dimensions in
    elements), for the block of MR x NR at most.

    A full block (``mv == mr``) is one register-blocked run over k. A ragged one (the last row
    tile of a layer whose rows are not a multiple of MR: 49 = 6 x 8 + 1 at stage 4 for one image,
    with MR = 8) runs as blocks of the powers of two in ``mv`` (7 = 4 + 2 + 1), each exactly its
    rows, not as an MR block whose extra rows are computed and dropped (docs/kernels.md)."""
    nvec = nr // lanes
    ragged = [1 << p for p in range(mr.bit_length()) if 1 << p < mr][::-1]  # 8 x 48: 4, 2, 1

    @intrinsic
    def mk(typingctx, kc, a, lda, b, ldb, c, ldc, mv, nv, accumulate):
        sig = types.void(*(types.intp,) * 10)

        def codegen(context, builder, signature, args):
            kc, a, lda, b, ldb, c, ldc, mv, nv, accumulate = args
            v = _VectorIR(builder, lanes, kc.type)
            const = v.const
            col_mask = [v.lanes_below(nv, j * lanes) for j in range(nvec)]  # columns < nv
            acc_on = builder.icmp_signed("!=", accumulate, const(0))
            init_mask = [v.mask_if(m, acc_on) for m in col_mask]
            a_base, b_base, c_base = (v.pointer(x) for x in (a, b, c))

            def rows(count, first):
                """c[first:first+count] for ``count`` rows (a Python int) from row ``first`` (an intp value)."""
                a_rows, c_ptrs, init = [], [], []
                for i in range(count):
                    row = builder.add(first, const(i))
                    a_rows.append(v.at(a_base, builder.mul(row, lda)))
                    c_row = v.at(c_base, builder.mul(row, ldc))
                    for j in range(nvec):
                        c_ptrs.append(v.at(c_row, const(j * lanes)))
                        init.append(v.load(c_ptrs[-1], init_mask[j]))

                entry = builder.block
                loop = builder.append_basic_block("mk.loop")
                done = builder.append_basic_block("mk.done")
                builder.cbranch(builder.icmp_signed(">", kc, const(0)), loop, done)
                builder.position_at_end(loop)
                k = builder.phi(kc.type)
                acc = [builder.phi(v.vec) for _ in init]
                b_row = v.at(b_base, builder.mul(k, ldb))
                ahead = v.at(b_row, builder.mul(const(PREFETCH_ROWS), ldb))
                for off in range(0, nr, 16):  # one request per 64-byte line
                    v.prefetch(v.at(ahead, const(off)))
                w = [v.load(v.at(b_row, const(j * lanes)), col_mask[j]) for j in range(nvec)]
                new = []
                for i in range(count):
                    x = v.broadcast(v.at(a_rows[i], k))
                    new += [v.fma(x, w[j], acc[i * nvec + j]) for j in range(nvec)]
                k_next = builder.add(k, const(1))
                body_end = builder.block
                k.add_incoming(const(0), entry)
                k.add_incoming(k_next, body_end)
                for phi, first_value, later in zip(acc, init, new):
                    phi.add_incoming(first_value, entry)
                    phi.add_incoming(later, body_end)
                builder.cbranch(builder.icmp_signed("<", k_next, kc), loop, done)

                builder.position_at_end(done)
                results = [builder.phi(v.vec) for _ in init]
                for result, first_value, later in zip(results, init, new):
                    result.add_incoming(first_value, entry)
                    result.add_incoming(later, body_end)
                for n, (result, p) in enumerate(zip(results, c_ptrs)):
                    v.store(result, p, col_mask[n % nvec])

            with builder.if_else(builder.icmp_signed("==", mv, const(mr))) as (full, part):
                with full:
                    rows(mr, const(0))
                with part:
                    for size in ragged:  # row mv & ~(2 size - 1) onwards, if mv has this bit
                        with builder.if_then(builder.icmp_signed("!=", builder.and_(mv, const(size)), const(0))):
                            rows(size, builder.and_(mv, const(~(2 * size - 1))))
            return context.get_dummy_value()

        return sig, codegen

    return mk


def _tile_gemm(a, ai, mv, k0, kc, panels, jp, nv, c, ci, accumulate):
    """c[ci:ci+mv, j0:j0+nv] (+)= a[ai:ai+mv, k0:k0+kc] @ w[k0:k0+kc, j0:j0+nv], j0 = jp * NR,
    for the weight w whose panels these are.

    This body runs under ``NUMBA_DISABLE_JIT``; compiled code runs the register-blocked kernel
    above on the same block (mv <= MR, nv <= NR).
    """
    j0 = jp * NR
    prod = a[ai:ai + mv, k0:k0 + kc] @ panels[jp, k0:k0 + kc, :nv]
    if accumulate:
        c[ci:ci + mv, j0:j0 + nv] += prod
    else:
        c[ci:ci + mv, j0:j0 + nv] = prod


@overload(_tile_gemm)
def _tile_gemm_jit(a, ai, mv, k0, kc, panels, jp, nv, c, ci, accumulate):
    def impl(a, ai, mv, k0, kc, panels, jp, nv, c, ci, accumulate):
        lda, ldc = a.strides[0] // 4, c.strides[0] // 4
        b = panels.ctypes.data + 4 * (jp * panels.shape[1] + k0) * NR
        _microkernel(kc, a.ctypes.data + 4 * (ai * lda + k0), lda, b, NR,
                     c.ctypes.data + 4 * (ci * ldc + jp * NR), ldc, mv, nv, 1 if accumulate else 0)

    return impl


def _next_task(counter):
    """The next task of a parallel loop whose threads take tasks as they finish them:
    ``counter[0]``, incremented. Compiled, the increment is one atomic fetch-and-add, so that any
    number of threads may call it at once; each value is returned once."""
    task = counter[0]
    counter[0] += 1
    return task


@intrinsic
def _fetch_add(typingctx, counter):
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None  # Numba then reports that no version of _fetch_add takes this argument
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(counter), codegen


@overload(_next_task)
def _next_task_jit(counter):
    return lambda counter: _fetch_add(counter)


# The epilogues of _gemm: what happens to each MC x NR block of outputs once its sums are final.
EPI_BIAS, EPI_GELU, EPI_RESIDUAL = 0, 1, 2


@njit(**_JIT)
def _gemm(a, b, c, r0, r1, j0, j1, epilogue, bias, gamma, x2, out2, x_row0, ssq, scale, shift, hw):
    """c[r0:r1, j0:j1] = a[r0:r1] @ w[:, j0:j1] (``b``: the panels of w, j0 a multiple of NR), then
    on each block of at most MC rows x NR columns, while it is in L1:

    - EPI_BIAS: ``c += bias``;
    - EPI_GELU: ``c = gelu(c + bias)`` (fc1); with ``ssq`` (fc1 of a V2 block), also
      ``ssq[image, j] += c[r, j]^2``, GRN's sums of squares;
    - EPI_RESIDUAL: ``out2[x_row0 + r] = x2[x_row0 + r] + gamma * (c[r] + bias)`` (fc2; ``c`` is
      scratch).

    With ``scale`` (fc2 of a V2 block), the GEMM's input is ``a * scale[image] + shift`` (fc2 of a V2 block:
    GRN, _grn_scale): each MC x KC block of ``a`` is written so into a buffer of its own (in L2)
    that the kernel then reads, as BLIS packs its blocks; ``a`` itself is left as it is, so its
    lines are never written back. Row r of ``a`` and ``c`` is pixel ``x_row0 + r`` of the batch,
    image ``(x_row0 + r) // hw``. ``ssq``, ``scale`` and ``shift`` are None for a V1 block: Numba
    then prunes the branches that use them, so that a V1 model compiles none of GRN's code.

    ``a`` and ``c`` are indexed by the same row numbers; rows only need unit inner strides.
    Loop order (BLIS's): row blocks of MC, k blocks of KC, weight panels, row tiles of MR. The
    weight block (KC x NR, 32 KiB) stays in L1 for all the row tiles of a row block, whose
    activations (MC x KC) stay in L2; the weights stream from memory once per row block, evenly
    over the whole computation.
    """
    _wide_vectors()
    if r0 >= r1 or j0 >= j1:
        return
    k = a.shape[1]
    steps = max(1, -(-k // KC))
    kc_step = max(1, -(-k // steps))  # equal k blocks: 384 -> 2 x 192, not 256 + 128
    if scale is not None:
        ap = np.empty((MC, k), np.float32)  # the scaled row block (columns p0:p0+kc)
    for ic in range(r0, r1, MC):
        ic1 = min(r1, ic + MC)
        for p0 in range(0, max(k, 1), kc_step):
            kc = max(0, min(kc_step, k - p0))
            last = p0 + kc >= k
            if scale is not None:
                _scale_rows(a, ic, ic1, p0, p0 + kc, scale, shift, x_row0, hw, ap, 0)
            for jp in range(j0 // NR, -(-j1 // NR)):
                nv = min(NR, j1 - jp * NR)
                for i in range(ic, ic1, MR):
                    if scale is None:
                        _tile_gemm(a, i, min(MR, ic1 - i), p0, kc, b, jp, nv, c, i, p0 > 0)
                    else:
                        _tile_gemm(ap, i - ic, min(MR, ic1 - i), p0, kc, b, jp, nv, c, i, p0 > 0)
                if last:
                    c0, c1 = jp * NR, jp * NR + nv
                    if epilogue == EPI_BIAS:
                        _add_bias(c, ic, ic1, c0, c1, bias)
                    elif epilogue == EPI_GELU:
                        _bias_gelu(c, ic, ic1, c0, c1, bias)
                        if ssq is not None:
                            _add_squares(c, ic, ic1, c0, c1, ssq, x_row0, hw)
                    else:
                        _residual(x2, c, x_row0, x_row0 + ic, x_row0 + ic1, c0, c1, gamma, bias, out2)


# ==================================================================================================
# 6. Private: scalar and row helpers (compiled into the kernels that call them)
# ==================================================================================================

# GELU(x) = x Phi(x) = max(x, 0) - |x| Q(|x|), Q(a) = P(Z > a) = erfc(a / sqrt 2) / 2, as in
# ops.gelu. ops.gelu takes erfc from Abramowitz & Stegun 7.1.26, an exponential and a division;
# here Q is one rational function on [0, 5.5], R(a) = (p0 + ... + p5 a^5) / (1 + q1 a + ... + q9 a^9),
# fitted by docs/fit_gelu.py to GELU's own error |x| |R - Q|: 14 FMAs and one division per vector
# for R and no exponential, so the fc1 epilogue costs 0.19 ns per element instead of 0.34
# (docs/kernels.md, "GELU"). Past |x| = 5.5, |x| Q(|x|) < 1.1e-7 and is taken as 0. Within 3e-7
# of float64 x Phi(x), as accurate as the A&S form was here (3.3e-7): what is left is float32's
# rounding of the result.
_GELU_P = tuple(_F32(v) for v in (0.5, -0.45462632179260254, 0.166471928358078, -0.030672339722514153,
                                  0.002842338290065527, -0.00010593019396765158))
_GELU_Q = tuple(_F32(v) for v in (1.0, -0.11135182529687881, 0.24381600320339203, 0.0019195853965356946,
                                  0.01684867963194847, 0.009823545813560486, -0.004393659997731447,
                                  0.003165194997563958, -0.0007873257854953408, 0.00013776311243418604))
_TAIL_CUTOFF = _F32(5.5)
_ZERO, _ONE = _F32(0.0), _F32(1.0)
_GRN_EPS = _F32(1e-6)


@njit(inline="always", fastmath=_CONTRACT, **_JIT)
def _horner(t, coeffs):
    """coeffs[0] + coeffs[1] t + ... by Horner's rule (the loop has a constant count: LLVM unrolls it)."""
    acc = coeffs[-1]
    for i in range(len(coeffs) - 2, -1, -1):
        acc = acc * t + coeffs[i]
    return acc


@njit(inline="always", fastmath=_CONTRACT, **_JIT)
def _gelu1(v):
    a = abs(v)
    t = min(a, _TAIL_CUTOFF)
    q = _horner(t, _GELU_P) / _horner(t, _GELU_Q)
    if a > _TAIL_CUTOFF:
        q = _ZERO
    return max(v, _ZERO) - t * q  # t, not a: inf * 0 would make gelu(inf) nan


def _wide_vectors():
    """Compiled: asks LLVM to vectorise the loops of the function that calls it with the host's
    full vector width. Does nothing in Python (``NUMBA_DISABLE_JIT``)."""


@intrinsic
def _wide_vectors_ir(typingctx):
    def codegen(context, builder, signature, args):
        # LLVM's tuning for Intel server cores with AVX-512 (``prefer-256-bit``) vectorises plain
        # loops 8 floats at a time; the string attribute "prefer-vector-width"="512" overrides it
        # for one function (LLVM's X86 subtarget reads it per function). llvmlite's attribute set
        # accepts only LLVM's keyword attributes, so the string attribute goes in past its check:
        # it is printed verbatim into the function's definition. The attribute must be on the
        # function whose loops LLVM vectorises: a callee inlined into a caller without it takes
        # the caller's width, so every kernel on the hot path calls this. (docs/kernels.md,
        # "Vector width")
        if LANES == 16:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.void(), codegen


@overload(_wide_vectors, inline="always")  # inlined in Numba's IR: its codegen runs in the caller
def _wide_vectors_jit():
    return lambda: _wide_vectors_ir()


# The loops below are written the way LLVM vectorises them: innermost over a 1-D slice from 0
# (``h[r, c0:c1]``). The same loop over ``range(c0, c1)`` on 2-D indices compiled to scalar code:
# 4.2 ns/element for bias + GELU against 0.31 (measured on the tiny's 256 x 384 tiles, with the
# GELU of the time: A&S 7.1.26 and an exp).

@njit(fastmath=_CONTRACT, **_JIT)
def _bias_gelu(h, r0, r1, c0, c1, b):
    """h[r0:r1, c0:c1] = gelu(h + b[c0:c1]), in place."""
    _wide_vectors()
    bias = b[c0:c1]
    for r in range(r0, r1):
        row = h[r, c0:c1]
        for c in range(c1 - c0):
            row[c] = _gelu1(row[c] + bias[c])


@njit(fastmath=_CONTRACT, **_JIT)
def _add_squares(h, r0, r1, c0, c1, ssq, x_row0, hw):
    """ssq[image of row r, c] += h[r, c]^2 for the block (row r is pixel x_row0 + r of images of hw
    pixels): GRN's sums of squares, taken while the block is in L1. (Not fused into _bias_gelu's
    loop: that would compile GELU once more into every specialization of _gemm.)"""
    _wide_vectors()
    for r in range(r0, r1):
        row, acc = h[r, c0:c1], ssq[(x_row0 + r) // hw, c0:c1]
        for c in range(c1 - c0):
            acc[c] += row[c] * row[c]


@njit(fastmath=_CONTRACT, **_JIT)
def _scale_rows(a, r0, r1, k0, k1, scale, shift, x_row0, hw, dst, d0):
    """dst[d0 + r - r0, k0:k1] = a[r, k0:k1] * scale[image of row r, k0:k1] + shift[k0:k1] (row r
    is pixel x_row0 + r of images of hw pixels; dst may be a): GRN applied to fc2's input
    (_grn_scale)."""
    _wide_vectors()
    sh = shift[k0:k1]
    for r in range(r0, r1):
        row, s, out = a[r, k0:k1], scale[(x_row0 + r) // hw, k0:k1], dst[d0 + r - r0, k0:k1]
        for k in range(k1 - k0):
            out[k] = row[k] * s[k] + sh[k]


@njit(**_JIT)
def _sum_tasks(ssq3, n0, n1, ssq):
    """ssq[n] = the sum over tasks t of ssq3[t, n], for images n0 <= n < n1. (A function of its
    own: written as array expressions in a parallel kernel, each would be a parallel loop.)"""
    for n in range(n0, n1):
        acc = ssq[n]
        acc[:] = ssq3[0, n]
        for t in range(1, ssq3.shape[0]):
            part = ssq3[t, n]
            for c in range(acc.shape[0]):
                acc[c] += part[c]


@njit(fastmath=_CONTRACT, **_JIT)
def _grn_scale(ssq, n0, n1, w, scale):
    """scale[n] = 1 + w * Nx[n] for images n0 <= n < n1, from ssq[n, c], the sum over the image's
    positions of x[., c]^2.

    ConvNeXt V2's GRN (ops.grn), ``w * (x * Nx) + b + x``, is ``x * (1 + w * Nx) + b``: a scale per
    image and channel and a shift, which _scale_rows applies to fc2's input.
    """
    c4 = ssq.shape[1]
    for n in range(n0, n1):
        gx, sc = ssq[n], scale[n]
        total = _ZERO
        for c in range(c4):
            sc[c] = np.sqrt(gx[c])
            total += sc[c]
        denom = total / _F32(c4) + _GRN_EPS
        for c in range(c4):
            sc[c] = _ONE + w[c] * (sc[c] / denom)


@njit(fastmath=_CONTRACT, **_JIT)
def _residual(x2, o, o_row0, r0, r1, c0, c1, gamma, b2, out2):
    """out2[r, c] = x2[r, c] + gamma[c] (o[r - o_row0, c] + b2[c]): fc2's bias, layer scale, residual."""
    _wide_vectors()
    g, bias = gamma[c0:c1], b2[c0:c1]
    for r in range(r0, r1):
        xr, orow, dst = x2[r, c0:c1], o[r - o_row0, c0:c1], out2[r, c0:c1]
        for c in range(c1 - c0):
            dst[c] = xr[c] + g[c] * (orow[c] + bias[c])


@njit(fastmath=_CONTRACT, **_JIT)
def _add_bias(y, r0, r1, c0, c1, b):
    _wide_vectors()
    bias = b[c0:c1]
    for r in range(r0, r1):
        row = y[r, c0:c1]
        for c in range(c1 - c0):
            row[c] += bias[c]


@njit(inline="always", fastmath=_REASSOC, **_JIT)
def _layer_norm1(src, w, b, eps, dst):
    """dst = LayerNorm(src), one pixel's channels: mean, then the biased variance of the deviations."""
    nc = src.shape[0]
    inv_c = _ONE / _F32(nc)
    s = _ZERO
    for c in range(nc):
        s += src[c]
    mean = s * inv_c
    s = _ZERO
    for c in range(nc):
        d = src[c] - mean
        s += d * d
    rstd = _ONE / np.sqrt(s * inv_c + eps)
    for c in range(nc):
        dst[c] = (src[c] - mean) * rstd * w[c] + b[c]


@njit(fastmath=_REASSOC, **_JIT)
def _layer_norm_rows(v, r0, r1, w, b, eps, out):
    """out[r] = LayerNorm(v[r]) over channels for r0 <= r < r1 (out may be v); biased variance."""
    _wide_vectors()
    for r in range(r0, r1):
        _layer_norm1(v[r], w, b, eps, out[r])


# ==================================================================================================
# 7. Private: the depthwise conv
# ==================================================================================================

# Depthwise conv. The 7x7 path keeps the 7 input rows that an output row needs in a ring of
# zero-padded rows (7, W + 6, C), one new row copied per output row, so that every tap is
# branch-free. Each output row is then computed in tiles of DW_PIXELS pixels x one vector of
# channels by an unrolled kernel in LLVM IR (as the GEMM's, and for the same reason: its
# accumulators stay in registers): 0.09 ms for a stage-1 dwconv of the tiny at batch 1 on two
# threads, against 0.31 for the best plain-Numba loop (pairs of pixels, channels innermost,
# accumulating through memory once per kernel row). Taps accumulate in ops.depthwise_conv's
# order: bias, then kernel row by row.

def _make_dw7_kernel(lanes, pixels):
    """An intrinsic ``dw(ring, slot0, row_stride, pix_stride, w, bias, out, out_stride, pv, cv)``
    on raw float32 addresses: for output pixels p < pv <= ``pixels`` and one vector of cv <= lanes
    channels, ``out[p] = bias + sum over di, dj of ring[(slot0 + di) % 7][p + dj] * w[di][dj]``,
    where ring rows are ``row_stride`` floats apart, pixels of ring and w ``pix_stride`` apart,
    and output pixels ``out_stride`` apart (see _dw7_tile).

    Fully unrolled: ``pixels`` accumulators and one kernel row's 7 weight vectors stay in
    registers while each of the row's ``pixels + 6`` input vectors is loaded once and feeds up to
    7 accumulators. Taps are summed in ops.depthwise_conv's order.
    """
    @intrinsic
    def dw(typingctx, ring, slot0, row_stride, pix_stride, w, bias, out, out_stride, pv, cv):
        sig = types.void(*(types.intp,) * 10)

        def codegen(context, builder, signature, args):
            ring, slot0, row_stride, pix_stride, w, bias, out, out_stride, pv, cv = args
            v = _VectorIR(builder, lanes, ring.type)
            const = v.const
            mask = v.lanes_below(cv)
            ring_p, w_p, bias_p, out_p = (v.pointer(x) for x in (ring, w, bias, out))
            acc = [v.load(bias_p, mask)] * pixels
            last_col = builder.add(pv, const(5))  # columns past it are never needed: read it again
            for di in range(7):
                slot = builder.urem(builder.add(slot0, const(di)), const(7))
                row = v.at(ring_p, builder.mul(slot, row_stride))
                taps = [v.load(v.at(w_p, builder.mul(const(di * 7 + dj), pix_stride)), mask) for dj in range(7)]
                for t in range(pixels + 6):
                    col = builder.select(builder.icmp_signed("<", const(t), last_col), const(t), last_col)
                    x = v.load(v.at(row, builder.mul(col, pix_stride)), mask)
                    for p in range(max(0, t - 6), min(pixels, t + 1)):
                        acc[p] = v.fma(x, taps[t - p], acc[p])
            for p in range(pixels):
                stored = v.mask_if(mask, builder.icmp_signed("<", const(p), pv))
                v.store(acc[p], v.at(out_p, builder.mul(const(p), out_stride)), stored)
            return context.get_dummy_value()

        return sig, codegen

    return dw


DW_PIXELS = 14 if LANES == 16 else 6  # output pixels per depthwise tile: 14 + 7 weights + 1 input registers
_dw7_kernel = _make_dw7_kernel(LANES, DW_PIXELS)


def _dw7_tile(ring, slot0, w0, pv, c0, cv, wt, bias, out, o0):
    """out[o0 + p, c0:c0+cv] = 7x7 depthwise conv at padded ring columns w0 + p (+ 0..6), p < pv.

    This body runs under ``NUMBA_DISABLE_JIT``; compiled code runs the unrolled kernel above.
    """
    acc = np.repeat(bias[None, c0:c0 + cv], pv, axis=0)
    for di in range(7):
        r = (slot0 + di) % 7
        for dj in range(7):
            acc += ring[r, w0 + dj:w0 + dj + pv, c0:c0 + cv] * wt[di, dj, c0:c0 + cv]
    out[o0:o0 + pv, c0:c0 + cv] = acc


@overload(_dw7_tile)
def _dw7_tile_jit(ring, slot0, w0, pv, c0, cv, wt, bias, out, o0):
    def impl(ring, slot0, w0, pv, c0, cv, wt, bias, out, o0):
        nc = ring.shape[2]
        ldo = out.strides[0] // 4
        _dw7_kernel(ring.ctypes.data + 4 * (w0 * nc + c0), slot0, ring.shape[1] * nc, nc,
                    wt.ctypes.data + 4 * c0, bias.ctypes.data + 4 * c0,
                    out.ctypes.data + 4 * (o0 * ldo + c0), ldo, pv, cv)

    return impl


@njit(**_JIT)
def _dw7_row(ring, h, w0, w1, wt, bias, out, o0):
    """out[o0 + i] = 7x7 depthwise conv at output pixels (h, w0 + i) from the ring, i < w1 - w0."""
    nc = ring.shape[2]
    for c0 in range(0, nc, LANES):
        for ww in range(w0, w1, DW_PIXELS):
            _dw7_tile(ring, h % 7, ww, min(DW_PIXELS, w1 - ww), c0, min(LANES, nc - c0), wt, bias, out,
                      o0 + ww - w0)


@njit(**_JIT)
def _ring_load(x, n, hh, ring, slot):
    """ring[slot, 3:W+3] = x[n, hh] (zeros outside the image); the 3 + 3 border columns stay 0."""
    _wide_vectors()
    width, nc = x.shape[2], x.shape[3]
    if 0 <= hh < x.shape[1]:
        for w in range(width):
            for c in range(nc):
                ring[slot, w + 3, c] = x[n, hh, w, c]
    else:
        for w in range(width):
            for c in range(nc):
                ring[slot, w + 3, c] = _ZERO


@njit(fastmath=_CONTRACT, **_JIT)
def _dw_generic_row(x, n, h, w0, w1, wt, bias, out, o0):
    """Any odd kernel size k, zero padding k // 2: the same sums, taps outermost (slower)."""
    height, width, nc = x.shape[1], x.shape[2], x.shape[3]
    k = wt.shape[0]
    pad = k // 2
    for i in range(w1 - w0):
        dst = out[o0 + i]
        for c in range(nc):
            dst[c] = bias[c]
    for di in range(k):
        hh = h + di - pad
        if hh < 0 or hh >= height:
            continue
        for dj in range(k):
            d = dj - pad
            kv = wt[di, dj]
            for ww in range(max(w0, -d), min(w1, width - d)):
                dst, src = out[o0 + ww - w0], x[n, hh, ww + d]
                for c in range(nc):
                    dst[c] += src[c] * kv[c]


@njit(**_JIT)
def _dwconv_span(x, p0, p1, wt, bias, ln_w, ln_b, eps, out, o0):
    """out[o0 + i] = dwconv(x) at flat pixel p0 + i of x (N, H, W, C), i < p1 - p0; LayerNorm'd
    over channels too when ``ln_w`` is not empty.

    Each image row is convolved into a row buffer, then normalised from there into ``out`` (an
    in-place LayerNorm does not vectorise: 0.85 ns/element against 0.23).
    """
    _wide_vectors()
    height, width, nc = x.shape[1], x.shape[2], x.shape[3]
    seven = wt.shape[0] == 7
    norm = ln_w.shape[0] > 0
    ring = np.zeros((7 if seven else 1, width + 6, nc), np.float32)
    row = np.empty((width, nc), np.float32)
    last_n, last_h = -1, -1
    p = p0
    while p < p1:
        n = p // (height * width)
        h = (p - n * height * width) // width
        w0 = p - (n * height + h) * width
        w1 = min(width, w0 + p1 - p)
        dst, d0 = (row, 0) if norm else (out, o0 + p - p0)
        if not seven:
            _dw_generic_row(x, n, h, w0, w1, wt, bias, dst, d0)
        else:
            if n == last_n and h == last_h + 1:  # slide: one new input row, h + 3
                _ring_load(x, n, h + 3, ring, (h + 6) % 7)
            else:
                for di in range(7):
                    _ring_load(x, n, h + di - 3, ring, (h + di) % 7)
            _dw7_row(ring, h, w0, w1, wt, bias, dst, d0)
        if norm:
            _layer_norm_rows(row, 0, w1 - w0, ln_w, ln_b, eps, out[o0 + p - p0:o0 + p - p0 + w1 - w0])
        last_n, last_h = n, h
        p += w1 - w0


# ==================================================================================================
# 8. Private: the parallel kernels that the public functions call
# ==================================================================================================

@njit(**_JIT)
def _split(n, parts, t, align):
    """[start, stop) of part t of range(n) cut into ``parts`` pieces, boundaries multiples of align."""
    step = -(-n // (parts * align)) * align
    return min(n, t * step), min(n, (t + 1) * step)


@njit(parallel=True, **_JIT)
def _block_tall(x, dw_w, dw_b, ln_w, ln_b, eps, w1, b1, w2, b2, gamma, ntasks, a3, hid3, o3, out):
    """The whole block on tiles of rows, each tile start to finish in one thread.

    Fuses: dwconv + LayerNorm (one pass into the tile's fc1 input), fc1 GEMM, bias + GELU (in
    place, while the tile is in cache), fc2 GEMM, bias + layer scale + residual (one pass).
    Each thread takes the next tile when it has finished one (:func:`_next_task`), so that a
    thread slowed by other work on its core leaves its share to the others.
    """
    n, height, width, nc = x.shape
    m = n * height * width
    c4 = b1.shape[0]  # w1, w2: panels (pack)
    x2, out2 = x.reshape(m, nc), out.reshape(m, nc)
    counter = np.zeros(1, np.int64)
    for thread in prange(a3.shape[0]):  # one iteration per thread, each with its own scratch
        a, hid, o = a3[thread], hid3[thread], o3[thread]
        t = _next_task(counter)
        while t < ntasks:
            r0, r1 = t * m // ntasks, (t + 1) * m // ntasks
            mt = r1 - r0
            _dwconv_span(x, r0, r1, dw_w, dw_b, ln_w, ln_b, eps, a, 0)
            _gemm(a, w1, hid, 0, mt, 0, c4, EPI_GELU, b1, gamma, x2, out2, 0, None, None, None, 1)
            _gemm(hid, w2, o, 0, mt, 0, nc, EPI_RESIDUAL, b2, gamma, x2, out2, r0, None, None, None, 1)
            t = _next_task(counter)


@njit(parallel=True, **_JIT)
def _block_wide(x, dw_w, dw_b, ln_w, ln_b, eps, w1, b1, grn_w, grn_b, w2, b2, gamma, parts, a, hid, o, out):
    """The block for few rows (late stages, small batches): GEMMs split by output columns.

    Three parallel phases: dwconv + LayerNorm by image rows; fc1 + bias + GELU by column blocks
    of 4C; fc2 + bias + layer scale + residual by column blocks of C. Each thread then reads only
    its share of the weights, which dominate at these sizes. With a GRN (``grn_w`` not None,
    ConvNeXt V2; for None, Numba prunes the GRN branches), fc1 also sums the squares of its output per image and column (each thread owns
    its columns), and each fc2 task applies GRN to the rows it packs (its own copy: the fc1
    output is small here, and no fourth phase is needed). ``a``, ``hid`` and ``o`` (m x C, m x 4C,
    m x C) are the phases' buffers, from :func:`_scratch`.
    """
    n, height, width, nc = x.shape
    hw = height * width
    m = n * hw
    c4 = b1.shape[0]  # w1, w2: panels (pack)
    x2, out2 = x.reshape(m, nc), out.reshape(m, nc)
    if grn_w is not None:
        ssq = np.empty((n, c4), np.float32)
    rows = n * height
    tasks = min(rows, parts)
    for t in prange(tasks):  # contiguous image rows per task: the ring slides instead of refilling
        p0, p1 = (t * rows // tasks) * width, ((t + 1) * rows // tasks) * width
        _dwconv_span(x, p0, p1, dw_w, dw_b, ln_w, ln_b, eps, a, p0)
    for t in prange(parts):
        c0, c1 = _split(c4, parts, t, NR)
        if grn_w is None:
            _gemm(a, w1, hid, 0, m, c0, c1, EPI_GELU, b1, gamma, x2, out2, 0, None, None, None, 1)
        else:
            ssq[:, c0:c1] = _ZERO  # each task owns its columns of the sums
            _gemm(a, w1, hid, 0, m, c0, c1, EPI_GELU, b1, gamma, x2, out2, 0, ssq, None, None, hw)
    if grn_w is not None:
        scale = np.empty((n, c4), np.float32)
        _grn_scale(ssq, 0, n, grn_w, scale)
    for t in prange(parts):
        c0, c1 = _split(nc, parts, t, NR)
        if grn_w is None:
            _gemm(hid, w2, o, 0, m, c0, c1, EPI_RESIDUAL, b2, gamma, x2, out2, 0, None, None, None, 1)
        else:
            _gemm(hid, w2, o, 0, m, c0, c1, EPI_RESIDUAL, b2, gamma, x2, out2, 0, None, scale, grn_b, hw)


@njit(parallel=True, **_JIT)
def _block_tall_grn(x, dw_w, dw_b, ln_w, ln_b, eps, w1, b1, grn_w, grn_b, w2, b2, gamma, group, ntasks,
                    a3, hid3, ssq3, out):
    """The ConvNeXt V2 block on rows: whole images per thread, or tiles of groups of images.

    GRN needs, before fc2 can start on an image, the sums of squares of the image's whole fc1
    output. Per image (or group of images): (1) dwconv + LayerNorm, fc1, bias + GELU, with the
    squares of the fc1 output summed per image in the GEMM's epilogue while each block is in L1;
    (2) the sums turned into GRN's scale per image and channel (_grn_scale); (3) fc2 on the fc1
    output, which the GEMM scales and shifts by GRN as it packs each block into L2, then bias
    (+ layer scale) + residual. ``a3`` holds the LayerNorm output, then fc2's; ``hid3`` the fc1
    output between (1) and (3).

    ``group`` 0 (the batch is a multiple of the threads): each thread takes whole images, one
    at a time, in its own ``a3[t]``, ``hid3[t]``: no thread waits for another inside the block.
    Otherwise (fewer images than threads, say) the images go ``group`` at a time, and (1) and (3)
    are each split into ``ntasks`` tiles of rows across the threads, with a barrier between;
    each tile sums its squares into its own ``ssq3[t]``.
    """
    n, height, width, nc = x.shape
    hw = height * width
    m = n * hw
    c4 = b1.shape[0]  # w1, w2: panels (pack)
    x2, out2 = x.reshape(m, nc), out.reshape(m, nc)
    scale = np.empty((n, c4), np.float32)
    if group == 0:
        ssq = ssq3[0]
        for t in prange(a3.shape[0]):
            a, hid = a3[t], hid3[t]
            for im in range(t, n, a3.shape[0]):
                ssq[im] = _ZERO  # inside a parallel loop: a plain loop
                _dwconv_span(x, im * hw, (im + 1) * hw, dw_w, dw_b, ln_w, ln_b, eps, a, 0)
                _gemm(a, w1, hid, 0, hw, 0, c4, EPI_GELU, b1, gamma, x2, out2, im * hw, ssq, None, None, hw)
                _grn_scale(ssq, im, im + 1, grn_w, scale)
                _gemm(hid, w2, a, 0, hw, 0, nc, EPI_RESIDUAL, b2, gamma, x2, out2, im * hw, None, scale, grn_b, hw)
        return
    a, hid = a3[0], hid3[0]
    ssq = np.empty((n, c4), np.float32)
    for g0 in range(0, n, group):
        g1 = min(n, g0 + group)
        p0, rows = g0 * hw, (g1 - g0) * hw
        for t in prange(ntasks):
            lo, hi = t * rows // ntasks, (t + 1) * rows // ntasks
            ssq3[t, g0:g1] = _ZERO  # inside a parallel loop: a plain loop
            _dwconv_span(x, p0 + lo, p0 + hi, dw_w, dw_b, ln_w, ln_b, eps, a, lo)
            _gemm(a, w1, hid, lo, hi, 0, c4, EPI_GELU, b1, gamma, x2, out2, p0, ssq3[t], None, None, hw)
        _sum_tasks(ssq3, g0, g1, ssq)
        _grn_scale(ssq, g0, g1, grn_w, scale)
        for t in prange(ntasks):
            lo, hi = t * rows // ntasks, (t + 1) * rows // ntasks
            _gemm(hid, w2, a, lo, hi, 0, nc, EPI_RESIDUAL, b2, gamma, x2, out2, p0, None, scale, grn_b, hw)


@njit(parallel=True, **_JIT)
def _linear_tall(x2, w, b, ntasks, out):
    m = x2.shape[0]
    for t in prange(ntasks):
        r0, r1 = t * m // ntasks, (t + 1) * m // ntasks
        _gemm(x2, w, out, r0, r1, 0, out.shape[1], EPI_BIAS, b, b, out, out, 0, None, None, None, 1)


@njit(parallel=True, **_JIT)
def _linear_wide(x2, w, b, parts, out):
    for t in prange(parts):
        c0, c1 = _split(out.shape[1], parts, t, NR)
        _gemm(x2, w, out, 0, out.shape[0], c0, c1, EPI_BIAS, b, b, out, out, 0, None, None, None, 1)


@njit(fastmath=_REASSOC, **_JIT)
def _gather_patches(x, patch, p0, p1, pre_w, pre_b, eps, a, a0):
    """a[a0 + i] = the (kh, kw, c) patch of output pixel p0 + i (flat over N, H//patch, W//patch),
    the rows of ops.patchify; with ``pre_w`` not empty, each input pixel is LayerNorm'd first."""
    _wide_vectors()
    ci = x.shape[3]
    ho, wo = x.shape[1] // patch, x.shape[2] // patch
    norm = pre_w.shape[0] > 0
    for q in range(p1 - p0):
        n = (p0 + q) // (ho * wo)
        i = (p0 + q - n * ho * wo) // wo
        j = p0 + q - (n * ho + i) * wo
        for kh in range(patch):
            for kw in range(patch):
                src = x[n, i * patch + kh, j * patch + kw]
                dst = a[a0 + q, (kh * patch + kw) * ci:(kh * patch + kw + 1) * ci]
                if norm:
                    _layer_norm1(src, pre_w, pre_b, eps, dst)
                else:
                    for c in range(ci):
                        dst[c] = src[c]


@njit(parallel=True, **_JIT)
def _patch_linear(x, patch, pre_w, pre_b, pre_eps, w, b, post_w, post_b, post_eps, threads, tall, tasks,
                  a3, y3, out2):
    """out2 = [LN_post](patches([LN_pre](x)) @ w + b): ops.patchify, the stem (LN after) and the
    downsampling layers (LN before), without the patch matrix or the LayerNorm's output ever
    existing whole. Each LayerNorm is skipped when its weight is empty.

    ``tall``: tiles of output pixels, each gathered, multiplied and finished in one thread.
    Otherwise (few pixels) all patches are gathered first, and the GEMM splits its columns.
    """
    m, co = out2.shape
    post = post_w.shape[0] > 0
    if tall:  # each thread takes the next tile when it has finished one, as in _block_tall
        counter = np.zeros(1, np.int64)
        for thread in prange(threads):
            a, y = a3[thread], y3[thread]
            t = _next_task(counter)
            while t < tasks:
                r0, r1 = t * m // tasks, (t + 1) * m // tasks
                _gather_patches(x, patch, r0, r1, pre_w, pre_b, pre_eps, a, 0)
                if post:  # bias, then LayerNorm from the tile into the output
                    _gemm(a, w, y, 0, r1 - r0, 0, co, EPI_BIAS, b, b, y, y, 0, None, None, None, 1)
                    _layer_norm_rows(y, 0, r1 - r0, post_w, post_b, post_eps, out2[r0:r1])
                else:
                    _gemm(a, w, out2[r0:r1], 0, r1 - r0, 0, co, EPI_BIAS, b, b, y, y, 0, None, None, None, 1)
                t = _next_task(counter)
    else:
        a = a3[0]
        y = y3[0] if post else out2
        for t in prange(tasks):
            _gather_patches(x, patch, t * m // tasks, (t + 1) * m // tasks, pre_w, pre_b, pre_eps, a,
                            t * m // tasks)
        for t in prange(threads):
            c0, c1 = _split(co, threads, t, NR)
            _gemm(a, w, y, 0, m, c0, c1, EPI_BIAS, b, b, y, y, 0, None, None, None, 1)
        if post:
            for t in prange(tasks):
                _layer_norm_rows(y, t * m // tasks, (t + 1) * m // tasks, post_w, post_b, post_eps, out2)


@njit(parallel=True, **_JIT)
def _depthwise_conv(x, wt, bias, ntasks, out):
    n, height, width, nc = x.shape
    m = n * height * width
    out2 = out.reshape(m, nc)
    none = np.empty(0, np.float32)
    for t in prange(ntasks):
        p0, p1 = t * m // ntasks, (t + 1) * m // ntasks
        _dwconv_span(x, p0, p1, wt, bias, none, none, _ZERO, out2, p0)


@njit(parallel=True, **_JIT)
def _layer_norm(x2, w, b, eps, ntasks, out):
    m = x2.shape[0]
    for t in prange(ntasks):
        _wide_vectors()
        _layer_norm_rows(x2, t * m // ntasks, (t + 1) * m // ntasks, w, b, eps, out)


@njit(parallel=True, fastmath=_CONTRACT, **_JIT)
def _gelu(x1, out1):
    size = x1.shape[0]
    for t in prange(-(-size // CHUNK)):
        _wide_vectors()
        src, dst = x1[t * CHUNK:(t + 1) * CHUNK], out1[t * CHUNK:(t + 1) * CHUNK]
        for i in range(src.shape[0]):
            dst[i] = _gelu1(src[i])


@njit(**_JIT)
def _global_avg_pool(x, out):
    n, height, width, nc = x.shape
    for im in range(n):
        for c in range(nc):
            out[im, c] = _ZERO
        for h in range(height):
            for w in range(width):
                for c in range(nc):
                    out[im, c] += x[im, h, w, c]
        for c in range(nc):
            out[im, c] /= _F32(height * width)


@njit(parallel=True, **_JIT)
def _grn(x2, hw, w, b, ntasks):
    """x2 (N * hw, C) = GRN(x2), in place: sums of squares per image (by images), the scale
    (_grn_scale), then every row scaled and shifted (by tiles of rows)."""
    m, nc = x2.shape
    n = m // hw
    ssq = np.zeros((n, nc), np.float32)
    scale = np.empty((n, nc), np.float32)
    for im in prange(n):
        acc = ssq[im]
        for r in range(im * hw, (im + 1) * hw):
            row = x2[r]
            for c in range(nc):
                acc[c] += row[c] * row[c]
    _grn_scale(ssq, 0, n, w, scale)
    for t in prange(ntasks):
        r0, r1 = t * m // ntasks, (t + 1) * m // ntasks
        _scale_rows(x2, r0, r1, 0, nc, scale, b, 0, hw, x2, r0)


# ==================================================================================================
# 9. The plan in use, and Numba's cache keyed on it
# ==================================================================================================

def _choose_plan():
    """CONVNEXT_NP_GEMM_PLAN if set, else the plan recorded for this machine, else the default."""
    if os.environ.get(PLAN_ENV):
        return parse_plan(os.environ[PLAN_ENV])
    return recorded_plan() or candidate_plans()[0]


PLAN = _choose_plan()
_, MR, NR, MC, KC = PLAN
_microkernel = _make_microkernel(PLAN.lanes, MR, NR)


def _key_cache_by_plan():
    """Make the plan part of every cached function's key in Numba's on-disk cache.

    Numba freezes the globals a function reads (MR, NR, MC, KC) into its compiled code, but keys
    its cache on the signature, the bytecode and the CPU only: code compiled under one plan would
    be loaded under another, its panels laid out for another NR. So each cached function's
    index key gets the plan appended, and the plans' compiled code lives side by side.
    """
    for f in list(globals().values()):
        cache = getattr(f, "_cache", None)
        if isinstance(cache, FunctionCache):
            base = cache._index_key
            cache._index_key = lambda sig, codegen, base=base: base(sig, codegen) + (tuple(PLAN),)


if not numba.config.DISABLE_JIT:
    _key_cache_by_plan()
