"""Parity with transformers and timm, on committed fixtures that those libraries computed.

``weights/make_fixtures.py`` wrote each fixture: realistic random weights in one official
layout and the reference outputs (logits, pooled features, hidden states) on three inputs:
a batch of 2, a non-square input and one whose sides are not multiples of 32. The full-size
references (atto, tiny, and ConvNeXt V2's) hold only outputs; their weights are rebuilt here
from a seed.
"""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from safetensors.numpy import save_file

import convnext_np as cnp
from conftest import FIXTURES, LAYOUT_SOURCES, MAX_DIFFS, REFERENCE, V2_LAYOUT_SOURCES
from convnext_np import ops
from convnext_np.safetensors_file import SafetensorsFile
from convnext_np.testing import (HIDDEN_RTOL, LOGITS_ATOL, POOLED_ATOL, random_pixels,
                                 realistic_state_dict)



def check_against(model, ref: SafetensorsFile, x, i, label, hidden=True):
    """Logits (where the reference has a head), pooled features and hidden states; returns and
    records the max |logits - reference| (for a headless model: |pooled - reference|)."""
    out = model(x, output_hidden_states=hidden)
    assert out.pooled.dtype == np.float32
    pooled = ref.tensor(f"input{i}.pooled")
    assert_allclose(out.pooled, pooled, rtol=0, atol=POOLED_ATOL, strict=True)
    if f"input{i}.logits" not in ref.keys():  # a headless model
        assert out.logits is None
        expected, got, label = pooled, out.pooled, f"{label} (pooled)"
    else:
        expected, got = ref.tensor(f"input{i}.logits"), out.logits
        assert out.logits.dtype == np.float32
        assert_allclose(out.logits, expected, rtol=0, atol=LOGITS_ATOL, strict=True)
        assert (out.logits.argmax(axis=1) == expected.argmax(axis=1)).all()
    if hidden:
        assert len(out.hidden_states) == 5
        for j, h in enumerate(out.hidden_states):
            want = ref.tensor(f"input{i}.hidden_states.{j}")
            assert_allclose(h, want, rtol=0, atol=HIDDEN_RTOL * np.abs(want).max(), strict=True)
        assert out.last_hidden_state is out.hidden_states[-1]
    diff = float(np.abs(got - expected).max())
    MAX_DIFFS[label] = max(MAX_DIFFS.get(label, 0.0), diff)
    return diff


BACKENDS = ["numpy", "numba"]  # the NumPy reference and the Numba fast path, held to one standard


def case(label, backend):
    return label if backend == "numpy" else f"{label} [{backend}]"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUT_SOURCES))
def test_micro_fixture_matches_reference(layout, backend):
    model = cnp.from_pretrained(FIXTURES / LAYOUT_SOURCES[layout], backend=backend)
    ref = SafetensorsFile(FIXTURES / layout / "reference.safetensors")
    meta = json.loads((FIXTURES / layout / "reference.json").read_text())
    assert model.config.num_labels == 10 and model.config.depths == [2, 1, 3, 1]
    for i, spec in enumerate(meta["inputs"]):
        x = ref.tensor(f"input{i}.pixel_values")
        assert x.shape == tuple(spec["shape"])
        check_against(model, ref, x, i, case(f"micro {layout}", backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(V2_LAYOUT_SOURCES))
def test_micro_v2_fixture_matches_reference(layout, backend):
    source, has_head = V2_LAYOUT_SOURCES[layout]
    model = cnp.from_pretrained(FIXTURES / source, backend=backend)
    assert model.config.model_type == "convnextv2"
    assert model.config.num_labels == (10 if has_head else 0) and model.config.depths == [2, 1, 3, 1]
    ref = SafetensorsFile(FIXTURES / layout / "reference.safetensors")
    for i in range(len(json.loads((FIXTURES / layout / "reference.json").read_text())["inputs"])):
        check_against(model, ref, ref.tensor(f"input{i}.pixel_values"), i, case(f"micro {layout}", backend))


@pytest.mark.parametrize("layout", ["hf-safetensors", "timm", "timm-conv-mlp", "v2-hf-safetensors",
                                    "v2-timm", "v2-timm-conv-mlp", "v2-timm-fcmae"])
def test_bare_weights_file_infers_the_architecture(layout):
    """Without config.json the architecture comes from the tensors alone."""
    model = cnp.from_pretrained(FIXTURES / layout / "model.safetensors")
    assert (model.config.depths, model.config.hidden_sizes) == ([2, 1, 3, 1], [12, 20, 36, 44])
    ref = SafetensorsFile(FIXTURES / layout / "reference.safetensors")
    check_against(model, ref, ref.tensor("input0.pixel_values"), 0, f"micro {layout} (bare file)")


def full_size_cases():
    return sorted(p.stem for p in REFERENCE.glob("*.json"))


@pytest.fixture(scope="module", params=full_size_cases())
def full_size(request, tmp_path_factory):
    """A full-size reference: its weights rebuilt from the seed, written in its layout."""
    meta = json.loads((REFERENCE / f"{request.param}.json").read_text())
    state_dict = realistic_state_dict(meta["tensors"], meta["seed"])
    abs_sum = sum(np.abs(v.astype(np.float64)).sum() for v in state_dict.values())
    assert abs_sum == pytest.approx(meta["weights_abs_sum"], rel=1e-12), \
        "NumPy's random stream changed: the rebuilt weights are not those of the reference"
    path = tmp_path_factory.mktemp(request.param) / "weights.safetensors"
    save_file(state_dict, str(path))
    return request.param, meta, path


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_size_variant_matches_reference(full_size, backend):
    name, meta, path = full_size
    model = cnp.from_pretrained(path, backend=backend)
    assert model.config.variant() == meta["variant"]
    assert model.config.model_type == meta.get("model_type", "convnext")
    ref = SafetensorsFile(REFERENCE / f"{name}.safetensors")
    for i, spec in enumerate(meta["inputs"]):
        x = random_pixels(spec["shape"], spec["seed"])
        assert float(x.astype(np.float64).sum()) == pytest.approx(spec["sum"], rel=1e-12)
        check_against(model, ref, x, i, case(name, backend), hidden=False)


@pytest.mark.slow
def test_the_fixtures_would_catch_a_tanh_gelu(full_size, monkeypatch):
    """The weights are realistic enough that an approximate GELU breaks the tolerance."""
    name, meta, path = full_size
    model = cnp.from_pretrained(path, backend="numpy")
    monkeypatch.setattr(ops, "gelu", lambda x: 0.5 * x * (1 + np.tanh(
        np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x**3))))
    spec = meta["inputs"][0]
    logits = model(random_pixels(spec["shape"], spec["seed"])).logits
    expected = SafetensorsFile(REFERENCE / f"{name}.safetensors").tensor("input0.logits")
    assert np.abs(logits - expected).max() > LOGITS_ATOL
