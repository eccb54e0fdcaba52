"""Fuzzing: mutated weights, configs and images give a documented error or a result, nothing else.

Bounded for CI (about a minute). For a long run: ``pytest tests/test_fuzz.py --fuzz-examples 5000``.
"""

import json
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np.preprocess import ImageProcessor
from convnext_np.safetensors_file import SafetensorsFile
from test_preprocess import IMAGES

HF = FIXTURES / "hf-safetensors"
SAFETENSORS = (HF / "model.safetensors").read_bytes()
HEADER_LEN = struct.unpack("<Q", SAFETENSORS[:8])[0]
HEADER = json.loads(SAFETENSORS[8:8 + HEADER_LEN])
PICKLE = (FIXTURES / "hf-bin" / "pytorch_model.bin").read_bytes()
CONFIG = json.loads((HF / "config.json").read_text())
SMALL_IMAGES = {}


def fuzz_settings(request_examples):
    return settings(max_examples=request_examples, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(HF, d / "model")
    return d


def mutate(data: bytes, mutation) -> bytes:
    """Overwrite some bytes, then maybe truncate."""
    positions, values, cut = mutation
    b = bytearray(data)
    for p, v in zip(positions, values):
        b[p % len(b)] = v
    return bytes(b) if cut is None else bytes(b[: cut % (len(b) + 1)])


def expect_only(errors, fn):
    try:
        return fn()
    except errors:
        return None


def load_everything(path):
    f = SafetensorsFile(path)
    for k in f.keys():
        np.asarray(f.tensor(k)).sum()


bytes_mutation = st.tuples(st.lists(st.integers(0, 2**31), max_size=8),
                           st.lists(st.integers(0, 255), max_size=8),
                           st.one_of(st.none(), st.integers(0, 2**31)))


def test_fuzz_safetensors_bytes(workdir, fuzz_examples):
    @fuzz_settings(fuzz_examples)
    @given(bytes_mutation)
    def run(mutation):
        data = mutate(SAFETENSORS, mutation)
        (workdir / "model" / "model.safetensors").write_bytes(data)
        expect_only(cnp.WeightsError, lambda: load_everything(workdir / "model" / "model.safetensors"))
        expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(workdir / "model"))
    run()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                           max_leaves=8)


def test_fuzz_safetensors_header(workdir, fuzz_examples):
    names = sorted(HEADER)
    fields = ["dtype", "shape", "data_offsets"]

    @fuzz_settings(fuzz_examples)
    @given(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(fields), json_values), min_size=1, max_size=3),
           st.integers(-64, 64))
    def run(edits, length_delta):
        header = json.loads(json.dumps(HEADER))
        for name, field, value in edits:
            if isinstance(header[name], dict):
                header[name][field] = value
        h = json.dumps(header).encode()
        data = struct.pack("<Q", max(len(h) + length_delta, 0)) + h + SAFETENSORS[8 + HEADER_LEN:]
        (workdir / "model" / "model.safetensors").write_bytes(data)
        expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(workdir / "model"))
    run()
    (workdir / "model" / "model.safetensors").write_bytes(SAFETENSORS)


def test_fuzz_config(workdir, fuzz_examples):
    (workdir / "model" / "model.safetensors").write_bytes(SAFETENSORS)

    @fuzz_settings(fuzz_examples)
    @given(st.dictionaries(st.sampled_from(sorted(CONFIG) + ["num_labels", "norm_eps"]), json_values, max_size=3))
    def run(edits):
        (workdir / "model" / "config.json").write_text(json.dumps({**CONFIG, **edits}))
        model = expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(workdir / "model"))
        if model is not None:
            assert model(np.zeros((1, 3, 32, 32), np.float32)).pooled.shape == (1, 44)
    run()
    (workdir / "model" / "config.json").write_text(json.dumps(CONFIG))


def test_fuzz_torch_pickle(workdir, fuzz_examples):
    @fuzz_settings(fuzz_examples)
    @given(bytes_mutation)
    def run(mutation):
        data = mutate(PICKLE, mutation)
        (workdir / "weights.bin").write_bytes(data)
        expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(workdir / "weights.bin"))
    run()


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png", "anim.gif", "page.webp", "pages.tiff"])
def test_fuzz_image_bytes(workdir, fuzz_examples, name):
    from PIL import Image
    source = workdir / f"orig-{name}"
    if not source.exists():
        base = Image.open(IMAGES[1]).convert("RGB").resize((64, 48))
        if name == "anim.gif":
            base.save(source, save_all=True, append_images=[base.rotate(90)])
        elif name == "pages.tiff":
            base.save(source, save_all=True, append_images=[base.convert("L")])
        else:
            base.save(source)
    original = source.read_bytes()
    proc = ImageProcessor(max_pixels=4_000_000)

    @fuzz_settings(fuzz_examples)
    @given(bytes_mutation)
    def run(mutation):
        data = mutate(original, mutation)
        path = workdir / f"fuzzed-{name}"
        path.write_bytes(data)
        x = expect_only(cnp.ImageError, lambda: proc(path))
        if x is not None:
            assert x.shape == (1, 3, 224, 224) and np.isfinite(x).all()
    run()
