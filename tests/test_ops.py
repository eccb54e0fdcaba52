"""Each NumPy op against an independent formulation: naive float64 loops, or scipy."""

import math

import numpy as np
import pytest
import scipy.signal
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import naive
from convnext_np import ops
from convnext_np.weights import torch_to_ours

RTOL, ATOL = 1e-5, 1e-5  # float32 op vs float64 formula, inputs of order one


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(2, 11), w=st.integers(2, 11), ci=st.integers(1, 5),
       co=st.integers(1, 6), patch=st.sampled_from([2, 4]), seed=seeds)
def test_patchify_equals_strided_conv(n, h, w, ci, co, patch, seed):
    rng = np.random.default_rng(seed)
    if min(h, w) < patch:
        h, w = h + patch, w + patch
    x, wt, b = rand(rng, n, ci, h, w), rand(rng, co, ci, patch, patch), rand(rng, co)
    expected = naive.conv2d_strided(x.astype(np.float64), wt, b, patch)  # drops partial patches
    got = ops.patchify(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                       torch_to_ours("convnext.embeddings.patch_embeddings.weight", wt), b, patch)
    assert_allclose(got.transpose(0, 3, 1, 2), expected, rtol=RTOL, atol=ATOL)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 10), w=st.integers(1, 10), c=st.integers(1, 9), seed=seeds)
def test_depthwise_conv_equals_naive_loops(n, h, w, c, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, n, c, h, w), rand(rng, c, 1, 7, 7), rand(rng, c)
    expected = naive.depthwise_conv(x.astype(np.float64), wt, b)
    got = ops.depthwise_conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                             torch_to_ours("a.dwconv.weight", wt), b)
    assert got.dtype == np.float32
    assert_allclose(got.transpose(0, 3, 1, 2), expected, rtol=RTOL, atol=ATOL)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 16), w=st.integers(1, 16), c=st.integers(1, 13), seed=seeds)
def test_depthwise_conv_equals_scipy_correlate(h, w, c, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, 1, h, w, c), rand(rng, 7, 7, c), rand(rng, c)
    got = ops.depthwise_conv(x, wt, b)
    for ch in range(c):
        expected = scipy.signal.correlate2d(x[0, :, :, ch].astype(np.float64), wt[:, :, ch],
                                            mode="same", boundary="fill") + b[ch]
        assert_allclose(got[0, :, :, ch], expected, rtol=RTOL, atol=ATOL)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 4), c=st.integers(2, 40), eps=st.sampled_from([1e-6, 1e-12, 1e-5]),
       scale=st.sampled_from([1e-2, 1.0, 100.0]), seed=seeds)
def test_layer_norm_equals_naive(rows, c, eps, scale, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, rows, c) * np.float32(scale) + np.float32(rng.normal() * scale)
    w, b = rand(rng, c), rand(rng, c)
    got = ops.layer_norm(x, w, b, eps)
    assert got.dtype == np.float32
    for r in range(rows):
        assert_allclose(got[r], naive.layer_norm(x[r], w, b, eps), rtol=1e-4, atol=1e-4)


def test_layer_norm_normalizes_over_channels_only():
    """Spec G.1: each (n, h, w) position is normalized on its own, not the whole map."""
    rng = np.random.default_rng(0)
    x = rand(rng, 2, 3, 4, 8) * np.arange(1, 25, dtype=np.float32).reshape(2, 3, 4, 1)
    y = ops.layer_norm(x, np.ones(8, np.float32), np.zeros(8, np.float32), 1e-6)
    assert_allclose(y.mean(axis=-1), 0, atol=1e-5)
    assert_allclose(y.std(axis=-1), 1, atol=1e-3)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_gelu_is_exact_erf_form(seed, scale):
    x = rand(np.random.default_rng(seed), 200) * np.float32(scale)
    got = ops.gelu(x)
    assert got.dtype == np.float32
    # x * Phi(x) with scipy's normal CDF, and the naive erf formula
    assert_allclose(got, x * scipy.stats.norm.cdf(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert_allclose(got, [naive.gelu(float(t)) for t in x], rtol=1e-5, atol=1e-6)


def test_gelu_is_not_the_tanh_approximation():
    x = np.linspace(-4, 4, 801, dtype=np.float32)
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    assert np.abs(ops.gelu(x) - tanh_form).max() > 1e-4


def test_gelu_within_5e_7_of_the_exact_erf_form():
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * scipy.special.erfc(-x64 / np.sqrt(2))  # no cancellation for x < 0
    got = ops.gelu(x)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() < 5e-7


@pytest.mark.parametrize("layout", ["F order", "transposed", "strided"])
def test_gelu_of_an_array_in_any_memory_layout(layout):
    x = rand(np.random.default_rng(2), 2, 9, 13)
    x = {"F order": np.asfortranarray(x), "transposed": x.transpose(2, 0, 1), "strided": x[:, ::2]}[layout]
    assert_allclose(ops.gelu(x), ops.gelu(np.ascontiguousarray(x)), rtol=0, atol=0)


def test_gelu_of_infinities_and_nan():
    got = ops.gelu(np.array([np.inf, -np.inf, np.nan, 1e30, -1e30], np.float32))
    assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2]) and got[3] == np.float32(1e30) and got[4] == 0


def test_gelu_keeps_the_dtype_and_shape_across_chunks():
    """More elements than one chunk, in a shape that does not divide into chunks."""
    x = rand(np.random.default_rng(1), 3, ops.GELU_CHUNK // 7 + 5, 7)
    got = ops.gelu(x)
    assert got.shape == x.shape and got.dtype == np.float32
    assert_allclose(got, x * scipy.stats.norm.cdf(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert ops.gelu(x.astype(np.float64)).dtype == np.float64


def gelu_tanh_exact(t):
    return 0.5 * t * (1 + math.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))


def silu_exact(t):
    return t / (1 + math.exp(-t)) if t > -700 else 0.0


@pytest.mark.parametrize("op, exact, torch_name", [(ops.gelu_tanh, gelu_tanh_exact, "gelu_tanh"),
                                                   (ops.silu, silu_exact, "silu")])
def test_other_activations_against_their_definitions(op, exact, torch_name):
    """timm's act_layer 'gelu_tanh' and 'silu', in float32 and float64, against the formula in
    float64 (math), and against torch where it is installed."""
    x = np.concatenate([np.linspace(-12, 12, 4001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e4, -1e4]])
    want = np.array([exact(float(t)) for t in x])
    got = op(x.astype(np.float32))
    assert got.dtype == np.float32
    assert_allclose(got, want, rtol=1e-6, atol=2e-7)
    assert_allclose(op(x), want, rtol=1e-13, atol=1e-15)
    torch = pytest.importorskip("torch")
    torch_op = {"gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                "silu": torch.nn.functional.silu}[torch_name]
    assert_allclose(got, torch_op(torch.from_numpy(x.astype(np.float32))).numpy(), rtol=1e-6, atol=2e-7)


def test_the_activations_differ():
    """GELU, its tanh approximation and SiLU are three functions, not one under three names."""
    x = np.linspace(-4, 4, 801, dtype=np.float32)
    assert np.abs(ops.gelu(x) - ops.gelu_tanh(x)).max() > 1e-4
    assert np.abs(ops.gelu(x) - ops.silu(x)).max() > 1e-2


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 6), k=st.sampled_from([1, 3, 5, 9]),
       seed=seeds)
def test_depthwise_conv_of_other_kernel_sizes_equals_scipy_correlate(h, w, c, k, seed):
    """timm's ``kernel_sizes``: any odd k, zero padding k // 2 ('same' output size)."""
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, 1, h, w, c), rand(rng, k, k, c), rand(rng, c)
    got = ops.depthwise_conv(x, wt, b)
    assert got.shape == x.shape
    for ch in range(c):
        expected = scipy.signal.correlate2d(x[0, :, :, ch].astype(np.float64), wt[:, :, ch],
                                            mode="same", boundary="fill") + b[ch]
        assert_allclose(got[0, :, :, ch], expected, rtol=RTOL, atol=ATOL)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), c=st.integers(1, 7), seed=seeds)
def test_global_avg_pool_and_linear(n, h, w, c, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, 5, c), rand(rng, 5)
    pooled = ops.global_avg_pool(x)
    assert_allclose(pooled, x.astype(np.float64).sum(axis=(1, 2)) / (h * w), rtol=RTOL, atol=ATOL)
    got = ops.linear(pooled, torch_to_ours("classifier.weight", wt), b)
    expected = [[sum(float(pooled[i, j]) * float(wt[o, j]) for j in range(c)) + b[o] for o in range(5)]
                for i in range(n)]
    assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 9),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=seeds)
def test_grn_equals_naive(n, h, w, c, scale, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, h, w, c) * np.float32(scale)
    wt, b = rand(rng, c), rand(rng, c)
    got = ops.grn(x, wt, b)
    assert got.dtype == np.float32
    assert_allclose(got, naive.grn(x, wt, b), rtol=1e-5, atol=1e-5 * scale)


def test_grn_norms_over_positions_per_image_and_divides_by_the_channel_mean():
    """Nx is 1 for every channel when all channels have the same norm, whatever the image."""
    x = np.zeros((2, 3, 3, 4), np.float32)
    x[0, 0, 0] = 2.0  # image 0: every channel has norm 2
    x[1] = 5.0  # image 1: every channel has norm 15
    w, b = np.full(4, 0.5, np.float32), np.zeros(4, np.float32)
    assert_allclose(ops.grn(x, w, b), x * 1.5, rtol=1e-6)  # w * x * 1 + x


@pytest.mark.parametrize("op", [ops.patchify, ops.depthwise_conv, ops.layer_norm, ops.gelu, ops.gelu_tanh,
                                ops.silu, ops.grn])
def test_ops_stay_float32(op):
    rng = np.random.default_rng(0)
    x = rand(rng, 1, 8, 8, 4)
    args = {ops.patchify: (rand(rng, 16 * 4, 3), rand(rng, 3), 4),
            ops.depthwise_conv: (rand(rng, 7, 7, 4), rand(rng, 4)),
            ops.layer_norm: (rand(rng, 4), rand(rng, 4), 1e-6),
            ops.gelu: (), ops.gelu_tanh: (), ops.silu: (),
            ops.grn: (rand(rng, 4), rand(rng, 4))}[op]
    assert op(x, *args).dtype == np.float32
