"""Fuzzing: mutated weights, configs and images give a documented error or a result, nothing else.

Every example runs in a forked child under a budget (:func:`within_budget`): at most
``BUDGET_SECONDS`` of wall time and ``BUDGET_BYTES`` more address space than the test process
has, so a hang or a blow-up in memory fails the example (and hypothesis shrinks it) instead of
stalling CI. The families: byte mutations of each weights format and image format; edits of
safetensors headers and configs; containers Pillow recognises by their content, under a
``.png`` name; pickled checkpoints that contain themselves, lie about their tensors' layouts or
are oversized; JSON nested deeper than any real file.

Bounded for CI (40 examples per test). For a long run:
``pytest tests/test_fuzz.py --fuzz-examples 1500``.

Replaying: with ``CI`` set the examples are derandomized (the same on every run, chosen from
each test's code); otherwise the run's seed is printed in pytest's header
(``hypothesis: seed 1234567; replay this run with --hypothesis-seed=1234567``), and passing it
back draws the same examples, so a failure from a long run can be reproduced
(``tests/conftest.py``).
"""

import json
import os
import pickle
import resource
import shutil
import signal
import struct
import time
import traceback
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convnext_np as cnp
from conftest import FIXTURES, IMAGE_DIR
from convnext_np import torch_pickle
from convnext_np.preprocess import ImageProcessor
from convnext_np.safetensors_file import SafetensorsFile
from torchfile import Tensor, write_checkpoint

BUDGET_SECONDS = 30  # one example; the slowest legitimate ones take well under a second
BUDGET_BYTES = 1 << 30  # address space an example may add; the blow-ups found took 2 GB or more


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def within_budget(body):
    """Run ``body()`` in a forked child with at most BUDGET_BYTES more address space and
    BUDGET_SECONDS of wall time; any exception, crash, time-out or memory error fails the test
    with what the child saw. The child must not start Numba's thread pool (use the numpy
    backend): a fork keeps only the calling thread."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the body, report, and leave without pytest's exit handlers
        report = b""
        try:
            os.close(read_end)
            resource.setrlimit(resource.RLIMIT_AS, (_address_space() + BUDGET_BYTES,
                                                    resource.getrlimit(resource.RLIMIT_AS)[1]))
            body()
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            report = traceback.format_exc().encode()[-30000:] or b"?"
        os.write(write_end, report)
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + BUDGET_SECONDS
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the example ran past its budget of {BUDGET_SECONDS} s (a hang?)")
            time.sleep(0.002)
        with os.fdopen(read_end, "rb") as f:
            report = f.read().decode(errors="replace")
            read_end = None
    finally:
        if read_end is not None:
            os.close(read_end)
    if os.WIFSIGNALED(status):
        pytest.fail(f"the example died of signal {os.WTERMSIG(status)}")
    if report:
        pytest.fail(f"the example failed in its child process:\n{report}")

HF = FIXTURES / "hf-safetensors"
SAFETENSORS = (HF / "model.safetensors").read_bytes()
HEADER_LEN = struct.unpack("<Q", SAFETENSORS[:8])[0]
HEADER = json.loads(SAFETENSORS[8:8 + HEADER_LEN])
PICKLE = (FIXTURES / "hf-bin" / "pytorch_model.bin").read_bytes()
CONFIG = json.loads((HF / "config.json").read_text())
SMALL_IMAGES = {}


def fuzz_settings(request_examples):
    return settings(max_examples=request_examples, deadline=None,  # derandomized in CI: conftest
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
        within_budget(lambda: (
            expect_only(cnp.WeightsError, lambda: load_everything(workdir / "model" / "model.safetensors")),
            expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(workdir / "model", backend="numpy"))))
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
        within_budget(lambda: expect_only(cnp.WeightsError,
                                          lambda: cnp.from_pretrained(workdir / "model", backend="numpy")))
    run()
    (workdir / "model" / "model.safetensors").write_bytes(SAFETENSORS)


def test_fuzz_config(workdir, fuzz_examples):
    (workdir / "model" / "model.safetensors").write_bytes(SAFETENSORS)

    @fuzz_settings(fuzz_examples)
    @given(st.dictionaries(st.sampled_from(sorted(CONFIG) + ["num_labels", "norm_eps"]), json_values, max_size=3))
    def run(edits):
        (workdir / "model" / "config.json").write_text(json.dumps({**CONFIG, **edits}))

        def body():
            model = expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(workdir / "model", backend="numpy"))
            if model is not None:
                assert model(np.zeros((1, 3, 32, 32), np.float32)).pooled.shape == (1, 44)
        within_budget(body)
    run()
    (workdir / "model" / "config.json").write_text(json.dumps(CONFIG))


def test_fuzz_torch_pickle(workdir, fuzz_examples):
    @fuzz_settings(fuzz_examples)
    @given(bytes_mutation)
    def run(mutation):
        data = mutate(PICKLE, mutation)
        (workdir / "weights.bin").write_bytes(data)
        within_budget(lambda: expect_only(cnp.WeightsError,
                                          lambda: cnp.from_pretrained(workdir / "weights.bin", backend="numpy")))
    run()


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png", "anim.gif", "page.webp", "pages.tiff"])
def test_fuzz_image_bytes(workdir, fuzz_examples, name):
    from PIL import Image
    source = workdir / f"orig-{name}"
    if not source.exists():
        base = Image.open(IMAGE_DIR / "chelsea.png").convert("RGB").resize((64, 48))
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
        within_budget(lambda: check_image(proc, path))
    run()


def check_image(proc, path):
    x = expect_only(cnp.ImageError, lambda: proc(path))
    if x is not None:
        assert x.shape == (1, 3, 224, 224) and np.isfinite(x).all()


# --- containers Pillow recognises by their content, under a .png name ---------------------------
def dds(fields) -> bytes:
    """A DDS header (magic, 124-byte header) with the fuzzed fields, then a few pixel bytes."""
    flags, height, width, pitch, depth, mips, pf_flags, fourcc, bits, masks = fields
    header = bytearray(124)
    struct.pack_into("<7I", header, 0, 124, flags, height, width, pitch, depth, mips)
    struct.pack_into("<2I4s5I", header, 72, 32, pf_flags, fourcc, bits, *masks)
    return b"DDS " + bytes(header)


u32 = st.integers(0, 2**32 - 1)
small = st.integers(0, 80)
dds_fields = st.tuples(u32, small, small, u32, small, small,
                       st.sampled_from([0x4, 0x40, 0x41, 0x20000, 0x2, 0x200, 0]) | u32,
                       st.sampled_from([b"DXT1", b"DXT3", b"DXT5", b"BC4U", b"BC5S", b"ATI2",
                                        b"DX10", b"ABCD", b"\0\0\0\0"]) | st.binary(min_size=4, max_size=4),
                       st.sampled_from([8, 16, 24, 32]) | u32, st.tuples(u32, u32, u32, u32))
# The first bytes by which Pillow's plugins claim a file (Image.OPEN's _accept functions).
MAGIC = [b"8BPS\x00\x01", b"icns", b"\x00\x00\x01\x00", b"\x00\x00\x02\x00", b"BM", b"GIF89a",
         b"II*\x00", b"MM\x00*", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x0a\x05\x01\x08",
         b"\x01\xda\x01\x01", b"SIMPLE  =                    T", b"#define x_width 8\n", b"/* XPM */\n",
         b"P6\n", b"P5 8 8 65535\n", b"BLP1", b"BLP2", b"FTEX", b"DanM", b"LinS", b"qoif",
         b"\x59\xa6\x6a\x95", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\x89PNG\r\n\x1a\n",
         b"Image type: RGB image\r\n", b"\xb1\x68\xde\x3a", b"GRIB", b"BUFR", b"\x89HDF"]


@pytest.mark.parametrize("family", ["dds", "magic"])
def test_fuzz_sniffed_containers_under_a_png_name(workdir, fuzz_examples, family):
    proc = ImageProcessor(max_pixels=4_000_000)
    path = workdir / f"sniffed-{family}.png"
    head = st.builds(dds, dds_fields) if family == "dds" else st.sampled_from(MAGIC)

    @fuzz_settings(fuzz_examples)
    @given(head, st.binary(max_size=512), bytes_mutation)
    def run(header, body, mutation):
        path.write_bytes(mutate(header + body, mutation) if body else header)
        within_budget(lambda: check_image(proc, path))
    run()


# --- pickled checkpoints: self-referencing, lying about layouts, oversized ----------------------
NAMES = ["stem.0.weight", "model", "state_dict", "module", "head.fc.weight", "x"]
layouts = st.tuples(st.integers(0, 16),  # storage elements
                    st.lists(st.integers(0, 2**40) | st.integers(0, 8), max_size=4),  # size
                    st.lists(st.integers(0, 2**40) | st.integers(0, 8), max_size=4),  # stride
                    st.integers(0, 2**40) | st.integers(0, 8))  # offset


def tensor(layout):
    n, size, stride, offset = layout
    stride = (stride + [1] * len(size))[:len(size)]
    return Tensor(np.arange(n, dtype=np.float32), size=size, stride=stride, offset=offset)


structures = st.recursive(
    st.none() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4) | st.builds(tensor, layouts),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
    max_leaves=6)


def test_fuzz_checkpoint_structures(workdir, fuzz_examples):
    path = workdir / "structure.pth"

    @fuzz_settings(fuzz_examples)
    @given(structures, st.booleans())
    def run(obj, compress):
        write_checkpoint(path, obj, compress_pkl=compress)
        within_budget(lambda: expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(path, backend="numpy")))
    run()


def cyclic(keys, via_list, extra):
    """A checkpoint whose wrappers lead back to themselves, as ``d["model"] = d`` does."""
    outer = inner = {}
    for key in keys[:-1]:
        inner[key] = {}
        inner = inner[key]
    inner[keys[-1]] = [outer] if via_list else outer
    inner.update(extra)
    return outer


def test_fuzz_self_referencing_and_oversized_pickles(workdir, fuzz_examples):
    path = workdir / "cyclic.pth"
    wrappers = st.lists(st.sampled_from(["model", "state_dict", "model_ema", "module", "x"]), min_size=1, max_size=12)

    @fuzz_settings(fuzz_examples)
    @given(wrappers, st.booleans(), st.dictionaries(st.sampled_from(["epoch", "args"]), st.integers()),
           st.integers(0, 3 * torch_pickle.MAX_PICKLE_BYTES), st.booleans())
    def run(keys, via_list, extra, padding, compress):
        obj = cyclic(keys, via_list, extra)
        if padding > torch_pickle.MAX_PICKLE_BYTES // 2:
            obj["padding"] = "p" * padding  # an oversized data.pkl: compressed, it stays small
        data = pickle.dumps(obj, protocol=2)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", data,
                        compress_type=zipfile.ZIP_DEFLATED if compress or padding else zipfile.ZIP_STORED)
        within_budget(lambda: expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(path, backend="numpy")))
    run()


# --- JSON nested deeper than any real file ------------------------------------------------------
def test_fuzz_nested_json(workdir, fuzz_examples):
    model = workdir / "nested"
    if not model.exists():
        shutil.copytree(FIXTURES / "hf-sharded", model)
    originals = {p.name: p.read_bytes() for p in model.iterdir() if p.suffix == ".json"}
    index = json.loads(originals["model.safetensors.index.json"])
    targets = ["config.json", "preprocessor_config.json", "model.safetensors.index.json", "header"]

    @fuzz_settings(fuzz_examples)
    @given(st.sampled_from(targets), st.integers(1, 200_000), st.sampled_from(["[", '{"a":']),
           st.booleans())
    def run(target, depth, opener, closed):
        closer = "]" if opener == "[" else "}"
        deep = opener * depth + "0" + closer * (depth if closed else depth // 2)
        for name, data in originals.items():
            (model / name).write_bytes(data)
        for p in model.glob("deep*.safetensors"):
            p.unlink()
        if target == "config.json":
            (model / target).write_text(originals[target].decode()[:-2] + f', "deep": {deep}}}')
        elif target == "preprocessor_config.json":
            (model / target).write_text(f'{{"size": {{"shortest_edge": 224}}, "deep": {deep}}}')
        elif target == "model.safetensors.index.json":
            (model / target).write_text(json.dumps(index)[:-1] + f', "deep": {deep}}}')
        else:  # a shard's header metadata
            shard = sorted(model.glob("model-*.safetensors"))[0]
            header = f'{{"__metadata__": {{"deep": {deep}}}}}'.encode()
            (model / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
            weight_map = {**index["weight_map"], "deep": "deep.safetensors"}
            (model / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
            assert shard.exists()
        within_budget(lambda: expect_only(cnp.WeightsError, lambda: cnp.from_pretrained(model, backend="numpy")))
    run()


# --- the budget itself --------------------------------------------------------------------------
def test_the_budget_fails_a_hang_a_blow_up_and_a_stray_exception(monkeypatch):
    within_budget(lambda: bytearray(BUDGET_BYTES // 4))  # within budget: passes
    monkeypatch.setattr(__import__(__name__), "BUDGET_SECONDS", 5)
    for body, why in [(lambda: time.sleep(60), "ran past its budget"),
                      (lambda: bytearray(2 * BUDGET_BYTES), "MemoryError"),
                      (lambda: (_ for _ in ()).throw(NotImplementedError("DDS")), "NotImplementedError"),
                      (lambda: os.kill(os.getpid(), signal.SIGKILL), "died of signal 9")]:
        with pytest.raises(pytest.fail.Exception, match=why):
            within_budget(body)
