"""Odd but valid images are classified; broken ones are reported and the batch goes on;
a shared model is thread-safe; memory is bounded by the batch size."""

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convnext_np as cnp
from conftest import FIXTURES, IMAGE_DIR
from convnext_np.classify import iter_classify
from convnext_np.testing import random_pixels

PHOTO = IMAGE_DIR / "chelsea.png"


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(FIXTURES / "hf-safetensors", backend="numpy")


def odd_but_valid(d: Path) -> list:
    rgb = Image.open(PHOTO).convert("RGB")
    small = rgb.resize((90, 60))
    made = []

    def save(name, img, **kw):
        img.save(d / name, **kw)
        made.append(d / name)

    save("cmyk.jpg", rgb.convert("CMYK"))
    save("grey16.png", Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)))
    p = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    save("palette-transparent.png", p, transparency=0)
    save("rgba.png", rgb.convert("RGBA"))
    save("animated.gif", small, save_all=True, append_images=[small.rotate(180)])
    save("photo.webp", small)
    save("multipage.tiff", small, save_all=True, append_images=[small.convert("L")])
    exif = Image.Exif()
    exif[0x0112] = 8
    save("exif-rotated.jpg", small, exif=exif)
    save("one-pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("strip-1000x2.png", Image.new("RGB", (1000, 2), (5, 100, 200)))
    save("strip-2x1000.png", Image.new("RGB", (2, 1000), (5, 100, 200)))
    return made


def broken(d: Path) -> dict:
    """file -> a word its error message must contain"""
    jpeg, png = (d / "good.jpg"), (d / "good.png")
    Image.open(PHOTO).convert("RGB").save(jpeg)
    Image.open(PHOTO).save(png)
    files = {
        "zero.jpg": b"",
        "truncated.jpg": jpeg.read_bytes()[:2000],
        "truncated.png": png.read_bytes()[:3000],
        "text.png": b"this is not an image\n",
        "header-only.png": png.read_bytes()[:33],
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    bomb = d / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 megapixels in a few kilobytes
    return {d / n: n for n in files} | {bomb: "decompression bomb"}


def test_odd_but_valid_images_are_classified(model, tmp_path):
    files = odd_but_valid(tmp_path)
    results = list(iter_classify(files, model, top_k=1, batch_size=4))
    assert [r[0] for r in results] == files
    for path, predictions, error in results:
        assert error is None, f"{path.name}: {error}"
        assert len(predictions) == 1 and 0 < predictions[0].score <= 1


def test_broken_images_are_reported_and_the_batch_goes_on(model, tmp_path):
    bad = broken(tmp_path)
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    items = [PHOTO, *bad, PHOTO]
    results = list(iter_classify(items, model, top_k=2, batch_size=3))
    assert [r[0] for r in results] == items
    assert results[0][2] is None and results[-1][2] is None
    assert [p.index for p in results[0][1]] == [p.index for p in results[-1][1]]
    for (path, predictions, error) in results[1:-1]:
        assert predictions is None and isinstance(error, cnp.ImageError), path.name
        assert bad[path] in str(error) or path.name in str(error)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_shared_model_is_thread_safe(backend):
    model = cnp.from_pretrained(FIXTURES / "hf-safetensors", backend=backend)
    inputs = [random_pixels((2, 3, 64, 64), seed) for seed in range(8)]
    serial = [model(x).logits for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = model(inputs[i]).logits

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


def test_memory_is_bounded_by_the_batch_size(model):
    """Images are read lazily: never more than batch_size are preprocessed ahead of output."""
    read, done = [], []

    def images():
        for i in range(50):
            read.append(i)
            assert len(read) - len(done) <= 4, "read too far ahead of the results"
            yield PHOTO

    for _ in iter_classify(images(), model, top_k=1, batch_size=4):
        done.append(1)
    assert len(done) == 50


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_num_threads_argument(backend, monkeypatch):
    from convnext_np import backends, threads
    if backend == "numba":
        import numba
        probe = numba.get_num_threads
    else:
        probe = threads.blas_threads
        if probe() is None:
            pytest.skip("threadpoolctl finds no BLAS here")
    module = backends.get(backend)
    seen, pool = [], module.global_avg_pool
    monkeypatch.setattr(module, "global_avg_pool", lambda x: (seen.append(probe()), pool(x))[1])
    x = random_pixels((1, 3, 64, 64))
    before = probe()
    one = cnp.from_pretrained(FIXTURES / "hf-safetensors", backend=backend, num_threads=1)(x).logits
    assert seen == [1] and probe() == before
    default = cnp.from_pretrained(FIXTURES / "hf-safetensors", backend=backend)(x).logits
    assert seen[1] == before
    np.testing.assert_allclose(one, default, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="num_threads"):
        cnp.from_pretrained(FIXTURES / "hf-safetensors", num_threads=0)
