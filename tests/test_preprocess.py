"""ImageProcessor: pixel parity with transformers on real photos, and every input kind."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image

import convnext_np as cnp
from conftest import ALL_IMAGES, FIXTURES, IMAGE_DIR
from convnext_np.preprocess import ImageProcessor, load_rgb
from convnext_np.testing import PIXEL_ATOL

@pytest.mark.parametrize("size, crop_pct", [(224, 0.875), (384, None), (288, 1.0)])
def test_pixel_parity_with_transformers(size, crop_pct):
    transformers = pytest.importorskip("transformers")
    from transformers.image_utils import load_image  # what pipeline("image-classification") does
    theirs = transformers.ConvNextImageProcessorPil(
        size={"shortest_edge": size}, crop_pct=crop_pct, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    ours = ImageProcessor(size=size, crop_pct=crop_pct)
    for path in ALL_IMAGES:
        expected = theirs(load_image(str(path)), return_tensors="np")["pixel_values"]
        got = ours(path)
        assert got.shape == (1, 3, size, size) and got.dtype == np.float32
        assert_allclose(got, expected, rtol=0, atol=PIXEL_ATOL, err_msg=path.name)


HF_PIXELS = Path(__file__).parent / "data" / "hf_pixel_values.npz"


def hf_pixel_cases():
    with np.load(HF_PIXELS) as f:
        meta = json.loads(str(f["meta"]))
        return [pytest.param(case, f[key], meta["sha256"][case["image"]], id=key)
                for key, case in meta["cases"].items()]


@pytest.mark.parametrize("case, expected, sha256", hf_pixel_cases())
def test_pixel_parity_with_committed_transformers_output(case, expected, sha256):
    """The same claim without transformers: its pixel_values, made by tests/data/make_hf_pixels.py."""
    path = IMAGE_DIR / case["image"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, \
        f"{path.name} changed since its pixel_values were made: rerun tests/data/make_hf_pixels.py"
    got = ImageProcessor(size=case["size"], crop_pct=case["crop_pct"])(path)
    assert got.dtype == np.float32 and got.shape == (1, *expected.shape)
    assert_allclose(got[0], expected, rtol=0, atol=PIXEL_ATOL, err_msg=path.name)


def test_inputs_of_every_kind_agree():
    proc = ImageProcessor()
    path = IMAGE_DIR / "chelsea.png"  # RGB
    as_pil = Image.open(path)
    as_array = np.asarray(as_pil.convert("RGB"))
    batch = proc([path, str(path), as_pil, as_array])
    assert batch.shape == (4, 3, 224, 224)
    for i in range(1, 4):
        assert_allclose(batch[i], batch[0], rtol=0, atol=0)
    assert proc(as_array).shape == (1, 3, 224, 224)


def test_hf_crop_is_floor_and_timm_crop_rounds_half_to_even():
    img = Image.fromarray(np.arange(343 * 256 * 3, dtype=np.uint32).astype(np.uint8).reshape(256, 343, 3))
    hf = ImageProcessor(crop_pct=224 / 256, do_normalize=False, do_rescale=False)
    timm = ImageProcessor(crop_pct=224 / 256, crop_mode="center", do_normalize=False, do_rescale=False)
    resized = np.asarray(img)  # already 256 on the short side: resize is the identity size
    assert_allclose(hf.resize_and_crop(img), resized[16:240, 59:283])   # (343-224)//2 = 59
    assert_allclose(timm.resize_and_crop(img), resized[16:240, 60:284])  # round(59.5) = 60


@pytest.mark.parametrize("w, h", [(1000, 50), (50, 1000), (1000, 2), (2, 1000), (7, 3001), (3001, 7), (123, 4567)])
def test_extreme_aspect_ratios_resample_only_the_crop_window(w, h):
    img = Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    proc = ImageProcessor()
    got = proc.resize_and_crop(img).astype(int)
    new_w, new_h = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    full = proc._center_crop(np.asarray(img.resize((new_w, new_h), Image.BICUBIC, reducing_gap=None)))
    assert got.shape == (224, 224, 3)
    assert np.abs(got - full).max() <= 3
    assert (got != full).mean() < 0.01


def test_squash_and_warp():
    img = Image.new("RGB", (640, 427), (10, 20, 30))
    assert ImageProcessor(size=384, crop_pct=None).resize_and_crop(img).shape == (384, 384, 3)
    assert ImageProcessor(size=224, crop_pct=0.875, crop_mode="squash").resize_and_crop(img).shape == (224, 224, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "I", "F"])
def test_every_pil_mode_becomes_rgb(mode):
    base = Image.open(IMAGE_DIR / "chelsea.png").convert("RGB")
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(base.convert("L"), np.uint16) * 257))
    rgb = load_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == base.size


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    grey = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    img = Image.fromarray(grey)
    assert img.mode.startswith("I;16")
    ours = np.asarray(load_rgb(img))[..., 0]
    assert_allclose(ours, np.round(grey / 257), atol=0)
    clipped = np.asarray(load_rgb(img, hf_exact=True))[..., 0]
    assert clipped.max() == 255 and (clipped == 255).mean() > 0.9


def test_exif_orientation(tmp_path):
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 30, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    assert load_rgb(path).size == (40, 60)  # paths: always applied, as transformers' load_image
    opened = Image.open(path)
    assert load_rgb(opened).size == (40, 60)
    assert load_rgb(Image.open(path), hf_exact=True).size == (60, 40)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, _ = np.asarray(load_rgb(path))[0, 0]
    assert r > 200 and g < 50


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10, 3), np.float32), "must be uint8"),
    (np.zeros((10, 10, 2), np.uint8), r"\(H, W, 3\)"),
    (12, "unsupported image type int"),
])
def test_bad_arrays_and_types(bad, message):
    with pytest.raises(cnp.ImageError, match=message):
        ImageProcessor()(bad)


def test_unreadable_files_name_the_path(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    for name in ("empty.jpg", "text.png", "missing.png"):
        with pytest.raises(cnp.ImageError, match=name):
            ImageProcessor()(tmp_path / name)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(cnp.ImageError, match="more than the limit"):
        ImageProcessor(max_pixels=1_000_000)(path)


def test_from_pretrained_reads_the_checkpoint_files(tmp_path):
    hf = {"crop_pct": 0.9, "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
          "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": {"shortest_edge": 256}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(hf))
    proc = ImageProcessor.from_pretrained(tmp_path)
    assert (proc.size, proc.crop_pct, proc.resample, proc.image_mean, proc.crop_mode) == \
        (256, 0.9, "bilinear", (0.5, 0.5, 0.5), "hf")
    timm = ImageProcessor.from_pretrained(FIXTURES / "timm")
    assert (timm.size, timm.crop_pct, timm.crop_mode) == (64, 0.875, "center")
    assert ImageProcessor.from_pretrained(FIXTURES / "fb-pth" / "checkpoint.pth") == ImageProcessor()


def test_hf_config_round_trip():
    proc = ImageProcessor(size=256, crop_pct=0.9, resample="bilinear")
    assert ImageProcessor.from_hf_dict(proc.to_hf_dict()) == proc
    with pytest.raises(ValueError, match="squash"):
        ImageProcessor(crop_mode="squash", crop_pct=0.875).to_hf_dict()


def test_invalid_settings():
    with pytest.raises(ValueError, match="crop_mode"):
        ImageProcessor(crop_mode="border")
    with pytest.raises(ValueError, match="resample"):
        ImageProcessor(resample="cubic")
