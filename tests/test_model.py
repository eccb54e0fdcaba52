"""The forward pass: shapes for any input size and batch, float32 throughout, input checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np.testing import random_pixels


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(FIXTURES / "hf-safetensors")


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(32, 97), w=st.integers(32, 97))
def test_shapes_follow_the_floor_chain(model, n, h, w):
    out = model(random_pixels((n, 3, h, w)), output_hidden_states=True)
    dims = model.config.hidden_sizes
    sizes = [(h // 4, w // 4)]
    for _ in range(3):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    expected = [(n, dims[0], *sizes[0])] + [(n, c, *s) for c, s in zip(dims, sizes)]
    assert [hs.shape for hs in out.hidden_states] == expected
    assert out.last_hidden_state.shape == (n, dims[-1], h // 32, w // 32)
    assert out.pooled.shape == (n, dims[-1]) and out.logits.shape == (n, 10)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in (out.logits, out.pooled, *out.hidden_states))


def test_batch_items_are_independent(model):
    x = random_pixels((3, 3, 64, 64), seed=5)
    together = model(x).logits
    alone = np.concatenate([model(x[i:i + 1]).logits for i in range(3)])
    assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_hidden_states_only_on_request(model):
    out = model(random_pixels((1, 3, 32, 32)))
    assert out.hidden_states is None and out.last_hidden_state.shape == (1, 44, 1, 1)


def test_float64_and_float16_inputs_give_float32_outputs(model):
    x = random_pixels((1, 3, 64, 64))
    ref = model(x).logits
    assert_allclose(model(x.astype(np.float64)).logits, ref, rtol=0, atol=1e-6)
    assert model(x.astype(np.float16)).logits.dtype == np.float32


@pytest.mark.parametrize("x, message", [
    (np.zeros((3, 64, 64), np.float32), r"shape \(N, 3, H, W\)"),
    (np.zeros((1, 64, 64, 3), np.float32), r"shape \(N, 3, H, W\)"),
    (np.zeros((0, 3, 64, 64), np.float32), "empty batch"),
    (np.zeros((1, 3, 31, 64), np.float32), "at least 32x32"),
    (np.zeros((1, 3, 64, 64), np.uint8), "floating point"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN or infinite"),
])
def test_bad_pixel_values_are_refused(model, x, message):
    with pytest.raises(cnp.ImageError, match=message):
        model(x)


def test_backend_choice():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        cnp.from_pretrained(FIXTURES / "hf-safetensors", backend="cuda")
    assert cnp.from_pretrained(FIXTURES / "hf-safetensors", backend="numpy").backend == "numpy"
