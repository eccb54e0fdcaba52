"""The Numba fast path: each kernel against its NumPy twin over shapes, the whole model Numba vs NumPy.

Every public function of ``convnext_np.kernels`` has a twin with the same signature (those of
``convnext_np.ops``; the fused ``block``'s twin is ``model.block`` run with the NumPy ops). Shapes
are drawn to hit odd sizes, channel counts that are not multiples of 8 or 16, batch 1 and > 1,
and both work decompositions (row tiles, and output-column blocks for few rows), with tiles that
cross image rows and images.

CI also runs this file with ``NUMBA_DISABLE_JIT=1``, so the kernel bodies run as Python and
coverage sees them; the full-size model checks skip then (pure-Python loops are too slow).
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from safetensors.numpy import save_file

numba = pytest.importorskip("numba")

import convnext_np as cnp  # noqa: E402
from conftest import FIXTURES, LAYOUT_SOURCES, REFERENCE  # noqa: E402
from convnext_np import kernels, model, ops  # noqa: E402
from convnext_np.safetensors_file import SafetensorsFile  # noqa: E402
from convnext_np.testing import random_pixels, realistic_state_dict  # noqa: E402

JIT = not numba.config.DISABLE_JIT
BACKEND_LOGITS_ATOL = 1e-4  # Numba vs NumPy logits: float32 rounding (summation order, FMA)
RTOL = 2e-5  # one kernel vs its twin, relative to the output's scale


def examples(n):
    """Fewer examples when the kernels run as Python."""
    return settings(max_examples=n if JIT else max(3, n // 5), deadline=None)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(got, want, rtol=RTOL):
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
    assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max(initial=0))))


def layer_norm_tolerance(z, w, eps, rtol):
    """How far rounding in ``z`` may move ``LayerNorm(z) * w``, element by element.

    A rounding error in ``z`` reaches the output divided by the row's standard deviation: the
    LayerNorm's condition number is about ``max|z| / sigma``, which is large where the channels
    nearly agree (two channels 5e-4 apart, say). So: ``rtol`` times that number, times ``|w|``.
    """
    sigma = np.sqrt(z.astype(np.float64).var(axis=-1, keepdims=True) + eps)
    return rtol * (1 + np.abs(z).max(axis=-1, keepdims=True) / sigma) * np.abs(w)


@contextlib.contextmanager
def decomposition(tall: bool, tile_rows: int | None = None):
    """Force row tiles (of at most ``tile_rows`` rows) or output-column blocks."""
    saved = kernels.TALL_MIN_ROWS, kernels.TILE_FLOATS, kernels.MIN_TILE_ROWS
    kernels.TALL_MIN_ROWS = 1 if tall else 10**9
    if tile_rows is not None:
        kernels.MIN_TILE_ROWS, kernels.TILE_FLOATS = 1, tile_rows  # width-1 rows -> tile_rows rows
    try:
        yield
    finally:
        kernels.TALL_MIN_ROWS, kernels.TILE_FLOATS, kernels.MIN_TILE_ROWS = saved


seeds = st.integers(0, 2**32 - 1)
channels = st.integers(1, 37)
sides = st.integers(1, 13)
batches = st.integers(1, 3)


# --- each kernel against its NumPy twin ------------------------------------------------------------

@examples(25)
@given(n=batches, h=sides, w=sides, c=channels, k=st.sampled_from([7, 3]), seed=seeds)
def test_depthwise_conv(n, h, w, c, k, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, k, k, c), rand(rng, c)
    close(kernels.depthwise_conv(x, wt, b), ops.depthwise_conv(x, wt, b))


@examples(25)
@given(shape=st.sampled_from([(5,), (2, 3), (1, 4, 5), (2, 3, 1, 4)]), c=st.integers(1, 70),
       eps=st.sampled_from([1e-6, 1e-12, 1e-5]), scale=st.sampled_from([1e-2, 1.0, 100.0]), seed=seeds)
def test_layer_norm(shape, c, eps, scale, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, *shape, c, scale=scale) + np.float32(rng.normal() * scale)
    w, b = rand(rng, c), rand(rng, c)
    close(kernels.layer_norm(x, w, b, eps), ops.layer_norm(x, w, b, eps), rtol=1e-4)


@examples(25)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 4, 17), (40000,)]),
       scale=st.sampled_from([0.1, 1.0, 3.0, 30.0]), seed=seeds)
def test_gelu(shape, scale, seed):
    x = rand(np.random.default_rng(seed), *shape, scale=scale)
    got, want = kernels.gelu(x), ops.gelu(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert_allclose(got, want, rtol=1e-6, atol=2e-7 * max(1.0, float(np.abs(x).max())))


def test_gelu_within_3e7_of_exact_everywhere():
    """The kernel's rational tail (docs/fit_gelu.py) on a dense grid of [-9, 9] and a finer one
    around 0: within 3e-7 of float64 x Phi(x), as accurate as ops.gelu's A&S form (3.3e-7)."""
    import scipy.special

    x = np.concatenate([np.linspace(-9, 9, 1_000_001), np.linspace(-1e-3, 1e-3, 20001)]).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * scipy.special.erfc(-x64 / np.sqrt(2))
    assert np.abs(kernels.gelu(x) - exact).max() < 3e-7


def test_gelu_at_its_branch_points_and_extremes():
    """Around the tail cut-off (|x| = 5.5), at 0, and far out; against float64 x Phi(x)."""
    import scipy.special

    x = np.array([0.0, -0.0, 1e-30, -1e-30, 5.49, 5.5, 5.51, -5.49, -5.5, -5.51, 6.0, -6.0, 13.0,
                  -13.0, 100.0, -100.0, 1e4, -1e4], np.float32)
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * scipy.special.erfc(-x64 / np.sqrt(2))
    for got in (kernels.gelu(x), ops.gelu(x)):
        assert got.dtype == np.float32
        assert (np.abs(got - exact) <= 1e-6 * np.abs(exact) + 2e-7 * np.maximum(1.0, np.abs(x64))).all()
    special = np.array([np.inf, -np.inf, np.nan], np.float32)
    for got in (kernels.gelu(special), ops.gelu(special)):
        assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2])


@examples(25)
@given(lead=st.sampled_from([(1,), (5,), (2, 3), (1, 7, 9), (300,)]), n_in=st.integers(1, 40),
       n_out=st.integers(1, 70), tall=st.booleans(), tile_rows=st.sampled_from([None, 1, 7]), seed=seeds)
def test_linear(lead, n_in, n_out, tall, tile_rows, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, *lead, n_in), rand(rng, n_in, n_out, scale=n_in**-0.5), rand(rng, n_out)
    with decomposition(tall, tile_rows):
        got = kernels.linear(x, w, b)
    close(got, ops.linear(x, w, b))


@examples(25)
@given(n=batches, h=st.integers(2, 19), w=st.integers(2, 19), ci=st.integers(1, 9),
       co=st.integers(1, 21), patch=st.sampled_from([2, 4]), seed=seeds)
def test_patchify(n, h, w, ci, co, patch, seed):
    rng = np.random.default_rng(seed)
    h, w = max(h, patch), max(w, patch)
    x, wt, b = rand(rng, n, h, w, ci), rand(rng, patch * patch * ci, co), rand(rng, co)
    close(kernels.patchify(x, wt, b, patch), ops.patchify(x, wt, b, patch))


@examples(15)
@given(n=batches, h=sides, w=sides, c=channels, seed=seeds)
def test_global_avg_pool(n, h, w, c, seed):
    x = rand(np.random.default_rng(seed), n, h, w, c)
    close(kernels.global_avg_pool(x), ops.global_avg_pool(x))


def block_params(rng, c, expansion=4):
    """Realistic-scale block weights (fan-in scaled MLP, layer scale in [0.1, 1])."""
    return dict(dwconv_w=rand(rng, 7, 7, c, scale=0.2), dwconv_b=rand(rng, c, scale=0.2),
                norm_w=1 + rand(rng, c, scale=0.3), norm_b=rand(rng, c, scale=0.2),
                pwconv1_w=rand(rng, c, expansion * c, scale=c**-0.5),
                pwconv1_b=rand(rng, expansion * c, scale=0.2),
                pwconv2_w=rand(rng, expansion * c, c, scale=(expansion * c) ** -0.5),
                pwconv2_b=rand(rng, c, scale=0.2),
                gamma=rng.uniform(0.1, 1.0, c).astype(np.float32))


@pytest.mark.slow
@examples(30)
@given(n=batches, h=sides, w=sides, c=channels, tall=st.booleans(),
       tile_rows=st.sampled_from([None, 1, 5, 64]), eps=st.sampled_from([1e-6, 1e-5]), seed=seeds)
def test_fused_block_equals_the_composition(n, h, w, c, tall, tile_rows, eps, seed):
    rng = np.random.default_rng(seed)
    x, p = rand(rng, n, h, w, c), block_params(rng, c)
    with decomposition(tall, tile_rows and tile_rows * 4 * c):
        got = kernels.block(x, **p, eps=eps)
    close(got, model.block(x, **p, eps=eps, ops=ops))


def v2_block_params(rng, c, expansion=4):
    """A ConvNeXt V2 block: no layer scale, GRN weight and bias drawn wide (their init is 0)."""
    p = block_params(rng, c, expansion)
    del p["gamma"]
    return dict(p, grn_w=rand(rng, expansion * c, scale=0.5), grn_b=rand(rng, expansion * c, scale=0.5))


@pytest.mark.slow
@examples(30)
@given(n=batches, h=sides, w=sides, c=channels, tall=st.booleans(),
       tile_rows=st.sampled_from([None, 1, 5, 64]), seed=seeds)
def test_fused_v2_block_equals_the_composition(n, h, w, c, tall, tile_rows, seed):
    """Row tiles cross image rows and images, and groups of images split the batch (tile_rows)."""
    rng = np.random.default_rng(seed)
    x, p = rand(rng, n, h, w, c), v2_block_params(rng, c)
    with decomposition(tall, tile_rows and tile_rows * 4 * c):
        got = kernels.block(x, **p, eps=1e-6)
    close(got, model.block(x, **p, eps=1e-6, ops=ops), rtol=5e-5)


@examples(25)
@given(n=batches, h=sides, w=sides, c=channels, scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=seeds)
def test_grn(n, h, w, c, scale, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, n, h, w, c, scale=scale), rand(rng, c, scale=0.5), rand(rng, c, scale=0.5)
    close(kernels.grn(x, wt, b), ops.grn(x, wt, b))


@examples(20)
@given(n=batches, h=st.integers(4, 30), w=st.integers(4, 30), co=channels, tall=st.booleans(),
       tile_rows=st.sampled_from([None, 1, 3]), seed=seeds)
@example(n=3, h=30, w=23, co=2, tall=False, tile_rows=None, seed=579)  # two channels 5e-4 apart
def test_fused_stem_equals_the_composition(n, h, w, co, tall, tile_rows, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, h, w, 3)
    p = dict(w=rand(rng, 48, co, scale=48**-0.5), b=rand(rng, co), norm_w=1 + rand(rng, co, scale=0.3),
             norm_b=rand(rng, co, scale=0.2))
    with decomposition(tall, tile_rows and tile_rows * (48 + co)):
        got = kernels.stem(x, **p, eps=1e-6)
    want = model.stem(x, **p, eps=1e-6, ops=ops)
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
    z = ops.patchify(x, p["w"], p["b"], 4)  # what the LayerNorm normalises: it sets the conditioning
    assert (np.abs(got - want) <= layer_norm_tolerance(z, p["norm_w"], 1e-6, rtol=1e-4)).all()


@examples(20)
@given(n=batches, h=st.integers(2, 15), w=st.integers(2, 15), ci=channels, co=st.integers(1, 45),
       tall=st.booleans(), tile_rows=st.sampled_from([None, 1, 3]), seed=seeds)
def test_fused_downsample_equals_the_composition(n, h, w, ci, co, tall, tile_rows, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, h, w, ci) * np.float32(3) + np.float32(1)
    p = dict(norm_w=1 + rand(rng, ci, scale=0.3), norm_b=rand(rng, ci, scale=0.2),
             w=rand(rng, 4 * ci, co, scale=(4 * ci) ** -0.5), b=rand(rng, co))
    with decomposition(tall, tile_rows and tile_rows * (4 * ci + co)):
        got = kernels.downsample(x, **p, eps=1e-6)
    close(got, model.downsample(x, **p, eps=1e-6, ops=ops))


def test_signatures_are_those_of_the_twins():
    import inspect

    def names(f):
        return list(inspect.signature(f).parameters)

    for name in ("stem", "downsample", "block"):  # fused layers: the model's functions
        assert names(getattr(kernels, name)) == names(getattr(model, name)), name
    for name in ("depthwise_conv", "layer_norm", "gelu", "linear", "patchify", "global_avg_pool", "grn"):
        assert names(getattr(kernels, name)) == names(getattr(ops, name)), name


def test_inputs_are_laid_out_for_the_kernels():
    """float64 and non-contiguous inputs are accepted; every output is float32 and contiguous."""
    rng = np.random.default_rng(0)
    x = rand(rng, 2, 9, 8, 6).astype(np.float64)[:, ::2, :, :]  # float64, non-contiguous
    p = block_params(rng, 6)
    close(kernels.block(x, **p, eps=1e-6), model.block(x.astype(np.float32), **p, eps=1e-6, ops=ops))
    close(kernels.depthwise_conv(x, p["dwconv_w"], p["dwconv_b"]),
          ops.depthwise_conv(x.astype(np.float32), p["dwconv_w"], p["dwconv_b"]))
    close(kernels.gelu(x.transpose(0, 3, 1, 2)), ops.gelu(np.float32(x).transpose(0, 3, 1, 2).copy()))


def test_mismatched_shapes_are_refused():
    rng = np.random.default_rng(0)
    x, p = rand(rng, 1, 5, 5, 6), block_params(rng, 6)
    with pytest.raises(ValueError, match="block"):
        kernels.block(rand(rng, 1, 5, 5, 7), **p, eps=1e-6)
    with pytest.raises(ValueError, match="block"):
        kernels.block(x, **dict(v2_block_params(rng, 6), grn_w=rand(rng, 23)), eps=1e-6)
    with pytest.raises(ValueError, match="grn"):
        kernels.grn(x, rand(rng, 5), rand(rng, 6))
    with pytest.raises(ValueError, match="depthwise_conv"):
        kernels.depthwise_conv(x, rand(rng, 7, 7, 5), rand(rng, 5))
    with pytest.raises(ValueError, match="linear"):
        kernels.linear(x, rand(rng, 5, 3), rand(rng, 3))
    with pytest.raises(ValueError, match="layer_norm"):
        kernels.layer_norm(x, rand(rng, 5), rand(rng, 5), 1e-6)
    with pytest.raises(ValueError, match="patchify"):
        kernels.patchify(x, rand(rng, 5, 3), rand(rng, 3), 2)


def test_next_task_hands_out_each_task_once():
    """The threads of a parallel loop take tasks from one counter (kernels._next_task, an atomic
    fetch-and-add compiled): every task is taken exactly once, however the threads interleave."""
    @numba.njit(parallel=True)
    def take_all(taken, mine):
        counter = np.zeros(1, np.int64)
        for i in numba.prange(mine.size):
            t = kernels._next_task(counter)
            while t < taken.size:
                taken[t] += 1
                mine[i] += 1  # each iteration its own count: no update of it can be lost
                t = kernels._next_task(counter)

    taken, mine = np.zeros(200_000, np.int64), np.zeros(max(2, numba.get_num_threads()), np.int64)
    take_all(taken, mine)
    assert mine.sum() == taken.size and (taken == 1).all()


ALL_PLANS = [plan for lanes in (16, 8, 4) for plan in kernels.candidate_plans(lanes)]


def plan_id(plan):
    return f"{plan.lanes}lanes-{plan.mr}x{plan.nr}-mc{plan.mc}-kc{plan.kc}"


@pytest.mark.skipif(not JIT, reason="the register-blocked kernel exists only compiled")
@pytest.mark.parametrize("shape", sorted({(p.lanes, p.mr, p.nr) for p in ALL_PLANS}, reverse=True),
                         ids=lambda s: f"{s[0]}lanes-{s[1]}x{s[2]}")
def test_microkernel_writes_exactly_its_block(shape):
    """Each (lanes, MR, NR) of every candidate plan, whatever this CPU is: ragged blocks are
    computed right (every row count below MR, each of which runs as smaller blocks), and nothing
    outside the mv x nv block is written."""
    lanes, mr, nr = shape
    mk = kernels._make_microkernel(lanes, mr, nr)

    @numba.njit
    def run(kc, a, b, c, mv, nv, accumulate):  # the block at row 1, column 1 of c
        mk(kc, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], c.ctypes.data + 4 * (c.shape[1] + 1),
           c.shape[1], mv, nv, accumulate)

    rng = np.random.default_rng(0)
    ragged_rows = [(9, mv, nr - 3, mv % 2) for mv in range(1, mr)]
    for kc, mv, nv, accumulate in [(0, mr, nr, 0), (0, mr - 1, nr - 3, 0), (0, mr - 1, nr, 1), (1, 1, 1, 0),
                                   (7, mr, nr, 0), (5, 2, min(lanes + 1, nr), 1), (300, mr, nr, 1),
                                   *ragged_rows]:
        a, b = rand(rng, mr, kc + 1), rand(rng, kc + 1, nr + 5)
        c = rand(rng, mr + 3, nr + 6)
        want = c.copy()
        block = want[1:1 + mv, 1:1 + nv]
        want[1:1 + mv, 1:1 + nv] = (block if accumulate else 0) + a[:mv, :kc] @ b[:kc, :nv]
        run(kc, a, b, c, mv, nv, accumulate)
        assert_allclose(c, want, rtol=1e-5, atol=1e-5 * max(1.0, kc))


PLAN_CHECK = """
    import numpy as np
    from convnext_np import kernels, model, ops
    assert tuple(kernels.PLAN) == {plan!r}, kernels.PLAN
    rng = np.random.default_rng(0)
    rand = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(np.float32)
    worst = 0.0
    def check(got, want):
        global worst
        worst = max(worst, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
    for tall in (True, False):
        kernels.TALL_MIN_ROWS = 1 if tall else 10**9
        for m, k, n in [(1, 1, 1), (13, 7, 33), (47, 300, 70), (531, 97, 131), (300, 1100, 29)]:
            x, w, b = rand(m, k), rand(k, n, scale=k**-0.5), rand(n)
            w.flags.writeable = False  # packed once and kept, as a model's weights
            check(kernels.linear(x, w, b), ops.linear(x, w, b))
            check(kernels.linear(x, w, b), ops.linear(x, w, b))
        for n_, h, w_, c in [(1, 9, 11, 21), (3, 5, 7, 40)]:
            p = dict(dwconv_w=rand(7, 7, c, scale=0.2), dwconv_b=rand(c, scale=0.2), norm_w=rand(c),
                     norm_b=rand(c), pwconv1_w=rand(c, 4 * c, scale=c**-0.5), pwconv1_b=rand(4 * c, scale=0.2),
                     pwconv2_w=rand(4 * c, c, scale=(4 * c)**-0.5), pwconv2_b=rand(c, scale=0.2),
                     gamma=rng.uniform(0.1, 1.0, c).astype(np.float32))
            x = rand(n_, h, w_, c)
            check(kernels.block(x, **p, eps=1e-6), model.block(x, **p, eps=1e-6, ops=ops))
    print(worst)
"""


_PLAN_RUNS = {}  # plan -> the Future of its PLAN_CHECK process


def _plan_check(plan, request):
    """PLAN_CHECK's output for ``plan``. The first call starts the processes of every plan that
    this session selected, two at a time (each compiles on one core for most of its 25-30 s)."""
    if not _PLAN_RUNS:
        selected = [item.callspec.params["plan"] for item in request.session.items
                    if item.originalname == request.node.originalname]
        pool = ThreadPoolExecutor(max_workers=2)
        for p in selected:
            if p.lanes <= kernels.LANES:
                _PLAN_RUNS[p] = pool.submit(run_python, PLAN_CHECK.format(plan=tuple(p)),
                                            env={kernels.PLAN_ENV: ",".join(map(str, p))},
                                            path=Path(kernels.__file__).parent.parent, timeout=600)
        pool.shutdown(wait=False)
    return _PLAN_RUNS[plan].result()


@pytest.mark.slow
@pytest.mark.skipif(not JIT, reason="plans exist only compiled")
@pytest.mark.parametrize("plan", ALL_PLANS, ids=plan_id)
def test_every_plan_equals_the_numpy_twin(plan, request):
    """Every candidate plan of every vector width (those this CPU can run), chosen through
    CONVNEXT_NP_GEMM_PLAN in a fresh process: linear and the fused block, in both decompositions,
    on ragged shapes (rows, columns and k not multiples of the blocks), against the NumPy ops.
    The fresh process shares this checkout's Numba cache, which holds other plans' code for the
    same functions: a cache that did not tell plans apart would hand it code blocked for another
    NR than its panels."""
    if plan.lanes > kernels.LANES:
        pytest.skip(f"this CPU has {kernels.LANES}-float vectors")
    assert float(_plan_check(plan, request).split()[-1]) < RTOL


@pytest.mark.parametrize("text", ["", "16,14,32,224", "16,14,30,224,256", "3,6,8,96,256", "16,0,32,1,1",
                                  "a,b,c,d,e"])
def test_a_malformed_plan_is_refused_by_name(text):
    with pytest.raises(ValueError, match=kernels.PLAN_ENV):
        kernels.parse_plan(text)


def test_every_candidate_plan_fits_its_register_file():
    """Accumulators (MR x NR / lanes) + NR / lanes weight vectors + 1 broadcast: 32 registers
    with AVX-512, 16 otherwise; the default (first) plan of each width too."""
    for plan in ALL_PLANS:
        registers = 32 if plan.lanes == 16 else 16
        assert plan.nr % plan.lanes == 0
        assert plan.mr * plan.nr // plan.lanes + plan.nr // plan.lanes + 1 <= registers, plan


@pytest.mark.skipif(not JIT, reason="a compile-time attribute")
def test_wide_vectors_makes_llvm_vectorise_with_the_full_width():
    """A loop in a function that calls _wide_vectors() is vectorised with 512-bit (zmm) vectors on
    an AVX-512 CPU, whatever LLVM's tuning for the CPU prefers; elsewhere the call adds nothing."""

    @numba.njit(fastmath={"contract"}, error_model="numpy")
    def axpy(a, x, y):
        kernels._wide_vectors()
        for i in range(x.shape[0]):
            y[i] += a * x[i]

    x = np.arange(100, dtype=np.float32)
    y = np.ones(100, np.float32)
    axpy(np.float32(2), x, y)
    assert_allclose(y, 1 + 2 * x)
    sig = axpy.signatures[0]
    assert ('"prefer-vector-width"="512"' in axpy.inspect_llvm(sig)) == (kernels.LANES == 16)
    if kernels.LANES == 16:
        assert "zmm" in axpy.inspect_asm(sig)


@pytest.mark.skipif(not JIT, reason="the unrolled kernel exists only compiled")
@pytest.mark.parametrize("shape", [(16, 14), (8, 6), (4, 6)], ids=["avx512", "avx2", "sse"])
def test_depthwise_tile_kernel_writes_exactly_its_tile(shape):
    """Each (lanes, pixels) the depthwise kernel can be built with: ragged tiles (fewer pixels,
    fewer channels) are right, and nothing outside the tile is written."""
    lanes, pixels = shape
    dw = kernels._make_dw7_kernel(lanes, pixels)

    @numba.njit
    def run(ring, slot0, w0, pv, c0, cv, wt, bias, out, o0):
        nc = ring.shape[2]
        dw(ring.ctypes.data + 4 * (w0 * nc + c0), slot0, ring.shape[1] * nc, nc, wt.ctypes.data + 4 * c0,
           bias.ctypes.data + 4 * c0, out.ctypes.data + 4 * (o0 * out.shape[1] + c0), out.shape[1], pv, cv)

    rng = np.random.default_rng(0)
    nc = 2 * lanes + 3
    for slot0, w0, pv, c0, cv in [(0, 0, pixels, 0, lanes), (3, 2, 1, lanes, lanes), (6, 1, pixels - 1, 2 * lanes, 3),
                                  (5, 0, 2, 1, lanes - 1)]:
        ring = rand(rng, 7, w0 + pv + 6, nc)  # exactly as wide as the tile needs: no read past it
        wt, bias = rand(rng, 7, 7, nc), rand(rng, nc)
        out = rand(rng, pixels + 3, nc)
        want = out.copy()
        kernels._dw7_tile(ring, slot0, w0, pv, c0, cv, wt, bias, want, 1)  # called from Python: the NumPy twin
        run(ring, slot0, w0, pv, c0, cv, wt, bias, out, 1)
        assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_weight_panels_are_kept_only_for_weights_that_cannot_change():
    rng = np.random.default_rng(0)
    x, b = rand(rng, 40, 8), rand(rng, 16)
    frozen = rand(rng, 8, 16)
    frozen.flags.writeable = False
    view_of_writable = rand(rng, 16, 8).T  # read-only view of an array that can still change
    view_of_writable.flags.writeable = False
    writable = rand(rng, 8, 16)
    for w in (frozen, view_of_writable, writable):
        close(kernels.linear(x, w, b), ops.linear(x, w, b))
    assert id(frozen) in kernels._PACKED
    assert id(view_of_writable) not in kernels._PACKED and id(writable) not in kernels._PACKED
    writable[:] = 0  # a writable weight is repacked on every call: the change is seen
    close(kernels.linear(x, writable, b), ops.linear(x, writable, b))
    key = id(frozen)
    del frozen
    assert key not in kernels._PACKED  # the panels go with their weight


def test_a_models_weights_are_read_only_and_all_packed_once():
    model = cnp.from_pretrained(FIXTURES / LAYOUT_SOURCES["hf-safetensors"], backend="numba")
    w = model.params["stages"][0]["blocks"][0]["pwconv1_w"]
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0
    model(random_pixels((1, 3, 64, 64), seed=0))
    gemm_weights = [model.params["stem"]["w"], model.params["head"]["fc_w"]]
    for stage in model.params["stages"]:
        gemm_weights += [] if stage["downsample"] is None else [stage["downsample"]["w"]]
        gemm_weights += [p[k] for p in stage["blocks"] for k in ("pwconv1_w", "pwconv2_w")]
    assert all(id(g) in kernels._PACKED for g in gemm_weights)


# --- the whole model: Numba against NumPy ------------------------------------------------------------

def both_backends(source):
    return (cnp.from_pretrained(source, backend="numpy"), cnp.from_pretrained(source, backend="numba"))


@pytest.mark.parametrize("layout", sorted(LAYOUT_SOURCES) if JIT else ["hf-safetensors"])
def test_whole_model_numba_equals_numpy_on_the_fixtures(layout):
    reference, fast = both_backends(FIXTURES / LAYOUT_SOURCES[layout])
    assert fast.backend == "numba"
    ref = SafetensorsFile(FIXTURES / layout / "reference.safetensors")
    meta = json.loads((FIXTURES / layout / "reference.json").read_text())
    for i in range(len(meta["inputs"])):
        x = ref.tensor(f"input{i}.pixel_values")
        want, got = reference(x, output_hidden_states=True), fast(x, output_hidden_states=True)
        assert_allclose(got.logits, want.logits, rtol=0, atol=BACKEND_LOGITS_ATOL, strict=True)
        assert_allclose(got.pooled, want.pooled, rtol=0, atol=BACKEND_LOGITS_ATOL, strict=True)
        for g, w in zip(got.hidden_states, want.hidden_states):
            assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max(), strict=True)


@pytest.mark.slow
@pytest.mark.skipif(not JIT, reason="full-size forward passes are too slow as pure Python")
@pytest.mark.parametrize("batch", [1, 3])
def test_full_size_tiny_numba_equals_numpy(tmp_path, batch):
    """ConvNeXt-T rebuilt from weights/reference (as the parity tests do), batch 1 and 3.

    Batch 1 runs the late stages with output-column blocks, batch 3 with row tiles.
    """
    meta = json.loads((REFERENCE / "tiny-hf.json").read_text())
    path = tmp_path / "weights.safetensors"
    save_file(realistic_state_dict(meta["tensors"], meta["seed"]), str(path))
    reference, fast = both_backends(path)
    x = random_pixels((batch, 3, 224, 224), seed=batch)
    want, got = reference(x).logits, fast(x).logits
    assert_allclose(got, want, rtol=0, atol=BACKEND_LOGITS_ATOL, strict=True)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    expected = SafetensorsFile(REFERENCE / "tiny-hf.safetensors").tensor("input1.logits")
    x1 = random_pixels(meta["inputs"][1]["shape"], meta["inputs"][1]["seed"])  # 160x224
    assert_allclose(fast(x1).logits, expected, rtol=0, atol=2e-4, strict=True)


# --- imports and the backend registry ------------------------------------------------------------------

def run_python(code, env=None, path=None, timeout=300):
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONVNEXT_NP_BACKEND",)}
    full_env.update(env or {})
    if path:
        full_env["PYTHONPATH"] = os.pathsep.join([str(path), full_env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_convnext_np_imports_no_numba_and_kernels_compile_nothing():
    out = run_python("""
        import sys
        import convnext_np
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite")))
        from convnext_np import kernels
        import numba
        if not numba.config.DISABLE_JIT:
            compiled = [n for n, f in vars(kernels).items()
                        if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures]
            print(compiled)
        else:
            print([])
    """)
    assert out.split("\n")[:2] == ["[]", "[]"]


@pytest.mark.parametrize("how", ["ImportError('no numba here')", "RuntimeError('broken llvmlite')"])
def test_auto_falls_back_to_numpy_when_numba_fails(tmp_path, how):
    stub = tmp_path / "numba"
    stub.mkdir()
    (stub / "__init__.py").write_text(f"raise {how}\n")
    out = run_python(f"""
        import convnext_np as cnp
        from convnext_np import backends
        model = cnp.from_pretrained({str(FIXTURES / "hf-safetensors")!r})
        print(model.backend, model(__import__("numpy").zeros((1, 3, 32, 32), "float32")).logits.shape)
        try:
            backends.resolve("numba")
        except Exception as e:
            print(type(e).__name__)
    """, path=tmp_path)
    assert out.split() == ["numpy", "(1,", "10)", how.split("(")[0]]


def test_auto_prefers_numba(monkeypatch):
    monkeypatch.delenv("CONVNEXT_NP_BACKEND", raising=False)
    assert cnp.from_pretrained(FIXTURES / "hf-safetensors").backend == "numba"
    monkeypatch.setenv("CONVNEXT_NP_BACKEND", "numpy")  # what "auto" means, when set
    assert cnp.from_pretrained(FIXTURES / "hf-safetensors").backend == "numpy"


def test_thread_count_follows_omp_num_threads():
    out = run_python("""
        from convnext_np import kernels
        import numba
        print(numba.get_num_threads())
    """, env={"OMP_NUM_THREADS": "1"})
    assert out.strip() == "1"


def test_pack_weights_packs_what_the_forward_pass_uses():
    """A model's first call on Numba packs its GEMM weights up front (kernels.pack_weights): the
    forward pass then finds every panel it needs already made."""
    model = cnp.from_pretrained(FIXTURES / LAYOUT_SOURCES["hf-safetensors"], backend="numba")
    kernels._PACKED.clear()
    kernels.pack_weights(model.params)
    packed = dict(kernels._PACKED)
    assert packed
    model(random_pixels((1, 3, 64, 64)))
    assert set(kernels._PACKED) == set(packed)
    for key, (ref, panels) in packed.items():
        assert np.array_equal(panels, kernels.pack(ref()))
